"""CSV tables: reading, validation, train-fitted encoding (impute, standardise, one-hot)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.dataset import ColumnStats, TableSpec
from pipeline.errors import DataError


def read_csv(path: Path, what: str = "CSV file") -> pd.DataFrame:
    """Read a UTF-8 CSV with a unique header and at least one row, or say what is wrong."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV is empty") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); "
                        "save the CSV as UTF-8") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse CSV ({str(err).strip()})") from None
    if frame.empty:
        raise DataError(f"{path}: CSV has a header but no rows")
    check_unique_header(path)
    return frame


def read_table(cfg: DataConfig) -> tuple[pd.DataFrame, pd.Series]:
    """Read a CSV; return feature frame and raw target; reject what cannot be learned from."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path = {cfg.path!r}: CSV file not found")
    frame = read_csv(path)
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
    return frame, target


def check_unique_header(path: Path) -> None:
    """Reject repeated column names (pandas would silently rename the second to `name.1`)."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears more than once in the header")
        seen.add(name)


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


def check_numeric_column(path: Path | str, column: pd.Series) -> None:
    """Reject a mostly-numeric column that holds text: almost always a data-entry error."""
    if is_numeric(column):
        return
    present = column.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().mean() >= 0.5:
        bad = present[numbers.isna()]
        raise DataError(f"{path}: column {column.name!r} is numeric but row {bad.index[0]} "
                        f"holds text {bad.iloc[0]!r}")


def is_numeric(column: pd.Series) -> bool:
    """True for numeric and boolean columns."""
    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def fit_table_spec(frame: pd.DataFrame, target: str, where: str = "input") -> TableSpec:
    """Fit imputation values, standardisation and categorical vocabularies on training rows."""
    numeric, categorical, dtypes = {}, {}, {}
    for col in frame.columns:
        column = frame[col]
        dtypes[str(col)] = ("bool" if pd.api.types.is_bool_dtype(column) else
                            "int" if pd.api.types.is_integer_dtype(column) else
                            "float" if is_numeric(column) else "string")
        if is_numeric(column):
            values = column.astype(float)
            median = float(values.median()) if values.notna().any() else 0.0
            filled = values.fillna(median)
            with np.errstate(over="ignore"):
                std = float(filled.std(ddof=0))
            if not (np.isfinite(std) and np.isfinite(float(filled.mean()))):
                raise DataError(f"{where}: column {col!r} values are too large to standardise "
                                f"(max |x| = {float(filled.abs().max()):g}); rescale the column")
            numeric[str(col)] = ColumnStats(median, float(filled.mean()),
                                            std if std > 1e-12 else 1.0)
        else:
            categorical[str(col)] = tuple(sorted({str(v) for v in column.dropna()}))
    return TableSpec(target, tuple(str(c) for c in frame.columns), dtypes, numeric, categorical)


def check_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """The columns must be exactly the training columns (any order); name what differs."""
    missing = [c for c in columns if c not in frame.columns]
    extra = [str(c) for c in frame.columns if str(c) not in columns]
    if missing or extra:
        raise DataError(f"{where}: columns do not match training data "
                        f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")


def transform_table(frame: pd.DataFrame, spec: TableSpec, where: str = "input") -> np.ndarray:
    """Apply train-fitted imputation, scaling and one-hot encoding; unseen categories → zeros."""
    check_columns(frame, spec.columns, where)
    parts = []
    for col in (c for c in spec.columns if c in spec.numeric):
        stats = spec.numeric[col]
        column = frame[col]
        if not is_numeric(column):
            check_numeric_column(where, column)
            column = pd.to_numeric(column, errors="coerce")
        check_finite(where, column)
        values = column.astype(float).fillna(stats.median).to_numpy()
        parts.append(((values - stats.mean) / stats.std)[:, None])
    for col in (c for c in spec.columns if c in spec.categorical):
        vocab = np.asarray(spec.categorical[col], dtype=object)
        values = frame[col].map(lambda v: None if pd.isna(v) else str(v)).to_numpy()
        parts.append((values[:, None] == vocab[None, :]).astype(float))
    return np.concatenate(parts, axis=1).astype(np.float32)
