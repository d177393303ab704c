"""CSV files as users save them → a DataFrame: separator (, ; tab |), UTF-8 with or without
a BOM, spaces around names, digit grouping, decimal commas and missing markers."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError

log = logging.getLogger(__name__)
Note = dict[str, str]
"""An unusual input that was handled: {"item", "action", "reason"} (DatasetMeta.notes)."""

SEPARATORS = (",", ";", "\t", "|")
SNIFF_BYTES = 1 << 16  # the header and first lines decide the separator
# Read as missing in a column that is otherwise numeric (besides pandas' NA, n/a, null, ...).
MISSING_MARKERS = ("?", "-", "--", ".")
# A first group of 0 is never digit grouping: "0,125" / "0.125" are decimals, never 125.
EUROPEAN = re.compile(r"[+-]?([1-9]\d{0,2}(\.\d{3})+|\d+)(,\d+)?")  # 1.234,5 (';' files)
ENGLISH = re.compile(r"[+-]?([1-9]\d{0,2}(,\d{3})+|\d+)(\.\d+)?")  # 1,234.5
DOT_GROUPED = re.compile(r"[+-]?[1-9]\d{0,2}(\.\d{3})+")  # 1.500: 1.5 or 1500?
BOOLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False,
         "false": False}
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


def read_frame(path: Path, what: str = "CSV file", sep: str = "auto",
               decimal: str | None = None, text: Collection[str] = ()
               ) -> tuple[pd.DataFrame, str, list[Note]]:
    """Read a UTF-8 CSV (BOM allowed) with a unique header and at least one row; return it,
    the separator used and notes on the number formats it normalised. A ';' file's decimal
    mark is `decimal` (training's) or decided from the file (frame.attrs["decimal"]);
    `text` columns stay text."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    sniffed = sniff_separator(path) if sep == "auto" else sep
    used = sniffed or ","
    hint = "" if sniffed else "; none of , ; tab | splits every line into equally many fields"
    try:
        # pandas would read a ';' file's "1.500" as 1.5 itself: its columns are decided here.
        dtype = str if used == ";" else {c: str for c in text}
        frame = pd.read_csv(path, sep=used, encoding="utf-8-sig", skipinitialspace=True,
                            dtype=dtype)
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
    if used == ";":
        decimal = decide_decimal(frame) if decimal is None else decimal
        frame.attrs["decimal"] = decimal
        for col in frame.columns:
            present = frame[col].dropna()
            if col not in text and frame[col].notna().all() and present.isin(list(BOOLS)).all():
                frame[col] = present.map(BOOLS).astype(bool)  # as pandas reads other files
    for col in frame.columns:
        if not is_numeric(frame[col]) and col not in text:
            normalise_numbers(frame, col, used, str(path), notes, decimal or "")
    return frame, used, notes


def read_csv(path: Path, what: str = "CSV file", sep: str = "auto",
             decimal: str | None = None, text: Collection[str] = ()) -> pd.DataFrame:
    """`read_frame`'s table alone (batch prediction, serving examples)."""
    return read_frame(path, what, sep, decimal, text)[0]


def number_text(column: pd.Series) -> pd.Series | None:
    """A column's stripped values without missing markers and '%' when all are number
    spellings; None for text."""
    text = column.dropna().astype(str).str.strip()
    text = text[~text.isin(MISSING_MARKERS)].str.rstrip("%").str.strip()
    return None if text.empty or not_a_number(text).any() else text


def decide_decimal(frame: pd.DataFrame) -> str:
    """A ';' file's decimal mark: ',' if any number column has a decimal comma, else '.' if
    any has a decimal point that cannot be grouping (1.5, 0.125), else '' (undecided: a
    value such as 1.500 is then refused as ambiguous)."""
    point = False
    for col in frame.columns:
        text = number_text(frame[col])
        if text is None:
            continue
        if text.str.contains(",", regex=False).any():
            return ","
        point = point or bool((text.str.contains(".", regex=False)
                               & ~text.str.fullmatch(DOT_GROUPED)).any())
    return "." if point else ""


def semicolon_numbers(rest: pd.Series, decimal: str, where: str, col: str) -> pd.Series:
    """Numbers of a ';' file with its decimal mark; a value whose reading it leaves open
    (1.500 where nothing decided the mark), or of the other convention, is an error."""
    comma = rest.str.contains(",", regex=False)
    fits = rest.str.fullmatch(EUROPEAN) if decimal == "," else ~comma
    if decimal == "":
        ambiguous = rest.str.fullmatch(DOT_GROUPED)
        if ambiguous.any():
            row = rest.index[ambiguous.to_numpy()][0]
            raise DataError(f"{where}: column {col!r} row {row} holds {rest[row]!r}: '.' may "
                            "group thousands or mark decimals, and no value in the file "
                            "decides which; re-save the column with decimal commas or "
                            "without digit grouping")
        fits = ~comma | rest.str.fullmatch(EUROPEAN)
    if not fits.all():
        row = rest.index[~fits.to_numpy()][0]
        style = "decimal comma" if decimal == "," else "decimal point"
        raise DataError(f"{where}: column {col!r} holds {rest[row]!r}, a number format a "
                        f"';'-separated file does not use (row {row}; {style} expected); "
                        "re-save the column as plain numbers")
    european = comma if decimal == "" else pd.Series(decimal == ",", index=rest.index)
    text = rest.where(~european, rest.str.replace(".", "", regex=False)
                      .str.replace(",", ".", regex=False))
    return pd.to_numeric(text)


def normalise_numbers(frame: pd.DataFrame, col: str, sep: str, where: str,
                      notes: list[Note], decimal: str = "") -> None:
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
    if sep == ";":
        if not_a_number(rest).any():
            return  # text past the first 200 rows: check_numeric_column decides
        values = semicolon_numbers(rest, decimal, where, col)
        if (rest.str.contains(",", regex=False)
                | (decimal == ",") & rest.str.contains(".", regex=False)).any():
            note(notes, where, f"column {col!r}", "read as numbers with decimal comma",
                 f"e.g. {text[~markers].iloc[0]!r} -> {float(values.iloc[0]):g}")
    elif values.isna().any():
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
    # Plain integers stay int (as pandas reads them): row identifiers are integer columns.
    whole = (pd.api.types.is_integer_dtype(values) and len(values) == len(frame)
             and not rest.str.contains(r"[.,]").any())
    frame[col] = values.reindex(frame.index) if whole else (
        values.reindex(frame.index).astype(np.float64))


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
