"""Batch prediction CLI: raw CSV rows or image files → id, probability, label (CSV)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipeline import serving, tracking
from pipeline.config import load_params
from pipeline.errors import DataError, PipelineError
from pipeline.files import atomic_path
from pipeline.images import IMAGE_SUFFIXES, decode_image
from pipeline.progress import Progress
from pipeline.tables import check_columns, read_csv

log = logging.getLogger("pipeline.predict")
CHUNK = 512


def collect_images(inputs: list[Path]) -> list[Path]:
    """Image files from folders (recursive, sorted) and explicit file arguments."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and
                            p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
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
            decode_image(data, size, channels)  # validate here so the error can name the file
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
    frame = read_csv(path, "--input CSV file")
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
    expected = meta["table"]["columns"]
    check_columns(frame, expected, str(path))
    return (serving.conform_table(frame[expected], meta["table"]["dtypes"]),
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
        files = collect_images(inputs)
        frame, ids, _ = image_frame(files, meta["image"]["size"], meta["image"]["channels"],
                                    skip_bad)
    parts = []
    progress = Progress(max(1, -(-len(frame) // CHUNK)), "predict", every=10)
    for start in range(0, len(frame), CHUNK):
        parts.append(model.predict(frame.iloc[start:start + CHUNK]))
        progress.update(rows=min(start + CHUNK, len(frame)))
    progress.close()
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"probability": np.zeros(0), "label": []})
    out.insert(0, "id", ids)
    with atomic_path(output) as tmp:
        out.to_csv(tmp, index=False, float_format="%.9f")
    return len(out)


def default_model_uri(params_path: str) -> str:
    """models:/<register.model_name>@champion from params.yaml (or the default name)."""
    name = load_params(params_path).register.model_name if Path(params_path).is_file() else (
        "binary-classifier")
    return f"models:/{name}@champion"


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="any MLflow model URI (default: "
                        "models:/<register.model_name>@champion)")
    parser.add_argument("--input", nargs="+", required=True, type=Path,
                        help="a CSV file, or image folders/files")
    parser.add_argument("--output", required=True, type=Path, help="CSV to write")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images with a warning instead of failing")
    parser.add_argument("--params", default="params.yaml", help="for the default model name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tracking.configure()
    uri = args.model or default_model_uri(args.params)
    try:
        # Inputs first: a typo in a path should not wait for (or blame) the model download.
        for item in args.input:
            if not item.exists():
                raise DataError(f"--input {item}: no such file or folder")
        n = predict(uri, args.input, args.output, args.skip_bad)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except mlflow.exceptions.MlflowException as err:
        print(f"error: --model {uri}: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("wrote %d predictions to %s", n, args.output)


if __name__ == "__main__":
    main()
