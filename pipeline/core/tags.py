"""Every tag name the pipeline writes, on MLflow runs, experiments, logged models, registered
models and versions: one fact, one name."""


class Tag:
    """Tag names, grouped by the fact they record."""

    PID, HOST = "pipeline.pid", "pipeline.host"
    STAGE = "pipeline.stage"
    MODEL_SHA = "pipeline.model_sha256"
    CHECKPOINT_SHA = "pipeline.checkpoint_sha256"  # model.weights: the file fine-tuning began from
    PROCESSED = "pipeline.dvc.data/processed"
    AUGMENTED = "pipeline.dvc.data/augmented"
    GIT_COMMIT, GIT_DIRTY = "mlflow.source.git.commit", "pipeline.git_dirty"
    PARAMS_SHA = "pipeline.params_sha256"
    LOCK_SHA = "pipeline.lock_sha256"  # requirements.lock the environment was installed from
    RUN_ID = "pipeline.run_id"
    TUNED_KEYS = "pipeline.tuned_keys"
    # What computed a run: library versions, the device and torch's thread count.
    TORCH, MLFLOW, PYTHON = "pipeline.torch", "pipeline.mlflow", "pipeline.python"
    DEVICE, THREADS = "pipeline.device", "pipeline.threads"
    INPUT_SHAPE = "pipeline.input_shape"  # what the model took, e.g. 1x16x16 (image_size: auto)
    # CPU kernel dispatch that computed a run (pipeline/core/cpu.py): the kernels mode, ATen's
    # effective capability, the CPU model, and "pipeline.cpu.env.<VAR>" per pinned variable.
    CPU_KERNELS, CPU_CAPABILITY = "pipeline.cpu.kernels", "pipeline.cpu.capability"
    CPU_MODEL, CPU_ENV = "pipeline.cpu.model", "pipeline.cpu.env."
    THRESHOLD_RULE = "pipeline.threshold_rule"
    REGISTERED_VERSION = "pipeline.registered_version"
    # On a version: how many distinct raw examples it learned from (the fingerprints are its
    # learned_from.txt artifact) and the register params it was gated under.
    LEARNED_ROWS = "pipeline.learned_rows"
    # On a version: the register params its gate decision was made under; a hash of every file
    # it serves from (weights, config, metadata, threshold, code, pins): one version per hash.
    REGISTER_PARAMS = "pipeline.register_params_sha256"
    PYFUNC_SHA = "pipeline.pyfunc_sha256"
    GATE_DECISION = "pipeline.gate_decision"
    # On a run: the registered model it registered into (register.model_name, auto resolved).
    # On a version: its input contract as JSON (pipeline/registry/contract.py) and in words; one
    # registered model serves one contract, and register refuses a version of another.
    REGISTERED_MODEL = "pipeline.registered_model"
    CONTRACT, CONTRACT_SUMMARY = "pipeline.contract", "pipeline.contract_summary"
    # `dvc exp run` experiment that made a run; a row of `dvc exp show` finds its run by it.
    DVC_EXP, DVC_EXP_BASELINE = "pipeline.dvc_exp", "pipeline.dvc_exp_baseline"
    # Run whose evaluate produced this run's test metrics (itself, or an earlier run of the
    # same weights and test data when DVC skipped evaluate for byte-identical weights).
    TEST_METRICS_FROM = "pipeline.test_metrics_from"
    # The `dvc repro` / `dvc exp run` (or hand-run process) a run belongs to: train, evaluate
    # and register of one invocation share a run; a later invocation never writes into it.
    INVOCATION = "pipeline.invocation"
    # The train run whose weights a run evaluated or registered (a train run names itself).
    TRAINED_BY = "pipeline.trained_by"
    # Where the pruner stopped a trial: the step (pruned_at) and what it counts (pruned_step:
    # epoch, or fold when trials cross-validate).
    PRUNED_AT, PRUNED_STEP = "pipeline.pruned_at", "pipeline.pruned_step"
    # What a run learned from: digits / breast_cancer (built-in) or the user's data.path.
    DATA_SOURCE = "pipeline.data_source"
    STUDY = "optuna.study_name"
    STUDY_PARENT = "optuna.study_name_parent"
    STORAGE = "optuna.storage"
    TRIAL_NUMBER = "optuna.trial_number"
    TRIAL_STATE = "optuna.trial_state"
    PARENT_RUN = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    DATASET_CONTEXT = "mlflow.data.context"  # on a run's dataset input: training, testing...
    # On a study's parent run: "best.<key>" per param of the best trial so far.
    BEST_PARAM = "best."
    # On an experiment: the MLflow UI's saved runs-table views ("mlflow.sharedViewState.<key>"),
    # the kind of experiment the UI opens it as, and its description.
    SHARED_VIEW = "mlflow.sharedViewState."
    EXPERIMENT_KIND = "mlflow.experimentKind"
    NOTE = "mlflow.note.content"
    # On a logged model: the versions registered from it, as JSON (the MLflow UI's link).
    MODEL_VERSIONS = "mlflow.modelVersions"
    # On a version: the gate's decision on it and what it compared (pipeline/registry/gate.py).
    DECISION, DECISION_REASON, GATE_METRIC = "decision", "decision_reason", "gate_metric"
    CHALLENGER_SCORE, CHAMPION_SCORE = "challenger_score", "champion_score"
    COMPARED_ROWS, EXCLUDED_ROWS = "compared_rows", "excluded_rows"
    CHAMPION_OVERLAP, COMPARED_TO_VERSION = "champion_overlap", "compared_to_version"
    # On a registered model: "audit.<5-digit number>" per gate decision, as JSON (the trail).
    AUDIT = "audit."
