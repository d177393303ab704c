"""PNG figures for MLflow and the README (DVC renders its own plots from the JSON data)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline.files import atomic_path

log = logging.getLogger(__name__)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        # No timestamp metadata, so equal figures give equal bytes.
        fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})


def save_figures(folder: str | Path, curves: dict[str, list[dict[str, float]]],
                 metrics: dict[str, Any], history: list[dict[str, float]],
                 classes: list[str]) -> list[Path]:
    """ROC, PR, calibration, confusion matrix and training curves as PNG files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    # (file, curve, x key, y key, marker, diagonal reference, axis labels, title)
    specs = [
        ("roc.png", "roc", "fpr", "tpr", "-", True, "false positive rate",
         "true positive rate", f"ROC (AUC {metrics['roc_auc']:.4f})"),
        ("precision_recall.png", "pr", "recall", "precision", "-", False, "recall",
         "precision", f"Precision-recall (AP {metrics['average_precision']:.4f})"),
        ("calibration.png", "calibration", "mean_predicted", "fraction_positive", "o-", True,
         "mean predicted probability", "fraction positive",
         f"Calibration (Brier {metrics['brier']:.4f})"),
    ]
    for name, curve, x, y, marker, diagonal, xlabel, ylabel, title in specs:
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        ax.plot([r[x] for r in curves[curve]], [r[y] for r in curves[curve]], marker)
        if diagonal:
            ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        paths.append(folder / name)
        _save(fig, paths[-1])

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    matrix = [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]]
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual",
           title=f"Confusion (threshold {metrics['threshold']:.3f})")
    paths.append(folder / "confusion_matrix.png")
    _save(fig, paths[-1])

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in history], label="val loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["val_roc_auc"] for r in history], color="green", label="val ROC AUC")
    ax.set(xlabel="epoch", ylabel="loss", title="Training curves")
    ax.legend(loc="upper center")
    ax2.legend(loc="center right")
    paths.append(folder / "training_curves.png")
    _save(fig, paths[-1])
    return paths


def save_study_figures(study: Any) -> list[Path]:
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
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                log.info("skipping %s figure: %s", name, err)  # e.g. too few complete trials
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        paths.append(folder / f"{name}.png")
        figure.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(figure)
    return paths
