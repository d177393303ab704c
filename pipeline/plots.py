"""PNG figures for MLflow and the README (DVC renders its own plots from the JSON data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline.files import atomic_path


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

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([r["fpr"] for r in curves["roc"]], [r["tpr"] for r in curves["roc"]])
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC (AUC {metrics['roc_auc']:.4f})")
    paths.append(folder / "roc.png")
    _save(fig, paths[-1])

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([r["recall"] for r in curves["pr"]], [r["precision"] for r in curves["pr"]])
    ax.set(xlabel="recall", ylabel="precision",
           title=f"Precision-recall (AP {metrics['average_precision']:.4f})")
    paths.append(folder / "precision_recall.png")
    _save(fig, paths[-1])

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([r["mean_predicted"] for r in curves["calibration"]],
            [r["fraction_positive"] for r in curves["calibration"]], "o-")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive",
           title=f"Calibration (Brier {metrics['brier']:.4f})")
    paths.append(folder / "calibration.png")
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
