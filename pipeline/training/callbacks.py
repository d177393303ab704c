"""The hooks the training loop calls, and the result it hands them (kept free of torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core.progress import Progress

if TYPE_CHECKING:
    from torch import nn

    from pipeline.core.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a fit produced: the best-epoch model and its history."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    monitor: str
    stopped_early: bool
    samples_seen: int
    train_seconds: float
    device: str
    precision: str = "fp32"  # resolve_precision's answer: what every forward pass ran in
    cv_folds: int = 0  # > 0: scored by k folds (best_score is their mean): a refit, or
    fold_models: bool = False  # the fold models averaged (history: the folds' mean curves)

    @property
    def best_loss(self) -> float:
        """The validation loss at the best epoch (what breaks a tie of best scores)."""
        return float(self.history[self.best_epoch - 1]["val_loss"]) if self.history else \
            float("inf")


class Callback:
    """Hooks the loop calls; raise from a hook to abort (e.g. pruning), set stop to end early."""

    stop: bool = False

    def on_fit_start(self, cfg: TrainConfig, device: Any) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch with train/val losses and validation scores."""

    def on_fit_end(self, result: FitResult) -> None:
        """Called once after the best weights are restored."""


class EpochProgress(Callback):
    """Epoch bar with train loss and the monitored validation metric."""

    def __init__(self, desc: str = "train", monitor: str = "roc_auc") -> None:
        self.desc, self.monitor = desc, monitor
        self.progress: Progress | None = None

    def on_fit_start(self, cfg: TrainConfig, device: Any) -> None:
        self.progress = Progress(cfg.epochs, self.desc)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.progress is not None
        self.progress.update(loss=logs["train_loss"], val_loss=logs["val_loss"],
                             **{f"val_{self.monitor}": logs[f"val_{self.monitor}"]})

    def on_fit_end(self, result: FitResult) -> None:
        if self.progress is not None:
            self.progress.close()
        if result.fold_models:
            log.info("%s: cv mean val_%s=%.4f over %d folds; kept the %d fold models (logits "
                     "averaged)", self.desc, result.monitor, result.best_score,
                     result.cv_folds, result.cv_folds)
            return
        if result.cv_folds:  # a refit: its own "validation" rows were training rows
            log.info("%s: cv mean val_%s=%.4f over %d folds; refit %d epochs on train+val",
                     self.desc, result.monitor, result.best_score, result.cv_folds,
                     len(result.history))
            return
        log.info("%s: best epoch %d of %d, val_%s=%.4f", self.desc, result.best_epoch,
                 len(result.history), result.monitor, result.best_score)
