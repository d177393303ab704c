"""DVC stage: raw source → validated, split, train-normalised arrays in data/processed/."""

from __future__ import annotations

import argparse

from pipeline.core.config import Params
from pipeline.data.sources import preprocess
from pipeline.stages._common import stage_main

PATHS = {"out": "data/processed"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Read and validate data.path, split it, write arrays and metadata."""
    preprocess(params.data, params.seed, args.out)


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
