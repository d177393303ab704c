"""DVC stage: training split → augmented training set in data/augmented/."""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.augment import augment_split
from pipeline.config import Params
from pipeline.dataset import load_splits, save_splits
from pipeline.stages._common import stage_main

PATHS = {"data_dir": "data/processed", "out": "data/augmented"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Add `augment.copies` augmented copies of the training split."""
    splits, meta = load_splits(args.data_dir, names=("train",))
    train = augment_split(splits["train"], meta, params.augment, params.seed)
    meta = dataclasses.replace(meta, augment=dataclasses.asdict(params.augment))
    save_splits(args.out, {"train": train}, meta)


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
