"""Vectorised, seeded augmentation: independent random parameters for every sample in a batch."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import AugmentConfig
from pipeline.core.files import atomic_dir
from pipeline.core.progress import Progress
from pipeline.data import arrays
from pipeline.data.arrays import Rows
from pipeline.data.dataset import DatasetMeta, Split, features_file, save_splits, write_split_files

CHUNK = 1024  # images augmented at a time: bounds memory; the random draws follow it


COPY_SUFFIX = re.compile(r"#aug\d+$")


def copy_id(sample_id: str, k: int) -> str:
    """The id of the k-th augmented copy of a sample."""
    return f"{sample_id}#aug{k}"


def source_id(row_id: str) -> str:
    """The sample an augmented copy was made from (an original is its own source)."""
    return COPY_SUFFIX.sub("", row_id)


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


def augment_split(train: Split, meta: DatasetMeta, cfg: AugmentConfig, seed: int) -> Split:
    """A table's training split plus `cfg.copies` jittered copies; identity when disabled."""
    assert meta.table is not None, "images are augmented by write_augmented, chunk by chunk"
    if not cfg.enabled:
        return train
    rng = np.random.default_rng(seed)
    base = oversample(train, rng) if cfg.oversample else train
    n_numeric = len(meta.table.numeric)
    copies = [augment_table(base.X, n_numeric, cfg, rng) for _ in range(cfg.copies)]
    if cfg.oversample:
        # Oversampled duplicates are jittered too, so they are not exact repeats.
        n = len(train.y)
        extra = augment_table(base.X[n:], n_numeric, cfg, rng)
        base = Split(np.concatenate([base.X[:n], extra]), base.y, base.ids)
    ids = list(base.ids) + [copy_id(i, k + 1) for k in range(cfg.copies) for i in base.ids]
    return Split(np.concatenate([base.X, *copies]).astype(np.float32),
                 np.concatenate([base.y] * (1 + cfg.copies)), ids)


def write_augmented(train: Split, meta: DatasetMeta, cfg: AugmentConfig, seed: int,
                    out: str | Path) -> None:
    """Write the training split plus its augmented copies to `out` (tables in memory, images
    chunk by chunk into the .npy file, so memory stays flat whatever the size)."""
    meta = dataclasses.replace(meta, augment=dataclasses.asdict(cfg))
    if meta.table is not None:
        save_splits(out, {"train": augment_split(train, meta, cfg, seed)}, meta)
        return
    copies = cfg.copies if cfg.enabled else 0
    n = len(train.y)
    ids = list(train.ids) + [copy_id(i, k + 1) for k in range(copies) for i in train.ids]
    y = np.concatenate([np.asarray(train.y, np.float32)] * (1 + copies))
    gen = torch.Generator().manual_seed(seed)
    progress = Progress(max(1, (1 + copies) * -(-n // CHUNK)), "augment")
    tick = time.perf_counter()
    with atomic_dir(out) as tmp, Rows(train.X.filename) as source:
        arrays.create(features_file(tmp, "train"), (len(y), *source.row_shape), np.uint8)
        with Rows(features_file(tmp, "train"), writable=True) as rows:
            for copy in range(1 + copies):
                for start, chunk in source.chunks(CHUNK):
                    if copy:
                        # The generator is drawn per chunk of CHUNK: results depend on it.
                        with torch.no_grad():
                            x = augment_images(torch.from_numpy(chunk).float().div_(255.0),
                                               cfg, gen)
                        chunk = x.mul_(255.0).round_().to(torch.uint8).numpy()
                    rows.write(copy * n + start, chunk)
                    done = copy * n + start + len(chunk)
                    progress.update(images=done, per_s=done / (time.perf_counter() - tick))
        write_split_files(tmp, {"train": y}, {"train": ids}, meta)
    progress.close()
