"""CSV tables: which columns are features (row identifiers, dates, categories) and the
train-fitted encoding (impute with missing indicators, quantile or standard scaling, capped
one-hot); files are read by csvfiles."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.data.csvfiles import MISSING_MARKERS, Note, is_numeric, not_a_number, note, read_frame
from pipeline.data.dataset import INFREQUENT, MISSING, ColumnStats, TableSpec

# scikit-learn OneHotEncoder's min_frequency / max_categories: a value seen once in training
# cannot generalise, and a column's one-hot width (memory, parameters) stays bounded.
MIN_FREQUENCY = 2
MAX_CATEGORIES = 32
ID_MIN_ROWS = 10  # below this, "a distinct value on every row" says nothing
ID_WORDS = {"id", "uuid", "guid", "key", "index", "idx", "no", "number"}
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")
OTHER_DATE = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}([T ].*)?")
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
# Quantiles kept per numeric column (scikit-learn's QuantileTransformer keeps 1000): with
# linear interpolation between them, 200 levels place any value within half a percentile.
QUANTILES = 200
# A numeric column of whole numbers with this many distinct values may hold codes: said in a note.
CODES = range(3, 11)


def read_table(cfg: DataConfig) -> tuple[pd.DataFrame, pd.Series, str, list[Note]]:
    """Read a CSV; return features, raw target, separator and notes; reject what cannot be
    learned from."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path = {cfg.path!r}: CSV file not found")
    frame, sep, notes = read_frame(path, sep=cfg.csv_sep)
    if cfg.target not in frame.columns:
        raise DataError(f"{path}: target column data.target = {cfg.target!r} not found "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    target = frame.pop(cfg.target)
    if target.isna().any():
        rows = [int(r) for r in np.flatnonzero(target.isna().to_numpy())[:5]]
        raise DataError(f"{path}: target column {cfg.target!r} has {int(target.isna().sum())} "
                        f"missing values (rows {rows})")
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides target {cfg.target!r}")
    for col in frame.columns:
        check_numeric_column(path, frame[col])
        check_finite(path, frame[col])
        if frame[col].isna().all():
            raise DataError(f"{path}: column {col!r} has no values (all missing); drop it")
    return frame, target, sep, notes


def check_finite(where: Path | str, column: pd.Series) -> None:
    """Reject inf / overflowing numbers (1e999) in a numeric column, naming row and value."""
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return
    values = column.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        row = column.index[bad[0]]
        raise DataError(f"{where}: column {column.name!r} row {row} holds {values[bad[0]]} "
                        f"(not a finite number; {len(bad)} such value(s) in the column)")


def check_numeric_column(path: Path | str, column: pd.Series, share: float = 0.5) -> None:
    """Reject a column that holds text although at least `share` of its values are numbers
    (a data-entry error when mostly numeric; any text when the model expects numbers)."""
    if is_numeric(column):
        return
    present = column.dropna().astype(str).str.strip()
    present = present[~present.isin(MISSING_MARKERS)]
    # The share counts the file's own spellings (12,5 in a ';' file): one typo '12,5x' in a
    # decimal-comma column is an error, not free text. Model inputs must be plain numbers.
    spelled = ~not_a_number(present) if share > 0 else (
        pd.to_numeric(present, errors="coerce").notna())
    if len(present) and spelled.mean() >= share and not spelled.all():
        bad = present[~spelled.to_numpy()]
        raise DataError(f"{path}: column {column.name!r} is numeric but row {bad.index[0]} "
                        f"holds text {bad.iloc[0]!r}")


def as_text(column: pd.Series) -> np.ndarray:
    """Category values as stripped strings (None where missing), as fitted and as looked up."""
    return column.astype("string").str.strip().to_numpy(dtype=object, na_value=None)


def category_text(column: pd.Series, coded: bool) -> np.ndarray:
    """Category values as looked up; for number codes one spelling per number (1, 1.0 and
    '1' are one category: a column with a blank reads as floats, a request may send text)."""
    text = as_text(column)
    if not coded:
        return text
    numbers = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(float)
    for i in np.flatnonzero(np.isfinite(numbers)):
        value = float(numbers[i])
        text[i] = str(int(value)) if value.is_integer() else repr(value)
    return text


def fit_quantiles(values: np.ndarray) -> tuple[float, ...]:
    """Training quantiles at levels (i + 0.5) / n (n = QUANTILES, fewer for fewer rows)."""
    n = min(QUANTILES, len(values))
    return tuple(float(q) for q in np.quantile(values, (np.arange(n) + 0.5) / n))


def normal_scores(values: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Values mapped through the training quantiles onto a standard normal's quantiles at the
    same levels (values beyond the training range take the end scores: outliers are capped)."""
    q = np.asarray(quantiles, dtype=np.float64)
    levels, z = normal_levels(len(q))
    # A value many quantiles share (a 0/1 or count column) takes the middle of their levels,
    # as scikit-learn's QuantileTransformer does: interpolate from both ends and average.
    up = np.interp(values, q, levels)
    down = -np.interp(-values, -q[::-1], -levels[::-1])
    return np.interp(0.5 * (up + down), levels, z)


@functools.cache
def normal_levels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels (i + 0.5) / n and the standard normal's quantiles there (once per n: every
    served request scales every numeric column)."""
    levels = (np.arange(n) + 0.5) / n
    return levels, np.array([NormalDist().inv_cdf(level) for level in levels])


def scale(values: np.ndarray, stats: ColumnStats) -> np.ndarray:
    """A numeric column (NaN where missing) imputed with the training median and scaled."""
    filled = np.where(np.isnan(values), stats.median, values)
    if stats.quantiles:
        return normal_scores(filled, stats.quantiles)
    return (filled - stats.mean) / stats.std


def row_identifier(column: pd.Series) -> str | None:
    """Why a numeric column identifies rows rather than describing them (None if it does not)."""
    name, present = str(column.name), column.dropna()
    n = len(present)
    if n < ID_MIN_ROWS or not is_numeric(column) or pd.api.types.is_bool_dtype(column):
        return None
    values = present.to_numpy(dtype=np.float64)
    if not (np.isfinite(values).all() and (values == np.round(values)).all()):
        return None  # an id with one blank reads as floats: whole values still count
    unique = bool(present.is_unique)
    in_order = bool(np.mean(np.diff(values) == 1) >= 0.9)
    if re.fullmatch(r"Unnamed: \d+", name) and (unique or in_order):
        return "a saved row index (unnamed integer column counting rows)"
    # A shuffled rank 1..n or years 1990-2023 are values; an id counts along the rows.
    if unique and in_order and int(values.max()) - int(values.min()) == n - 1:
        return "a row identifier (consecutive integers, a distinct one per row)"
    words = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)
    if unique and words and words[-1].lower() in ID_WORDS:
        return f"a row identifier (a distinct integer per row, named {name!r})"
    return None


def date_column(column: pd.Series, where: str) -> bool:
    """True for ISO dates / datetimes; refuse other date spellings (day/month order unknown)."""
    text = pd.Series(as_text(column)).dropna()
    if text.empty:
        return False
    iso = text.str.fullmatch(ISO_DATE)
    if iso.all():
        return True
    dated = iso | text.str.fullmatch(OTHER_DATE)
    if dated.mean() >= 0.5:
        bad = text[~iso].iloc[0]
        raise DataError(f"{where}: column {column.name!r} holds dates, but {bad!r} is not an "
                        "ISO date (YYYY-MM-DD[THH:MM[:SS]]); re-save the column as ISO dates "
                        "or drop it")
    return False


def to_days(column: pd.Series, where: str) -> np.ndarray:
    """ISO dates → days since 1970-01-01 UTC (NaN where missing); other text is an error."""
    text = pd.Series(as_text(column), index=column.index, dtype=object)
    dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    ok = text.isna() | (dates.notna() & text.astype("string").str.fullmatch(ISO_DATE))
    if not ok.all():
        row = ok.index[~ok.to_numpy()][0]
        raise DataError(f"{where}: column {column.name!r} row {row} holds {text[row]!r} "
                        "(not an ISO date)")
    return ((dates - EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def column_stats(values: pd.Series, where: str, col: str, quantile: bool) -> ColumnStats:
    """Median (imputation), mean and std (standardisation) of one training column, and its
    quantiles where `quantile`."""
    values = values.astype(float)
    median = float(values.median()) if values.notna().any() else 0.0
    filled = values.fillna(median)
    with np.errstate(over="ignore"):
        std = float(filled.std(ddof=0))
    if not (np.isfinite(std) and np.isfinite(float(filled.mean()))):
        raise DataError(f"{where}: column {col!r} values are too large to standardise "
                        f"(max |x| = {float(filled.abs().max()):g}); rescale the column")
    present = values.dropna().to_numpy()  # imputed cells would pile up at the median
    quantiles = fit_quantiles(present) if quantile and len(present) else ()
    return ColumnStats(median, float(filled.mean()), std if std > 1e-12 else 1.0, quantiles)


def vocabulary(column: pd.Series, coded: bool) -> tuple[tuple[str, ...], int]:
    """The kept categories (sorted) and how many other values the training rows hold."""
    counts = pd.Series(category_text(column, coded), dtype=object).value_counts()
    kept = counts[counts >= MIN_FREQUENCY].sort_index().sort_values(ascending=False,
                                                                     kind="stable")
    vocab = tuple(sorted(map(str, kept.index[:MAX_CATEGORIES])))
    return vocab, len(counts) - len(vocab)


def column_kind(column: pd.Series) -> str:
    """The CSV column's type as the model's input signature declares it."""
    return ("bool" if pd.api.types.is_bool_dtype(column) else
            "int" if pd.api.types.is_integer_dtype(column) else
            "float" if is_numeric(column) else "string")


def declared_categories(frame: pd.DataFrame, declared: Collection[str], where: str) -> set[str]:
    """data.categorical_columns, checked against the file's columns."""
    unknown = [c for c in declared if c not in map(str, frame.columns)]
    if unknown:
        raise DataError(f"data.categorical_columns: {where} has no column {unknown[0]!r} "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    return set(declared)


def looks_coded(column: pd.Series) -> bool:
    """A numeric column of a few distinct whole numbers (codes such as 1-4, or a count)."""
    present = column.dropna()
    if not is_numeric(column) or pd.api.types.is_bool_dtype(column) or present.empty:
        return False
    values = present.to_numpy(dtype=np.float64)
    return bool((values == np.round(values)).all() and len(np.unique(values)) in CODES)


def fit_table_spec(frame: pd.DataFrame, train: np.ndarray, target: str, where: str = "input",
                   sep: str = ",", categorical_columns: Collection[str] = (),
                   scaling: str = "standard") -> tuple[TableSpec, list[Note]]:
    """Decide each column's role on the whole file (identifiers, dates, declared categories)
    and fit imputation, scaling and capped vocabularies on the training rows; notes say what
    changed."""
    notes: list[Note] = []
    rows = frame.iloc[train]
    declared = declared_categories(frame, categorical_columns, where)
    numeric, categorical, dropped = {}, {}, {}
    dates, infrequent, missing = [], [], []
    dtypes = {str(col): column_kind(frame[col]) for col in frame.columns}
    quantile = scaling == "quantile"
    for col in map(str, frame.columns):
        column = frame[col]
        if is_numeric(column) and col not in declared:
            reason = row_identifier(column)
            if reason is None:
                numeric[col] = column_stats(rows[col], where, col, quantile)
            if reason is None and looks_coded(column):
                note(notes, where, f"column {col!r}", "read as a number",
                     f"{column.nunique()} distinct whole numbers: if they are codes, not "
                     "amounts, list the column in data.categorical_columns")
        elif col not in declared and date_column(column, where):
            reason = None
            dates.append(col)
            numeric[col] = column_stats(pd.Series(to_days(rows[col], where)), where, col,
                                        quantile)
            note(notes, where, f"column {col!r}", "ISO dates encoded as days since 1970-01-01",
                 "one number, scaled on the training rows (not one-hot per date)")
        elif (col not in declared and len(frame) >= ID_MIN_ROWS and column.notna().all()
              and column.is_unique):
            reason = "a row identifier or free text (a distinct value on every row)"
        else:
            vocab, rare = vocabulary(rows[col], coded=dtypes[col] != "string")
            reason = None if vocab else (f"free text or an identifier (no value occurs "
                                         f"{MIN_FREQUENCY}+ times in the training rows)")
            if vocab:
                categorical[col] = vocab
            if vocab and rare:
                infrequent.append(col)
                note(notes, where, f"column {col!r}",
                     f"one-hot for {len(vocab)} categories, {rare} others share "
                     f"'{col}={INFREQUENT}'", f"kept: seen {MIN_FREQUENCY}+ times in training, "
                     f"at most {MAX_CATEGORIES}")
        if reason is not None:
            dropped[col] = reason
            note(notes, where, f"column {col!r}", "dropped", reason)
        elif rows[col].isna().any():
            missing.append(col)
            note(notes, where, f"column {col!r}", f"missing cells marked by '{col}={MISSING}'"
                 + (", their value the training median" if col in numeric else ""),
                 f"missing in {int(rows[col].isna().sum())} of {len(rows)} training rows")
    if len(dropped) == frame.shape[1]:
        raise DataError(f"{where}: no usable feature column (dropped all: "
                        f"{', '.join(f'{c!r}: {r}' for c, r in dropped.items())})")
    spec = TableSpec(target, tuple(map(str, frame.columns)), dtypes, numeric, categorical,
                     dropped=dropped, dates=tuple(dates), infrequent=tuple(infrequent),
                     missing=tuple(missing), sep=sep,
                     decimal=str(frame.attrs.get("decimal", "")))
    return spec, notes


def check_columns(frame: pd.DataFrame, columns: Sequence[str], where: str,
                  optional: Collection[str] = ()) -> None:
    """The columns must be the training columns (any order; `optional` ones, which the model
    ignores, may be absent); name what differs."""
    missing = [c for c in columns if c not in frame.columns and c not in optional]
    extra = [str(c) for c in frame.columns if str(c) not in columns]
    if missing or extra:
        raise DataError(f"{where}: columns do not match training data "
                        f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")


def numbers(column: pd.Series, where: str) -> np.ndarray:
    """A numeric model input as floats (missing markers → NaN); any other text is an error."""
    if not is_numeric(column):
        column = column.where(~column.astype("string").str.strip().isin(MISSING_MARKERS))
        check_numeric_column(where, column, share=0.0)
        column = pd.to_numeric(column, errors="coerce")
    check_finite(where, column)
    return column.astype(float).to_numpy()


def transform_table(frame: pd.DataFrame, spec: TableSpec, where: str = "input") -> np.ndarray:
    """Apply the train-fitted encoding; an unseen category → the column's infrequent indicator
    if it has one, else zeros; a missing cell → the column's missing indicator if it has one;
    dropped columns are ignored. Memory: the output plus O(rows)."""
    check_columns(frame, spec.columns, where, optional=spec.dropped)
    X = np.zeros((len(frame), len(spec.feature_names())), dtype=np.float32)
    j, absent = 0, []
    for col in (c for c in spec.columns if c in spec.numeric):
        values = to_days(frame[col], where) if col in spec.dates else numbers(frame[col], where)
        X[:, j] = scale(values, spec.numeric[col])
        absent += [np.isnan(values)] if col in spec.missing else []
        j += 1
    for gaps in absent:
        X[:, j] = gaps
        j += 1
    for col in (c for c in spec.columns if c in spec.categorical):
        text = category_text(frame[col], coded=spec.dtypes.get(col) != "string")
        codes = pd.Index(spec.categorical[col]).get_indexer(text)  # -1: unseen or missing
        known = np.flatnonzero(codes >= 0)
        X[known, j + codes[known]] = 1.0
        j += len(spec.categorical[col])
        if col in spec.infrequent:
            X[(codes < 0) & pd.notna(text), j] = 1.0
            j += 1
        if col in spec.missing:
            X[pd.isna(text), j] = 1.0
            j += 1
    return X
