"""Vectorised, seeded augmentation: independent random parameters for every sample in a batch."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import AugmentConfig
from pipeline.dataset import DatasetMeta, Split


def augment_images(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random affine, flips, brightness/contrast and noise on (N, C, H, W) images in [0, 1]."""
    n = x.shape[0]
    dtype, device = x.dtype, x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, generator=gen, device=gen.device, dtype=dtype)
        return (low + (high - low) * u).to(device)

    # One affine matrix per sample: rotation, isotropic scale and translation in [-1, 1] coords.
    angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180.0)
    scale = uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    shift_x = uniform(-cfg.translate, cfg.translate) * 2.0
    shift_y = uniform(-cfg.translate, cfg.translate) * 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1),
                         torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.hflip:
        out = torch.where((uniform(0, 1) < 0.5)[:, None, None, None], out.flip(-1), out)
    if cfg.vflip:
        out = torch.where((uniform(0, 1) < 0.5)[:, None, None, None], out.flip(-2), out)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None, None]
    brightness = uniform(-cfg.brightness, cfg.brightness)[:, None, None, None]
    out = (out - mean) * contrast + mean + brightness
    if cfg.noise_std > 0:
        noise = torch.randn(out.shape, generator=gen, device=gen.device, dtype=dtype)
        out = out + cfg.noise_std * noise.to(device)
    return out.clamp_(0.0, 1.0)


def augment_table(x: np.ndarray, n_numeric: int, cfg: AugmentConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Gaussian jitter on the standardised numeric columns; one-hot columns stay exact."""
    out = x.copy()
    if n_numeric and cfg.jitter_std > 0:
        out[:, :n_numeric] += rng.normal(0.0, cfg.jitter_std, (len(x), n_numeric)).astype(
            np.float32)
    return out


def oversample(split: Split, rng: np.random.Generator) -> Split:
    """Resample the minority class (with replacement) up to the majority count."""
    pos = np.flatnonzero(split.y == 1)
    neg = np.flatnonzero(split.y == 0)
    minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    extra = rng.choice(minority, size=len(majority) - len(minority), replace=True)
    idx = np.concatenate([np.arange(len(split.y)), np.sort(extra)])
    return Split(split.X[idx], split.y[idx], [split.ids[i] for i in idx])


def online_transform(cfg: AugmentConfig, seed: int, device: torch.device
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-batch image augmentation on `device`, seeded apart from the offline copies."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    return functools.partial(augment_images, cfg=cfg, gen=gen)


def augment_split(train: Split, meta: DatasetMeta, cfg: AugmentConfig, seed: int,
                  batch_size: int = 1024) -> Split:
    """Return the training split plus `cfg.copies` augmented copies; identity when disabled."""
    if not cfg.enabled:
        return train
    if meta.table is not None:
        rng = np.random.default_rng(seed)
        base = oversample(train, rng) if cfg.oversample else train
        n_numeric = len(meta.table.numeric)
        copies = [augment_table(base.X, n_numeric, cfg, rng) for _ in range(cfg.copies)]
        if cfg.oversample:
            # Oversampled duplicates are jittered too, so they are not exact repeats.
            n = len(train.y)
            extra = augment_table(base.X[n:], n_numeric, cfg, rng)
            base = Split(np.concatenate([base.X[:n], extra]), base.y, base.ids)
        xs, base_ids = [base.X, *copies], list(base.ids)
        ys = [base.y] * (1 + cfg.copies)
    else:
        gen = torch.Generator().manual_seed(seed)
        source = torch.from_numpy(train.X)
        copies = []
        for _ in range(cfg.copies):
            with torch.no_grad():
                batches = [augment_images(source[i:i + batch_size], cfg, gen)
                           for i in range(0, len(source), batch_size)]
            copies.append(torch.cat(batches).numpy())
        xs, base_ids = [train.X, *copies], list(train.ids)
        ys = [train.y] * (1 + cfg.copies)
    ids = base_ids + [f"{i}#aug{k + 1}" for k in range(cfg.copies) for i in base_ids]
    return Split(np.concatenate(xs).astype(np.float32), np.concatenate(ys), ids)
