"""CSV files as users save them → a DataFrame: separator (, ; tab |), UTF-8 with or without
a BOM, spaces around names, digit grouping, decimal commas and missing markers."""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError

log = logging.getLogger(__name__)
Note = dict[str, str]
"""An unusual input that was handled: {"item", "action", "reason"} (DatasetMeta.notes)."""

SEPARATORS = (",", ";", "\t", "|")
SNIFF_BYTES = 1 << 16  # the header and first lines decide the separator
# Read as missing in a column that is otherwise numeric (besides pandas' NA, n/a, null, ...).
MISSING_MARKERS = ("?", "-", "--", ".")
EUROPEAN = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?")  # 1.234,5 (';' files)
ENGLISH = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?")  # 1,234.5
PERCENT = re.compile(r"[+-]?[\d.,]+\s*%")


def note(notes: list[Note], where: str, item: str, action: str, reason: str) -> None:
    """Log an unusual input that was handled and record it for meta.json."""
    log.warning("%s: %s: %s (%s)", where, item, action, reason)
    notes.append({"item": item, "action": action, "reason": reason})


def sniff_separator(path: Path) -> str | None:
    """The one of , ; tab | that splits the header and first lines into equally many (>1)
    fields; None when none does; an error when several do."""
    with path.open("rb") as handle:
        raw = handle.read(SNIFF_BYTES)
    text = raw.decode("utf-8-sig", errors="replace")
    if len(raw) == SNIFF_BYTES:
        text = text[:text.rfind("\n") + 1] or text  # whole lines only
    found = {}
    for sep in SEPARATORS:
        widths = {len(row) for row in csv.reader(io.StringIO(text), delimiter=sep) if row}
        if len(widths) == 1 and (width := widths.pop()) > 1:
            found[sep] = width
    if len(found) > 1:
        raise DataError(f"{path}: separator is ambiguous ({' and '.join(map(repr, found))} "
                        "both split every line into equal fields); set data.csv_sep")
    return next(iter(found), None)


def read_frame(path: Path, what: str = "CSV file", sep: str = "auto"
               ) -> tuple[pd.DataFrame, str, list[Note]]:
    """Read a UTF-8 CSV (BOM allowed) with a unique header and at least one row; return it,
    the separator used and notes on the number formats it normalised."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    sniffed = sniff_separator(path) if sep == "auto" else sep
    used = sniffed or ","
    hint = "" if sniffed else "; none of , ; tab | splits every line into equally many fields"
    try:
        frame = pd.read_csv(path, sep=used, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV is empty") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); "
                        "save the CSV as UTF-8") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse CSV with separator {used!r} "
                        f"({str(err).strip()}{hint})") from None
    if frame.empty:
        raise DataError(f"{path}: CSV has a header but no rows")
    name = str(frame.columns[0])
    others = [s for s in SEPARATORS if s != used and s in name]
    if frame.shape[1] == 1 and others:
        raise DataError(f"{path}: read with separator {used!r} as one column {name!r}, which "
                        f"contains {others[0]!r}; set data.csv_sep: {others[0]!r}{hint}")
    check_unique_header(path, used)
    notes: list[Note] = []
    if used != ",":
        log.info("%s: separator %r (%s)", path, used, "given" if sep == used else "detected")
    stripped = [str(c).strip() for c in frame.columns]
    if stripped != [str(c) for c in frame.columns]:
        note(notes, str(path), "header", "stripped spaces around column names",
             "names must match data.target and the model's input columns")
        frame.columns = stripped
    for col in frame.columns:
        if not is_numeric(frame[col]):
            normalise_numbers(frame, col, used, str(path), notes)
    return frame, used, notes


def read_csv(path: Path, what: str = "CSV file", sep: str = "auto") -> pd.DataFrame:
    """`read_frame`'s table alone (batch prediction, serving examples)."""
    return read_frame(path, what, sep)[0]


def normalise_numbers(frame: pd.DataFrame, col: str, sep: str, where: str,
                      notes: list[Note]) -> None:
    """Turn a text column of numbers with missing markers ('?'), digit grouping or '%' into
    floats: in a ';' file ',' is the decimal mark and '.' groups thousands, elsewhere ','
    groups; percentages become fractions."""
    text = frame[col].dropna().astype(str).str.strip()
    markers = text.isin(MISSING_MARKERS)
    rest = text[~markers]
    if rest.empty:
        return
    if not_a_number(rest.iloc[:200]).any():
        return  # text (the rules below would leave it too): skip the costly full-column parse
    percent = bool(rest.str.fullmatch(PERCENT).all())
    if percent:
        rest = rest.str.rstrip("%").str.strip()
    values = pd.to_numeric(rest, errors="coerce")
    if values.isna().any():
        pattern, style = (EUROPEAN, "decimal comma") if sep == ";" else (ENGLISH, "thousands ','")
        fits = rest.str.fullmatch(pattern)
        if not fits.all():
            if (fits | rest.str.fullmatch(EUROPEAN) | rest.str.fullmatch(ENGLISH)).all():
                raise DataError(f"{where}: column {col!r} holds {rest[~fits].iloc[0]!r}, a "
                                f"number format a {sep!r}-separated file does not use "
                                f"({style} expected); re-save the column as plain numbers")
            return  # text: check_numeric_column or the categorical encoder decides
        if sep == ";":
            rest = rest.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
        values = pd.to_numeric(rest.str.replace(",", "", regex=False))
        note(notes, where, f"column {col!r}", f"read as numbers with {style}",
             f"e.g. {text[~markers].iloc[0]!r} -> {float(values.iloc[0]):g}")
    if percent:
        values = values / 100.0
        note(notes, where, f"column {col!r}", "read percentages as fractions",
             f"e.g. {text[~markers].iloc[0]!r} -> {float(values.iloc[0]):g}")
    if markers.any():
        note(notes, where, f"column {col!r}", f"{int(markers.sum())} values read as missing",
             f"markers {sorted(set(text[markers]))} in an otherwise numeric column")
    frame[col] = values.reindex(frame.index).astype(np.float64)


def not_a_number(text: pd.Series) -> pd.Series:
    """True where a value is neither a plain number nor one of the spellings read as one."""
    spelled = (text.str.fullmatch(EUROPEAN) | text.str.fullmatch(ENGLISH)
               | text.str.fullmatch(PERCENT))
    return pd.to_numeric(text, errors="coerce").isna() & ~spelled


def check_unique_header(path: Path, sep: str = ",") -> None:
    """Reject repeated column names (pandas would silently rename the second to `name.1`)."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle, delimiter=sep), [])
    seen: set[str] = set()
    for name in (n.strip() for n in header if n.strip()):
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears more than once in the header")
        seen.add(name)


def is_numeric(column: pd.Series) -> bool:
    """True for numeric and boolean columns."""
    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
