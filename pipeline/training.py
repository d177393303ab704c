"""The one way a model is trained from params: the train stage and every tuning trial call it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.augment import online_transform
from pipeline.backbones import check_checkpoint, input_norm, load_checkpoint
from pipeline.config import AugmentConfig, ModelConfig, Params, TrainConfig
from pipeline.dataset import DatasetMeta, Split
from pipeline.engine import Callback, FitResult, fit, seed_everything
from pipeline.errors import ConfigError, DataError
from pipeline.files import read_json, write_json
from pipeline.lineage import file_sha256
from pipeline.models import WEIGHTS_FILE, build_model, save_model
from pipeline.typed import apply_overrides

if TYPE_CHECKING:
    from pipeline.crossval import Final  # it imports this module's fit_model

log = logging.getLogger(__name__)


def apply_tuned(train: TrainConfig, model: ModelConfig, overrides: dict[str, Any]
                ) -> tuple[TrainConfig, ModelConfig]:
    """Sections with dotted `train.x` / `model.y` values (tuned params) applied and validated."""
    per: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in per:
            raise ConfigError(f"{key}: a tuned key must be train.* or model.*")
        per[section][name] = value
    return (apply_overrides(train, per["train"], "train") if per["train"] else train,
            apply_overrides(model, per["model"], "model") if per["model"] else model)


def load_tuned(best_params: str | Path, params: Params, input_shape: Sequence[int]
               ) -> tuple[dict[str, Any], TrainConfig, ModelConfig]:
    """Tuned values from best_params.json (if any) applied over params.yaml, saying which win,
    and the trials' thread count (float reductions depend on it, so the best trial's score is
    what train reproduces); a checkpoint (model.weights) is checked against `input_shape`
    before anything is trained."""
    path = Path(best_params)
    best = read_json(path) if path.is_file() else {}
    tuned = best.get("params", {}) if isinstance(best, dict) else None
    if not isinstance(tuned, dict):
        raise DataError(f"{path}: not a best-params file of this pipeline (expected a mapping "
                        "with a 'params' mapping); rerun the tune stage (dvc repro -f -s tune)")
    train, model = params.train, params.model
    sections = {"train": train, "model": model}
    for key, value in sorted(tuned.items()):
        section, _, name = key.partition(".")
        mine = getattr(sections[section], name) if section in sections else None
        if mine != value:
            # A user who set this key in params.yaml (dvc exp run -S) must learn it was unused.
            log.info("%s: tuned value %r (from %s) replaces params.yaml's %r; to train with "
                     "yours, drop %s from tune.search_space or set tune.enabled: false",
                     key, value, path, mine, key)
    train, model = apply_tuned(train, model, tuned)
    threads = best.get("num_threads", train.num_threads)  # absent: tuning off, or older file
    if threads != train.num_threads:
        log.info("train.num_threads: %d (the thread count the tuning trials ran with, so train "
                 "reproduces the best trial's score; params.yaml says %d)", threads,
                 params.train.num_threads)
        train = apply_overrides(train, {"num_threads": threads}, "train")
    check_checkpoint(model, input_shape)
    return tuned, train, model


def fit_model(model_cfg: ModelConfig, train_cfg: TrainConfig, augment: AugmentConfig,
              train: Split, val: Split, meta: DatasetMeta, *, seed: int, device: torch.device,
              monitor: str = "roc_auc", callbacks: Sequence[Callback] = (),
              restore_best: bool = True) -> FitResult:
    """Seed, build the network for `meta`, add online augmentation if asked, and fit."""
    seed_everything(seed, train_cfg.num_threads, device)
    model = build_model(model_cfg, meta.input_shape, *input_norm(model_cfg, meta.norm))
    if model_cfg.weights is not None:
        load_checkpoint(model, model_cfg)  # after the seeded init: the fresh head is reproducible
    transform = (online_transform(augment, seed, device)
                 if train_cfg.online_augment and meta.kind == "image" else None)
    return fit(model, train, val, train_cfg, seed=seed, device=device, monitor=monitor,
               callbacks=callbacks, batch_transform=transform, restore_best=restore_best)


def trained_with(params: Params, train: TrainConfig, model: ModelConfig,
                 tuned: dict[str, Any], result: FitResult) -> dict[str, Any]:
    """The train.* / model.* values the model was trained with that params.yaml may not say."""
    # Every tuned key, any other value that differs (num_threads), and what `auto` resolved to:
    # the precision every forward pass ran in, the fold count, the refit's patience (none).
    resolved = {"precision": result.precision, "cv_folds": result.cv_folds}
    if result.cv_folds:
        resolved["patience"] = 0
    used = {"train": dataclasses.replace(train, **resolved), "model": model}
    asked = {"train": params.train, "model": params.model}
    return {f"{name}.{f.name}": getattr(section, f.name) for name, section in used.items()
            for f in dataclasses.fields(section) if f"{name}.{f.name}" in tuned
            or getattr(section, f.name) != getattr(asked[name], f.name)}


def history_rows(result: FitResult) -> list[dict[str, float]]:
    """Per-epoch curves without wall-clock fields, so the DVC output is reproducible."""
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in result.history]


def save_training(final: Final, out: str | Path, reports: str | Path,
                  model_cfg: ModelConfig, train_cfg: TrainConfig, params: Params,
                  meta: DatasetMeta, tuned: dict[str, Any]) -> Path:
    """Write the weights, model config, training reports and the threshold's predictions."""
    result, seed = final.result, params.seed
    mean, std = input_norm(model_cfg, meta.norm)
    config = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
              "seed": seed, "input_shape": list(meta.input_shape),
              "norm": {"mean": list(mean), "std": list(std)}, "classes": list(meta.classes),
              "kind": meta.kind, "best_epoch": result.best_epoch, "cv_folds": result.cv_folds,
              "tuned": tuned,
              "precision": result.precision}  # train.precision resolved on the fit's device
    if model_cfg.weights is not None:  # which checkpoint bytes the model started from
        config["weights_sha256"] = file_sha256(model_cfg.weights)
    save_model(result.model, out, config)
    history = history_rows(result)
    write_json(Path(reports) / "train_metrics.json", {
        "best_epoch": result.best_epoch, "epochs_run": len(history),
        f"best_val_{result.monitor}": result.best_score, "stopped_early": result.stopped_early,
        **final.summary(),
        # `dvc exp show` columns trained.train.lr etc. beside the params column train.lr: the
        # tuned values are what the model learned with, not params.yaml's.
        "trained": trained_with(params, train_cfg, model_cfg, tuned, result)})
    write_json(Path(reports) / "train_history.json", history)
    final.write_basis(Path(reports) / "threshold_predictions.csv")
    return Path(out) / WEIGHTS_FILE
