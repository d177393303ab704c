"""Augmentation keeps labels and shapes, changes pixels, draws per-sample parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.augment import augment_images, augment_split
from pipeline.config import AugmentConfig
from pipeline.dataset import ColumnStats, DatasetMeta, ImageSpec, Split, TableSpec, load_splits
from pipeline.stages import augment as augment_stage
from pipeline.stages import preprocess as preprocess_stage

IMAGES = DatasetMeta("imagefolder", "x", ("a", "b"), image=ImageSpec(12, 1, (0.5,), (0.25,)))


def image_split(n: int = 10) -> Split:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 12, 12), dtype=np.float32)
    return Split(x, (np.arange(n) % 2).astype(np.float32), [f"s{i}" for i in range(n)])


def test_images_keep_labels_shapes_and_change_pixels() -> None:
    train = image_split()
    out = augment_split(train, IMAGES, AugmentConfig(copies=3), seed=1)
    assert out.X.shape == (40, 1, 12, 12) and out.X.dtype == np.float32
    assert np.array_equal(out.y, np.tile(train.y, 4))
    assert np.array_equal(out.X[:10], train.X)  # originals kept
    assert not np.allclose(out.X[10:20], train.X, atol=1e-3)
    assert out.ids[10] == "s0#aug1" and len(set(out.ids)) == 40
    assert out.X.min() >= 0.0 and out.X.max() <= 1.0


def test_parameters_are_drawn_per_sample() -> None:
    # The same image repeated must come out differently for each copy in the batch.
    x = torch.from_numpy(np.repeat(image_split(1).X, 8, axis=0))
    out = augment_images(x, AugmentConfig(noise_std=0.0), torch.Generator().manual_seed(0))
    flat = out.reshape(8, -1)
    assert len({tuple(np.round(row.numpy(), 4)) for row in flat}) == 8


def test_seeded_and_disabled() -> None:
    train = image_split()
    a = augment_split(train, IMAGES, AugmentConfig(), seed=5)
    b = augment_split(train, IMAGES, AugmentConfig(), seed=5)
    c = augment_split(train, IMAGES, AugmentConfig(), seed=6)
    assert np.array_equal(a.X, b.X) and not np.array_equal(a.X, c.X)
    assert augment_split(train, IMAGES, AugmentConfig(enabled=False), 5) is train


def test_flips_only_when_enabled() -> None:
    cfg = AugmentConfig(rotation=0, translate=0, scale=0, brightness=0, contrast=0, noise_std=0)
    x = torch.from_numpy(image_split(64).X)
    same = augment_images(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)
    flipped = augment_images(x, replace(cfg, hflip=True), torch.Generator().manual_seed(0))
    is_flip = [torch.allclose(f, o.flip(-1), atol=1e-5) for f, o in zip(flipped, x, strict=True)]
    assert 10 < sum(is_flip) < 54


def test_table_jitter_numeric_only_and_oversample() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(12, 2)), np.eye(3)[rng.integers(0, 3, 12)]], 1)
    y = np.array([1.0] * 3 + [0.0] * 9, dtype=np.float32)
    train = Split(x.astype(np.float32), y, [str(i) for i in range(12)])
    stats = ColumnStats(0.0, 0.0, 1.0)
    meta = DatasetMeta("csv", "x", ("a", "b"), table=TableSpec(
        "y", ("a", "b", "c"), {}, {"a": stats, "b": stats}, {"c": ("p", "q", "r")}))
    out = augment_split(train, meta, AugmentConfig(copies=1, oversample=True), seed=0)
    assert (out.y == 1).sum() == (out.y == 0).sum() == 18
    assert set(np.unique(out.X[:, 2:])) <= {0.0, 1.0}  # one-hot untouched
    assert not np.allclose(out.X[18:, :2], out.X[:18, :2])


def test_stages_on_imagefolder_and_csv(tmp_path: Path, image_params: Path,
                                       csv_params: Path) -> None:
    for params in (image_params, csv_params):
        processed, augmented = tmp_path / "p", tmp_path / "a"
        preprocess_stage.main(["--params", str(params), "--out", str(processed)])
        augment_stage.main(["--params", str(params), "--data-dir", str(processed),
                            "--out", str(augmented)])
        before, _meta = load_splits(processed)
        after, ameta = load_splits(augmented, names=("train",))
        assert len(after["train"].y) == 2 * len(before["train"].y)  # copies: 1 in TINY
        assert after["train"].X.shape[1:] == before["train"].X.shape[1:]
        assert ameta.augment is not None and ameta.augment["copies"] == 1
        assert not (augmented / "X_val.npy").exists()  # val/test are never augmented
