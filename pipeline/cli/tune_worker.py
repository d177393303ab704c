"""Join the current Optuna study from any host: `python -m pipeline.cli.tune_worker` (no DVC).

Needs the repo at the same commit, the pulled data (`dvc pull data/processed data/augmented`)
and the team's MLFLOW_TRACKING_URI and OPTUNA_STORAGE (a PostgreSQL URL). It works until the
study holds tune.n_trials finished trials, then exits; the tune stage (on whichever host runs
`dvc repro`) writes best_params.json when the study is done.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.core.config import Params, load_params
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.interrupts import INTERRUPTED_EXIT, Interrupted
from pipeline.core.services import mask
from pipeline.stages._common import setup_logging
from pipeline.stages.validate import check_params, pipeline_file

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def join(params: Params, data_dir: str, train_dir: str, storage: str, worker: int,
         n_workers: int) -> optuna.Study:
    """Work on the current study from another host until it holds tune.n_trials trials."""
    # Loaded here, so --help and argument errors answer without loading torch and MLflow.
    from pipeline.tracking.store import experiment_id
    from pipeline.tuning import tune
    from pipeline.tuning.study import is_database

    if not is_database(storage):
        raise ConfigError(f"OPTUNA_STORAGE = {storage!r}: workers on other hosts need the "
                          "team's database (postgresql://...), not a local journal file")
    name = tune.open_services(params, data_dir, train_dir, storage)
    log.info("joining study %s in %s as worker %d (%d process(es))", name, mask(storage),
             worker, n_workers)
    run_id = tune.parent_run_id(params, name, storage)
    params = replace(params, tune=replace(params.tune, n_workers=n_workers))
    job = tune.TuneJob(params, data_dir, train_dir, storage, name, run_id,
                       experiment_id(params.mlflow.experiment), worker)
    return tune.run_study(job)


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
    try:
        params = load_params(args.params)
        check_params(params, pipeline_file())  # exactly what the validate stage checks
        if not params.tune.enabled:
            raise PipelineError(f"{args.params}: tune.enabled is false; nothing to join")
        from pipeline.tuning.study import storage_url

        study = join(params, args.data_dir, args.train_dir, storage_url(),
                     host_worker() if args.worker is None else args.worker, args.workers)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, Interrupted):
        print("error: worker interrupted (Ctrl-C); its trial failed, and the next worker to "
              "ask reruns its params", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    print(f"study {study.study_name}: done ({len(study.trials)} trials in the database)")


if __name__ == "__main__":
    main()
