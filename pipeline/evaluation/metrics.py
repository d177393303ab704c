"""Binary metrics and threshold choice, delegated to scikit-learn where it does the job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np

from pipeline.core.metric_names import GATE_METRICS, LOWER_IS_BETTER

Score = Callable[[np.ndarray, np.ndarray], float]


def skm() -> ModuleType:
    """scikit-learn's metrics, imported on first use: tune and train monitor ROC AUC by ranks,
    and importing scikit-learn (SciPy's stats with it) costs each of their processes ~1.4 s."""
    from sklearn import metrics

    return metrics


def average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks of `p`, tied values sharing their mean rank (SciPy's rankdata default)."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U, ties count half): scikit-learn's value without its
    ~1 ms of argument checks per call, which the per-epoch monitor paid every epoch."""
    positive = np.asarray(y) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:  # undefined: scikit-learn says so its own way
        return float(skm().roc_auc_score(y, p))
    ranks = average_ranks(np.asarray(p))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

# Every score params.yaml may name (pipeline/core/metric_names.py), from 0/1 labels and
# positive-class probabilities. accuracy and f1 here label at 0.5: the per-epoch monitor has
# no threshold yet (binary_metrics reports them at the chosen one).
SCORES: dict[str, Score] = {
    "roc_auc": roc_auc,
    "average_precision": lambda y, p: float(skm().average_precision_score(y, p)),
    "log_loss": lambda y, p: float(skm().log_loss(y, p, labels=[0, 1])),
    "brier": lambda y, p: float(skm().brier_score_loss(y, p)),
    "accuracy": lambda y, p: float(skm().accuracy_score(y, p >= 0.5)),
    "f1": lambda y, p: float(skm().f1_score(y, p >= 0.5, zero_division=0)),
}
assert set(SCORES) == set(GATE_METRICS), (
    f"metric names without a score, or scores without a name: {set(SCORES) ^ set(GATE_METRICS)}")
RANKING = ("roc_auc", "average_precision", "log_loss", "brier")  # need no threshold


def direction(metric: str) -> Literal["minimize", "maximize"]:
    """Whether `metric` is minimised (losses) or maximised (scores)."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def improvement(metric: str, candidate: float, incumbent: float) -> float:
    """How much `candidate` beats `incumbent` on `metric`: positive is better, either direction."""
    return incumbent - candidate if metric in LOWER_IS_BETTER else candidate - incumbent


def ranking_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics of positive-class probabilities `p` against 0/1 labels `y`."""
    p = np.clip(p.astype(np.float64), 0.0, 1.0)
    return {name: SCORES[name](y, p) for name in RANKING}


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """All reported metrics at a decision threshold: label = p >= threshold."""
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in skm().confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        **ranking_metrics(y, p),
        "accuracy": float(skm().accuracy_score(y, pred)),
        "balanced_accuracy": float(skm().balanced_accuracy_score(y, pred)),
        "precision": float(skm().precision_score(y, pred, zero_division=0)),
        "recall": float(skm().recall_score(y, pred, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": float(skm().f1_score(y, pred, zero_division=0)),
        "mcc": float(skm().matthews_corrcoef(y, pred)),
        "threshold": float(threshold),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
        "n": len(y),
    }


def monitor_scores(y: np.ndarray, p: np.ndarray, monitor: str = "roc_auc") -> dict[str, float]:
    """Per-epoch validation scores: ROC AUC plus the monitored metric (kept cheap: every epoch)."""
    p = np.clip(p, 0.0, 1.0)
    return {name: SCORES[name](y, p) for name in dict.fromkeys(("roc_auc", monitor))}


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, rule: float | str) -> float:
    """Decision threshold from the validation split: fixed, max-F1, or Youden's J."""
    if isinstance(rule, float):
        return rule
    if rule == "f1":
        precision, recall, thresholds = skm().precision_recall_curve(y_val, p_val)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        # The last PR point has no threshold; ties go to the highest threshold (fewest positives).
        best = int(np.flatnonzero(f1[:-1] == f1[:-1].max())[-1])
        return float(thresholds[best])
    if rule == "youden":
        fpr, tpr, thresholds = skm().roc_curve(y_val, p_val)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    raise ValueError(f"unknown threshold rule {rule!r}")


def curves(y: np.ndarray, p: np.ndarray) -> dict[str, list[dict[str, float]]]:
    """ROC, precision-recall and calibration points as row lists (the DVC plots format)."""
    fpr, tpr, roc_t = skm().roc_curve(y, p)
    precision, recall, _ = skm().precision_recall_curve(y, p)
    return {
        "roc": [{"fpr": float(a), "tpr": float(b), "threshold": float(min(t, 1.0))}
                for a, b, t in zip(fpr, tpr, roc_t, strict=True)],
        "pr": [{"recall": float(r), "precision": float(q)}
               for r, q in zip(recall, precision, strict=True)],
        "calibration": calibration_bins(y, p),
    }


# Below 20 points a bin's observed fraction moves in steps of 5 % or more, and the curve
# zig-zags with noise rather than showing miscalibration.
MIN_BIN_COUNT = 20
MAX_BINS = 10  # more bins than this add noise, not detail, on test sets of a few hundred


def calibration_bins(y: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray,
                     min_count: int = MIN_BIN_COUNT,
                     max_bins: int = MAX_BINS) -> list[dict[str, float]]:
    """Equal-count (quantile) calibration bins, each of at least `min_count` predictions."""
    if min_count < 1 or max_bins < 1:
        raise ValueError(f"calibration min_count ({min_count}) and max_bins ({max_bins}) "
                         "must be at least 1")
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"calibration labels {y.shape} and probabilities {p.shape} differ")
    if len(p) == 0:
        return []
    # Sorted then split: bin sizes differ by at most one, so each holds >= min_count
    # (a set smaller than min_count gets one bin); the stable sort keeps ties reproducible.
    n_bins = max(1, min(max_bins, len(p) // min_count))
    return [{"mean_predicted": float(p[i].mean()), "fraction_positive": float(y[i].mean()),
             "count": len(i), "p_min": float(p[i].min()), "p_max": float(p[i].max())}
            for i in np.array_split(np.argsort(p, kind="stable"), n_bins)]
