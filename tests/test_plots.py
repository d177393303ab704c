"""The evaluate figures read right: equal-count calibration bins, readable confusion counts,
legends off the data, labelled axes, and the same bytes for the same inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.figure import Figure

from pipeline.evaluation.metrics import MIN_BIN_COUNT, binary_metrics, calibration_bins, curves
from pipeline.evaluation.plots import (
    calibration_figure,
    confusion_figure,
    contrast_ratio,
    pr_figure,
    roc_figure,
    save_figures,
    save_study_figures,
    text_colour,
    training_figure,
)

CLASSES = ["even", "odd"]
HISTORY = [{"epoch": e, "lr": 1e-3, "train_loss": 0.5 / e, "val_loss": 0.6 / e + 0.01 * (e == 3),
            "val_roc_auc": 1 - 0.1 / e} for e in range(1, 6)]


def predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and fairly good, slightly overconfident probabilities, like a small test split."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(3 * (2 * y - 1) + rng.normal(0, 2, n))))
    return y, p


@pytest.mark.parametrize(("n", "bins"), [(270, 10), (60, 3), (45, 2), (10, 1)])
def test_calibration_bins_hold_enough_predictions_and_record_counts(n: int, bins: int) -> None:
    y, p = predictions(n)
    rows = calibration_bins(y, p)
    assert len(rows) == bins
    assert sum(r["count"] for r in rows) == n
    # Uniform-width bins left a few points in the middle bins, and the curve zig-zagged.
    assert all(r["count"] >= min(MIN_BIN_COUNT, n) for r in rows)
    means = [r["mean_predicted"] for r in rows]
    assert means == sorted(means)
    order = np.argsort(p, kind="stable")
    first = order[: rows[0]["count"]]
    assert rows[0]["fraction_positive"] == pytest.approx(y[first].mean())
    assert rows[0]["p_min"] <= rows[0]["mean_predicted"] <= rows[0]["p_max"]


def test_calibration_bins_refuse_bad_settings_and_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"min_count \(0\)"):
        calibration_bins([0, 1], [0.1, 0.9], min_count=0)
    with pytest.raises(ValueError, match="differ"):
        calibration_bins([0, 1], [0.1])
    assert calibration_bins([], []) == []


def test_calibration_figure_plots_the_bins_with_their_counts_and_the_diagonal() -> None:
    y, p = predictions(60)
    rows = calibration_bins(y, p)
    metrics = binary_metrics(y, p, 0.5)
    fig = calibration_figure(rows, metrics, CLASSES, y, p)
    ax, hist = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    model = next(line for label, line in lines.items() if label.startswith("model"))
    assert list(model.get_xdata()) == [r["mean_predicted"] for r in rows]
    assert "3 equal-count bins of 20 predictions" in model.get_label()
    assert list(lines["perfectly calibrated"].get_xdata()) == [0, 1]
    assert hist.get_yscale() == "log" and hist.get_ylabel()
    assert ax.get_legend() is None and hist.get_legend() is None and fig.legends


def cell_colours(fig: Figure) -> list[tuple[str, tuple[float, ...], tuple[float, ...]]]:
    """(text, text colour, cell colour) for each annotated cell of a confusion figure."""
    import matplotlib.colors as mcolors

    ax = fig.axes[0]
    image = ax.get_images()[0]
    data = image.get_array()
    out = []
    for text in ax.texts:
        j, i = (round(v) for v in text.get_position())
        cell = image.cmap(image.norm(data[i, j]))
        out.append((text.get_text(), mcolors.to_rgb(text.get_color()), cell))
    return out


@pytest.mark.parametrize("counts", [(133, 1, 1, 135), (50, 50, 0, 10), (7, 3, 6, 4), (0, 0, 5, 5)])
def test_confusion_counts_contrast_with_their_cells(counts: tuple[int, int, int, int]) -> None:
    tn, fp, fn, tp = counts
    metrics = {"tn": tn, "fp": fp, "fn": fn, "tp": tp, "threshold": 0.5}
    cells = cell_colours(confusion_figure(metrics, CLASSES))
    assert sorted(int(t.split()[0]) for t, _, _ in cells) == sorted(counts)
    for text, colour, cell in cells:
        # Black on navy measured 1.6; WCAG asks 4.5 for normal text.
        assert contrast_ratio(colour, cell) >= 4.5, (text, colour, cell)
        assert "%" in text  # the share of the actual class under the count


def test_text_colour_is_white_on_dark_and_black_on_light() -> None:
    assert text_colour((0.03, 0.19, 0.42)) == "white"  # the darkest Blues cell
    assert text_colour((0.97, 0.98, 1.0)) == "black"
    assert contrast_ratio((0, 0, 0), (1, 1, 1)) == pytest.approx(21)


def test_confusion_axes_name_the_classes() -> None:
    fig = confusion_figure({"tn": 1, "fp": 2, "fn": 3, "tp": 4, "threshold": 0.5}, CLASSES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["even", "odd (positive)"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "actual class"


def test_training_figure_labels_both_axes_and_marks_the_kept_epoch() -> None:
    fig = training_figure(HISTORY, best_epoch=4)
    loss_ax, auc_ax = fig.axes
    assert "loss" in loss_ax.get_ylabel() and auc_ax.get_ylabel() == "validation ROC AUC"
    assert auc_ax.get_xlabel() == "epoch"
    # The legend sits outside both panels (inside one, it covered the curves).
    assert loss_ax.get_legend() is None and auc_ax.get_legend() is None
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-1] == "kept epoch 4 (best on validation)"
    for ax in (loss_ax, auc_ax):
        assert any(list(line.get_xdata()) == [4, 4] for line in ax.get_lines())


def test_training_figure_after_cross_validation_says_the_curves_are_in_sample() -> None:
    fig = training_figure(HISTORY, best_epoch=5, cv_folds=5)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "train+val rows (in-sample) loss" in labels
    assert "kept epoch 5 (median of 5 folds' best)" in labels
    assert fig.axes[1].get_ylabel() == "in-sample ROC AUC"
    assert not any("kept" in t for t in [t.get_text() for t in
                                         training_figure(HISTORY).legends[0].get_texts()])


def test_training_figure_of_fold_models_says_the_curves_are_the_folds_held_out_mean() -> None:
    fig = training_figure(HISTORY, best_epoch=5, cv_folds=5, fold_models=True)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "held-out folds' mean loss" in labels and "held-out folds' mean ROC AUC" in labels
    assert "median of the 5 folds' best epochs (5)" in labels
    assert fig.axes[1].get_ylabel() == "validation ROC AUC"
    assert fig.axes[0].get_title() == "Training curves (5 fold models, averaged)"


def test_roc_and_pr_figures_label_axes_and_mark_the_operating_point() -> None:
    y, p = predictions(120)
    metrics = binary_metrics(y, p, 0.5)
    points = curves(y, p)
    for fig in (roc_figure(points["roc"], metrics), pr_figure(points["pr"], metrics)):
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and "n = 120" in ax.get_title()
        assert ax.get_legend() is None and fig.legends
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(label.startswith("operating point (threshold 0.500)") for label in labels)
        assert any(label.startswith("chance") for label in labels)


def test_save_figures_writes_the_same_bytes_for_the_same_inputs(tmp_path: Path) -> None:
    y, p = predictions(270)
    metrics = binary_metrics(y, p, 0.5)
    written = []
    for run in ("a", "b"):
        paths = save_figures(tmp_path / run, curves(y, p), metrics, HISTORY, CLASSES, y=y, p=p,
                             best_epoch=3)
        written.append({path.name: path.read_bytes() for path in paths})
    assert sorted(written[0]) == ["calibration.png", "confusion_matrix.png",
                                  "precision_recall.png", "roc.png", "training_curves.png"]
    assert written[0] == written[1]
    assert all(data.startswith(b"\x89PNG") for data in written[0].values())


def test_save_figures_without_test_predictions_draws_the_curve_rows(tmp_path: Path) -> None:
    y, p = predictions(60)
    paths = save_figures(tmp_path, curves(y, p), binary_metrics(y, p, 0.5), HISTORY, CLASSES)
    assert {path.name for path in paths} >= {"calibration.png", "training_curves.png"}


def test_study_figures_are_written_for_a_named_metric() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: math.sin(t.suggest_float("lr", 1e-3, 1.0, log=True))
                   + t.suggest_int("width", 1, 4) / 10, n_trials=6)
    paths = save_study_figures(study, target_name="val_roc_auc")
    assert {path.name for path in paths} == {"optimization_history.png", "param_importances.png",
                                             "parallel_coordinate.png", "slice.png"}
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
