"""Plain PyTorch fit/predict loop with per-epoch callbacks; imports no MLflow, Optuna or DVC."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pipeline.core.config import TrainConfig
from pipeline.core.errors import DataError, PipelineError
from pipeline.core.heap import hold_heap
from pipeline.data.dataset import Split
from pipeline.evaluation.metrics import improvement, monitor_scores
from pipeline.models.device import autocast, resolve_precision
from pipeline.models.feed import Feed, as_inputs
from pipeline.models.inference import predict_logits
from pipeline.training.callbacks import Callback, FitResult


class TrainingDiverged(PipelineError):
    """Validation outputs became NaN/inf: the learning rate is usually too high."""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW from the train section, over the trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]  # a frozen backbone's are not
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    # Fused kernels do the whole update in one pass (~10 % of a small CNN's step on CPU).
    fused = params[0].device.type in ("cpu", "cuda")
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def pos_weight(y: np.ndarray, mode: str) -> torch.Tensor | None:
    """negatives/positives of the training split for class_weight: balanced."""
    if mode != "balanced":
        return None
    positives = float(y.sum())
    return torch.tensor((len(y) - positives) / max(positives, 1.0))


def fit(model: nn.Module, train: Split, val: Split, cfg: TrainConfig, *, seed: int,
        device: torch.device, monitor: str = "roc_auc",
        callbacks: Sequence[Callback] = (),
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        restore_best: bool = True) -> FitResult:
    """Train with early stopping on the validation `monitor`, restoring the best weights
    (restore_best=False keeps the last epoch's: a refit whose validation rows it trains on)."""
    hold_heap()  # a step's activations reuse freed memory instead of faulting in fresh pages
    model = model.to(device)
    if train.X.ndim == 4:
        model = model.to(memory_format=torch.channels_last)  # as_inputs makes batches NHWC
    train_feed, val_feed = Feed.of(train, device), Feed.of(val, device)
    try:
        loop = prepare(model, cfg, train_feed, seed=seed, device=device, monitor=monitor,
                       batch_transform=batch_transform)
        return _fit(loop, train_feed, val_feed, callbacks, restore_best)
    finally:
        train_feed.close()
        val_feed.close()


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def require_batch_norm_batches(model: nn.Module, n: int, batch_size: int) -> None:
    """A model with BatchNorm layers that train needs >= 2 samples in every batch; the feed
    folds a last single sample into the batch before, so only these cases remain."""
    model.train()  # a frozen backbone keeps its BatchNorm in eval mode here
    if any(isinstance(m, BATCH_NORMS) and m.training for m in model.modules()) and (
            n < 2 or batch_size < 2):
        what = f"train.batch_size = {batch_size}" if batch_size < 2 else (
            f"the training data holds {n} sample")
        raise DataError(f"{what}: the model's BatchNorm layers need at least 2 samples per "
                        "training batch (use more data, a batch size >= 2, or logreg/mlp)")


@dataclass(frozen=True)
class Loop:
    """What one fit trains with, resolved before its first epoch."""

    model: nn.Module
    cfg: TrainConfig
    device: torch.device
    monitor: str  # the validation metric that chooses the best epoch
    precision: str  # resolve_precision's answer: what every forward pass runs in
    loss_fn: nn.BCEWithLogitsLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    order: torch.Generator  # batch order, independent of the init draws
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None
    average: AveragedModel | None = None  # train.ema: the weights validated and kept

    @property
    def scored(self) -> nn.Module:
        """The network validation scores and early stopping keeps: the average if there is one."""
        return self.model if self.average is None else self.average.module


@dataclass
class Best:
    """The best epoch so far; early stopping counts the epochs since it."""

    monitor: str
    keep_weights: bool  # False: the last epoch's weights are returned (a refit)
    by_loss: bool = False  # train.early_stopping: loss (the score is still reported)
    score: float | None = None
    loss: float = float("inf")
    epoch: int = 0
    weights: dict[str, torch.Tensor] | None = None
    stale: int = 0

    def update(self, model: nn.Module, logs: dict[str, float]) -> None:
        """Keep this epoch if its monitored score is better (or equal with a lower loss), or
        its loss lower when the loss decides."""
        score, loss = logs[f"val_{self.monitor}"], logs["val_loss"]
        gain = None if self.score is None else improvement(self.monitor, score, self.score)
        # A tie is broken by the validation loss: on small or easy data a ranking metric
        # saturates (ROC AUC 1.0 after an epoch or two) while the probabilities still improve.
        if self.by_loss:
            better = loss < self.loss
        else:
            better = gain is None or gain > 0 or (gain == 0 and loss < self.loss)
        if better:
            self.score, self.loss, self.epoch, self.stale = score, loss, int(logs["epoch"]), 0
            if self.keep_weights:
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1


def labels(feed: Feed) -> np.ndarray:
    """A training or validation feed's 0/1 labels on the host (the metrics run on the CPU)."""
    assert feed.y is not None  # only prediction feeds have none
    return feed.y.cpu().numpy()


def prepare(model: nn.Module, cfg: TrainConfig, train: Feed, *, seed: int,
            device: torch.device, monitor: str,
            batch_transform: Callable[[torch.Tensor], torch.Tensor] | None) -> Loop:
    """Loss, optimizer, schedule, batch order and precision of a fit of `model` on `train`."""
    weight = pos_weight(labels(train), cfg.class_weight)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=None if weight is None else weight.to(device))
    optimizer = make_optimizer(model, cfg)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                 if cfg.scheduler == "cosine" else None)
    require_batch_norm_batches(model, train.n, cfg.batch_size)
    order = torch.Generator().manual_seed(seed)
    precision = resolve_precision(cfg.precision, device)  # bf16 off CUDA fails here
    # Buffers are averaged too, so a BatchNorm's running statistics match the averaged weights.
    average = (AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True)
               if cfg.ema > 0 else None)
    return Loop(model, cfg, device, monitor, precision, loss_fn, optimizer, scheduler, order,
                batch_transform, average)


def ema_update(decay: float) -> Callable[..., None]:
    """AveragedModel's in-place update for an EMA whose decay warms up as (1+t)/(10+t): the
    first steps' weights, far from trained, fade out fast instead of dominating the average."""
    counted = itertools.count(1)  # AveragedModel's own count lives on the device: a sync a step

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        t = next(counted)  # its first update copies the weights and does not come here
        weight = 1.0 - min(decay, (1.0 + t) / (10.0 + t))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # BatchNorm's batch counts: the current ones
                a.copy_(c)
    return update


def train_epoch(loop: Loop, feed: Feed) -> tuple[torch.Tensor, float]:
    """One pass over `feed` in a seeded order, then the schedule's step: the summed loss (a
    device tensor) and the learning rate the epoch ran at."""
    model, cfg = loop.model, loop.cfg
    model.train()
    perm = torch.randperm(feed.n, generator=loop.order)
    total = torch.zeros((), device=loop.device)
    for xb, yb in feed.batches(cfg.batch_size, perm, training=True):
        xb = as_inputs(xb)  # uint8 → [0, 1] on the device, per batch
        if loop.batch_transform is not None:
            xb = loop.batch_transform(xb)
        with autocast(loop.precision, loop.device):  # auto: fp32 on CPU, for exact reruns
            logits = model(xb).float()
        # An ensemble's members each learn on their own loss (the gradient each would get
        # alone); the epoch's loss is their mean.
        members = logits.shape[-1] if logits.dim() == 2 else 1
        loss = loop.loss_fn(logits, yb if members == 1 else yb[:, None].expand_as(logits))
        loop.optimizer.zero_grad(set_to_none=True)
        (loss * members if members > 1 else loss).backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loop.optimizer.step()
        if loop.average is not None:
            loop.average.update_parameters(model)
        total += loss.detach() * len(xb)  # accumulate on device: no sync per step
    lr = loop.optimizer.param_groups[0]["lr"]
    if loop.scheduler is not None:
        loop.scheduler.step()
    return total, lr


def validate(loop: Loop, feed: Feed, y: np.ndarray, epoch: int) -> tuple[float, dict[str, float]]:
    """The validation loss and the `val_` scores of one pass over `feed` (labels `y`)."""
    with autocast(loop.precision, loop.device):
        logits = predict_logits(loop.scored, feed)
    if not bool(torch.isfinite(logits).all()):
        raise TrainingDiverged(f"training diverged at epoch {epoch} (non-finite validation "
                               f"outputs); lower train.lr = {loop.cfg.lr}")
    assert feed.y is not None
    scores = monitor_scores(y, torch.sigmoid(logits).cpu().double().numpy(), loop.monitor)
    return float(loop.loss_fn(logits, feed.y)), {f"val_{k}": v for k, v in scores.items()}


def _fit(loop: Loop, train: Feed, val: Feed, callbacks: Sequence[Callback],
         restore_best: bool) -> FitResult:
    """The loop of `fit`: per epoch a training pass, a validation pass and the callbacks."""
    y_val = labels(val)
    best = Best(loop.monitor, keep_weights=restore_best,
                by_loss=loop.cfg.early_stopping == "loss")
    history: list[dict[str, float]] = []
    stopped_early = False
    for cb in callbacks:
        cb.on_fit_start(loop.cfg, loop.device)
    start = time.perf_counter()
    for epoch in range(1, loop.cfg.epochs + 1):
        tick = time.perf_counter()
        total, lr = train_epoch(loop, train)
        # Validation once per epoch; one host sync for the whole epoch.
        val_loss, scores = validate(loop, val, y_val, epoch)
        history.append({"epoch": epoch, "train_loss": float(total) / train.n,
                        "val_loss": val_loss, "lr": lr,
                        "epoch_seconds": time.perf_counter() - tick, **scores})
        best.update(loop.scored, history[-1])
        for cb in callbacks:
            cb.on_epoch_end(epoch, history[-1])
        stopped_early = bool(loop.cfg.patience) and best.stale >= loop.cfg.patience
        if stopped_early or any(cb.stop for cb in callbacks):
            break
    if best.weights is not None:
        loop.model.load_state_dict(best.weights)
    elif loop.average is not None:  # a refit keeps its last epoch: the average's
        loop.model.load_state_dict(loop.average.module.state_dict())
    loop.model.eval()
    result = FitResult(model=loop.model, history=history, best_epoch=best.epoch,
                       best_score=float(best.score if best.score is not None else np.nan),
                       monitor=loop.monitor, stopped_early=stopped_early,
                       samples_seen=train.n * len(history),
                       train_seconds=time.perf_counter() - start, device=str(loop.device),
                       precision=loop.precision)
    for cb in callbacks:
        cb.on_fit_end(result)
    return result
