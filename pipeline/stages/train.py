"""DVC stage: fit the model on the augmented training split; weights, history, MLflow run."""

from __future__ import annotations

import argparse

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.files import atomic_update
from pipeline.data.dataset import load_splits
from pipeline.models.device import select_device
from pipeline.stages._common import stage_main
from pipeline.tracking import records, store, views
from pipeline.tracking.metric_log import FitLogs
from pipeline.training.final import fit_final, save_training
from pipeline.training.fit import load_tuned

PATHS = {"data_dir": "data/processed", "train_dir": "data/augmented",
         "best_params": layout.in_models(layout.BEST_PARAMS), "out": layout.MODELS,
         "reports": layout.REPORTS}


def run(params: Params, args: argparse.Namespace) -> None:
    """Train with params.yaml + best_params.json in a new MLflow run (small data: k folds)."""
    store.configure()  # checked (or created, on a fresh clone) before any work
    processed, meta = load_splits(args.data_dir, names=("val",))
    train, val = load_splits(args.train_dir, names=("train",))[0]["train"], processed["val"]
    tuned, train_cfg, model_cfg = load_tuned(args.best_params, params, meta.input_shape)
    device, monitor = select_device(), params.tune.metric  # trials early-stopped on it
    with atomic_update(args.out) as out, atomic_update(args.reports) as reports, \
            views.pipeline_run(params.mlflow.experiment, "train", meta, monitor) as run:
        sections = {"seed": params.seed, "data": params.data, "augment": params.augment,
                    "model": model_cfg, "train": train_cfg, "tune": {"metric": monitor}}
        background, val_hash = records.log_training_inputs(
            run.run_id, sections, tuned, (train, args.train_dir), (val, args.data_dir), str(device))
        epochs = FitLogs(run.run_id, monitor)
        final = fit_final(model_cfg, train_cfg, params.augment, train, val, meta, seed=params.seed,
                          device=device, monitor=monitor, callbacks=epochs)
        # Into temp folders: they replace the old outputs only once the run has recorded them.
        weights = save_training(final, out, reports, train_cfg, params, meta, tuned)
        records.log_training_result(run, final, weights, val_hash, pending=(background, epochs))


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
