"""Batch prediction CLI: raw CSV rows or image files → id, probability, label (CSV)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

# Only light imports here: --help and argument errors must answer before MLflow, torch and
# pandas load (seconds); the work lives in pipeline.registry.batch, imported once the arguments
# are good.
from pipeline.core import layout
from pipeline.core.config import Params, load_params
from pipeline.core.errors import DataError, PipelineError
from pipeline.registry.contract import AUTO, model_name

log = logging.getLogger("pipeline.cli.predict")
REGISTRATION = Path(layout.in_reports(layout.REGISTRATION))  # the register stage's output
# preprocess's metadata, which register reads (pipeline.data.dataset.META_FILE: spelled here
# because that module loads numpy; tests/test_data.py checks they agree).
META = Path("data/processed/meta.json")


def default_model_uri(params_path: str, meta_path: Path = META) -> str:
    """models:/<name>@champion, the name resolved from params.yaml as register resolves it."""
    params = load_params(params_path) if Path(params_path).is_file() else Params()
    setting, positive = params.register.model_name, params.data.positive_class
    if setting == AUTO and positive is None:
        # Null means "1/True, or the second class folder": preprocess decided which.
        if not meta_path.is_file():
            raise DataError(f"register.model_name is auto and data.positive_class is null, so "
                            f"the model's name comes from {meta_path}, which is missing: run "
                            "`dvc repro`, or pass --model")
        try:
            positive = str(json.loads(meta_path.read_text())["classes"][1])
        # Not pipeline.data.dataset's reader: it loads numpy, and this runs before any heavy import.
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise DataError(f"{meta_path}: not a dataset metadata file of this pipeline version "
                            f"({type(err).__name__}: {err}), so the model's name cannot be "
                            "derived: rerun preprocess (`dvc repro`), or pass --model") from None
    name, _ = model_name(setting, params.data.path, positive or "")
    return f"models:/{name}@champion"


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="any MLflow model URI (default: "
                        "models:/<register.model_name>@champion; auto resolved as register "
                        "does, e.g. digits-odd)")
    parser.add_argument("--input", nargs="+", required=True, type=Path,
                        help="a CSV file, or image folders/files")
    parser.add_argument("--output", required=True, type=Path, help="CSV to write")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images with a warning instead of failing")
    parser.add_argument("--params", default="params.yaml", help="for the default model name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Inputs first: a typo in a path should not wait for (or blame) the model download.
        for item in args.input:
            if not item.exists():
                raise DataError(f"--input {item}: no such file or folder")
        uri = args.model or default_model_uri(args.params)
    except PipelineError as err:
        fail(str(err))
    import mlflow

    from pipeline.registry.batch import predict
    from pipeline.tracking.store import configure, tracking_uri

    try:
        check_store_exists(uri, tracking_uri())
        configure()
        n = predict(uri, args.input, args.output, args.skip_bad)
    except PipelineError as err:
        fail(str(err))
    except mlflow.exceptions.MlflowException as err:
        missing = err.error_code == "RESOURCE_DOES_NOT_EXIST" or "alias" in err.message
        hint = store_hint(uri, tracking_uri()) if missing else ""
        fail(f"--model {uri}: {err.message}{hint}")
    log.info("wrote %d predictions to %s", n, args.output)


def check_store_exists(uri: str, store: str) -> None:
    """Refuse a registry or run URI whose SQLite store file is missing."""
    # SQLite would create an empty one, and the next stage would take it for the real store.
    from pipeline.tracking.sqlite_store import sqlite_file

    db = sqlite_file(store)
    if db is None or db.is_file() or not uri.startswith(("models:/", "runs:/")):
        return
    hint = store_hint(uri, store) or (": run `dvc repro` to train and register a model, or "
                                      "point MLFLOW_TRACKING_URI at your team's store")
    fail(f"--model {uri}: there is no tracking store at {db} (MLFLOW_TRACKING_URI), so no "
         f"model to load{hint}")


def store_hint(uri: str, store: str, report: Path = REGISTRATION) -> str:
    """For a missing champion: what DVC says was registered and where, and the fix."""
    if not uri.endswith("@champion") or not report.is_file():
        return ""
    from pipeline.core.services import mask

    done = json.loads(report.read_text())
    # DVC skips register while its output exists, so only a forced rerun fills this store.
    return (f". {report} says {done.get('model_name')} v{done.get('version')} was registered "
            f"in {done.get('tracking_uri', 'another store')}, but this store "
            f"({mask(store)}) lacks it: `dvc repro -f -s register` registers the current model "
            "here (`dvc repro -f register` also reruns the study and training into it), or "
            "point MLFLOW_TRACKING_URI at that store")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (the pipeline's code for bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    main()
