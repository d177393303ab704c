"""Argument parsing, logging and error handling shared by every stage entry point."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def parse_stage_args(argv: list[str] | None, description: str,
                     paths: dict[str, str]) -> argparse.Namespace:
    """Parse --params plus the stage's path options; defaults match dvc.yaml."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: %(default)s)")
    for name, default in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default,
                            help="(default: %(default)s)")
    return parser.parse_args(argv)


def stage_entry(fn: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Wrap a stage main: set up logging, turn PipelineError into a message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> None:
        # Download bars from MLflow's artifact client are noise in DVC logs.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            # Third-party INFO chatter (matplotlib units, alembic migrations) drowns our lines.
            for noisy in ("matplotlib", "alembic", "mlflow.store.db.utils"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            fn(argv)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
