"""Image sets larger than memory: uint8 files, parallel decoding, streamed batches, same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.dataset import load_splits
from pipeline.data.sources import preprocess as run_preprocess
from pipeline.models.feed import Feed, preload, preload_budget
from pipeline.stages import preprocess, train
from tests.helpers import make_imagefolder, run_stages, write_params


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Params for an ImageFolder of 600 small images: three pool tasks of images.CHUNK."""
    root = tmp_path_factory.mktemp("many")
    return write_params(root / "params.yaml", {"data": {
        "source": "imagefolder", "path": str(make_imagefolder(root / "images", per_class=300)),
        "positive_class": "dog", "image_size": 8, "channels": 3,
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})


def test_parallel_decode_writes_the_bytes_of_one_worker(many: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    outs = {}
    for workers in ("1", "2", "3"):
        monkeypatch.setenv("PIPELINE_DATA_WORKERS", workers)
        outs[workers] = tmp_path / f"w{workers}"
        preprocess.main(["--params", str(many), "--out", str(outs[workers])])
    assert digests(outs["1"]) == digests(outs["2"]) == digests(outs["3"])
    splits, _ = load_splits(outs["2"])
    assert splits["train"].X.dtype == np.uint8 and sum(len(s.y) for s in splits.values()) == 600
    # Stored bytes are 4x smaller than float32 and scaled only per batch.
    assert (outs["2"] / "X_train.npy").stat().st_size < 300 * 3 * 8 * 8 + 200


def test_corrupt_image_in_a_parallel_decode_names_the_file_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_imagefolder(tmp_path / "images", per_class=300)
    bad = images / "dog" / "dog_150.png"  # in the second pool task
    bad.write_bytes(bad.read_bytes()[:40])
    params = write_params(tmp_path / "params.yaml", {"data": {
        "source": "imagefolder", "path": str(images), "positive_class": "dog", "image_size": 8}})
    monkeypatch.setenv("PIPELINE_DATA_WORKERS", "2")
    with pytest.raises(SystemExit) as info:
        preprocess.main(["--params", str(params), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left
    with pytest.raises(DataError, match=r"dog_150\.png: not a readable image.*skip_corrupt"):
        run_preprocess(load_params(params).data, 0, tmp_path / "again")


def test_streamed_batches_equal_preloaded_batches(many: Path, tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    preprocess.main(["--params", str(many), "--out", str(processed)])
    split = load_splits(processed, names=("train",))[0]["train"]
    preloaded = Feed.of(split, torch.device("cpu"), budget=split.X.nbytes)
    streamed = Feed.of(split, torch.device("cpu"), budget=split.X.nbytes - 1)
    assert not preloaded.streamed and streamed.streamed
    order = torch.randperm(len(split.y), generator=torch.Generator().manual_seed(0))
    for ordering in (order, None):
        pairs = zip(preloaded.batches(64, ordering), streamed.batches(64, ordering), strict=True)
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    streamed.close()


def test_streamed_training_gives_the_weights_of_preloaded_training(
        many: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path / "params.yaml", {
        **yaml.safe_load(many.read_text()),
        "model": {"type": "cnn", "conv_channels": [4, 8]}, "train": {"epochs": 2}})
    paths = run_stages(params, tmp_path, upto="augment")
    weights = {}
    for budget in ("", "0"):  # "" = the default budget (preloads); 0 MiB forces streaming
        monkeypatch.setenv("PIPELINE_PRELOAD_MB", budget)
        out = tmp_path / f"models-{budget or 'default'}"
        train.main(["--params", str(params), "--data-dir", paths["processed"],
                    "--train-dir", paths["augmented"], "--out", str(out),
                    "--best-params", str(tmp_path / "none.json"),
                    "--reports", str(tmp_path / f"reports-{budget}")])
        weights[budget] = (out / "model.safetensors").read_bytes()
    assert weights[""] == weights["0"]


def test_a_bad_budget_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_PRELOAD_MB", "lots")
    with pytest.raises(ConfigError, match="PIPELINE_PRELOAD_MB = 'lots': must be a number"):
        preload_budget(torch.device("cpu"))


def test_gpu_preload_goes_in_pieces_with_the_files_shape(tmp_path: Path) -> None:
    # The GPU branch (no GPU here): the "meta" device takes the same piecewise copies.
    rows = np.random.default_rng(0).integers(0, 256, (3000, 3, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "x.npy", rows)
    assert torch.equal(preload(str(tmp_path / "x.npy"), torch.device("cpu")),
                       torch.from_numpy(rows))
    on_meta = preload(str(tmp_path / "x.npy"), torch.device("meta"))
    assert on_meta.shape == rows.shape and on_meta.dtype == torch.uint8
