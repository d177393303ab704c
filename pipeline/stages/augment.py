"""DVC stage: training split → augmented training set in data/augmented/."""

from __future__ import annotations

import argparse

from pipeline.core.config import Params
from pipeline.data.augment import write_augmented
from pipeline.data.dataset import load_splits
from pipeline.stages._common import stage_main

PATHS = {"data_dir": "data/processed", "out": "data/augmented"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Add `augment.copies` augmented copies of the training split."""
    splits, meta = load_splits(args.data_dir, names=("train",))
    write_augmented(splits["train"], meta, params.augment, params.seed, args.out)


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
