"""Transfer learning on a generated texture task: cnn vs resnet18 from scratch vs fine-tuned.

1. Writes two RGB ImageFolder tasks (benchmarks/_textures.py, 96 px, read at image_size 64):
   a pretext task (dots vs blobs) and the target task (stripes vs checks); colour is random in
   both, so only texture tells the classes apart.
2. Pretrains resnet18 on the pretext task through the pipeline's stages; its
   models/model.safetensors becomes the checkpoint (data/weights/pretext.safetensors).
3. On the target task, runs preprocess → train → evaluate (tuning off, the same train settings)
   for: cnn (default), resnet18 from scratch, resnet18 fine-tuned from the checkpoint, and
   resnet18 with the checkpoint's backbone frozen. Prints test accuracy / ROC AUC and train time.
4. Prints training samples/s on this CPU for each architecture (64 px RGB, batch 64).

    .venv/bin/python benchmarks/transfer.py                 # ~10 min on 2 cores
    .venv/bin/python benchmarks/transfer.py --per-class 100 --epochs 3   # a quick try

Runs in a temporary directory (MLflow in a SQLite file there); in the repository it writes only
benchmarks/results/transfer.json (figures, printed table, commit and machine), and with --json
the figures to that file as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _results import captured, write_result
from _textures import write_task

from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.data.dataset import Split
from pipeline.models.device import seed_everything
from pipeline.models.networks import build_model
from pipeline.stages import evaluate, preprocess, train
from pipeline.training.engine import fit


def params_file(root: Path, images: Path, model: dict, args: argparse.Namespace) -> Path:
    """params.yaml for one run: tuning and offline augmentation off, the given model."""
    params = {"seed": 0,
              "data": {"source": "imagefolder", "path": str(images), "positive_class":
                       "checks" if "target" in images.name else "dots",
                       "image_size": 64, "channels": 3},
              "augment": {"enabled": False},
              "model": model,
              # Holdout validation, as measured in results/transfer_cpu.json (600 images would
              # otherwise be cross-validated: train.cv_folds auto).
              "train": {"epochs": args.epochs, "patience": 5, "batch_size": 64,
                        "num_threads": args.threads, "cv_folds": 0},
              "tune": {"enabled": False}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def pipeline_run(root: Path, images: Path, model: dict, args: argparse.Namespace) -> dict:
    """preprocess → train → evaluate in `root`; test metrics and the train stage's wall time."""
    root.mkdir(parents=True)
    params = ["--params", str(params_file(root, images, model, args))]
    processed = str(root / "processed")
    preprocess.main([*params, "--out", processed])
    tick = time.perf_counter()
    # augment is off: the train split is read from processed as is
    train.main([*params, "--data-dir", processed, "--train-dir", processed, "--best-params",
                str(root / "none.json"), "--out", str(root / "models"),
                "--reports", str(root / "reports")])
    seconds = time.perf_counter() - tick
    evaluate.main([*params, "--data-dir", processed, "--model-dir", str(root / "models"),
                   "--reports", str(root / "reports")])
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    fitted = json.loads((root / "reports" / "train_metrics.json").read_text())
    return {"test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
            "test_log_loss": metrics["log_loss"], "epochs_run": fitted["epochs_run"],
            "train_stage_seconds": seconds}


def throughput(arch: str, threads: int, repeats: int) -> float:
    """Median training samples/s of `arch` on 512 random 64 px RGB images, batch 64."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (512, 3, 64, 64), dtype=np.uint8)
    y = (np.arange(512) % 2).astype(np.float32)
    data = Split(x, y, [str(i) for i in range(512)])
    rates = []
    for _ in range(repeats):
        seed_everything(0, threads)
        model = build_model(ModelConfig(type=arch), (3, 64, 64), [0.5] * 3, [0.25] * 3)
        result = fit(model, data, Split(x[:64], y[:64], data.ids[:64]),
                     TrainConfig(epochs=1, batch_size=64, patience=0, num_threads=threads),
                     seed=0, device=torch.device("cpu"))
        rates.append(result.samples_seen / result.train_seconds)
    return statistics.median(rates)


def main() -> None:
    """Generate the tasks, pretrain, compare the four target runs, measure throughput."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="images per class and task")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with captured() as out:
        report = measure(args)
    write_result("transfer", report, out.getvalue())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def measure(args: argparse.Namespace) -> dict:
    """Run everything, print the tables and return the figures."""
    print(f"load average before: {os.getloadavg()}")
    report: dict = {"per_class": args.per_class, "epochs": args.epochs, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        root = Path(tmp)
        pretext = write_task(root / "pretext", "pretext", args.per_class)
        target = write_task(root / "target", "target", args.per_class)
        report["pretext"] = pipeline_run(root / "pre", pretext, {"type": "resnet18"}, args)
        weights = root / "data" / "weights" / "pretext.safetensors"
        weights.parent.mkdir(parents=True)
        shutil.copy(root / "pre" / "models" / "model.safetensors", weights)
        ckpt = str(weights.relative_to(root))
        runs = {"cnn": {"type": "cnn"}, "resnet18 scratch": {"type": "resnet18"},
                "resnet18 fine-tuned": {"type": "resnet18", "weights": ckpt},
                "resnet18 frozen backbone": {"type": "resnet18", "weights": ckpt,
                                             "freeze": "backbone"}}
        report["target"] = {name: pipeline_run(root / name.replace(" ", "_"), target, model,
                                               args) for name, model in runs.items()}
    report["samples_per_second"] = {arch: throughput(arch, args.threads, args.repeats) for arch
                                    in ("cnn", "resnet18", "mobilenet_v3_small",
                                        "efficientnet_b0")}
    print(f"load average after: {os.getloadavg()}")
    print(f"pretext (resnet18 scratch): {report['pretext']}")
    print(f"\n{'target run':26} {'test acc':>8} {'ROC AUC':>8} {'log loss':>8} {'epochs':>6} "
          f"{'train s':>8}")
    for name, row in report["target"].items():
        print(f"{name:26} {row['test_accuracy']:8.4f} {row['test_roc_auc']:8.4f} "
              f"{row['test_log_loss']:8.4f} {row['epochs_run']:6d} "
              f"{row['train_stage_seconds']:8.1f}")
    print(f"\ntraining samples/s, 64 px RGB, batch 64, {args.threads} threads (median of "
          f"{args.repeats}):")
    for arch, rate in report["samples_per_second"].items():
        print(f"  {arch:20} {rate:8.1f}")
    return report


if __name__ == "__main__":
    main()
