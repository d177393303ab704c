"""Sources, splits, train-only statistics, byte-identical outputs and every bad input."""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import predict
from pipeline.core import fingerprints
from pipeline.core.config import SOURCE_KINDS, DataConfig, SplitConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.dataset import META_FILE, DatasetMeta, load_splits, save_splits
from pipeline.data.images import auto_size, decode_image
from pipeline.data.sources import SOURCES, preprocess
from pipeline.data.tables import transform_table
from pipeline.stages import preprocess as preprocess_stage
from tests.helpers import make_csv, make_imagefolder

HALF = SplitConfig(train=0.5, val=0.25, test=0.25)


def image_cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(source="imagefolder", path=str(path), positive_class="dog", image_size=8,
                      split=HALF, **kw)  # type: ignore[arg-type]


def csv_cfg(path: Path, **kw: object) -> DataConfig:
    base = {"source": "csv", "path": str(path), "target": "label", "positive_class": "spam",
            "split": HALF}
    return DataConfig(**{**base, **kw})  # type: ignore[arg-type]


def prep(cfg: DataConfig, seed: int) -> tuple[dict, DatasetMeta]:
    """Run preprocess into a fresh folder beside the data; the splits it wrote and the meta."""
    out = Path(tempfile.mkdtemp(dir=Path(cfg.path).parent)) / "processed"
    meta = preprocess(cfg, seed, out)
    return load_splits(out)[0], meta


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_mixed_modes_and_sizes(imagefolder: Path, channels: int) -> None:
    splits, meta = prep(image_cfg(imagefolder, channels=channels), seed=0)
    assert meta.classes == ("cat", "dog") and meta.positive_class == "dog"
    total = sum(len(s.y) for s in splits.values())
    assert total == 24
    for s in splits.values():
        assert s.X.shape[1:] == (channels, 8, 8) and s.X.dtype == np.uint8
    # Every format in the fixture made it through.
    suffixes = {Path(i).suffix for s in splits.values() for i in s.ids}
    assert suffixes == {".png", ".jpg", ".bmp", ".gif", ".tiff", ".jpeg"}
    assert meta.counts["train"] == {"cat": 6, "dog": 6}


def test_no_sample_in_two_splits_and_stats_from_train_only(imagefolder: Path) -> None:
    splits, meta = prep(image_cfg(imagefolder), seed=3)
    ids = [set(s.ids) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    train = splits["train"].X / 255.0
    assert meta.image.mean[0] == pytest.approx(float(train.mean()), rel=1e-9)
    assert meta.image.std[0] == pytest.approx(float(train.std()), rel=1e-9)
    everything = np.concatenate([s.X for s in splits.values()]) / 255.0
    assert meta.image.mean[0] != pytest.approx(float(everything.mean()), rel=1e-5)


def test_seed_changes_split(imagefolder: Path) -> None:
    a, _ = prep(image_cfg(imagefolder), seed=0)
    b, _ = prep(image_cfg(imagefolder), seed=1)
    assert a["test"].ids != b["test"].ids


def test_same_seed_byte_identical_outputs(tmp_path: Path, image_params: Path,
                                          csv_params: Path) -> None:
    for params in (image_params, csv_params):
        outs = [tmp_path / f"{params.stem}{i}" for i in range(2)]
        for out in outs:
            preprocess_stage.main(["--params", str(params), "--out", str(out)])
        assert digest(outs[0]) == digest(outs[1])
        for folder in outs:
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()


@pytest.mark.parametrize(("sides", "expected"), [
    ([(25, 25)] * 5, 25),  # small images keep their native size
    ([(8, 8)] * 5, 16),  # tiny ones are upsampled to the floor
    ([(300, 200)] * 5, 64),  # photos are capped
    ([(20, 40), (30, 30), (40, 50), (16, 16), (90, 90)], 30),  # median shorter side
])
def test_auto_image_size_is_the_median_shorter_side_within_bounds(
        tmp_path: Path, sides: list[tuple[int, int]], expected: int) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i, side in enumerate(sides):
            Image.new("L", side, color=40 + 40 * i).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")  # left to the decoder
    splits, meta = prep(replace(image_cfg(tmp_path), image_size="auto", skip_corrupt=True,
                                split=SplitConfig(0.4, 0.3, 0.3)), seed=0)
    assert meta.image is not None and meta.image.size == expected
    assert {s.X.shape[2:] for s in splits.values()} == {(expected, expected)}
    assert [s["file"] for s in meta.skipped] == ["dog/broken.png"]


def test_auto_image_size_reads_only_files_the_decoder_takes(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.new("L", (20, 20)).save(files[-1])
    for i in range(5):  # PIL opens these (PNG bytes), but decode_file refuses the suffix
        files.append(tmp_path / f"{i}.heic")
        Image.new("L", (200, 200)).save(files[-1], format="PNG")
    assert auto_size(files) == 20


def test_corrupt_image_fails_naming_file(imagefolder: Path) -> None:
    bad = imagefolder / "dog" / "broken.png"
    good = (imagefolder / "dog" / "dog_000.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"broken\.png.*not a readable image"):
        prep(image_cfg(imagefolder), seed=0)


def test_decompression_bomb_is_a_bad_image(imagefolder: Path, monkeypatch) -> None:
    # A real bomb is a 14000x14000 PNG of 190 KB; a lower PIL limit triggers the same path.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (100, 100)).save(imagefolder / "dog" / "bomb.png")
    # (The fixture's largest images, 32x32, stay under PIL's error limit of 2 x 1000 pixels.)
    with pytest.raises(DataError, match=r"bomb\.png: not a readable image \(refused as a "
                                        r"decompression bomb"):
        prep(image_cfg(imagefolder), seed=0)
    _, meta = prep(image_cfg(imagefolder, skip_corrupt=True), seed=0)
    assert [s["file"] for s in meta.skipped] == ["dog/bomb.png"]


def test_unknown_bytes_message_shows_no_python_internals() -> None:
    with pytest.raises(DataError) as info:
        decode_image(b"definitely not an image", 8, 1)
    assert str(info.value) == "<bytes>: not a readable image (unknown or unsupported format)"


def test_skip_corrupt_records_skipped_file(imagefolder: Path) -> None:
    (imagefolder / "cat" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    splits, meta = prep(image_cfg(imagefolder, skip_corrupt=True), seed=0)
    assert [s["file"] for s in meta.skipped] == ["cat/garbage.jpg"]
    assert sum(len(s.y) for s in splits.values()) == 24


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda root: (root / "bird").mkdir() or Image.new("L", (8, 8)).save(root / "bird/a.png"),
     "expected exactly 2 class folders, found 3"),
    (lambda root: [p.unlink() for p in (root / "dog").iterdir()], "dog: class folder is empty"),
    (lambda root: (root / "dog" / "notes.txt").write_text("hi"), r"notes\.txt: not an image"),
])
def test_bad_imagefolders(imagefolder: Path, mutate, needle: str) -> None:
    mutate(imagefolder)
    with pytest.raises(DataError, match=needle):
        prep(image_cfg(imagefolder), seed=0)


def test_one_class_folder(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match=r"found 1 \(only\)"):
        prep(image_cfg(tmp_path), seed=0)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path = '.*nowhere': directory not found"):
        prep(image_cfg(tmp_path / "nowhere"), seed=0)
    with pytest.raises(DataError, match="CSV file not found"):
        prep(csv_cfg(tmp_path / "nowhere.csv"), seed=0)


def test_positive_class_not_among_labels(imagefolder: Path) -> None:
    with pytest.raises(DataError, match=r"positive_class = 'horse' is not among .*'cat', 'dog'"):
        prep(replace(image_cfg(imagefolder), positive_class="horse"), seed=0)


def test_split_leaving_class_without_val_or_test(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "imgs", per_class=2)
    with pytest.raises(DataError, match=r"data\.split"):
        prep(image_cfg(root), seed=0)


# --- tables ---------------------------------------------------------------------------------


def test_csv_categorical_nan_and_string_labels(table_csv: Path) -> None:
    splits, meta = prep(csv_cfg(table_csv), seed=0)
    table = meta.table
    assert meta.classes == ("ham", "spam")
    assert set(table.numeric) == {"x1", "x2", "flag"}
    assert table.categorical == {"colour": ("blue", "green", "red")}
    # Columns with missing training cells get an indicator; a missing category is a level.
    assert table.missing == ("x1", "colour")
    assert table.feature_names() == ["x1", "x2", "flag", "x1=<missing>", "colour=blue",
                                     "colour=green", "colour=red", "colour=<missing>"]
    for s in splits.values():
        assert s.X.shape[1] == 8 and not np.isnan(s.X).any()
    # Statistics come from the training rows only.
    frame = pd.read_csv(table_csv)
    train_rows = frame.loc[[int(i) for i in splits["train"].ids]]
    assert table.numeric["x1"].median == pytest.approx(train_rows["x1"].median())
    assert table.numeric["x1"].median != pytest.approx(frame["x1"].median())
    # Train features are mapped onto a standard normal through the training quantiles.
    assert splits["train"].X[:, 1].mean() == pytest.approx(0.0, abs=0.05)
    assert splits["train"].X[:, 1].std() == pytest.approx(1.0, abs=0.15)


def test_unseen_category_encodes_as_zeros_and_missing_cells_as_their_indicator(
        table_csv: Path) -> None:
    _, meta = prep(csv_cfg(table_csv), seed=0)
    rows = pd.DataFrame({"x1": [np.nan, 0.5], "x2": [0.0, np.nan], "colour": ["purple", None],
                         "flag": [True, False]})
    x = transform_table(rows, meta.table)
    assert x.shape == (2, 8) and not np.isnan(x).any()
    assert x[0, 3:].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # x1 missing; purple: no column
    # x2 had no missing training cell: imputed, no indicator; colour missing: its own level.
    assert x[1, 3:].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert x[1, 1] == pytest.approx(0.0, abs=0.05)  # the median is the middle quantile


@pytest.mark.parametrize(("labels", "positive", "expected"), [
    ([0, 1], None, ["0", "1"]), ([True, False], None, ["False", "True"]),
    (["no", "yes"], "yes", ["no", "yes"]), ([1, 0], "0", ["1", "0"]),
])
def test_label_kinds(tmp_path: Path, labels: list, positive: str | None,
                     expected: list[str]) -> None:
    path = make_csv(tmp_path / "t.csv")
    frame = pd.read_csv(path)
    frame["label"] = [labels[i % 2] for i in range(len(frame))]
    frame.to_csv(path, index=False)
    _, meta = prep(csv_cfg(path, positive_class=positive), seed=0)
    assert list(meta.classes) == expected


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda f: f.drop(columns="label"), r"target column data.target = 'label' not found"),
    (lambda f: f.assign(label="spam"), "exactly 2 distinct labels, found 1"),
    (lambda f: f.assign(label=[("a", "b", "c")[i % 3] for i in range(len(f))]),
     "exactly 2 distinct labels, found 3"),
    (lambda f: f.assign(x2=f["x2"].astype(object).where(f.index != 4, "twelve")),
     r"column 'x2' is numeric but row 4 holds text 'twelve'"),
    (lambda f: f.assign(label=f["label"].where(f.index != 2, None)),
     r"1 missing values \(rows \[2\]\)$"),
])
def test_bad_csvs(table_csv: Path, edit, needle: str) -> None:
    edit(pd.read_csv(table_csv)).to_csv(table_csv, index=False)
    with pytest.raises(DataError, match=needle):
        prep(csv_cfg(table_csv), seed=0)


@pytest.mark.parametrize(("edit", "needle"), [
    # pandas would rename the second `label` to `label.1` and train on the label itself.
    (lambda text: text.replace("label\n", "label,label\n", 1).replace(
        ",ham\n", ",ham,ham\n").replace(",spam\n", ",spam,spam\n"),
     r"column 'label' appears more than once in the header"),
    (lambda text: text.replace("x1,x2", "x1,x1", 1), "column 'x1' appears more than once"),
])
def test_duplicate_header_names_the_column(table_csv: Path, edit, needle: str) -> None:
    table_csv.write_text(edit(table_csv.read_text()))
    with pytest.raises(DataError, match=needle):
        prep(csv_cfg(table_csv), seed=0)


@pytest.mark.parametrize(("value", "needle"), [
    ("inf", r"column 'x2' row 4 holds inf \(not a finite number"),
    ("-inf", r"column 'x2' row 4 holds -inf"),
    ("1e999", r"column 'x2' row 4 holds inf"),
])
def test_non_finite_values_are_rejected_at_preprocess(tmp_path: Path, table_csv: Path,
                                                      csv_params: Path, value: str, needle: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    frame = pd.read_csv(table_csv)
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[4, "x2"] = value
    frame.to_csv(table_csv, index=False)
    out = tmp_path / "processed"
    with pytest.raises(SystemExit) as info:
        preprocess_stage.main(["--params", str(csv_params), "--out", str(out)])
    assert info.value.code == 2 and re.search(needle, capsys.readouterr().err)
    assert not out.exists()


def test_overflowing_and_empty_columns_are_rejected(table_csv: Path) -> None:
    frame = pd.read_csv(table_csv)
    frame.assign(x2=frame["x2"] * 1e300).to_csv(table_csv, index=False)
    with pytest.raises(DataError, match=r"column 'x2' values are too large to standardise"):
        prep(csv_cfg(table_csv), seed=0)
    frame.assign(x2=np.nan).to_csv(table_csv, index=False)
    with pytest.raises(DataError, match=r"column 'x2' has no values \(all missing\)"):
        prep(csv_cfg(table_csv), seed=0)


def test_csv_positive_class_not_among_labels(table_csv: Path) -> None:
    with pytest.raises(DataError, match=r"positive_class = 'eggs' is not among"):
        prep(csv_cfg(table_csv, positive_class="eggs"), seed=0)


@pytest.mark.parametrize("content", ["", "a,b,label\n"])
def test_empty_csv(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.csv: CSV (is empty|has a header but no rows)"):
        prep(csv_cfg(path), seed=0)


def test_transform_rejects_missing_and_extra_columns(table_csv: Path) -> None:
    _, meta = prep(csv_cfg(table_csv), seed=0)
    rows = pd.DataFrame({"x1": [1.0], "colour": ["red"], "flag": [True], "zzz": [1]})
    with pytest.raises(DataError, match=r"missing: \['x2'\]; unexpected: \['zzz'\]"):
        transform_table(rows, meta.table)


# --- built-in sources -----------------------------------------------------------------------


def test_builtin_breast_cancer_written_once_as_csv(tmp_path: Path) -> None:
    cfg = DataConfig(source="breast_cancer", path=str(tmp_path / "bc.csv"),
                     positive_class="malignant")
    splits, meta = prep(cfg, seed=0)
    assert meta.kind == "table" and meta.classes == ("benign", "malignant")
    assert sum(len(s.y) for s in splits.values()) == 569
    assert pd.read_csv(tmp_path / "bc.csv").shape == (569, 31)


def test_every_source_has_the_kind_config_resolves_tune_metric_by() -> None:
    assert {name: source.kind for name, source in SOURCES.items()} == SOURCE_KINDS


def test_unknown_source_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.source = 'mnist': must be one of \["):
        prep(replace(csv_cfg(tmp_path / "x.csv"), source="mnist"), seed=0)


def test_builtin_digits_is_an_imagefolder(tmp_path: Path) -> None:
    # The package's defaults: the working tree's params.yaml is the user's (`dvc exp run -S`).
    cfg = DataConfig(path=str(tmp_path / "digits"))
    splits, meta = prep(cfg, seed=0)
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["even", "odd"]
    assert sum(len(s.y) for s in splits.values()) == 1797
    assert meta.input_shape == (1, 16, 16)
    loaded_twice = prep(cfg, seed=0)[0]["test"].X
    assert np.array_equal(loaded_twice, splits["test"].X)


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_streamed_image_folder_has_the_layout_save_splits_writes(imagefolder: Path,
                                                                 skip_corrupt: bool) -> None:
    # Images are decoded straight into their .npy rows, tables go through save_splits: one
    # layout either way, so every reader (load_splits, the gate, DVC) sees the same folder.
    cfg = image_cfg(imagefolder, skip_corrupt=skip_corrupt)
    streamed = Path(tempfile.mkdtemp(dir=imagefolder.parent)) / "processed"
    written = preprocess(cfg, 0, streamed)
    splits, meta = load_splits(streamed)
    assert meta == written
    resaved = streamed.with_name("resaved")
    assert save_splits(resaved, splits, meta, fingerprints.read(streamed)) == meta
    assert digest(resaved) == digest(streamed)


def test_predict_reads_the_meta_file_preprocess_writes() -> None:
    # The predict CLI spells the path itself (it must answer --help before numpy loads).
    assert predict.META.name == META_FILE and predict.META.parent == Path("data/processed")


def test_load_splits_missing_names_stage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the stage that writes it first"):
        load_splits(tmp_path)


def test_saved_meta_reproduces_processed_features(tmp_path: Path, csv_params: Path) -> None:
    # JSON sorts dict keys on disk; feature order must still follow the CSV's column order.
    out = tmp_path / "processed"
    preprocess_stage.main(["--params", str(csv_params), "--out", str(out)])
    splits, meta = load_splits(out)
    frame = pd.read_csv(meta.path).drop(columns=["label"])
    rows = frame.loc[[int(i) for i in splits["test"].ids]]
    np.testing.assert_array_equal(transform_table(rows, meta.table), splits["test"].X)
