"""DVC stage: threshold from validation, metrics and plots on test, logged to the train run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.files import atomic_update, read_json
from pipeline.core.tags import Tag
from pipeline.data.dataset import load_splits
from pipeline.evaluation.evaluate import evaluate, read_threshold_basis, write_reports
from pipeline.models.device import model_precision, seed_everything, select_device
from pipeline.models.inference import predict_proba
from pipeline.models.networks import WEIGHTS_FILE, load_model
from pipeline.stages._common import stage_main
from pipeline.tracking import metric_log, records, runs, store

log = logging.getLogger(__name__)
PATHS = {"data_dir": "data/processed", "model_dir": layout.MODELS, "reports": layout.REPORTS}


def run(params: Params, args: argparse.Namespace) -> None:
    """Choose the threshold on train's validation (or out-of-fold) predictions, score test;
    log the reports to the model's run, then write them (nothing is written if either fails)."""
    store.configure(must_exist=True)  # it adds to train's run: checked before any work
    splits, meta = load_splits(args.data_dir, names=("test",))
    model, config = load_model(args.model_dir)
    device = select_device()  # where train predicted the threshold's basis, in its precision
    seed_everything(params.seed, config["train"]["num_threads"], device)
    p_test = predict_proba(model.to(device), splits["test"].X, device, model_precision(config))
    reports = Path(args.reports)
    y_basis, p_basis = read_threshold_basis(reports / layout.THRESHOLD_PREDICTIONS)
    result = evaluate(y_basis, p_basis, splits["test"], p_test, params.evaluate.threshold)
    history = read_json(reports / layout.TRAIN_HISTORY)
    with atomic_update(reports) as out, runs.model_run(
            params.mlflow.experiment, "evaluate", Path(args.model_dir) / WEIGHTS_FILE) as run_id:
        figures = write_reports(out, result, meta, history, config)
        records.log_evaluation(result.metrics, splits["test"], args.data_dir, figures, out,
                               {"evaluate": params.evaluate})
        metric_log.log_tags({Tag.TEST_METRICS_FROM: run_id})  # evaluated here, not adopted


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
