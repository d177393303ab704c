"""DVC stage: Optuna study over tune.search_space → models/best_params.json for train."""

from __future__ import annotations

import argparse

from pipeline.config import Params
from pipeline.files import write_json
from pipeline.stages._common import stage_main
from pipeline.study import storage_url
from pipeline.tune import tune

PATHS = {"data_dir": "data/processed", "train_dir": "data/augmented",
         "out": "models/best_params.json"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Run or resume the study; write the best trial's params (none when tuning is off)."""
    write_json(args.out, tune(params, args.data_dir, args.train_dir, storage_url()))


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
