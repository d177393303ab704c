"""CSV tables as users have them: ids, saved indexes, dates, separators, number formats."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from attacks.common import SPLIT, Case, preprocess
from pipeline.data.dataset import DatasetMeta

N = 200


def frame(n: int = N) -> pd.DataFrame:
    """Noise features and labels that follow row order (what makes a row index leak)."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x1": rng.normal(size=n).round(4), "x2": rng.normal(size=n).round(4),
                         "colour": rng.choice(["red", "green", "blue"], n),
                         "label": ["ham"] * (n // 2) + ["spam"] * (n - n // 2)})


def table(edit: Callable[[pd.DataFrame], pd.DataFrame] = lambda f: f, raw: bytes | None = None,
          **data: object) -> Callable[[Path], list[str]]:
    """Setup: write `edit(frame())` as CSV (or `raw` bytes), preprocess it with `data` keys."""
    def setup(root: Path) -> list[str]:
        path = root / "data" / "raw" / "t.csv"
        path.parent.mkdir(parents=True)
        if raw is None:
            edit(frame()).to_csv(path, index=bool(data.pop("index", False)),
                                 sep=str(data.pop("sep", ",")))
        else:
            path.write_bytes(raw)
        return preprocess(root, {"data": {"source": "csv", "path": str(path), "target": "label",
                                          "positive_class": "spam", "split": SPLIT, **data}})
    return setup


def meta_says(**want: object) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    """Check: meta.json's table has these values (`dropped`: these keys), and the training
    array is as wide as the feature names it lists."""
    def check(root: Path, proc: subprocess.CompletedProcess) -> str | None:
        meta = json.loads((root / "out" / "meta.json").read_text())
        table = meta["table"]
        got = {k: sorted(table[k]) if k == "dropped" else table[k] for k in want}
        if got != want:
            return f"meta.json table {got}, expected {want}"
        names = DatasetMeta.from_json(meta).table.feature_names()
        width = np.load(root / "out" / "X_train.npy").shape[1]
        if width != len(names):
            return f"{width} features, meta lists {len(names)}"
        if want.get("dropped") and not any(n["action"] == "dropped" for n in meta["notes"]):
            return "no 'dropped' note in meta.json"
        return None
    return check


def ids(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(customer=[f"cust-{i:06d}" for i in range(len(f))])


def wide(f: pd.DataFrame) -> pd.DataFrame:
    """A string id, an integer customer_id and a 100-value city column (capped)."""
    return ids(f).assign(customer_id=np.arange(len(f)) * 7 + 1000,
                         city=[f"c{i % 70}" if i % 5 else f"town{i}" for i in range(len(f))])


def spellings(f: pd.DataFrame) -> pd.DataFrame:
    """'?' for missing, quoted thousands ('1,234')."""
    return f.assign(x1=[f"{1000 + 13 * i:,}" for i in range(len(f))],
                    x2=f["x2"].astype(object).where(f.index % 9 > 0, "?"))


NUMBERS = {"x1": "float", "x2": "float", "colour": "string"}
SEMI = frame().to_csv(sep=";", index=False)

CASES = [
    Case("tables: string id, integer id (dropped), 100-value city (capped)", table(wide),
         check=meta_says(dropped=["customer", "customer_id"], infrequent=["city"])),
    Case("tables: saved pandas index (Unnamed: 0) with ordered labels is dropped",
         table(lambda f: f.sample(frac=1, random_state=0), index=True),
         check=meta_says(dropped=["Unnamed: 0"])),
    Case("tables: ISO date column becomes one number (not one-hot)",
         table(lambda f: f.assign(when=pd.date_range("2021-01-01", periods=len(f)).astype(str))),
         check=meta_says(dates=["when"], categorical={"colour": ["blue", "green", "red"]})),
    Case("tables: non-ISO dates are refused",
         table(lambda f: f.assign(when=[f"{1 + i % 28}/5/2021" for i in range(len(f))])),
         "column 'when' holds dates, but '1/5/2021' is not an ISO date"),
    Case("tables: ';'-separated CSV is read", table(sep=";"), check=meta_says(sep=";")),
    Case("tables: ';' CSV with data.csv_sep ','", table(sep=";", csv_sep=","),
         "as one column 'x1;x2;colour;label', which contains ';'; set data.csv_sep: ';'"),
    Case("tables: Excel export (UTF-8 BOM, ';', decimal commas)",
         table(raw=b"\xef\xbb\xbf" + SEMI.replace(".", ",").encode()),
         check=meta_says(sep=";", dtypes=NUMBERS)),
    Case("tables: '?' for missing, quoted thousands '1,234'", table(spellings),
         check=meta_says(dtypes=NUMBERS)),
    Case("tables: mixed decimal marks are refused",
         table(lambda f: f.assign(x1=["1,5" if i % 2 else "2.5" for i in range(len(f))]),
               sep=";"), "column 'x1' holds '2.5', a number format a ';'-separated file"),
    Case("tables: nothing but identifiers is refused",
         table(lambda f: ids(f)[["customer", "label"]]), "no usable feature column"),
]
