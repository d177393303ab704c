"""Optuna study: storage, naming, objective, pruning, resume and parallel workers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from mlflow.tracking import MlflowClient
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline import tracking
from pipeline.config import Params, SearchParam, apply_overrides
from pipeline.data import Split, load_splits
from pipeline.engine import Callback, build_and_fit, select_device
from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics import LOWER_IS_BETTER
from pipeline.progress import Progress

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "optuna.journal"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


# --- storage, naming, sampler, pruner -------------------------------------------------------


def storage_url() -> str:
    """OPTUNA_STORAGE (a database URL or a journal file path), else the local journal file."""
    return os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


def is_database(url: str) -> bool:
    """True for SQLAlchemy URLs (postgresql://, mysql://, sqlite://), False for journal files."""
    return "://" in url and not url.startswith("journal://")


def make_storage(url: str, n_workers: int = 1) -> optuna.storages.BaseStorage:
    """Journal file by default (safe for parallel local workers); RDB with heartbeats for URLs."""
    if is_database(url):
        if url.startswith("sqlite") and n_workers > 1:
            raise ConfigError(f"tune.n_workers = {n_workers}: SQLite ({url}) is not safe for "
                              "parallel workers; use the default journal file or PostgreSQL")
        # A worker that dies stops beating; its trial is failed and re-queued by others.
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=10, grace_period=30,
            failed_trial_callback=_retry_callback())
    path = url.removeprefix("journal://")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def _retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead worker's trial with the same params (Optuna's own mechanism)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=3)


def study_name(params: Params, data_hashes: dict[str, str]) -> str:
    """Name derived from everything that determines the study, so a rerun resumes it."""
    tuned = set(params.tune.search_space)
    fixed = {f"train.{k}": v for k, v in asdict(params.train).items()
             if f"train.{k}" not in tuned and k != "epochs"} | {
        f"model.{k}": v for k, v in asdict(params.model).items() if f"model.{k}" not in tuned}
    space = {k: asdict(v) for k, v in params.tune.search_space.items()}
    key = {"data": data_hashes, "space": space,
           "fixed": fixed, "epochs": params.train.epochs, "seed": params.seed,
           "metric": params.tune.metric, "pruner": params.tune.pruner,
           "augment": asdict(params.augment) if params.train.online_augment else None}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"{params.mlflow.experiment}-{digest[:12]}"


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Pruner from tune.pruner; warm-up avoids judging trials on their noisy first epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=min(4, epochs - 1))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=epochs,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Sample every key of the search space for one trial."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.choices is not None:
            values[key] = trial.suggest_categorical(key, list(spec.choices))
            continue
        assert spec.low is not None and spec.high is not None
        if _is_int_key(key):
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return values


def _is_int_key(key: str) -> bool:
    from pipeline.config import ModelConfig, TrainConfig, _field_type

    section, _, name = key.partition(".")
    return _field_type(TrainConfig if section == "train" else ModelConfig, name) is int


# --- one worker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs (picklable for spawn)."""

    params: Params
    data_dir: str
    train_dir: str
    storage: str
    study_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    worker: int = 0


class ReportToOptuna(Callback):
    """Report the validation metric each epoch and prune when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.trial.report(logs[f"val_{self.metric}"], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def open_study(job: TuneJob) -> optuna.Study:
    """Create or load the study with a per-worker seeded TPE sampler."""
    tune = job.params.tune
    return optuna.create_study(
        study_name=job.study_name, storage=make_storage(job.storage, tune.n_workers),
        load_if_exists=True,
        direction="minimize" if tune.metric in LOWER_IS_BETTER else "maximize",
        # Different seeds per worker so parallel workers do not propose identical points.
        sampler=optuna.samplers.TPESampler(seed=job.params.seed + job.worker,
                                           n_startup_trials=5),
        pruner=make_pruner(tune.pruner, job.params.train.epochs))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker process on this host is gone, and re-queue them."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != platform.node() or "pid" not in attrs:
            continue
        if tracking.process_alive(int(attrs["pid"])):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker died")
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        _retry_callback()(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    if failed:
        log.warning("failed and re-queued trials %s left RUNNING by a dead worker", failed)
    return failed


def _lock_path(job: TuneJob) -> str:
    if is_database(job.storage):
        return str(Path(tempfile.gettempdir()) / f"optuna-{job.study_name}.lock")
    return job.storage.removeprefix("journal://") + ".ask.lock"


def count(study: optuna.Study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def run_worker(job: TuneJob, progress: Progress | None = None) -> None:
    """Run trials until the study holds tune.n_trials finished (complete or pruned) trials."""
    import mlflow

    mlflow.set_tracking_uri(job.tracking_uri)
    params = job.params
    tune = params.tune
    processed, meta = load_splits(job.data_dir, names=("val",))
    train = load_splits(job.train_dir, names=("train",))[0]["train"]
    study = open_study(job)
    device = select_device()
    lock = FileLock(_lock_path(job))
    client = MlflowClient()
    started = time.monotonic()
    while True:
        if tune.timeout is not None and time.monotonic() - started > tune.timeout:
            log.info("worker %d: tune.timeout reached", job.worker)
            break
        lock.acquire()
        try:
            fail_dead_trials(study)
            counts = count(study)
            if counts.get("FAIL", 0) > 2 * tune.n_trials:
                raise PipelineError(f"study {job.study_name}: {counts['FAIL']} failed trials; "
                                    "see the FAILED child runs in MLflow for the errors")
            if sum(counts.get(s.name, 0) for s in (*DONE, TrialState.RUNNING)) >= tune.n_trials:
                break

            def objective(trial: optuna.Trial) -> float:
                # The trial now exists as RUNNING, so other workers count it: release the lock.
                if lock.is_locked:
                    lock.release()
                return run_trial(job, trial, train, processed["val"], meta, device, client)

            study.optimize(objective, n_trials=1, catch=(PipelineError,),
                           gc_after_trial=False)
        finally:
            if lock.is_locked:
                lock.release()
        if progress is not None:
            progress.update(**progress_fields(study))


def progress_fields(study: optuna.Study) -> dict[str, Any]:
    """Best value so far and trial counts for the progress display."""
    counts = count(study)
    try:
        best: Any = round(study.best_value, 5)
    except ValueError:
        best = "-"
    return {"best": best, "complete": counts.get("COMPLETE", 0),
            "pruned": counts.get("PRUNED", 0), "failed": counts.get("FAIL", 0)}


def run_trial(job: TuneJob, trial: optuna.Trial, train: Split, val: Split, meta: dict,
              device: Any, client: MlflowClient) -> float:
    """Train one sampled configuration inside its own nested MLflow run."""
    params = job.params
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", platform.node())
    values = suggest(trial, params.tune.search_space)
    try:
        train_cfg, model_cfg = apply_overrides(params.train, params.model, values)
        # Parallel workers share the cores instead of oversubscribing them.
        train_cfg = replace(train_cfg, num_threads=max(
            1, train_cfg.num_threads // params.tune.n_workers))
    except (ConfigError, TypeError) as err:
        raise PipelineError(f"trial {trial.number}: invalid sampled params {values}: {err}") \
            from None
    run = client.create_run(job.experiment_id, run_name=f"trial-{trial.number}", tags={
        "mlflow.parentRunId": job.parent_run_id, tracking.TAG_PID: str(os.getpid()),
        tracking.TAG_HOST: platform.node(), "optuna.study_name": job.study_name,
        "optuna.trial_number": str(trial.number), "trial_state": "RUNNING",
        "pipeline.stage": "tune"})
    run_id = run.info.run_id
    tracking.log_params({**values, "worker": job.worker}, run_id=run_id)
    logger = tracking.EpochLogger(run_id, flush_every=10)
    tick = time.perf_counter()
    state, status = "FAIL", "FAILED"
    try:
        result = build_and_fit(model_cfg, train_cfg, train, val, meta, seed=params.seed,
                               device=device, monitor=params.tune.metric,
                               callbacks=[ReportToOptuna(trial, params.tune.metric), logger])
        state, status = "COMPLETE", "FINISHED"
        client.log_metric(run_id, "objective", result.best_score)
        client.log_metric(run_id, "best_epoch", result.best_epoch)
        return result.best_score
    except optuna.TrialPruned:
        logger.flush()
        state, status = "PRUNED", "KILLED"
        raise
    finally:
        client.log_metric(run_id, "duration_seconds", time.perf_counter() - tick)
        client.set_tag(run_id, "trial_state", state)
        client.set_terminated(run_id, status)


# --- the whole study ------------------------------------------------------------------------


def _spawned_worker(job: TuneJob) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{job.worker}: "
                        "%(message)s")
    run_worker(job)


def run_study(job: TuneJob) -> optuna.Study:
    """Run tune.n_workers workers (processes when > 1) on the shared study; return it."""
    tune = job.params.tune
    study = open_study(job)
    progress = Progress(tune.n_trials, "tune", every=1)
    try:
        if tune.n_workers == 1:
            run_worker(job, progress)
        else:
            ctx = multiprocessing.get_context("spawn")
            workers = [ctx.Process(target=_spawned_worker, args=(replace(job, worker=i),))
                       for i in range(tune.n_workers)]
            for worker in workers:
                worker.start()
            seen = 0
            while any(w.is_alive() for w in workers):
                time.sleep(1.0)
                finished = sum(count(study).get(s.name, 0) for s in DONE)
                for _ in range(finished - seen):
                    progress.update(**progress_fields(study))
                seen = finished
            for worker in workers:
                worker.join()
            bad = [w.exitcode for w in workers if w.exitcode != 0]
            if bad:
                raise PipelineError(f"tune: {len(bad)} worker(s) failed (exit codes {bad}); "
                                    "see the log above")
    finally:
        progress.close()
    return study


@contextlib.contextmanager
def parent_run(params: Params, name: str, storage: str) -> Iterator[str]:
    """One MLflow parent run per study, resumed when the study is resumed."""
    experiment = params.mlflow.experiment
    existing = tracking.find_run(experiment, "optuna.study_name_parent", name)
    with tracking.start_run(experiment, run_name=f"tune {name}", run_id=existing, tags={
            "optuna.study_name_parent": name, "optuna.study_name": name,
            "optuna.storage": storage, "pipeline.stage": "tune"}) as run:
        yield run.info.run_id


def log_study(study: optuna.Study, metric: str) -> dict[str, Any]:
    """Log best params/value, counts and Optuna figures to the active parent run."""
    import mlflow

    best = study.best_trial
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    counts = count(study)
    mlflow.log_metrics({f"best_val_{metric}": best.value, "best_trial": best.number,
                        **{f"trials_{k.lower()}": v for k, v in counts.items()}})
    for name, path in save_study_figures(study).items():
        mlflow.log_artifact(str(path), "optuna")
        log.debug("logged %s", name)
    return {"params": best.params, "value": best.value, "trial": best.number}


def save_study_figures(study: optuna.Study) -> dict[str, Path]:
    """Optimisation history, importances, parallel coordinates and slice plots as PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # worker-safe, headless rendering
    from optuna.visualization import matplotlib as ovm

    folder = Path(tempfile.mkdtemp(prefix="optuna-figures-"))
    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    out = {}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                log.info("skipping %s figure: %s", name, err)  # e.g. too few complete trials
                continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        path = folder / f"{name}.png"
        first.figure.savefig(path, dpi=90, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(first.figure)
        out[name] = path
    return out
