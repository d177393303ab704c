"""Generated RGB texture tasks whose classes differ in texture, not colour (deterministic).

target: stripes vs checks (plaid) at random orientation, period, phase and colours.
pretext: dots vs blobs, a different task whose low-level features (edges, periodic and blob
structure) a backbone can transfer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TASKS = {"target": ("stripes", "checks"), "pretext": ("dots", "blobs")}


def _wave(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, theta: float) -> np.ndarray:
    """A sinusoidal grating at angle theta with a random period (6-14 px) and phase."""
    period, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
    return np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)


def pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size) float pattern in [0, 1] of the given texture kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    if kind == "stripes":
        return 0.5 + 0.5 * _wave(rng, xx, yy, theta)
    if kind == "checks":
        return 0.5 + 0.5 * _wave(rng, xx, yy, theta) * _wave(rng, xx, yy, theta + np.pi / 2)
    if kind == "dots":
        out = np.zeros((size, size))
        for _ in range(int(rng.integers(12, 30))):
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 5)
            out[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1.0
        return out
    if kind == "blobs":
        coarse = rng.random((6, 6)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size),
                                                                     Image.BICUBIC))
        return (smooth > np.median(smooth)).astype(np.float64)
    raise ValueError(f"unknown texture {kind!r}")


def texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 image: the pattern between two random colours, plus pixel noise."""
    p = pattern(kind, rng, size)[..., None]
    low, high = rng.random(3), rng.random(3)  # colour carries no class information
    img = low * (1 - p) + high * p + rng.normal(0, 0.12, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_task(root: Path, task: str, per_class: int, size: int = 96, seed: int = 0) -> Path:
    """Write `task` as an ImageFolder of PNGs (one folder per class) under root; return root."""
    rng = np.random.default_rng([seed, list(TASKS).index(task)])
    for kind in TASKS[task]:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(texture(kind, rng, size)).save(root / kind / f"{i:05d}.png")
    return root
