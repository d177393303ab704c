"""The evaluate stage's work: threshold from validation, test metrics, curves and report files."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout
from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path, write_json
from pipeline.data.dataset import DatasetMeta, Split
from pipeline.evaluation.metrics import binary_metrics, choose_threshold, curves
from pipeline.evaluation.plots import save_figures


@dataclass(frozen=True)
class Evaluation:
    """Test-split metrics at the threshold chosen before test, plus what the reports need."""

    metrics: dict[str, Any]
    curves: dict[str, list[dict[str, float]]]
    test: Split
    p_test: np.ndarray


def evaluate(y_val: np.ndarray, p_val: np.ndarray, test: Split, p_test: np.ndarray,
             rule: float | str) -> Evaluation:
    """Choose the threshold on validation or out-of-fold predictions (test never decides
    anything), score test."""
    threshold = choose_threshold(y_val, p_val, rule)
    metrics = {**binary_metrics(test.y, p_test, threshold), "threshold_rule": str(rule)}
    return Evaluation(metrics, curves(test.y, p_test), test, p_test)


def write_reports(reports: Path, result: Evaluation, meta: DatasetMeta,
                  history: list[dict[str, float]], model_config: dict[str, Any]) -> list[Path]:
    """metrics.json, DVC plot data, per-sample predictions and PNG figures; return the PNGs."""
    metrics, test, classes = result.metrics, result.test, meta.classes
    write_json(reports / layout.METRICS, metrics)
    for name, rows in result.curves.items():
        write_json(reports / layout.PLOTS / f"{name}.json", rows)
    predicted = result.p_test >= metrics["threshold"]
    write_json(reports / layout.PLOTS / "confusion.json",
               [{"actual": classes[int(a)], "predicted": classes[int(b)]}
                for a, b in zip(test.y, predicted, strict=True)])
    with atomic_path(reports / layout.TEST_PREDICTIONS) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "probability", "predicted"])
        for i, label, prob, pred in zip(test.ids, test.y, result.p_test, predicted, strict=True):
            writer.writerow([i, classes[int(label)], f"{prob:.9f}", classes[int(pred)]])
    return save_figures(reports / layout.FIGURES, result.curves, metrics, history, list(classes),
                        y=test.y, p=result.p_test, best_epoch=model_config.get("best_epoch"),
                        cv_folds=model_config.get("cv_folds", 0),
                        fold_models=bool(model_config.get("cv_folds")) and
                        model_config.get("train", {}).get("cv_model") == "folds")


def write_threshold_basis(path: str | Path, ids: list[str], y: np.ndarray, p: np.ndarray,
                          fold: np.ndarray) -> None:
    """The predictions the evaluate stage chooses the threshold on (full float precision)."""
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "probability", "fold"])
        for row in zip(ids, y, p, fold, strict=True):
            writer.writerow([row[0], int(row[1]), repr(float(row[2])), int(row[3])])


def read_threshold_basis(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) from write_threshold_basis's file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the train stage first")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([float(r["label"]) for r in rows]),
            np.array([float(r["probability"]) for r in rows]))
