"""DVC stage: register the evaluated model, gate it against the champion, record the decision."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.files import read_json, write_json
from pipeline.core.lineage import lineage_tags
from pipeline.core.typed import flatten
from pipeline.data.dataset import load_splits
from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE, load_model
from pipeline.registry import register as registry
from pipeline.stages._common import stage_main
from pipeline.tracking import metric_log, runs, store

PATHS = {"data_dir": "data/processed", "train_dir": "data/augmented", "model_dir": layout.MODELS,
         "metrics": layout.in_reports(layout.METRICS),
         "out": layout.in_reports(layout.REGISTRATION)}


def run(params: Params, args: argparse.Namespace) -> None:
    """Register a version tagged with its lineage; it becomes champion only if it wins."""
    store.configure(must_exist=True)  # it adds to train's run: checked before any work
    splits, meta = load_splits(args.data_dir, names=("test",))
    load_model(args.model_dir)  # a broken model is refused before the registry sees it
    # The name, and a model of another task refused, before the run or the registry changes.
    cfg = registry.resolve(params.register, meta)
    weights = Path(args.model_dir) / WEIGHTS_FILE
    with runs.model_run(params.mlflow.experiment, "register", weights):
        metric_log.log_stage_params(flatten({"register": dataclasses.asdict(params.register)}))
        lineage = lineage_tags(args.data_dir, args.train_dir, weights,
                               Path(args.model_dir) / CONFIG_FILE)
        report = registry.register_and_gate(cfg, args.model_dir, args.data_dir, meta,
                                            splits["test"], read_json(args.metrics), lineage)
    write_json(args.out, report)


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
