"""DVC stage: register the evaluated model, gate it against the champion, record the decision."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import mlflow

from pipeline import registry, serving, tracking
from pipeline.config import load_params
from pipeline.data import load_splits
from pipeline.files import read_json, write_json
from pipeline.models import WEIGHTS_FILE
from pipeline.stages._common import parse_stage_args, stage_entry
from pipeline.stages.train import MODEL_TAG

log = logging.getLogger(__name__)


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the register stage."""
    args = parse_stage_args(argv, __doc__, {
        "data_dir": "data/processed", "train_dir": "data/augmented", "model_dir": "models",
        "metrics": "reports/metrics.json", "out": "reports/registration.json"})
    params = load_params(args.params)
    cfg = params.register
    splits, meta = load_splits(args.data_dir, names=("test",))
    test = splits["test"]
    metrics = read_json(args.metrics)
    frame = serving.raw_inputs(meta, test.ids)
    if meta["kind"] == "table":
        frame = serving.conform_table(frame, meta)

    client = tracking.configure()
    sha = hashlib.sha256((Path(args.model_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()
    run_id = tracking.find_run(params.mlflow.experiment, MODEL_TAG, sha)
    with tracking.start_run(params.mlflow.experiment, run_name="register", run_id=run_id,
                            tags={MODEL_TAG: sha}) as run:
        run_id = run.info.run_id
        info = registry.log_raw_model(args.model_dir, Path(args.data_dir) / "meta.json",
                                      metrics["threshold"], frame.head(3))
        params_hash = hashlib.sha256(json.dumps(
            asdict(params), sort_keys=True, default=str).encode()).hexdigest()
        tags = {**{f"test_{k}": f"{metrics[k]:.6f}" for k in
                   ("accuracy", "f1", "roc_auc", "average_precision", "log_loss", "brier")},
                "dvc.data/processed": tracking.dvc_hash(args.data_dir),
                "dvc.data/augmented": tracking.dvc_hash(args.train_dir),
                "git_commit": tracking.git_info()["mlflow.source.git.commit"],
                "params_sha256": params_hash, "run_id": run_id, "model_sha256": sha}
        version = str(registry.register(info.model_uri, cfg.model_name, tags).version)
        uri = f"models:/{cfg.model_name}/{version}"
        positive = meta["classes"][1]
        challenger_score = registry.score(uri, frame, test.y, positive, cfg.metric)
        current = registry.champion(client, cfg.model_name)
        champion_score, error = None, None
        if current is not None:
            try:
                # The champion is re-scored through its own pyfunc on today's test split.
                champion_score = registry.score(f"models:/{cfg.model_name}@champion", frame,
                                                test.y, positive, cfg.metric)
            except Exception as err:  # any failure means it cannot compete
                error = f"{type(err).__name__}: {str(err)[:300]}"
        decision = registry.decide(cfg, challenger_score, champion_score,
                                   str(current.version) if current else None, error)
        trail = registry.record(client, cfg.model_name, version, decision)
        mlflow.set_tags({"pipeline.registered_version": version,
                         "pipeline.gate_decision": "promoted" if decision.promote else
                         "rejected"})
        log.info("%s v%s: %s — %s", cfg.model_name, version,
                 "champion" if decision.promote else "challenger only", decision.reason)
        report = {"model_name": cfg.model_name, "version": version,
                  "model_uri": info.model_uri, "run_id": run_id, **asdict(decision),
                  "champion_version": (version if decision.promote
                                       else decision.champion_version),
                  "audit": trail}
        mlflow.log_dict(report, "registration.json")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
