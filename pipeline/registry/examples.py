"""The raw rows behind processed samples: the logged model's input example and the test rows
the gate scores both models on, read back from the source the data stage read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.csvfiles import read_csv
from pipeline.data.dataset import DatasetMeta
from pipeline.registry.features import conform_table


def raw_inputs(meta: DatasetMeta, ids: list[str]) -> pd.DataFrame:
    """The raw rows behind processed sample ids, typed as the signature wants them."""
    source = Path(meta.path)
    if meta.table is None:
        return pd.DataFrame({"image": [(source / i).read_bytes() for i in ids]})
    text = [c for c, kind in meta.table.dtypes.items() if kind == "string"]
    frame = read_csv(source, sep=meta.table.sep, decimal=meta.table.decimal, text=text)
    rows = frame.loc[[int(i) for i in ids]].drop(columns=[meta.table.target])
    return conform_table(rows, meta.table.dtypes)
