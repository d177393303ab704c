"""DVC stage: scikit-learn's bundled data sets as files in data/raw/ (ImageFolder and CSV).

As stage outputs they are cached, pushed to the team's DVC remote and pulled by teammates like
any data a user brings with `dvc add`, so a fresh clone after `dvc pull` reruns nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.config import Params
from pipeline.data.sources import write_builtins
from pipeline.stages._common import stage_main

PATHS = {"out_dir": "data/raw"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Write every built-in set (digits/, breast_cancer.csv) under --out-dir."""
    write_builtins(Path(args.out_dir))


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
