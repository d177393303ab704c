"""What the train and evaluate stages record in their MLflow run: params, lineage, datasets,
the weights, the evaluation files."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import torch
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from pipeline.core import cpu, layout
from pipeline.core.lineage import dvc_hash, file_sha256, git_info, lock_state
from pipeline.core.tags import Tag
from pipeline.core.typed import flatten
from pipeline.data.dataset import META_FILE
from pipeline.models.networks import CONFIG_FILE
from pipeline.tracking import metric_log, views
from pipeline.tracking.metric_log import Background, EpochLogger, FitLogs
from pipeline.tracking.runs import RunRef

if TYPE_CHECKING:  # the evaluate stage records too, and needs no training code
    from pipeline.training.final import Final


def runtime_tags(device: str, threads: int) -> dict[str, str]:
    """Library versions, device, thread count and CPU kernel dispatch that produced a run."""
    kernels = cpu.kernel_settings()
    return {Tag.TORCH: torch.__version__, Tag.DEVICE: device, Tag.THREADS: str(threads),
            Tag.PYTHON: platform.python_version(), Tag.MLFLOW: mlflow.__version__,
            Tag.CPU_KERNELS: kernels.pop("mode"),
            # The lock the environment was installed from (same bytes need the same lock).
            Tag.LOCK_SHA: lock_state(),
            # ATen's choice as made (it is fixed at the first tensor operation).
            Tag.CPU_CAPABILITY: torch.backends.cpu.get_cpu_capability(),
            Tag.CPU_MODEL: kernels.pop("cpu"),
            **{Tag.CPU_ENV + name: value for name, value in kernels.items()}}


def log_datasets(run_id: str, inputs: list[tuple[Any, str, str, str, str]]) -> None:
    """Record dataset inputs (split, name, source folder, DVC hash, context) on a run in one
    request: numpy datasets with the DVC hash as their digest."""
    from mlflow.data.sources import LocalArtifactDatasetSource

    found = [mlflow.data.from_numpy(split.X, targets=split.y, name=name, digest=digest[:36],
                                    source=LocalArtifactDatasetSource(str(source)))
             for split, name, source, digest, _ in inputs]
    MlflowClient().log_inputs(run_id, [
        DatasetInput(DatasetEntity(**data.to_dict()), [InputTag(Tag.DATASET_CONTEXT, context)])
        for data, (*_, context) in zip(found, inputs, strict=True)])


def log_lineage_tags(run_id: str, tags: dict[str, str], device: str, threads: int,
                     checkpoint: str | None) -> None:
    """`tags` plus git, runtime and checkpoint tags (checking the environment against the
    lock reads every installed package, ~0.3 s: call it off the training thread)."""
    metric_log.log_tags({**git_info(), **runtime_tags(device, threads), **tags,
                         **({Tag.CHECKPOINT_SHA: file_sha256(checkpoint)} if checkpoint else {})},
                        run_id)


# The run's copy of the trained model: the files models/ holds, as plain artifacts. The one
# MLflow logged model is the registered pyfunc (pipeline/registry/register.py): it is what serves.
MODEL_FOLDER = "model_files"


def log_training_inputs(run_id: str, sections: dict[str, Any], tuned: dict[str, Any],
                        train: tuple[Any, str], val: tuple[Any, str],
                        device: str) -> tuple[Background, str]:
    """Params, lineage tags and dataset inputs of train run `run_id`, sent from the returned
    Background (they overlap training): close it before the run ends. Also returns the
    validation data's hash."""
    background = Background()
    background.submit(metric_log.log_params, flatten({
        name: dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
        for name, section in sections.items()}), run_id)
    # DVC hashes once per folder (outside DVC they mean hashing every file).
    hashes = {folder: dvc_hash(folder) for _, folder in (train, val)}
    background.submit(log_lineage_tags, run_id, {
        Tag.TUNED_KEYS: ",".join(sorted(tuned)) or "none",
        Tag.INPUT_SHAPE: "x".join(map(str, train[0].X.shape[1:])),
        Tag.AUGMENTED: hashes[train[1]], Tag.PROCESSED: hashes[val[1]]},
        device, sections["train"].num_threads, sections["model"].weights)
    background.submit(log_datasets, run_id, [
        (split, name, folder, hashes[folder], context) for (split, folder), name, context
        in ((train, "train", "training"), (val, "val", "validation"))])
    # The data's contract (classes, shape, encoding) as the run learned it. First upload of
    # the run: MLflow looks up the run's artifact store once and keeps it, so the uploads
    # after training skip that request.
    background.submit(metric_log.log_artifacts, [Path(val[1]) / META_FILE], "data", run_id)
    return background, hashes[val[1]]


def log_training_result(run: RunRef, final: Final, weights: Path, processed: str,
                        pending: Sequence[Background | EpochLogger | FitLogs] = ()) -> None:
    """Weights hash (the key later stages resume this run by), timings, fold scores, the
    weights and model config, history, and test metrics of earlier runs of the same weights;
    returns once these and the `pending` requests are stored (their waits overlap)."""
    result = final.result
    sha = file_sha256(weights)
    by_step = {0: {"best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                   "samples_per_second": result.samples_seen / result.train_seconds,
                   **final.summary()}}
    if result.fold_models:  # no fit of its own: the folds' mean curves are its epochs
        for row in result.history:
            by_step.setdefault(int(row["epoch"]), {}).update(
                {k: v for k, v in row.items() if k != "epoch"})
    for fold, (score, epoch) in enumerate(zip(*final.folds(), strict=True)):
        by_step.setdefault(fold, {}).update({f"fold_val_{result.monitor}": score,
                                             "fold_best_epoch": epoch})
    # Independent requests at once: against a server, each is a round trip the stage would
    # otherwise wait for in turn after training.
    sending = Background(workers=5)
    sending.submit(metric_log.log_batch, run.run_id, by_step,
                   {Tag.MODEL_SHA: sha, Tag.TRAINED_BY: run.run_id})
    for path in (weights, weights.with_name(CONFIG_FILE)):
        sending.submit(metric_log.log_artifacts, [path], MODEL_FOLDER, run.run_id)
    sending.submit(metric_log.log_dict, {"history": result.history}, layout.TRAIN_HISTORY,
                   run.run_id)
    # Earlier runs of these weights: this run is skipped by id, so its own tags can be in flight.
    sending.submit(views.adopt_test_metrics, run.run_id, run.experiment_id, sha, processed)
    for queued in (*pending, sending):  # a store failure still fails the stage
        queued.close() if isinstance(queued, Background) else queued.wait()


def log_evaluation(metrics: dict[str, Any], test: Any, data_dir: str, figures: list[Path],
                   reports: Path, sections: dict[str, Any]) -> None:
    """Test metrics, the evaluate params, threshold rule, test dataset and report files."""
    metric_log.log_stage_params(flatten({k: dataclasses.asdict(v) for k, v in sections.items()}))
    metric_log.log_metrics({f"test_{k}": v for k, v in metrics.items()})
    metric_log.log_tags({Tag.THRESHOLD_RULE: metrics["threshold_rule"]})
    log_datasets(mlflow.active_run().info.run_id,
                 [(test, "test", data_dir, dvc_hash(data_dir), "testing")])
    metric_log.log_artifacts(figures, "plots")
    metric_log.log_artifacts([reports / layout.METRICS, reports / layout.TEST_PREDICTIONS])
