"""The one way a model is trained from params: the train stage and every tuning trial call it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import AugmentConfig, ModelConfig, Params, TrainConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.files import read_json
from pipeline.core.typed import apply_overrides
from pipeline.data.augment import online_transform
from pipeline.data.dataset import DatasetMeta, Split
from pipeline.models.backbones import check_checkpoint, input_norm, load_checkpoint
from pipeline.models.device import seed_everything
from pipeline.models.networks import build_model
from pipeline.training.callbacks import Callback, FitResult
from pipeline.training.engine import fit

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
    # the precision every forward pass ran in, the fold count, a refit's patience (none).
    resolved = {"precision": result.precision, "cv_folds": result.cv_folds}
    if result.cv_folds and not result.fold_models:
        resolved["patience"] = 0
    used = {"train": dataclasses.replace(train, **resolved), "model": model}
    asked = {"train": params.train, "model": params.model}
    return {f"{name}.{f.name}": getattr(section, f.name) for name, section in used.items()
            for f in dataclasses.fields(section) if f"{name}.{f.name}" in tuned
            or getattr(section, f.name) != getattr(asked[name], f.name)}
