"""Join the current Optuna study from any host: `python -m pipeline.tune_worker` (no DVC).

Needs the repo at the same commit, the pulled data (`dvc pull data/processed data/augmented`)
and the team's MLFLOW_TRACKING_URI and OPTUNA_STORAGE (a PostgreSQL URL). It works until the
study holds tune.n_trials finished trials, then exits; the tune stage (on whichever host runs
`dvc repro`) writes best_params.json when the study is done.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys

from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.stages._common import setup_logging
from pipeline.study import storage_url


def host_worker() -> int:
    """A worker number of its own for this host and process (sampler streams differ per host)."""
    digest = hashlib.sha256(f"{platform.node()}:{os.getpid()}".encode()).digest()
    return 1000 + int.from_bytes(digest[:3], "big")  # the tune stage's workers are 0, 1, ...


def main(argv: list[str] | None = None) -> None:
    """Parse, load params, join the study; errors exit 2 with one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--train-dir", default="data/augmented")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this host (default: %(default)s)")
    parser.add_argument("--worker", type=int, default=None,
                        help="sampler stream number (default: derived from host and pid)")
    args = parser.parse_args(argv)
    setup_logging()
    from pipeline.tune import join  # torch and MLflow load after argument errors are reported

    try:
        params = load_params(args.params)
        if not params.tune.enabled:
            raise PipelineError(f"{args.params}: tune.enabled is false; nothing to join")
        study = join(params, args.data_dir, args.train_dir, storage_url(),
                     host_worker() if args.worker is None else args.worker, args.workers)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"study {study.study_name}: done ({len(study.trials)} trials in the database)")


if __name__ == "__main__":
    main()
