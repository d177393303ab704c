"""Metrics agree with scikit-learn; thresholds come from validation, never test."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.metric_names import GATE_METRICS, MONITOR_METRICS
from pipeline.core.typed import build
from pipeline.data.dataset import Split
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.metrics import (
    average_ranks,
    binary_metrics,
    choose_threshold,
    curves,
    direction,
    improvement,
    monitor_scores,
    roc_auc,
)
from pipeline.tracking import views


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    return y.astype(np.float32), p


def test_metrics_match_sklearn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = predictions
    m = binary_metrics(y, p, 0.6)
    pred = (p >= 0.6).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == m["n"] == 200


def test_f1_threshold_maximises_validation_f1(predictions) -> None:
    y, p = predictions
    t = choose_threshold(y, p, "f1")
    best = skm.f1_score(y, p >= t)
    for other in np.linspace(0.01, 0.99, 99):
        assert skm.f1_score(y, p >= other) <= best + 1e-12


def test_youden_threshold_maximises_j(predictions) -> None:
    y, p = predictions
    t = choose_threshold(y, p, "youden")
    pred = p >= t
    j = skm.recall_score(y, pred) + skm.recall_score(1 - y, ~pred) - 1
    for other in np.linspace(0.01, 0.99, 99):
        o = p >= other
        assert skm.recall_score(y, o) + skm.recall_score(1 - y, ~o) - 1 <= j + 1e-12


def test_evaluate_takes_the_threshold_from_validation_only(predictions) -> None:
    y, p = predictions
    test = Split(np.zeros((50, 1), np.float32), y[:50], [str(i) for i in range(50)])
    base = evaluate(y, p, test, p[:50], "f1")
    assert base.metrics["threshold"] == choose_threshold(y, p, "f1")
    # Other test labels and scores change the metrics, never the threshold.
    flipped = Split(test.X, 1 - test.y, test.ids)
    other = evaluate(y, p, flipped, p[::-1][:50].copy(), "f1")
    assert other.metrics["threshold"] == base.metrics["threshold"]
    assert other.metrics["accuracy"] != base.metrics["accuracy"]
    # Other validation scores do move it; a fixed number is used as given.
    assert evaluate(y, p ** 3, test, p[:50], "f1").metrics["threshold"] != base.metrics[
        "threshold"]
    assert evaluate(y, p, test, p[:50], 0.42).metrics["threshold"] == 0.42


def test_curves_and_direction(predictions) -> None:
    y, p = predictions
    points = curves(y, p)
    assert points["roc"][0]["fpr"] == 0.0 and points["roc"][-1]["tpr"] == 1.0
    assert all(0 <= r["fraction_positive"] <= 1 for r in points["calibration"])
    assert improvement("log_loss", 0.1, 0.2) == pytest.approx(0.1)
    assert improvement("roc_auc", 0.9, 0.8) == pytest.approx(0.1)
    assert improvement("brier", 0.3, 0.2) < 0 and direction("brier") == "minimize"
    assert direction("f1") == "maximize"


@pytest.mark.parametrize("name", GATE_METRICS)
def test_every_metric_name_is_scored_per_epoch_and_reported(predictions, name: str) -> None:
    y, p = predictions
    # The per-epoch score labels at 0.5, the report at its threshold: the same at 0.5.
    assert monitor_scores(y, p, name)[name] == pytest.approx(binary_metrics(y, p, 0.5)[name])


def test_config_accepts_exactly_the_metric_names() -> None:
    for name in MONITOR_METRICS:
        assert build(Params, {"tune": {"metric": name}}).tune.metric == name
    for name in GATE_METRICS:
        assert build(Params, {"register": {"metric": name}}).register.metric == name
    assert set(MONITOR_METRICS) < set(GATE_METRICS)
    with pytest.raises(ConfigError, match=r"^tune.metric = 'brier': must be one of"):
        build(Params, {"tune": {"metric": "brier"}})  # a test-set score, no per-epoch monitor
    with pytest.raises(ConfigError, match=r"^register.metric = 'auc': must be one of"):
        build(Params, {"register": {"metric": "auc"}})


def test_runs_table_shows_metrics_the_pipeline_logs() -> None:
    shown = [c.removeprefix("test_") for c in views.COLUMNS if c.startswith("test_")]
    assert shown and set(shown) <= set(GATE_METRICS)


def test_rank_roc_auc_is_scikit_learns_with_ties_and_one_class() -> None:
    rng = np.random.default_rng(1)
    for i in range(300):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        # Rounded scores tie often (saturated sigmoids do): ties must count half.
        p = np.round(rng.random(n), int(rng.integers(0, 4))) if i % 2 else rng.random(n)
        assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert roc_auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5])) == 0.5
    with pytest.warns(Warning):  # one class: undefined, as scikit-learn says (and returns)
        assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_average_ranks_are_scipys_rankdata() -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    for digits in (0, 1, 2, 6):
        p = np.round(rng.random(500), digits)  # few distinct values to many
        assert average_ranks(p).tobytes() == rankdata(p).tobytes()


def test_tune_and_train_processes_do_not_import_scikit_learn() -> None:
    # They monitor ROC AUC by ranks; scikit-learn's import (SciPy's stats) is ~1 s per process.
    code = ("import sys, pipeline.stages.tune, pipeline.stages.train; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'"
            " or m.startswith('scipy.stats')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
