"""PNG figures for MLflow, the README and `dvc plots show` (the JSON curve data stays for Vega)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from pipeline.core.files import atomic_path

log = logging.getLogger(__name__)

CONFUSION_CMAP = "Blues"


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        # No timestamp metadata, so equal figures give equal bytes.
        fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})


def _legend_below(fig: Figure, ax: Any) -> None:
    # Outside the axes, so it never covers a curve however the model behaves.
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", frameon=False)


def _luminance(rgb: Sequence[float]) -> float:
    # WCAG relative luminance of an sRGB colour with channels in [0, 1].
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio of two sRGB colours (1 = none, 21 = black on white)."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def text_colour(background: Sequence[float]) -> str:
    """The text colour, white or black, that contrasts more with the background colour."""
    white = contrast_ratio(background, (1.0, 1.0, 1.0))
    return "white" if white > contrast_ratio(background, (0.0, 0.0, 0.0)) else "black"


def confusion_figure(metrics: dict[str, Any], classes: Sequence[str]) -> Figure:
    """Confusion matrix: counts and the share of each actual class, coloured by that share."""
    counts = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    # Shaded by row share, not count: with imbalanced classes the small class stays readable.
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cmap = colormaps[CONFUSION_CMAP]
    fig = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(share, cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    fontsize=12, color=text_colour(cmap(float(share[i, j]))))
    names = [classes[0], f"{classes[1]} (positive)"]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names,
           xlabel="predicted class", ylabel="actual class",
           title=f"Confusion matrix on test (threshold {metrics['threshold']:.3f})\n"
                 "count and share of the actual class")
    ax.tick_params(axis="y", labelrotation=90)  # long class names would squeeze the matrix
    for label in ax.get_yticklabels():
        label.set_verticalalignment("center")
    return fig


def roc_figure(rows: list[dict[str, float]], metrics: dict[str, Any]) -> Figure:
    """ROC curve with the chance diagonal and the operating point at the chosen threshold."""
    fig = Figure(figsize=(4.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows],
            label=f"model (ROC AUC {metrics['roc_auc']:.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    fpr = metrics["fp"] / max(metrics["fp"] + metrics["tn"], 1)
    tpr = metrics["tp"] / max(metrics["tp"] + metrics["fn"], 1)
    ax.plot([fpr], [tpr], "o", color="C3",
            label=f"operating point (threshold {metrics['threshold']:.3f})")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal",
           xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (recall)", title=f"ROC on test (n = {metrics['n']})")
    _legend_below(fig, ax)
    return fig


def pr_figure(rows: list[dict[str, float]], metrics: dict[str, Any]) -> Figure:
    """Precision-recall curve with the positive-rate baseline and the operating point."""
    fig = Figure(figsize=(4.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows],
            label=f"model (average precision {metrics['average_precision']:.4f})")
    prevalence = (metrics["tp"] + metrics["fn"]) / max(metrics["n"], 1)
    ax.axhline(prevalence, ls="--", color="grey", label=f"chance (positive rate {prevalence:.2f})")
    ax.plot([metrics["recall"]], [metrics["precision"]], "o", color="C3",
            label=f"operating point (threshold {metrics['threshold']:.3f})")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", xlabel="recall",
           ylabel="precision", title=f"Precision-recall on test (n = {metrics['n']})")
    _legend_below(fig, ax)
    return fig


def calibration_figure(rows: list[dict[str, float]], metrics: dict[str, Any],
                       classes: Sequence[str], y: np.ndarray | None = None,
                       p: np.ndarray | None = None) -> Figure:
    """Reliability diagram over `rows` and, given labels and probabilities, their histogram."""
    with_hist = y is not None and p is not None
    fig = Figure(figsize=(4.5, 6.4 if with_hist else 5), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3]) if with_hist \
        else (fig.subplots(), None)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    x, frac = [r["mean_predicted"] for r in rows], [r["fraction_positive"] for r in rows]
    sizes = [r["count"] for r in rows if "count" in r]
    label = "model (equal-width bins)"  # curve rows from metrics.curves carry no counts
    if sizes:  # equal-count bins: one count range says what each point rests on
        spread = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
        label = f"model ({len(rows)} equal-count bins of {spread} predictions)"
    if all("p_min" in r for r in rows):  # a bin's width is where its predictions lie
        ax.errorbar(x, frac, xerr=[[r["mean_predicted"] - r["p_min"] for r in rows],
                                   [r["p_max"] - r["mean_predicted"] for r in rows]],
                    fmt="none", ecolor="C0", elinewidth=1, capsize=3, alpha=0.6,
                    label="range of predictions in the bin")
    ax.plot(x, frac, "o-", color="C0", label=label)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), ylabel="fraction actually positive",
           title=f"Calibration on test (n = {metrics['n']}, Brier {metrics['brier']:.4f})")
    handles, _ = ax.get_legend_handles_labels()
    if hist is None:
        ax.set(xlabel="mean predicted probability (per bin)")
    else:
        y, p = np.asarray(y), np.asarray(p)
        hist.hist([p[y == 0], p[y == 1]], bins=np.linspace(0.0, 1.0, 21), stacked=True,
                  color=["C7", "C1"], label=[f"actual {classes[0]}", f"actual {classes[1]}"])
        handles += hist.get_legend_handles_labels()[0]
        # Log counts: confident models pile up at 0 and 1, and the middle would vanish;
        # the floor below 1 keeps single predictions visible.
        hist.set(yscale="log", ylim=(0.5, None), xlabel="predicted probability",
                 ylabel="predictions\n(log scale)")
        hist.yaxis.set_major_formatter("{x:g}")
    fig.legend(handles=handles, loc="outside lower center", ncol=1, frameon=False)
    return fig


def training_figure(history: list[dict[str, float]], best_epoch: int | None = None,
                    cv_folds: int = 0, fold_models: bool = False) -> Figure:
    """Loss (top) and validation ROC AUC (bottom) per epoch, with the kept epoch marked."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    loss_ax, auc_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    epochs = [r["epoch"] for r in history]
    # After cross-validation the history is the folds' mean (held-out rows), or the refit's,
    # whose "validation" rows were trained on.
    refit = cv_folds and not fold_models
    val = ("held-out folds' mean" if fold_models else
           "train+val rows (in-sample)" if refit else "validation")
    lines = [*loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3,
                           label="train loss"),
             *loss_ax.plot(epochs, [r["val_loss"] for r in history], "o-", ms=3,
                           label=f"{val} loss"),
             *auc_ax.plot(epochs, [r["val_roc_auc"] for r in history], "o-", ms=3, color="C2",
                          label=f"{val} ROC AUC")]
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in history):
        loss_ax.set_yscale("log")  # one diverging epoch would flatten the rest on a linear axis
    if best_epoch is not None:
        kept = (f"median of the {cv_folds} folds' best epochs ({best_epoch})" if fold_models
                else f"kept epoch {best_epoch} (median of {cv_folds} folds' best)" if cv_folds
                else f"kept epoch {best_epoch} (best on validation)")
        lines.append(loss_ax.axvline(best_epoch, ls=":", color="black", label=kept))
        auc_ax.axvline(best_epoch, ls=":", color="black")
    title = (f" ({cv_folds} fold models, averaged)" if fold_models else
             f" (refit after {cv_folds}-fold CV)" if cv_folds else "")
    loss_ax.set(ylabel="loss (log scale)" if loss_ax.get_yscale() == "log" else "loss",
                title="Training curves" + title)
    auc_ax.set(xlabel="epoch", ylabel=f"{'in-sample' if refit else 'validation'} ROC AUC")
    auc_ax.xaxis.get_major_locator().set_params(integer=True)
    # One legend under both panels: inside either it would cover points.
    fig.legend(handles=lines, loc="outside lower center", ncol=2, frameon=False)
    return fig


def save_figures(folder: str | Path, curves: dict[str, list[dict[str, float]]],
                 metrics: dict[str, Any], history: list[dict[str, float]],
                 classes: list[str], *, y: np.ndarray | None = None,
                 p: np.ndarray | None = None, best_epoch: int | None = None,
                 cv_folds: int = 0, fold_models: bool = False) -> list[Path]:
    """ROC, PR, calibration, confusion matrix and training curves as PNG files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc.png": roc_figure(curves["roc"], metrics),
        "precision_recall.png": pr_figure(curves["pr"], metrics),
        "calibration.png": calibration_figure(curves["calibration"], metrics, classes, y, p),
        "confusion_matrix.png": confusion_figure(metrics, classes),
        "training_curves.png": training_figure(history, best_epoch, cv_folds, fold_models),
    }
    paths = []
    for name, fig in figures.items():
        paths.append(folder / name)
        _save(fig, paths[-1])
    return paths


def save_study_figures(study: Any, target_name: str = "objective value") -> list[Path]:
    """Optuna's optimisation history, importances, parallel coordinates and slice plots (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless, and safe in worker processes
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder = Path(tempfile.mkdtemp(prefix="optuna-figures-"))
    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    paths = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                # Optuna's axis says "Objective Value" unless told which metric the study optimises.
                axes = plot(study, target_name=target_name)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                log.info("skipping %s figure: %s", name, err)  # e.g. too few complete trials
                continue
        if name == "param_importances" and axes.get_legend() is not None:
            # Bars grow from the left, the smallest at the bottom: the lower right stays free.
            axes.legend(loc="lower right")
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        paths.append(folder / f"{name}.png")
        _save(figure, paths[-1])
        plt.close(figure)
    return paths
