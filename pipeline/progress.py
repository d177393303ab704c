"""Progress reporting: a tqdm bar on a terminal, plain log lines otherwise (CI, DVC, files)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from pipeline.callbacks import Callback

if TYPE_CHECKING:  # no torch at run time: the data stages show bars too
    from pipeline.config import TrainConfig
    from pipeline.engine import FitResult

log = logging.getLogger("pipeline.progress")


def interactive() -> bool:
    """True when stderr is a terminal a bar can redraw on."""
    return sys.stderr.isatty()


class Progress:
    """A counter with a postfix that renders as a bar or as periodic log lines."""

    def __init__(self, total: int, desc: str, every: int = 5) -> None:
        self.total, self.desc, self.every, self.n = total, desc, every, 0
        self.bar = tqdm(total=total, desc=desc, leave=False) if interactive() else None

    def update(self, **postfix: Any) -> None:
        """Advance by one and show the latest values."""
        self.n += 1
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in postfix.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.n == 1 or self.n % self.every == 0 or self.n == self.total:
            log.info("%s %d/%d %s", self.desc, self.n, self.total, text)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


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
        if result.cv_folds:  # a refit: its own "validation" rows were training rows
            log.info("%s: cv mean val_%s=%.4f over %d folds; refit %d epochs on train+val",
                     self.desc, result.monitor, result.best_score, result.cv_folds,
                     len(result.history))
            return
        log.info("%s: best epoch %d of %d, val_%s=%.4f", self.desc, result.best_epoch,
                 len(result.history), result.monitor, result.best_score)
