"""DVC stage: threshold from validation, metrics and plots on test, logged to the train run."""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import mlflow
import numpy as np

from pipeline import tracking
from pipeline.config import load_params
from pipeline.data import load_splits
from pipeline.engine import predict_proba, seed_everything
from pipeline.files import atomic_path, read_json, write_json
from pipeline.metrics import binary_metrics, choose_threshold, curves
from pipeline.models import WEIGHTS_FILE, load_model
from pipeline.plots import save_figures
from pipeline.stages._common import parse_stage_args, stage_entry
from pipeline.stages.train import MODEL_TAG

log = logging.getLogger(__name__)


def write_predictions(path: Path, ids: list[str], y: np.ndarray, p: np.ndarray,
                      threshold: float, classes: list[str]) -> None:
    """Per-sample test predictions (id, label, probability, predicted label)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "probability", "predicted"])
        for i, label, prob in zip(ids, y, p, strict=True):
            writer.writerow([i, classes[int(label)], f"{prob:.9f}",
                             classes[int(prob >= threshold)]])


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the evaluate stage."""
    args = parse_stage_args(argv, __doc__, {"data_dir": "data/processed", "model_dir": "models",
                                            "reports": "reports"})
    params = load_params(args.params)
    splits, meta = load_splits(args.data_dir, names=("val", "test"))
    model, config = load_model(args.model_dir)
    seed_everything(params.seed, config["train"]["num_threads"])
    p_val = predict_proba(model, splits["val"].X)
    p_test = predict_proba(model, splits["test"].X)
    # The threshold is chosen on validation only; test never influences any decision.
    threshold = choose_threshold(splits["val"].y, p_val, params.evaluate.threshold)
    test = splits["test"]
    metrics = binary_metrics(test.y, p_test, threshold)
    metrics["threshold_rule"] = str(params.evaluate.threshold)
    reports = Path(args.reports)
    write_json(reports / "metrics.json", metrics)
    points = curves(test.y, p_test)
    for name, rows in points.items():
        write_json(reports / "plots" / f"{name}.json", rows)
    write_json(reports / "plots" / "confusion.json",
               [{"actual": meta["classes"][int(a)], "predicted": meta["classes"][int(b)]}
                for a, b in zip(test.y, p_test >= threshold, strict=True)])
    write_predictions(reports / "test_predictions.csv", test.ids, test.y, p_test, threshold,
                      meta["classes"])
    history = read_json(reports / "train_history.json")
    figures = save_figures(reports / "figures", points, metrics, history, meta["classes"])
    log.info("test: %s", {k: round(metrics[k], 4) for k in
                          ("accuracy", "f1", "roc_auc", "threshold")})

    tracking.configure()
    sha = hashlib.sha256((Path(args.model_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()
    run_id = tracking.find_run(params.mlflow.experiment, MODEL_TAG, sha)
    if run_id is None:
        log.warning("no MLflow run found for these weights (%s...); starting a new one", sha[:12])
    with tracking.start_run(params.mlflow.experiment, run_name="evaluate", run_id=run_id,
                            tags={MODEL_TAG: sha}):
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, int | float)})
        mlflow.set_tag("pipeline.threshold_rule", metrics["threshold_rule"])
        tracking.log_dataset(test.X, test.y, "test", args.data_dir,
                             tracking.dvc_hash(args.data_dir), "testing")
        for figure in figures:
            mlflow.log_artifact(str(figure), "plots")
        mlflow.log_artifact(str(reports / "metrics.json"))
        mlflow.log_artifact(str(reports / "test_predictions.csv"))


if __name__ == "__main__":
    main()
