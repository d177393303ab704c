"""The train stage's model and its files: one fit with early stopping, or cross-validation and
the fold models or a refit; weights, model config, training reports and the predictions the
threshold is chosen on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core import layout
from pipeline.core.config import AugmentConfig, ModelConfig, Params, TrainConfig
from pipeline.core.files import write_json
from pipeline.core.lineage import file_sha256
from pipeline.data.dataset import DatasetMeta, Split
from pipeline.evaluation.evaluate import write_threshold_basis
from pipeline.models.backbones import input_norm
from pipeline.models.inference import predict_proba
from pipeline.models.networks import WEIGHTS_FILE, save_model
from pipeline.training.callbacks import Callback, FitResult
from pipeline.training.crossval import (
    CrossFit,
    cross_fit,
    fold_ensemble,
    folds_for,
    make_pool,
    refit,
    with_embedding,
)
from pipeline.training.fit import fit_model, trained_with


@dataclass
class Final:
    """The model to save and the predictions its decision threshold is chosen on: the
    validation split's (fold -1), or out-of-fold ones over train + val after CV."""

    result: FitResult
    ids: list[str]
    y: np.ndarray
    p: np.ndarray
    fold: np.ndarray
    model_cfg: ModelConfig  # with `auto` resolved as the model was built
    cv: CrossFit | None = None

    def folds(self) -> tuple[list[float], list[int]]:
        """Per-fold best validation scores and epochs (none without folds)."""
        return (self.cv.scores, self.cv.best_epochs) if self.cv is not None else ([], [])

    def summary(self) -> dict[str, float | int]:
        """What train_metrics.json adds: fold count; with folds, their mean score and what was
        kept (fold_models: their count; or refit_epochs)."""
        if self.cv is None:
            return {"cv_folds": 0}
        kept = ({"fold_models": len(self.cv.scores)} if self.result.fold_models
                else {"refit_epochs": self.cv.epochs})
        return {"cv_folds": len(self.cv.scores),
                f"best_val_{self.result.monitor}": self.cv.score, **kept}


def fit_final(model_cfg: ModelConfig, train_cfg: TrainConfig, augment: AugmentConfig,
              train: Split, val: Split, meta: DatasetMeta, *, seed: int, device: torch.device,
              monitor: str, callbacks: Callable[[str], Sequence[Callback]] = lambda fit: ()
              ) -> Final:
    """The train stage's model: fit on train with early stopping on val's `monitor` (the
    metric the trials were scored on), or (train.cv_folds) cross-validate over train + val
    and keep the fold models or refit on all of it for the folds' median epochs (cv_model).
    `callbacks(fit)` gives each fit's callbacks: fit is "" for the model's own fit (or the
    fold models' summary), "fold<i>/" for fold i."""
    model_cfg = with_embedding(model_cfg, train, val)
    k = folds_for(train_cfg.cv_folds, train, val)
    if not k:
        result = fit_model(model_cfg, train_cfg, augment, train, val, meta, seed=seed,
                           device=device, monitor=monitor, callbacks=callbacks(""))
        return Final(result, list(val.ids), val.y,
                     predict_proba(result.model, val.X, precision=train_cfg.precision),
                     np.full(len(val.y), -1), model_cfg)
    pool = make_pool(train, val, k, seed)
    cv = cross_fit(model_cfg, train_cfg, augment, pool, meta, seed=seed, device=device,
                   monitor=monitor, callbacks=lambda fold: callbacks(f"fold{fold + 1}/"))
    if train_cfg.cv_model == "folds":
        result = fold_ensemble(cv)
        for callback in callbacks(""):  # no epochs of its own: the summary only
            callback.on_fit_end(result)
    else:
        result = refit(model_cfg, train_cfg, augment, pool, meta, cv, seed=seed,
                       device=device, monitor=monitor, callbacks=callbacks(""))
    keep = pool.originals
    return Final(result, [pool.data.ids[i] for i in keep], pool.data.y[keep], cv.oof,
                 pool.folds, model_cfg, cv)


def history_rows(result: FitResult) -> list[dict[str, float]]:
    """Per-epoch curves without wall-clock fields, so the DVC output is reproducible."""
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in result.history]


def save_training(final: Final, out: str | Path, reports: str | Path,
                  train_cfg: TrainConfig, params: Params, meta: DatasetMeta,
                  tuned: dict[str, Any]) -> Path:
    """Write the weights, model config, training reports and the threshold's predictions."""
    # The config as built (`auto` resolved): the saved config and `trained` say which it was.
    result, seed, model_cfg = final.result, params.seed, final.model_cfg
    if result.fold_models:  # rebuilt from the config: as many members as the folds hold
        model_cfg = dataclasses.replace(model_cfg, ensemble=model_cfg.ensemble * result.cv_folds)
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
    # Fold models: the longest fold's epochs (the mean history stops at the shortest's).
    epochs_run = (max(len(r.history) for r in final.cv.results)
                  if result.fold_models and final.cv is not None else len(history))
    write_json(Path(reports) / layout.TRAIN_METRICS, {
        "best_epoch": result.best_epoch, "epochs_run": epochs_run,
        f"best_val_{result.monitor}": result.best_score, "stopped_early": result.stopped_early,
        **final.summary(),
        # `dvc exp show` columns trained.train.lr etc. beside the params column train.lr: the
        # tuned values are what the model learned with, not params.yaml's.
        "trained": trained_with(params, train_cfg, model_cfg, tuned, result)})
    write_json(Path(reports) / layout.TRAIN_HISTORY, history)
    write_threshold_basis(Path(reports) / layout.THRESHOLD_PREDICTIONS, final.ids, final.y,
                          final.p, final.fold)
    return Path(out) / WEIGHTS_FILE
