"""The pipeline vs the scikit-learn baselines a user tries first, on the same splits.

For each data set and split seed: writes the data in a user's layout (ImageFolder or CSV) in a
temporary workspace, runs preprocess → augment → tune → train → evaluate in-process with
params.yaml's defaults (tuning on; tables use `model.type: mlp`, since the default cnn needs
images), then fits on the same processed arrays, train + validation together (a baseline needs
no validation split), and scores on the same test split:

- logreg: StandardScaler + LogisticRegression(max_iter=5000)
- svc: StandardScaler + SVC (RBF, default C and gamma, Platt probabilities)
- hgb: HistGradientBoostingClassifier (defaults)

Images are flattened pixels in [0, 1]; tables are the pipeline's processed features (imputed,
standardised, one-hot). Prints mean ± sd over seeds of test accuracy, ROC AUC and log loss.

    .venv/bin/python benchmarks/peers.py                         # 6 sets x 5 seeds, ~40 min
    .venv/bin/python benchmarks/peers.py --datasets wine iris --seeds 0 1
    .venv/bin/python benchmarks/peers.py --set tune.n_trials=5   # a params override for all

Writes benchmarks/results/peers.json, or peers_<label>.json with --label (an ablation arm):
figures, printed table, commit and machine (see benchmarks/_results.py); with --json also every
run's figures to that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _results import write_result
from _textures import texture
from _workspace import comparison_parser, default_params, merge, parse_sets
from PIL import Image
from sklearn import datasets
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipeline.data.dataset import load_splits
from pipeline.stages import augment, evaluate, preprocess, train, tune


def write_table(name: str, positive: int) -> Callable[[Path], dict]:
    """A bundled scikit-learn table as a CSV; `positive` vs the other classes."""
    def write(root: Path) -> dict:
        bunch = getattr(datasets, f"load_{name}")(as_frame=True)
        frame = bunch.data.copy()
        frame["target"] = np.where(bunch.target == positive, "yes", "no")
        frame.to_csv(root / f"{name}.csv", index=False)
        return {"source": "csv", "path": str(root / f"{name}.csv"), "positive_class": "yes"}
    return write


def write_digits(root: Path) -> dict:
    """The default data set: digits odd vs even (built-in source)."""
    return {"source": "digits", "path": str(root / "digits")}


def write_breast_cancer(root: Path) -> dict:
    """Breast cancer, malignant positive (built-in source)."""
    return {"source": "breast_cancer", "path": str(root / "bc.csv"), "positive_class": "malignant"}


def write_textures(root: Path) -> dict:
    """200 RGB 32 px images: stripes vs checks, random colours (texture, not colour)."""
    rng = np.random.default_rng(1234)
    for kind in ("stripes", "checks"):
        (root / "textures" / kind).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(texture(kind, rng, 32)).save(root / "textures" / kind / f"{i}.png")
    return {"source": "imagefolder", "path": str(root / "textures"), "positive_class": "checks",
            "channels": 3}


def shape(kind: str, rng: np.random.Generator, size: int = 25) -> np.ndarray:
    """A grayscale ring or square outline at a random place and size, under heavy noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = rng.uniform(5, 9)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    if kind == "circle":
        d = np.hypot(xx - cx, yy - cy)
    else:
        d = np.maximum(np.abs(xx - cx), np.abs(yy - cy))
    img = (np.abs(d - r) < 1.2) * rng.uniform(0.5, 1.0) + rng.normal(0.2, 0.2, (size, size))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_shapes(root: Path) -> dict:
    """200 grayscale 25 px images: ring vs square outline under noise (needs shape)."""
    rng = np.random.default_rng(4321)
    for kind in ("circle", "square"):
        (root / "shapes" / kind).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(shape(kind, rng)).save(root / "shapes" / kind / f"{i}.png")
    return {"source": "imagefolder", "path": str(root / "shapes"), "positive_class": "square"}


DATASETS: dict[str, tuple[Callable[[Path], dict], dict]] = {
    "digits": (write_digits, {}),
    "breast_cancer": (write_breast_cancer, {"model": {"type": "mlp"}}),
    "wine": (write_table("wine", 0), {"model": {"type": "mlp"}}),
    "iris": (write_table("iris", 1), {"model": {"type": "mlp"}}),
    "textures": (write_textures, {}),
    "shapes": (write_shapes, {}),
}
BASELINES = {
    "logreg": lambda seed: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
    "svc": lambda seed: make_pipeline(StandardScaler(), SVC(probability=True,
                                                            random_state=seed)),
    "hgb": lambda seed: HistGradientBoostingClassifier(random_state=seed),
}


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Test accuracy (threshold 0.5), ROC AUC and log loss of probabilities p."""
    return {"accuracy": float(accuracy_score(y, p >= 0.5)),
            "roc_auc": float(roc_auc_score(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))}


def features(x: np.ndarray) -> np.ndarray:
    """Flattened pixels in [0, 1] for images, the processed features for tables."""
    return (x.reshape(len(x), -1) / 255.0) if x.dtype == np.uint8 else x


def pipeline_run(root: Path, data: dict, overrides: dict, seed: int) -> dict[str, float]:
    """The five stages in `root` with default params + overrides; the test metrics."""
    params = merge(default_params(), merge({"seed": seed, "data": data}, overrides))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    common = ["--params", str(root / "params.yaml")]
    d = {k: str(root / k) for k in ("processed", "augmented", "models", "reports")}
    best = str(root / "models" / "best_params.json")
    preprocess.main([*common, "--out", d["processed"]])
    augment.main([*common, "--data-dir", d["processed"], "--out", d["augmented"]])
    tune.main([*common, "--data-dir", d["processed"], "--train-dir", d["augmented"],
               "--out", best])
    train.main([*common, "--data-dir", d["processed"], "--train-dir", d["augmented"],
                "--best-params", best, "--out", d["models"], "--reports", d["reports"]])
    evaluate.main([*common, "--data-dir", d["processed"], "--model-dir", d["models"],
                   "--reports", d["reports"]])
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    return {k: metrics[k] for k in ("accuracy", "roc_auc", "log_loss")}


def one(name: str, seed: int, sets: dict, tmp: Path) -> dict[str, dict[str, float]]:
    """Pipeline and baselines on one data set and seed."""
    root = tmp / f"{name}-{seed}"
    root.mkdir()
    write, overrides = DATASETS[name]
    data = write(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["OPTUNA_STORAGE"] = str(root / "optuna.journal")
    tick = time.perf_counter()
    with contextlib.chdir(root):
        out = {"pipeline": pipeline_run(root, data, merge(overrides, sets), seed)}
    out["pipeline"]["seconds"] = time.perf_counter() - tick
    splits, _ = load_splits(root / "processed")
    fit_x = features(np.concatenate([splits["train"].X, splits["val"].X]))
    fit_y = np.concatenate([splits["train"].y, splits["val"].y])
    test_x, test_y = features(splits["test"].X), splits["test"].y
    for label, make in BASELINES.items():
        model = make(seed).fit(fit_x, fit_y)
        out[label] = scores(test_y, model.predict_proba(test_x)[:, 1])
    return out


def summary(results: dict[str, list[dict]]) -> pd.DataFrame:
    """mean ± sd over seeds per data set and method."""
    rows = []
    for name, runs in results.items():
        for method in runs[0]:
            row = {"data": name, "method": method}
            for metric in ("accuracy", "roc_auc", "log_loss"):
                values = [r[method][metric] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                row[metric] = f"{statistics.mean(values):.4f} ± {sd:.4f}"
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    """Run every (data set, seed), print the table, and the verdict against the target."""
    parser = comparison_parser(__doc__, list(DATASETS))
    parser.add_argument("--label", help="write results/peers_<label>.json (an ablation arm) "
                        "instead of results/peers.json")
    args = parser.parse_args()
    sets = parse_sets(args.set)
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            for seed in args.seeds:
                run = one(name, seed, sets, Path(tmp))
                results.setdefault(name, []).append(run)
                print(f"{name} seed {seed}: " + ", ".join(
                    f"{m} {r['accuracy']:.4f}" for m, r in run.items())
                    + f" ({run['pipeline']['seconds']:.0f} s)", flush=True)
    print(f"load average after: {os.getloadavg()}")
    table, words = summary(results).to_string(index=False), verdict(results)
    print(f"{table}\n{words}")
    figures = {"sets": sets, "seeds": args.seeds, "results": results}
    write_result(f"peers{'_' + args.label if args.label else ''}", figures, f"{table}\n{words}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def verdict(results: dict[str, list[dict]]) -> str:
    """The issue's target: pipeline mean accuracy >= best baseline mean - 1 sd on every set,
    and >= the best baseline mean on at least 4 of 6."""
    lines, at_least = [], 0
    for name, runs in results.items():
        acc = {m: [r[m]["accuracy"] for r in runs] for m in runs[0]}
        best = max(BASELINES, key=lambda m: statistics.mean(acc[m]))
        mean, sd = statistics.mean(acc[best]), (statistics.stdev(acc[best])
                                                 if len(runs) > 1 else 0.0)
        ours = statistics.mean(acc["pipeline"])
        at_least += ours >= mean
        word = ">= mean" if ours >= mean else ">= mean-sd" if ours >= mean - sd else "BELOW"
        lines.append(f"{name}: pipeline {ours:.4f} vs best baseline {best} {mean:.4f} ± {sd:.4f}"
                     f" -> {word}")
    lines.append(f"pipeline >= best baseline mean on {at_least} of {len(results)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
