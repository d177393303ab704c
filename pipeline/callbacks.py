"""The hooks the training loop calls (kept free of torch, so progress bars need none)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import TrainConfig
    from pipeline.engine import FitResult


class Callback:
    """Hooks the loop calls; raise from a hook to abort (e.g. pruning), set stop to end early."""

    stop: bool = False

    def on_fit_start(self, cfg: TrainConfig, device: Any) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch with train/val losses and validation scores."""

    def on_fit_end(self, result: FitResult) -> None:
        """Called once after the best weights are restored."""
