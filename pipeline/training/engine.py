"""Plain PyTorch fit/predict loop with per-epoch callbacks; imports no MLflow, Optuna or DVC."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.errors import DataError, PipelineError
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
    model = model.to(device)
    if train.X.ndim == 4:
        model = model.to(memory_format=torch.channels_last)  # as_inputs makes batches NHWC
    train_feed, val_feed = Feed.of(train, device), Feed.of(val, device)
    try:
        return _fit(model, train_feed, val_feed, train, val, cfg, seed=seed, device=device,
                    monitor=monitor, callbacks=callbacks, batch_transform=batch_transform,
                    restore_best=restore_best)
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


def _fit(model: nn.Module, train_feed: Feed, val_feed: Feed, train: Split, val: Split,
         cfg: TrainConfig, *, seed: int, device: torch.device, monitor: str,
         callbacks: Sequence[Callback],
         batch_transform: Callable[[torch.Tensor], torch.Tensor] | None,
         restore_best: bool = True) -> FitResult:
    """The loop of `fit`, over feeds that hold or stream the splits."""
    y_val = val_feed.y
    assert y_val is not None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=None if (w := pos_weight(train.y, cfg.class_weight))
                                   is None else w.to(device))
    optimizer = make_optimizer(model, cfg)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                 if cfg.scheduler == "cosine" else None)
    require_batch_norm_batches(model, train_feed.n, cfg.batch_size)
    order_gen = torch.Generator().manual_seed(seed)  # batch order, independent of init draws
    precision = resolve_precision(cfg.precision, device)  # bf16 off CUDA fails here
    best_score, best_loss, best_epoch, best_state = None, float("inf"), 0, None
    history: list[dict[str, float]] = []
    stale, stopped_early, samples = 0, False, 0
    for cb in callbacks:
        cb.on_fit_start(cfg, device)
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        tick = time.perf_counter()
        model.train()
        perm = torch.randperm(train_feed.n, generator=order_gen)
        total = torch.zeros((), device=device)
        for xb, yb in train_feed.batches(cfg.batch_size, perm, training=True):
            xb = as_inputs(xb)  # uint8 → [0, 1] on the device, per batch
            if batch_transform is not None:
                xb = batch_transform(xb)
            with autocast(precision, device):  # auto: fp32 on CPU, for exact reruns
                loss = loss_fn(model(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total += loss.detach() * len(xb)  # accumulate on device: no sync per step
        samples += len(perm)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        # Validation once per epoch; one host sync for the whole epoch.
        with autocast(precision, device):
            val_logits = predict_logits(model, val_feed)
        if not bool(torch.isfinite(val_logits).all()):
            raise TrainingDiverged(f"training diverged at epoch {epoch} (non-finite validation "
                                   f"outputs); lower train.lr = {cfg.lr}")
        val_loss = float(loss_fn(val_logits, y_val))
        scores = monitor_scores(val.y, torch.sigmoid(val_logits).cpu().double().numpy(), monitor)
        logs = {"epoch": epoch, "train_loss": float(total) / len(perm), "val_loss": val_loss,
                "lr": lr, "epoch_seconds": time.perf_counter() - tick,
                **{f"val_{k}": v for k, v in scores.items()}}
        history.append(logs)
        score = logs[f"val_{monitor}"]
        gain = None if best_score is None else improvement(monitor, score, best_score)
        # A tie is broken by the validation loss: on small or easy data a ranking metric
        # saturates (ROC AUC 1.0 after an epoch or two) while the probabilities still improve.
        if gain is None or gain > 0 or (gain == 0 and val_loss < best_loss):
            best_score, best_loss, best_epoch, stale = score, val_loss, epoch, 0
            if restore_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if cfg.patience and stale >= cfg.patience:
            stopped_early = True
            break
        if any(cb.stop for cb in callbacks):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = FitResult(model=model, history=history, best_epoch=best_epoch,
                       best_score=float(best_score if best_score is not None else np.nan),
                       monitor=monitor,
                       stopped_early=stopped_early, samples_seen=samples,
                       train_seconds=time.perf_counter() - start, device=str(device),
                       precision=precision)
    for cb in callbacks:
        cb.on_fit_end(result)
    return result
