"""What every stage entry point shares: arguments, params loading, logging and error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.files import disk_full_error, is_disk_full

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
        for noisy in ("matplotlib", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # It logs a traceback for each database error it then raises (and the stage reports).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def fail(message: str) -> NoReturn:
    """Print `error: message` and exit 2 (the pipeline's code for a user-fixable state)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def stage_main(description: str, paths: dict[str, str],
               run: StageRun) -> Callable[[list[str] | None], None]:
    """A stage's `main(argv)`: parse → load params → `run(params, args)`; errors exit 2."""

    def main(argv: list[str] | None = None) -> None:
        setup_logging()
        args = parse_stage_args(argv, description, paths)
        try:
            run(load_params(args.params), args)
        except PipelineError as err:
            fail(str(err))
        except KeyboardInterrupt as stop:
            # Ctrl-C is the user's choice, not a fault: one line (the stage's own account of
            # what it keeps, when it gave one) and the shell's code for it.
            message = str(stop) or ("interrupted (Ctrl-C); outputs are written only when a "
                                    "stage completes, so rerun it")
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(130) from None
        except OSError as err:
            # A write our atomic helpers did not make (a library's own file): name its path
            # when the OS gave one.
            if not is_disk_full(err):
                raise
            fail(str(disk_full_error(err.filename or "an output", err)))

    main.__doc__ = f"Entry point of the stage: {description.splitlines()[0]}"
    return main
