"""CSV tables as users save them: separators, number formats, row identifiers, dates, and
high-cardinality categoricals are handled (and said so in meta.json) or refused in one line."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core import fingerprints
from pipeline.core.config import DataConfig, SplitConfig
from pipeline.core.errors import DataError
from pipeline.data.dataset import DatasetMeta, load_splits
from pipeline.data.sources import preprocess
from pipeline.data.tables import MAX_CATEGORIES, transform_table

N = 40


def base(n: int = N) -> pd.DataFrame:
    """Numeric, categorical and label columns; nothing unusual."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=n).round(3),
                         "colour": rng.choice(["red", "green", "blue"], n),
                         "label": ["spam", "ham"] * (n // 2)})


def prep(path: Path, **kw: object) -> tuple[dict, DatasetMeta, dict[str, str]]:
    """Preprocess `path` into a fresh folder beside it: splits, meta, fingerprint by row id."""
    cfg = DataConfig(**{"source": "csv", "path": str(path), "target": "label",  # type: ignore
                        "positive_class": "spam",
                        "split": SplitConfig(0.5, 0.25, 0.25), **kw})
    out = Path(tempfile.mkdtemp(dir=path.parent)) / "processed"
    meta = preprocess(cfg, 0, out)
    assert DatasetMeta.read(out / "meta.json") == meta
    splits = load_splits(out)[0]
    by_id = {i: f for name, fps in fingerprints.read(out).items()
             for i, f in zip(splits[name].ids, fps, strict=True)}
    return splits, meta, by_id


def write(tmp_path: Path, frame: pd.DataFrame | str, name: str = "t.csv", **kw: object) -> Path:
    path = tmp_path / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=kw.pop("index", False), **kw)  # type: ignore[arg-type]
    return path


def notes(meta: DatasetMeta) -> dict[str, str]:
    """Each item's notes, in order, one string ('; ' between them)."""
    said: dict[str, list[str]] = {}
    for n in meta.notes:
        said.setdefault(n["item"], []).append(f"{n['action']} ({n['reason']})")
    return {item: "; ".join(lines) for item, lines in said.items()}


# --- separators and number formats ---------------------------------------------------------


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_separator_is_detected(tmp_path: Path, sep: str) -> None:
    splits, meta, _ = prep(write(tmp_path, base(), sep=sep))
    reference = prep(write(tmp_path, base(), "ref.csv"))[0] if sep != "," else splits
    assert meta.table.sep == sep and meta.table.feature_names()[0] == "x"
    np.testing.assert_array_equal(splits["test"].X, reference["test"].X)


def test_decimal_comma_bom_and_header_spaces(tmp_path: Path) -> None:
    # Excel in a European locale: ';', decimal commas, UTF-8 with BOM; plus " x" in the header.
    text = base().to_csv(sep=";", index=False).replace(".", ",").replace("x;", " x ;", 1)
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    splits, meta, _ = prep(path)
    assert "x" in meta.table.numeric and meta.table.sep == ";"
    assert "decimal comma" in notes(meta)["column 'x'"] and "header" in notes(meta)
    expected = prep(write(tmp_path, base(), "ref.csv"))[0]
    np.testing.assert_allclose(splits["train"].X, expected["train"].X, atol=1e-6)


def test_thousands_and_missing_markers_are_numbers(tmp_path: Path) -> None:
    frame = base().assign(price=[f"{1000 + i * 37:,}" for i in range(N)],
                          age=["?" if i % 7 == 0 else str(20 + i) for i in range(N)],
                          share=[f"{(i + 1) / 2:.1f}%" for i in range(N)])
    splits, meta, _ = prep(write(tmp_path, frame), numeric_scaling="standard")
    assert {"price", "age", "share"} <= set(meta.table.numeric)
    assert "thousands" in notes(meta)["column 'price'"]
    assert "6 values read as missing" in notes(meta)["column 'age'"]
    assert "'0.5%' -> 0.005" in notes(meta)["column 'share'"]
    share = meta.table.numeric["share"]
    train_share = splits["train"].X[:, 3] * share.std + share.mean
    np.testing.assert_allclose(train_share, [(i + 1) / 200 for i in map(int, splits["train"].ids)],
                               atol=1e-6)


@pytest.mark.parametrize(("text", "kw", "needle"), [
    ("a;b;label\n1;2;spam\n3;4;ham\n", {"csv_sep": ","},
     r"read with separator ',' as one column 'a;b;label', which contains ';'; set data.csv_sep"),
    ("a,b;c,label\n1,2;3,spam\n", {}, r"separator is ambiguous \(',' and ';'"),
    ("a;label\n1;spam\n2;ham;x\n", {},
     r"as one column 'a;label', which contains ';'; set data.csv_sep: ';'; none of , ; tab"),
    ("a;label\n1;spam\n2;ham;x\n", {"csv_sep": ";"}, r"cannot parse CSV with separator ';'"),
    ("x;label\n" + "1,5;spam\n2.5;ham\n" * 10, {},
     r"column 'x' holds '2.5', a number format a ';'-separated file does not use"),
])
def test_unreadable_layouts_name_the_separator(tmp_path: Path, text: str, kw: dict,
                                               needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        prep(write(tmp_path, text), **kw)


# --- row identifiers and free text ---------------------------------------------------------


def test_saved_pandas_index_is_dropped_and_still_accepted(tmp_path: Path) -> None:
    # Labels that follow row order: the index alone would predict the test split perfectly.
    frame = base().assign(label=["ham"] * (N // 2) + ["spam"] * (N // 2))
    path = write(tmp_path, frame.sample(frac=1, random_state=0), index=True)
    splits, meta, _ = prep(path)
    assert meta.table.dropped.keys() == {"Unnamed: 0"} and "Unnamed: 0" in meta.table.columns
    assert "saved row index" in notes(meta)["column 'Unnamed: 0'"]
    assert splits["train"].X.shape[1] == len(meta.table.feature_names()) == 4
    rows = pd.read_csv(path).drop(columns=["label"]).iloc[:3]
    with_index = transform_table(rows, meta.table)
    np.testing.assert_array_equal(with_index, transform_table(rows.iloc[:, 1:], meta.table))


@pytest.mark.parametrize(("column", "reason"), [
    ([1000 + 3 * i for i in range(N)], "named 'customerId'"),
    (list(range(500, 500 + N)), "consecutive integers"),
    ([f"C-{i:05d}" for i in range(N)], "a distinct value on every row"),
    ([None if i % 10 == 0 else f"comment {i}: fine" for i in range(N)],
     "no value occurs 2+ times in the training rows"),
])
def test_identifiers_and_free_text_are_dropped(tmp_path: Path, column: list,
                                               reason: str) -> None:
    frame = base().assign(customerId=column)
    frame.loc[1, ["x", "colour"]] = frame.loc[0, ["x", "colour"]]
    _, meta, fingerprint = prep(write(tmp_path, frame))
    assert set(meta.table.dropped) == {"customerId"}
    assert reason in notes(meta)["column 'customerId'"]
    # A row is what the model sees: rows that differ only in a dropped id are one example.
    assert fingerprint["0"] == fingerprint["1"] != fingerprint["2"]


def test_integer_features_that_merely_differ_are_kept(tmp_path: Path) -> None:
    _, meta, _ = prep(write(tmp_path, base().assign(income=[i * i for i in range(N)])))
    assert "income" in meta.table.numeric and not meta.table.dropped


def test_only_identifiers_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": range(N), "label": ["spam", "ham"] * (N // 2)})
    with pytest.raises(DataError, match=r"no usable feature column \(dropped all: 'id': a row"):
        prep(write(tmp_path, frame))


# --- categories and dates -------------------------------------------------------------------


def test_high_cardinality_categorical_is_capped(tmp_path: Path) -> None:
    n = 400
    city = [f"city{i % 60}" if i % 4 else f"town{i}" for i in range(n)]
    splits, meta, _ = prep(write(tmp_path, base(n).assign(city=city)))
    vocab = meta.table.categorical["city"]
    assert len(vocab) == MAX_CATEGORIES and meta.table.infrequent == ("city",)
    assert meta.table.feature_names()[-1] == "city=<infrequent>"
    assert "others share 'city=<infrequent>'" in notes(meta)["column 'city'"]
    rows = pd.DataFrame({"x": [0.0, 0.0, 0.0], "colour": ["red"] * 3,
                         "city": [vocab[0], "Atlantis", None]})
    x = transform_table(rows, meta.table)
    assert x[:, -1].tolist() == [0.0, 1.0, 0.0]  # unseen → infrequent; missing → zeros
    assert x[:, -1 - MAX_CATEGORIES:-1].sum(axis=1).tolist() == [1.0, 0.0, 0.0]
    assert all(s.X[:, -1 - MAX_CATEGORIES:].sum(axis=1).max() == 1 for s in splits.values())


def test_iso_dates_become_days(tmp_path: Path) -> None:
    days = pd.date_range("2024-01-01", periods=N, freq="D")
    stamps = [str(d.date()) if i % 2 else f"{d.date()}T12:00:00Z" for i, d in enumerate(days)]
    splits, meta, _ = prep(write(tmp_path, base().assign(when=stamps)),
                           numeric_scaling="standard")
    assert meta.table.dates == ("when",) and "days since" in notes(meta)["column 'when'"]
    assert meta.table.feature_names() == ["x", "when", "colour=blue", "colour=green",
                                          "colour=red"]
    train = splits["train"].X[:, 1]
    assert abs(train.mean()) < 1e-5 and splits["test"].X[:, 1].std() > 0.5
    rows = pd.DataFrame({"x": [0.0], "colour": ["red"], "when": ["2024-13-40"]})
    with pytest.raises(DataError, match=r"column 'when' row 0 holds '2024-13-40' \(not an ISO"):
        transform_table(rows, meta.table)


def test_ambiguous_dates_are_refused(tmp_path: Path) -> None:
    frame = base().assign(when=[f"{1 + i % 28:02d}/03/2024" for i in range(N)])
    with pytest.raises(DataError, match=r"column 'when' holds dates, but '01/03/2024' is not "
                                        r"an ISO date"):
        prep(write(tmp_path, frame))


def test_meta_without_the_new_table_fields_still_reads() -> None:
    raw = {"source": "csv", "path": "t.csv", "classes": ["ham", "spam"], "table": {
        "target": "label", "columns": ["x"], "dtypes": {"x": "float"},
        "numeric": {"x": {"median": 0.0, "mean": 0.0, "std": 1.0}}, "categorical": {}}}
    table = DatasetMeta.from_json(raw).table
    assert table.sep == "," and table.dropped == {} and table.feature_names() == ["x"]


def test_serving_and_batch_read_the_training_csv_as_preprocess_did(tmp_path: Path) -> None:
    from pipeline.registry.batch import table_frame
    from pipeline.registry.examples import raw_inputs
    from pipeline.registry.features import frame_to_features
    from pipeline.registry.signature import contract

    frame = base().assign(id=[f"r{i}" for i in range(N)])
    path = tmp_path / "t.csv"
    path.write_text(frame.to_csv(sep=";", index=False).replace(".", ","))
    splits, meta, _ = prep(path)
    assert meta.table.dropped.keys() == {"id"} and meta.table.sep == ";"
    test = splits["test"]
    np.testing.assert_array_equal(frame_to_features(raw_inputs(meta, test.ids), meta), test.X)
    rows, _ = table_frame(path, {"table": contract(meta, 0.5)["table"]}, "label")
    np.testing.assert_array_equal(frame_to_features(rows, meta)[[int(i) for i in test.ids]],
                                  test.X)


def test_saved_index_of_concatenated_frames_is_dropped() -> None:
    from pipeline.data.tables import row_identifier

    index = pd.Series(list(range(30)) + list(range(30)), name="Unnamed: 0")
    assert "saved row index" in row_identifier(index)
    assert row_identifier(index.rename("visits")) is None  # repeats: a count, not an id


# --- review fixes: number conventions, ids, batch contract ---------------------------------


@pytest.mark.parametrize(("text", "kw"), [
    ("x\tlabel\n" + "0,125\tspam\n1\tham\n" * 10, {}),
    ('x,label\n' + '"0,125",spam\n1,ham\n' * 10, {})])
def test_leading_zero_is_never_digit_grouping(tmp_path: Path, text: str, kw: dict) -> None:
    with pytest.raises(DataError, match=r"column 'x' holds '0,125', a number format"):
        prep(write(tmp_path, text), **kw)


def test_semicolon_dot_grouping_is_decided_once_and_applied_by_batch(tmp_path: Path) -> None:
    from pipeline.registry.batch import table_frame
    from pipeline.registry.signature import contract

    dots = "x;label\n" + "1.500;spam\n2.000;ham\n" * 10
    with pytest.raises(DataError, match=r"column 'x' row 0 holds '1.500': '.' may group"):
        prep(write(tmp_path, dots))
    mixed = "x;y;label\n" + "1.500;0,5;spam\n2.000;1,5;ham\n" * 10  # ',' decides: '.' groups
    _, meta, _ = prep(write(tmp_path, mixed))
    assert meta.table.decimal == "," and meta.table.numeric["x"].median == 1750.0
    table = contract(meta, 0.5)["table"]
    assert table["sep"] == ";" and table["decimal"] == "," and table["dropped"] == {}
    rows, _ = table_frame(write(tmp_path, "x;y\n1.500;2\n", "b.csv"), {"table": table}, "label")
    assert rows["x"].tolist() == [1500.0]  # the batch file alone would not decide it


def test_typo_in_a_decimal_comma_column_is_refused(tmp_path: Path) -> None:
    text = "x;label\n" + "".join(f"{i},5;{'spam' if i % 2 else 'ham'}\n" for i in range(20))
    with pytest.raises(DataError, match=r"column 'x' is numeric but row 3 holds text '12,5x'"):
        prep(write(tmp_path, text.replace("\n3,5;", "\n12,5x;")))


@pytest.mark.parametrize("sep", [" ", "\n", "\r", '"'])
def test_separators_that_shift_columns_are_refused(sep: str) -> None:
    with pytest.raises(Exception, match="csv_sep"):
        DataConfig(source="csv", path="t.csv", target="label", csv_sep=sep)


def test_shuffled_ranks_and_years_are_features_blank_ids_are_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [float(i) for i in range(100, 100 + N)]
    ids[5] = np.nan
    frame = base().assign(rank=rng.permutation(N) + 1, year=rng.permutation(N) + 1990,
                          customer_id=ids)
    _, meta, _ = prep(write(tmp_path, frame))
    assert {"rank", "year"} <= set(meta.table.numeric)
    assert meta.table.dropped.keys() == {"customer_id"}


def test_batch_reads_markers_and_text_columns_as_training_did(tmp_path: Path) -> None:
    from pipeline.registry.batch import table_frame
    from pipeline.registry.signature import contract

    frame = base().assign(code=["1", "2"] * (N // 2), id=[f"r{i}" for i in range(N)])
    _, meta, _ = prep(write(tmp_path, frame.assign(code=["a", "b"] * (N // 2))))
    table = contract(meta, 0.5)["table"]
    batch = write(tmp_path, "x,colour,code\n?,,1\n1.5,,\n", "b.csv")  # no id: it is dropped
    rows, _ = table_frame(batch, {"table": table}, "label")
    assert np.isnan(rows["x"][0]) and rows["colour"].tolist() == [None, None]
    assert rows["code"].tolist() == ["1", None]


def test_input_refused_by_the_model_names_the_input(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from pipeline.registry import batch
    from pipeline.registry.serving import RequestError

    def refuse(rows: pd.DataFrame) -> None:
        raise RequestError("model input row 0: bad value")

    table = {"columns": ["x"], "dtypes": {"x": "float"}, "target": "label"}
    model = SimpleNamespace(predict=refuse, metadata=SimpleNamespace(
        metadata={"pipeline": {"kind": "table", "table": table}}))
    monkeypatch.setattr(batch.mlflow.pyfunc, "load_model", lambda uri: model)
    path = write(tmp_path, "x\n1\n", "b.csv")
    with pytest.raises(DataError, match=f"^--input {path}: model input row 0: bad value$"):
        batch.predict("models:/m@champion", [path], tmp_path / "out.csv")


# --- declared categories, missing indicators and quantile scaling ----------------------------


def coded(n: int = N) -> pd.DataFrame:
    """A chest-pain-type column coded 1-4 (a blank makes pandas read it as floats)."""
    return base(n).assign(cp=[np.nan if i == 4 else 1 + i % 4 for i in range(n)])


def test_number_codes_read_as_numbers_are_said_in_a_note(tmp_path: Path) -> None:
    _, meta, _ = prep(write(tmp_path, coded()))
    assert "cp" in meta.table.numeric
    assert "data.categorical_columns" in notes(meta)["column 'cp'"]


def test_declared_number_codes_are_categories_whatever_their_spelling(tmp_path: Path) -> None:
    from pipeline.registry.features import frame_to_features

    splits, meta, _ = prep(write(tmp_path, coded()), categorical_columns=("cp",))
    table = meta.table
    assert "cp" not in table.numeric and table.categorical["cp"] == ("1", "2", "3", "4")
    assert "cp" in table.missing and "cp=<missing>" in table.feature_names()
    # The training file read 1.0 (a float column); a request sends 1, 1.0 or '1': one category.
    spellings = [2, 2.0, "2", " 2 "]
    rows = pd.DataFrame({"x": [0.0] * 4, "colour": ["red"] * 4, "cp": spellings})
    X = frame_to_features(rows, meta)
    names = table.feature_names()
    assert (X[:, names.index("cp=2")] == 1).all() and X[:, names.index("cp=<missing>")].sum() == 0
    assert (X[0] == X).all()
    np.testing.assert_array_equal(transform_table(
        pd.read_csv(tmp_path / "t.csv").drop(columns="label").iloc[[int(i) for i in
                                                                     splits["test"].ids]],
        table), splits["test"].X)


def test_a_declared_column_the_file_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.categorical_columns: .*t.csv has no column 'cP'"):
        prep(write(tmp_path, coded()), categorical_columns=("cP",))


def test_quantile_scaling_keeps_an_outlier_from_squashing_the_rest(tmp_path: Path) -> None:
    income = [float(1000 + 10 * i) for i in range(N)]
    for i in (0, 4):
        income[i] = 1e9  # typo'd or very rich rows
    frame = base().assign(income=income)
    by_scaling = {how: prep(write(tmp_path, frame), numeric_scaling=how)
                  for how in ("standard", "quantile")}
    spread = {}
    for how, (splits, _, _) in by_scaling.items():
        train = splits["train"]
        usual = [k for k, i in enumerate(map(int, train.ids)) if income[i] < 1e6]
        assert len(usual) < len(train.ids)  # an outlier is among the training rows
        spread[how] = float(np.ptp(train.X[usual, 1]))
    assert spread["standard"] < 0.05 and spread["quantile"] > 2.5
    meta = by_scaling["quantile"][1]
    ends = transform_table(pd.DataFrame({"x": [0.0, 0.0], "colour": ["red"] * 2,
                                         "income": [-1e12, 1e12]}), meta.table)[:, 1]
    assert -3.0 < ends[0] < -1.5 and ends[1] == -ends[0]  # capped at the end scores
