"""DVC stage: fit the model on the augmented training split; weights, history, MLflow run."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from pipeline import tracking
from pipeline.augment import augment_images
from pipeline.config import apply_overrides, flatten, load_params
from pipeline.data import load_splits
from pipeline.engine import build_and_fit, select_device
from pipeline.files import read_json, write_json
from pipeline.models import WEIGHTS_FILE, save_model
from pipeline.progress import EpochProgress
from pipeline.stages._common import parse_stage_args, stage_entry

log = logging.getLogger(__name__)
MODEL_TAG = "pipeline.model_sha256"


def history_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch curves without wall-clock fields, so the DVC output is reproducible."""
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the train stage."""
    args = parse_stage_args(argv, __doc__, {
        "data_dir": "data/processed", "train_dir": "data/augmented",
        "best_params": "models/best_params.json", "out": "models", "reports": "reports"})
    params = load_params(args.params)
    best = read_json(args.best_params) if Path(args.best_params).is_file() else {}
    overrides = best.get("params", {})
    train_cfg, model_cfg = apply_overrides(params.train, params.model, overrides)
    if overrides:
        log.info("applying tuned params from %s: %s", args.best_params, overrides)
    processed, meta = load_splits(args.data_dir, names=("val",))
    val_split = processed["val"]
    train_split = load_splits(args.train_dir, names=("train",))[0]["train"]
    device = select_device()
    transform = None
    if train_cfg.online_augment and meta["kind"] == "image":
        gen = torch.Generator(device=device).manual_seed(params.seed + 1)
        transform = functools.partial(augment_images, cfg=params.augment, gen=gen)

    tracking.configure()
    with tracking.start_run(params.mlflow.experiment, run_name="train") as run:
        run_id = run.info.run_id
        effective = {**flatten(params), **flatten(asdict(train_cfg), "train."),
                     **flatten(asdict(model_cfg), "model.")}
        tracking.log_params(effective)
        data_hashes = {"pipeline.dvc.data/processed": tracking.dvc_hash(args.data_dir),
                       "pipeline.dvc.data/augmented": tracking.dvc_hash(args.train_dir)}
        mlflow.set_tags({**tracking.git_info(), **data_hashes,
                         **tracking.runtime_tags(str(device), train_cfg.num_threads),
                         "pipeline.stage": "train",
                         "pipeline.tuned_keys": ",".join(sorted(overrides)) or "none"})
        tracking.log_dataset(train_split.X, train_split.y, "train", args.train_dir,
                             data_hashes["pipeline.dvc.data/augmented"], "training")
        tracking.log_dataset(val_split.X, val_split.y, "val", args.data_dir,
                             data_hashes["pipeline.dvc.data/processed"], "validation")
        logger = tracking.EpochLogger(run_id)
        result = build_and_fit(model_cfg, train_cfg, train_split, val_split, meta,
                               seed=params.seed, device=device,
                               callbacks=[logger, EpochProgress("train")],
                               batch_transform=transform)
        config = {"model": asdict(model_cfg), "train": asdict(train_cfg), "seed": params.seed,
                  "input_shape": meta["input_shape"], "norm": meta["norm"],
                  "classes": meta["classes"], "kind": meta["kind"],
                  "best_epoch": result.best_epoch, "tuned": overrides}
        save_model(result.model, args.out, config)
        history = history_rows(result.history)
        summary = {"best_epoch": result.best_epoch, "epochs_run": len(history),
                   f"best_val_{result.monitor}": result.best_score,
                   "stopped_early": result.stopped_early}
        write_json(Path(args.reports) / "train_metrics.json", summary)
        write_json(Path(args.reports) / "train_history.json", history)
        sha = hashlib.sha256((Path(args.out) / WEIGHTS_FILE).read_bytes()).hexdigest()
        mlflow.set_tag(MODEL_TAG, sha)
        mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                            "samples_per_second": result.samples_seen / result.train_seconds,
                            "mlflow_logging_seconds": logger.seconds})
        mlflow.log_dict({"history": result.history}, "train_history.json")
        log_network(result.model, val_split.X[:4])


def log_network(model: torch.nn.Module, example: np.ndarray) -> None:
    """Log the network with MLflow's PyTorch flavour as a torch.export program (no pickle)."""
    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(model, name="network", serialization_format="pt2",
                             signature=infer_signature(example, output), input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


if __name__ == "__main__":
    main()
