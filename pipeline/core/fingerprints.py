"""Content hashes of raw examples: which rows a model learned from, and which test rows are new
to it.

An image is its file's bytes; a CSV row is its feature values, whatever its position."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError

FILE = "fingerprints.json"
LEARNED_FILE = "learned_from.txt"
HEX = 32  # 128 bits of sha256: no two of a few billion examples collide


def of_file(path: str | Path) -> str:
    """An image's fingerprint: its bytes (a renamed or moved copy is the same example)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:HEX]


def _canonical(value: object) -> str | None:
    # One spelling per value, whatever dtype pandas gave the column this time (a column that
    # gains a stray string turns from bool or float into text): True / "true" / "TRUE" are
    # "True", 3 / 3.0 / "3" are "3", missing is None.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_) or str(value).lower() in ("true", "false"):
        return str(value).lower().capitalize()
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def _canonical_column(column: pd.Series) -> list[str | None]:
    # `_canonical` of every value, computed once per distinct value, or by dtype for numbers
    # (a 200,000-row CSV took 16 s value by value).
    if column.dtype.kind == "b":
        return ["True" if v else "False" for v in column.tolist()]
    if column.dtype.kind in "iuf":
        return [None if x != x else str(int(x)) if x.is_integer() else repr(x)
                for x in column.to_numpy(dtype=np.float64).tolist()]
    codes, uniques = pd.factorize(column)  # missing values: code -1
    canonical = [_canonical(u) for u in uniques]
    return [canonical[c] if c >= 0 else None for c in codes.tolist()]


def of_rows(frame: pd.DataFrame) -> list[str]:
    """Each CSV row's fingerprint: its feature values by column name (not position, not label)."""
    columns = sorted(map(str, frame.columns))
    named = frame.set_axis(list(map(str, frame.columns)), axis=1)[columns]
    values = [_canonical_column(named.iloc[:, i]) for i in range(len(columns))]
    rows = zip(*values, strict=True) if values else [()] * len(frame)
    return [hashlib.sha256(json.dumps(list(row)).encode()).hexdigest()[:HEX] for row in rows]


def write(folder: str | Path, by_split: dict[str, Sequence[str]]) -> None:
    """Store each split's fingerprints beside ids.json (same order)."""
    Path(folder, FILE).write_text(json.dumps({k: list(v) for k, v in by_split.items()}))


def read(folder: str | Path) -> dict[str, list[str]]:
    """What `write` stored; a folder from before fingerprints names the stage to rerun."""
    path = Path(folder, FILE)
    if not path.is_file():
        raise DataError(f"{path}: missing (processed by an older pipeline); rerun preprocess "
                        "(dvc repro -f preprocess)")
    return json.loads(path.read_text())


def write_learned(path: str | Path, fingerprints: Iterable[str]) -> int:
    """Write the sorted, unique fingerprints a model learned from; return how many."""
    unique = sorted(set(fingerprints))
    Path(path).write_text("".join(f"{f}\n" for f in unique))
    return len(unique)


def read_learned(path: str | Path) -> set[str]:
    """What `write_learned` wrote."""
    return set(Path(path).read_text().split())
