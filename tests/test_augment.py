"""Augmentation keeps labels and shapes, changes pixels, draws per-sample parameters."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.core.config import AugmentConfig
from pipeline.data.augment import CHUNK, augment_images, augment_split, write_augmented
from pipeline.data.dataset import (
    ColumnStats,
    DatasetMeta,
    ImageSpec,
    Split,
    TableSpec,
    load_splits,
    save_splits,
)
from pipeline.stages import augment as augment_stage
from pipeline.stages import preprocess as preprocess_stage

IMAGES = DatasetMeta("imagefolder", "x", ("a", "b"), image=ImageSpec(12, 1, (0.5,), (0.25,)))


def image_split(n: int = 10) -> Split:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 12, 12), dtype=np.uint8)
    return Split(x, (np.arange(n) % 2).astype(np.float32), [f"s{i}" for i in range(n)])


def augmented(root: Path, train: Split, cfg: AugmentConfig, seed: int) -> Split:
    """write_augmented on a training split saved the way preprocess saves it; what it wrote."""
    source, out = Path(tempfile.mkdtemp(dir=root)), Path(tempfile.mkdtemp(dir=root)) / "aug"
    save_splits(source, {"train": train}, IMAGES)
    write_augmented(load_splits(source, ("train",))[0]["train"], IMAGES, cfg, seed, out)
    return load_splits(out, ("train",))[0]["train"]


def test_images_keep_labels_shapes_and_change_pixels(tmp_path: Path) -> None:
    train = image_split()
    out = augmented(tmp_path, train, AugmentConfig(copies=3), seed=1)
    assert out.X.shape == (40, 1, 12, 12) and out.X.dtype == np.uint8
    assert np.array_equal(out.y, np.tile(train.y, 4))
    assert np.array_equal(out.X[:10], train.X)  # originals kept
    assert np.abs(out.X[10:20].astype(int) - train.X).mean() > 5
    assert out.ids[10] == "s0#aug1" and len(set(out.ids)) == 40


def test_streamed_chunks_equal_one_batch_of_augment_images(tmp_path: Path) -> None:
    # The file is written chunk by chunk; its copies are augment_images' output, rounded.
    train = image_split(2500)  # three chunks of augment.CHUNK
    out = augmented(tmp_path, train, AugmentConfig(copies=1), seed=3)
    gen = torch.Generator().manual_seed(3)
    x = torch.from_numpy(train.X).float() / 255.0
    expected = torch.cat([augment_images(x[i:i + CHUNK], AugmentConfig(copies=1), gen)
                          for i in range(0, len(x), CHUNK)])
    assert np.array_equal(out.X[2500:], expected.mul(255).round().to(torch.uint8).numpy())


def test_parameters_are_drawn_per_sample() -> None:
    # The same image repeated must come out differently for each copy in the batch.
    x = torch.from_numpy(np.repeat(image_split(1).X, 8, axis=0)).float() / 255.0
    out = augment_images(x, AugmentConfig(noise_std=0.0), torch.Generator().manual_seed(0))
    flat = out.reshape(8, -1)
    assert len({tuple(np.round(row.numpy(), 4)) for row in flat}) == 8


def test_seeded_and_disabled(tmp_path: Path) -> None:
    train = image_split()
    a = augmented(tmp_path, train, AugmentConfig(), seed=5)
    b = augmented(tmp_path, train, AugmentConfig(), seed=5)
    c = augmented(tmp_path, train, AugmentConfig(), seed=6)
    assert np.array_equal(a.X, b.X) and not np.array_equal(a.X, c.X)
    off = augmented(tmp_path, train, AugmentConfig(enabled=False), 5)
    assert np.array_equal(off.X, train.X) and off.ids == train.ids


def test_flips_only_when_enabled() -> None:
    cfg = AugmentConfig(rotation=0, translate=0, scale=0, brightness=0, contrast=0, noise_std=0)
    x = torch.from_numpy(image_split(64).X).float() / 255.0
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


def test_streamed_images_have_the_layout_save_splits_writes(tmp_path: Path) -> None:
    # Images are augmented chunk by chunk into their .npy file, tables through save_splits:
    # one layout either way.
    source, out = tmp_path / "processed", tmp_path / "augmented"
    save_splits(source, {"train": image_split(12)}, IMAGES)
    write_augmented(load_splits(source, ("train",))[0]["train"], IMAGES, AugmentConfig(), 0, out)
    splits, meta = load_splits(out, ("train",))
    save_splits(tmp_path / "resaved", splits, meta)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "resaved").iterdir())
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "resaved" / name).read_bytes(), name


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
