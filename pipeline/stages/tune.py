"""DVC stage: Optuna study over tune.search_space → models/best_params.json for train."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import tracking
from pipeline.config import load_params
from pipeline.files import write_json
from pipeline.stages._common import parse_stage_args, stage_entry
from pipeline.tune import TuneJob, log_study, parent_run, run_study, storage_url, study_name

log = logging.getLogger(__name__)


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the tune stage."""
    args = parse_stage_args(argv, __doc__, {"data_dir": "data/processed",
                                            "train_dir": "data/augmented",
                                            "out": "models/best_params.json"})
    params = load_params(args.params)
    if not params.tune.enabled:
        log.info("tune.enabled is false: train uses params.yaml as is")
        write_json(args.out, {"enabled": False, "params": {}})
        return
    hashes = {path: tracking.dvc_hash(path) for path in (args.data_dir, args.train_dir)}
    name = study_name(params, hashes)
    storage = storage_url()
    tracking.configure()
    log.info("study %s in %s (%d trials, %d worker(s))", name, storage, params.tune.n_trials,
             params.tune.n_workers)
    with parent_run(params, name, storage) as run_id:
        job = TuneJob(params=params, data_dir=args.data_dir, train_dir=args.train_dir,
                      storage=storage, study_name=name, parent_run_id=run_id,
                      experiment_id=tracking.experiment_id(params.mlflow.experiment),
                      tracking_uri=tracking.tracking_uri())
        study = run_study(job)
        best = log_study(study, params.tune.metric)
    log.info("best trial %d: val_%s=%.5f %s", best["trial"], params.tune.metric, best["value"],
             best["params"])
    write_json(Path(args.out), {"enabled": True, "params": best["params"],
                                "metric": params.tune.metric, "value": best["value"],
                                "trial": best["trial"], "study_name": name,
                                "n_trials": params.tune.n_trials})


if __name__ == "__main__":
    main()
