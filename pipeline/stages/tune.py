"""DVC stage: Optuna study over tune.search_space → models/best_params.json for train."""

from __future__ import annotations

import argparse
import sys

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.files import write_json
from pipeline.core.interrupts import INTERRUPTED_EXIT, Interrupted
from pipeline.stages._common import stage_main
from pipeline.tuning.study import storage_url
from pipeline.tuning.tune import tune

PATHS = {"data_dir": "data/processed", "train_dir": "data/augmented",
         "out": layout.in_models(layout.BEST_PARAMS)}


def run(params: Params, args: argparse.Namespace) -> None:
    """Run or resume the study; write the best trial's params (none when tuning is off)."""
    write_json(args.out, tune(params, args.data_dir, args.train_dir, storage_url()))


stage = stage_main(__doc__, PATHS, run)


def main(argv: list[str] | None = None) -> None:
    """The stage's entry point; Ctrl-C ends it with one line and exit status 130."""
    try:
        stage(argv)
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"error: {stop or 'tune interrupted (Ctrl-C); run it again to resume'}",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None


if __name__ == "__main__":
    main()
