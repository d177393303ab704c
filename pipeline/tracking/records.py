"""What the train and evaluate stages record in their MLflow run: params, lineage, datasets,
the network, the evaluation files."""

from __future__ import annotations

import dataclasses
import importlib
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.core import cpu
from pipeline.core.lineage import dvc_hash, file_sha256, git_info, lock_state
from pipeline.core.tags import Tag
from pipeline.core.typed import flatten
from pipeline.models.feed import as_inputs
from pipeline.tracking import runs as tracking
from pipeline.tracking import views

if TYPE_CHECKING:  # the evaluate stage records too, and needs no training code
    from pipeline.training.final import Final


def runtime_tags(device: str, threads: int) -> dict[str, str]:
    """Library versions, device, thread count and CPU kernel dispatch that produced a run."""
    kernels = cpu.kernel_settings()
    return {"pipeline.torch": torch.__version__, "pipeline.device": device,
            "pipeline.threads": str(threads), "pipeline.python": platform.python_version(),
            "pipeline.mlflow": mlflow.__version__, Tag.CPU_KERNELS: kernels.pop("mode"),
            # The lock the environment was installed from (same bytes need the same lock).
            Tag.LOCK_SHA: lock_state(),
            # ATen's choice as made (it is fixed at the first tensor operation).
            Tag.CPU_CAPABILITY: torch.backends.cpu.get_cpu_capability(),
            Tag.CPU_MODEL: kernels.pop("cpu"),
            **{Tag.CPU_ENV + name: value for name, value in kernels.items()}}


def dataset(features: Any, targets: Any, name: str, source: str, digest: str) -> Any:
    """An MLflow dataset of numpy arrays with the DVC hash as its digest."""
    from mlflow.data.sources import LocalArtifactDatasetSource

    return mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest[:36],
                                  source=LocalArtifactDatasetSource(str(source)))


def log_dataset(features: Any, targets: Any, name: str, source: str, digest: str,
                context: str) -> None:
    """Record a dataset input on the active run with the DVC hash as its digest."""
    mlflow.log_input(dataset(features, targets, name, source, digest), context=context)


# What logging the network imports (~2 s): torch.export's tracer and serialiser, MLflow's flavour.
EXPORT_MODULES = ("torch.export", "torch._dynamo", "torch._functorch.aot_autograd",
                  "torch.fx.experimental.symbolic_shapes", "torch._export.serde.serialize",
                  "torch.export.pt2_archive._package", "mlflow.pytorch", "mlflow.models")


def warm_up_network_log() -> None:
    """Import what log_network needs and let MLflow scan the installed packages (~2.5 s), off
    the training thread: a fresh train stage's network log then takes ~0.9 s, not ~1.8 s."""
    # No torch.export here: its tracing saves and restores the global RNG state, which would
    # rewind the draws training makes meanwhile (dropout); nor any kernel (a second OpenMP team).
    for name in EXPORT_MODULES:
        importlib.import_module(name)
    from mlflow.utils import requirements_utils

    # MLflow checks the pinned requirements against a map of every installed package's files
    # (~0.5-1 s), built once per process. Private: if it moves, the log just builds it itself.
    scan = getattr(requirements_utils, "_init_packages_to_modules_map", None)
    if scan is not None:
        scan()


def log_network(model: torch.nn.Module, example: np.ndarray) -> None:
    """Log the network with MLflow's PyTorch flavour as a torch.export program (no pickle);
    it takes what the loop feeds it: float32 inputs, images scaled to [0, 1]."""
    # Training leaves conv weights channels-last; exported so, torch.export warns per tensor.
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    example = as_inputs(torch.from_numpy(np.array(example))).contiguous().numpy()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    # validate_serving_input off: MLflow would load the program back and predict, a second
    # export-sized cost per run; tests/test_train_stages.py loads it and compares outputs.
    mlflow.pytorch.log_model(model, name="network", serialization_format="pt2",
                             signature=infer_signature(example, output), input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                             validate_serving_input=False)


def log_training_inputs(sections: dict[str, Any], tuned: dict[str, Any],
                        train: tuple[Any, str], val: tuple[Any, str],
                        device: str) -> tuple[tracking.Background, str]:
    """Params, lineage tags and dataset inputs of the active train run; params and tags are
    sent from the returned Background (they overlap training): close it before the run ends.
    Also returns the validation data's hash."""
    run_id = mlflow.active_run().info.run_id
    background = tracking.Background()
    background.submit(tracking.log_params, flatten({
        name: dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
        for name, section in sections.items()}), run_id)
    # DVC hashes once per folder (outside DVC they mean hashing every file).
    hashes = {folder: dvc_hash(folder) for _, folder in (train, val)}
    weights = sections["model"].weights
    background.submit(tracking.log_tags, {
        **git_info(), **runtime_tags(device, sections["train"].num_threads),
        Tag.TUNED_KEYS: ",".join(sorted(tuned)) or "none",
        Tag.INPUT_SHAPE: "x".join(map(str, train[0].X.shape[1:])),
        Tag.AUGMENTED: hashes[train[1]], Tag.PROCESSED: hashes[val[1]],
        **({Tag.CHECKPOINT_SHA: file_sha256(weights)} if weights else {})}, run_id)
    background.submit(warm_up_network_log)  # while the network trains
    # One request for both datasets.
    mlflow.log_inputs([dataset(split.X, split.y, name, folder, hashes[folder])
                       for (split, folder), name in ((train, "train"), (val, "val"))],
                      ["training", "validation"], [None, None])
    return background, hashes[val[1]]


def log_training_result(final: Final, weights: Path, example: np.ndarray,
                        processed: str) -> None:
    """Weights hash (the key later stages resume this run by), timings, history, fold scores,
    test metrics of earlier runs of the same weights, and the network; the rest is sent from a
    background thread while this one exports the network."""
    result = final.result
    run, sha = mlflow.active_run().info, file_sha256(weights)
    by_step = {0: {"best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                   "samples_per_second": result.samples_seen / result.train_seconds,
                   **final.summary()}}
    for fold, (score, epoch) in enumerate(zip(*final.folds(), strict=True)):
        by_step.setdefault(fold, {}).update({f"fold_val_{result.monitor}": score,
                                             "fold_best_epoch": epoch})
    background = tracking.Background()
    background.submit(tracking.log_batch, run.run_id, by_step,
                      {Tag.MODEL_SHA: sha, Tag.TRAINED_BY: run.run_id})
    background.submit(MlflowClient().log_dict, run.run_id, {"history": result.history},
                      "train_history.json")
    background.submit(views.adopt_test_metrics, run.run_id, run.experiment_id, sha,
                      processed)
    try:
        log_network(result.model, example)
    finally:
        background.close()


def log_evaluation(metrics: dict[str, Any], test: Any, data_dir: str, figures: list[Path],
                   reports: Path, sections: dict[str, Any]) -> None:
    """Test metrics, the evaluate params, threshold rule, test dataset and report files."""
    tracking.log_stage_params(flatten({k: dataclasses.asdict(v) for k, v in sections.items()}))
    tracking.log_metrics({f"test_{k}": v for k, v in metrics.items()})
    tracking.log_tags({Tag.THRESHOLD_RULE: metrics["threshold_rule"]})
    log_dataset(test.X, test.y, "test", data_dir, dvc_hash(data_dir), "testing")
    tracking.log_artifacts(figures, "plots")
    tracking.log_artifacts([reports / "metrics.json", reports / "test_predictions.csv"])
