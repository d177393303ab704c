"""Positive-class probabilities from a network on stored inputs (what serving and evaluate run)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.models.device import autocast, resolve_precision
from pipeline.models.feed import Feed, as_inputs


@torch.no_grad()
def predict_logits(model: nn.Module, feed: Feed) -> torch.Tensor:
    """Logits in eval mode, in file order, batched to bound memory."""
    model.eval()
    out = [model(as_inputs(xb)).float() for xb, _ in feed.batches(predict_batch_size(feed))]
    return torch.cat(out) if out else torch.empty(0)


def predict_batch_size(feed: Feed) -> int:
    """Samples per inference batch: on an accelerator 2048, fewer for large inputs
    (activations grow with them); on the CPU batches whose activations stay in its caches."""
    row = max(1, feed.row_size)
    if feed.device.type == "cpu":
        # 64 digits, 42 RGB images of 64 px: a CNN's per-sample time at 2048 was 2-3x (digits)
        # and 2.5-4x (64 px RGB) what it is at 32-64 (2-core EPYC, torch 2.14).
        return max(1, min(64, 2 ** 19 // row))
    # ~4M input values per batch: 2048 16x16 digits, 341 RGB images of 64 px (a CNN's first
    # activations are then ~1 GB instead of 6 at 2048).
    return max(1, min(2048, 2 ** 22 // row))


def predict_proba(model: nn.Module, X: np.ndarray, device: torch.device | None = None,
                  precision: str = "auto") -> np.ndarray:
    """Positive-class probabilities (float64) for stored inputs (uint8 images or float32),
    under the autocast the model's train.precision means on the model's device."""
    device = device or next(model.parameters()).device
    feed = Feed(X, None, device)
    try:
        with autocast(resolve_precision(precision, device, fitting=False), device):
            logits = predict_logits(model, feed)
    finally:
        feed.close()
    return torch.sigmoid(logits).cpu().double().numpy()
