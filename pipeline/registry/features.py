"""Raw request rows → model inputs with the saved preprocessing (no MLflow, torch or sklearn).

What the registered pyfunc runs on every request, and what batch prediction runs on a CSV
before it calls the pyfunc.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.data.csvfiles import MISSING_MARKERS, is_numeric
from pipeline.data.dataset import DatasetMeta
from pipeline.data.model_inputs import IMAGE_COLUMNS, Budget, check_rows, image_rows
from pipeline.data.tables import check_numeric_column, transform_table


def frame_to_features(frame: pd.DataFrame, meta: DatasetMeta,
                      budget: Budget | None = None) -> np.ndarray:
    """Raw rows (CSV columns, or image bytes/pixels) → model inputs with the saved preprocessing."""
    check_rows(len(frame), budget)
    if meta.table is not None:
        return transform_table(frame, meta.table, where="model input")
    assert meta.image is not None
    extra = [str(c) for c in frame.columns if c not in IMAGE_COLUMNS]
    if extra:
        raise DataError(f"model input: unexpected columns {extra}; image models take "
                        f"{list(IMAGE_COLUMNS)}")
    return image_rows(frame, meta.image.size, meta.image.channels, budget)


def conform_table(frame: pd.DataFrame, kinds: dict[str, str], where: str = "input"
                  ) -> pd.DataFrame:
    """Cast CSV columns to the signature's types (ints → float, categories → str) so MLflow
    accepts them; missing markers ('?') are missing, other text in a numeric column is refused."""
    out = frame.copy()
    for col in out.columns:
        if kinds.get(col) in ("float", "int"):
            column = out[col]
            if not is_numeric(column):
                column = column.where(~column.astype("string").str.strip().isin(MISSING_MARKERS))
            check_numeric_column(where, column, share=0.0)
            out[col] = pd.to_numeric(column, errors="coerce").astype("float64")
        elif kinds.get(col) == "string":
            # An all-blank column reads as float64, which MLflow cannot cast to a string.
            column = out[col].astype(object)
            out[col] = column.where(column.isna(), column.astype(str)).where(column.notna(), None)
    return out
