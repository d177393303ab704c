"""Batch prediction: raw CSV rows or image files → the pyfunc → id, probability, label (CSV)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path
from pipeline.core.progress import Progress
from pipeline.data.csvfiles import read_csv
from pipeline.data.folders import FolderScan
from pipeline.data.images import check_suffix, decode_image
from pipeline.data.tables import check_columns
from pipeline.registry.features import conform_table

log = logging.getLogger("pipeline.cli.predict")
CHUNK = 512


def collect_images(inputs: list[Path], skip_bad: bool = False) -> list[Path]:
    """Image files from folders (recursive, sorted; OS/tool metadata and hidden files ignored
    and other non-images refused, as preprocess does) and explicit file arguments."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            scan = FolderScan(item)
            for file in scan.files(item):
                try:
                    check_suffix(file)
                    files.append(file)
                except DataError as err:
                    if not skip_bad:
                        raise DataError(f"{err} (or use --skip-bad to skip it)") from None
                    log.warning("skipping %s", err)
            scan.notes()  # one summary line of what was ignored
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"--input {item}: no such file or folder")
    if not files:
        raise DataError(f"--input {', '.join(map(str, inputs))}: no image files found")
    return files


def image_frame(files: list[Path], size: int, channels: int,
                skip_bad: bool) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Read image bytes; a file that does not decode is an error naming it (or skipped)."""
    rows, ids, skipped = [], [], []
    for file in files:
        data = file.read_bytes()
        try:
            with warnings.catch_warnings():
                # PIL warns above 89 megapixels before JPEG reduce-on-decode; the budget decides.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                decode_image(data, size, channels)  # validate here so the error names the file
        except DataError as err:
            message = f"{file}: {str(err).removeprefix('<bytes>: ')}"
            if not skip_bad:
                raise DataError(f"{message} (use --skip-bad to skip it)") from None
            log.warning("skipping %s", message)
            skipped.append(str(file))
            continue
        rows.append(data)
        ids.append(str(file))
    return pd.DataFrame({"image": rows}), ids, skipped


def table_frame(path: Path, meta: dict, target: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV of raw rows; drop the label column if present; columns must match training."""
    table = meta["table"]
    # Training's separator and decimal mark: a batch file's own values never re-decide them.
    text = [c for c, kind in table["dtypes"].items() if kind == "string"]
    frame = read_csv(path, "--input CSV file", sep=table.get("sep", "auto"),
                     decimal=table.get("decimal", ""), text=text)
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
    expected = table["columns"]
    dropped = table.get("dropped", {})  # ignored by the model: may be left out
    check_columns(frame, expected, str(path), optional=dropped)
    present = [c for c in expected if c in frame.columns]
    return (conform_table(frame[present], meta["table"]["dtypes"], str(path)),
            [str(i) for i in frame.index])


def predict(model_uri: str, inputs: list[Path], output: Path, skip_bad: bool = False) -> int:
    """Predict every input row/file with the pyfunc and write the CSV atomically; return rows."""
    model = mlflow.pyfunc.load_model(model_uri)
    # The metadata logged with the model is the contract: kind, columns, image geometry.
    meta = (model.metadata.metadata or {}).get("pipeline")
    if not meta:
        raise DataError(f"--model {model_uri}: not a model registered by this pipeline "
                        "(no 'pipeline' metadata)")
    if meta["kind"] == "table":
        if len(inputs) != 1 or inputs[0].suffix.lower() != ".csv":
            raise DataError(f"--input: this model takes one CSV file, got {list(map(str, inputs))}")
        frame, ids = table_frame(inputs[0], meta, meta["table"]["target"])
    else:
        files = collect_images(inputs, skip_bad)
        frame, ids, _ = image_frame(files, meta["image"]["size"], meta["image"]["channels"],
                                    skip_bad)
    parts = []
    progress = Progress(max(1, -(-len(frame) // CHUNK)), "predict", every=10)
    for start in range(0, len(frame), CHUNK):
        try:
            parts.append(model.predict(frame.iloc[start:start + CHUNK]))
        except MlflowException as err:
            if err.error_code != "INVALID_PARAMETER_VALUE":
                raise
            # The model refused these rows (a RequestError, or MLflow's schema check):
            # the input's fault, so the error names the input, not the model.
            raise DataError(f"--input {', '.join(map(str, inputs))}: {err.message}") from None
        progress.update(rows=min(start + CHUNK, len(frame)))
    progress.close()
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"probability": np.zeros(0), "label": []})
    out.insert(0, "id", ids)
    with atomic_path(output) as tmp:
        out.to_csv(tmp, index=False, float_format="%.9f")
    return len(out)
