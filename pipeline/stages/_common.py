"""What every stage entry point shares: arguments, params loading, logging and error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError

StageRun = Callable[[Params, argparse.Namespace], None]


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


def setup_logging() -> None:
    """INFO lines for our modules; third-party chatter (matplotlib, alembic) at WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("matplotlib", "alembic", "mlflow.store.db.utils"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def stage_main(description: str, paths: dict[str, str],
               run: StageRun) -> Callable[[list[str] | None], None]:
    """A stage's `main(argv)`: parse → load params → `run(params, args)`; errors exit 2."""

    def main(argv: list[str] | None = None) -> None:
        setup_logging()
        args = parse_stage_args(argv, description, paths)
        try:
            run(load_params(args.params), args)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    main.__doc__ = f"Entry point of the stage: {description.splitlines()[0]}"
    return main
