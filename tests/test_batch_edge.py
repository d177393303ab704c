"""The training edge: no model type ever trains on a batch of one sample (BatchNorm fails)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.core.config import BATCHNORM, AugmentConfig, ModelConfig, TrainConfig
from pipeline.core.errors import DataError
from pipeline.data.dataset import DatasetMeta, ImageSpec, Split
from pipeline.models.feed import Feed, batch_bounds
from pipeline.models.networks import BUILDERS
from pipeline.training.crossval import cross_fit, make_pool
from pipeline.training.engine import fit
from pipeline.training.fit import fit_model

CPU = torch.device("cpu")


def images(n: int, size: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.float32)
    return Split(x, y, [f"s{seed}-{i}" for i in range(n)])


def meta(size: int) -> DatasetMeta:
    return DatasetMeta("imagefolder", "x", ("a", "b"),
                       image=ImageSpec(size, 1, (0.5,), (0.25,)))


def test_bounds_cover_every_row_in_order_and_never_end_on_one() -> None:
    for n in range(1, 40):
        for size in range(1, 12):
            bounds = batch_bounds(n, size, training=True)
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))  # none lost
            assert all(b - a >= 2 for a, b in bounds) or n == 1 or size == 1
            assert all(b - a <= size + 1 for a, b in bounds)
            if n % size != 1 or n == 1 or size == 1:
                assert bounds == batch_bounds(n, size)  # otherwise: the batches as before


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_model_type_trains_an_epoch_with_one_sample_left_over(arch: str) -> None:
    # 9 = 2 * 4 + 1: the last batch would hold one sample (the 321 = 5 * 64 + 1).
    size = 32 if arch in BATCHNORM and arch != "cnn" else 8
    train, val = images(9, size), images(4, size, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=4, patience=0, num_threads=1)
    first = fit_model(ModelConfig(type=arch), cfg, AugmentConfig(), train, val, meta(size),
                      seed=3, device=CPU)
    assert first.samples_seen == 9 and np.isfinite(first.history[0]["train_loss"])
    again = fit_model(ModelConfig(type=arch), cfg, AugmentConfig(), train, val, meta(size),
                      seed=3, device=CPU)
    for key, value in first.model.state_dict().items():  # same seed, same bytes
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_streamed_and_preloaded_feeds_fold_the_same_batches(tmp_path) -> None:
    split = images(9, 8)
    np.save(tmp_path / "x.npy", split.X)
    stored = np.load(tmp_path / "x.npy", mmap_mode="r")
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    got = []
    for budget in (0, 2 ** 30):  # streamed from the file, then preloaded
        feed = Feed(stored, split.y, CPU, budget=budget)
        assert feed.streamed == (budget == 0)
        got.append([(xb.clone(), yb.clone()) for xb, yb in feed.batches(4, order,
                                                                        training=True)])
        feed.close()
    assert [len(xb) for xb, _ in got[0]] == [4, 5]
    for (xa, ya), (xb, yb) in zip(*got, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cross_validation_folds_and_augmented_sets_fold_too() -> None:
    # 2 folds over 10 samples: each fold trains on 5 = 4 + 1 rows.
    train, val = images(6, 8), images(4, 8, seed=1)
    pool = make_pool(train, val, 2, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=4, patience=0, num_threads=1)
    cv = cross_fit(ModelConfig(type="cnn"), cfg, AugmentConfig(), pool, meta(8), seed=0,
                   device=CPU, monitor="roc_auc")
    assert len(cv.scores) == 2
    # Offline copies (augment stage: 7 samples x 3 = 21 = 5 * 4 + 1 rows), augmented again
    # online per batch.
    grown = images(21, 8)
    result = fit_model(ModelConfig(type="cnn"), replace(cfg, online_augment=True),
                       AugmentConfig(), grown, val, meta(8), seed=0, device=CPU)
    assert result.samples_seen == 21


def test_what_cannot_be_folded_is_one_clear_error() -> None:
    model = BUILDERS["cnn"](ModelConfig(), (1, 8, 8))
    with pytest.raises(DataError, match="training data holds 1 sample: the model's BatchNorm"):
        fit(model, images(1, 8), images(2, 8), TrainConfig(epochs=1, batch_size=4), seed=0,
            device=CPU)
    with pytest.raises(DataError, match=r"train.batch_size = 1: the model's BatchNorm"):
        fit(model, images(4, 8), images(2, 8), TrainConfig(epochs=1, batch_size=1), seed=0,
            device=CPU)
