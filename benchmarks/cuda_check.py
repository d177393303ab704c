"""CUDA path check for a lent GPU machine: device selection, bf16 autocast, online augmentation.

Trains the default model (params.yaml defaults: CNN, AdamW, cosine) through
``pipeline.training.fit.fit_model`` -- the function the train stage and every tuning trial
call -- on:

1. the default digits data (written and preprocessed exactly as the preprocess stage does), with
   online augmentation on, twice with the same seed: prints samples/s, validation ROC AUC and
   whether the two runs gave identical weights;
2. a synthetic 20,000-image 64 px RGB set, batch 256, for throughput (samples/s, peak GPU memory);
3. a torchvision backbone (resnet18 by default, ``--backbone``) on the generated texture task of
   ``benchmarks/_textures.py`` (64 px RGB, stripes vs checks), twice with the same seed:
   samples/s, peak GPU memory, test accuracy / ROC AUC, whether the reruns gave identical weights.

Needs only torch, torchvision, numpy, scikit-learn, pandas, pillow, pyyaml and safetensors (no
MLflow, Optuna or DVC), so it runs on the GPU image as is::

    PYTHONPATH=. python3 benchmarks/cuda_check.py --out /tmp/cuda_check.json

Writes benchmarks/results/cuda_check_<device>.json (e.g. cuda_check_nvidia-h200.json) with the
commit and the machine (benchmarks/_results.py); --out also writes the bare figures elsewhere.

On a machine without CUDA it runs on the CPU (useful to try the script; the figures then mean
little).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_result

from pipeline.core.config import Params
from pipeline.data.dataset import DatasetMeta, ImageSpec, Split, load_splits
from pipeline.data.sources import preprocess
from pipeline.evaluation.metrics import ranking_metrics
from pipeline.models.device import select_device
from pipeline.models.inference import predict_proba
from pipeline.training.fit import fit_model


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict's tensors in key order."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def digits_runs(device: torch.device, epochs: int) -> dict:
    """Default params on digits with online augmentation, twice; speed and determinism."""
    params = Params()
    with tempfile.TemporaryDirectory() as tmp:
        data = dataclasses.replace(params.data, path=str(Path(tmp) / "digits"))
        preprocess(data, params.seed, Path(tmp) / "processed")
        splits, meta = load_splits(Path(tmp) / "processed")
        # Memory-mapped from disk: into memory before the folder goes.
        splits = {name: Split(np.array(s.X), np.array(s.y), s.ids) for name, s in splits.items()}
    train_cfg = dataclasses.replace(params.train, epochs=epochs, patience=0,
                                    online_augment=True)
    runs = []
    for _ in range(2):
        result = fit_model(params.model, train_cfg, params.augment, splits["train"],
                           splits["val"], meta, seed=params.seed, device=device)
        probs = predict_proba(result.model, splits["test"].X)
        runs.append({"samples_per_second": result.samples_seen / result.train_seconds,
                     "best_val_roc_auc": result.best_score,
                     "test_roc_auc": ranking_metrics(splits["test"].y, probs)["roc_auc"],
                     "weights_sha256": weights_digest(result.model)})
    return {"n_train": len(splits["train"].y), "epochs": epochs, "runs": runs,
            "identical_rerun": runs[0]["weights_sha256"] == runs[1]["weights_sha256"]}


def synthetic_run(device: torch.device, n: int, size: int, epochs: int) -> dict:
    """Throughput of the default CNN on n RGB images of size x size, batch 256."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(np.float32)
    x = rng.random((n, 3, size, size), dtype=np.float32) * 0.5
    x[y == 1, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] += 0.4
    cut = int(0.85 * n)
    train = Split(x[:cut], y[:cut], [str(i) for i in range(cut)])
    val = Split(x[cut:], y[cut:], [str(i) for i in range(cut, n)])
    meta = DatasetMeta("synthetic", "-", ("a", "b"),
                       image=ImageSpec(size, 3, (0.45,) * 3, (0.2,) * 3))
    params = Params()
    train_cfg = dataclasses.replace(params.train, epochs=epochs, batch_size=256, patience=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = fit_model(params.model, train_cfg, params.augment, train, val, meta,
                       seed=params.seed, device=device)
    out = {"n_train": cut, "size": size, "epochs": epochs, "batch_size": 256,
           "samples_per_second": result.samples_seen / result.train_seconds,
           "best_val_roc_auc": result.best_score}
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def backbone_run(device: torch.device, arch: str, n: int, epochs: int) -> dict:
    """`arch` from scratch on n generated 64 px texture images (70/15/15), batch 256, twice."""
    from _textures import texture

    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(np.float32)
    x = np.stack([texture(("stripes", "checks")[int(c)], rng, 64) for c in y]
                 ).transpose(0, 3, 1, 2).copy()
    cut, end = int(0.7 * n), int(0.85 * n)
    parts = [Split(x[a:b], y[a:b], [str(i) for i in range(a, b)])
             for a, b in ((0, cut), (cut, end), (end, n))]
    scaled = x[:cut].astype(np.float64) / 255
    meta = DatasetMeta("textures", "-", ("stripes", "checks"), image=ImageSpec(
        64, 3, tuple(scaled.mean(axis=(0, 2, 3))), tuple(scaled.std(axis=(0, 2, 3)))))
    params = Params()
    model_cfg = dataclasses.replace(params.model, type=arch)
    train_cfg = dataclasses.replace(params.train, epochs=epochs, batch_size=256, patience=0)
    runs = []
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = fit_model(model_cfg, train_cfg, params.augment, parts[0], parts[1], meta,
                           seed=params.seed, device=device)
        probs = predict_proba(result.model, parts[2].X)
        run = {"samples_per_second": result.samples_seen / result.train_seconds,
               "best_val_roc_auc": result.best_score,
               "test_accuracy": float(((probs >= 0.5) == parts[2].y).mean()),
               "test_roc_auc": ranking_metrics(parts[2].y, probs)["roc_auc"],
               "weights_sha256": weights_digest(result.model)}
        if device.type == "cuda":
            run["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        runs.append(run)
    return {"arch": arch, "n_train": cut, "size": 64, "epochs": epochs, "batch_size": 256,
            "runs": runs,
            "identical_rerun": runs[0]["weights_sha256"] == runs[1]["weights_sha256"]}


def main() -> None:
    """Run both checks and print (and optionally save) the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=20000, help="synthetic images")
    parser.add_argument("--backbone", default="resnet18", help="torchvision model.type")
    parser.add_argument("--backbone-n", type=int, default=6000, help="texture images")
    args = parser.parse_args()
    device = select_device()
    tick = time.perf_counter()
    report = {"device": str(device), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "digits": digits_runs(device, args.epochs),
              "synthetic": synthetic_run(device, args.n, 64, max(3, args.epochs // 3)),
              "backbone": backbone_run(device, args.backbone, args.backbone_n,
                                       max(3, args.epochs // 2))}
    report["wall_seconds"] = time.perf_counter() - tick
    text = json.dumps(report, indent=2)
    print(text)
    device_name = report["gpu"] or str(device)
    write_result(f"cuda_check_{re.sub(r'[^a-z0-9]+', '-', device_name.lower()).strip('-')}",
                 report)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
