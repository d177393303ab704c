"""Training throughput of the engine versus the seed-document loop, plus MLflow logging overhead.

Both sides train the same small CNN on the same ImageFolder files (the default digits data at
16x16) for the same epochs and batch size, on the CPU, with the same thread count (default: the
engine's pinned ``train.num_threads``; ``--threads 1`` for the single-thread comparison):

* engine: ``pipeline.training.fit.fit_model`` on the arrays the pipeline feeds it, as the train
  stage runs it: the augment stage's output (``data/augmented``: decoded once, rotated/shifted
  once, the counterpart of the seed loop's per-epoch ``RandomRotation``; falls back to
  ``data/processed``), AdamW, cosine schedule, per-epoch validation, best-epoch restore, early
  stopping off so both sides run every epoch;
* seed loop: what a user writes from the seed document -- torchvision ``ImageFolder`` +
  PIL ``RandomRotation`` transform + ``DataLoader`` + ``Sigmoid``/``BCELoss`` + ``Adam``, which
  decodes and transforms every image again in every epoch.

Samples/s = training samples processed per second of training wall time. The engine's time is
``FitResult.train_seconds`` (its per-epoch validation pass included, decoding excluded because the
preprocess stage decodes once); the seed loop's time covers its epoch loop, per-epoch decoding
included, and no validation (so the ratio is, if anything, conservative for the engine). Every
figure is the median of ``--repeats`` runs; engine and seed runs alternate, and the ratio is taken
per repeat (same process, same moment) before the median.

MLflow overhead: the engine trains again with ``pipeline.tracking.metric_log.EpochLogger`` attached
to a real run in a throw-away SQLite store; the figure is the time spent in the logger's
``flush`` (timed by a subclass defined in this script) as a share of training time.

Run from the repository root, after ``python -m pipeline.stages.preprocess`` (and the augment
stage for the optional augmented-set line; ``dvc repro`` runs both)::

    .venv/bin/python benchmarks/engine_vs_seed_loop.py            # 3 repeats, 10 epochs, ~1-2 min
    .venv/bin/python benchmarks/engine_vs_seed_loop.py --repeats 5 --epochs 20
    .venv/bin/python benchmarks/engine_vs_seed_loop.py --profile  # + where the engine's time goes

It writes only benchmarks/results/engine_vs_seed_loop.json (figures, printed text, commit and
machine; see benchmarks/_results.py). It is a benchmark that prints figures, not a test: the
exit status is 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import captured, write_result
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from pipeline.core.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.data.dataset import DatasetMeta, Split, load_splits
from pipeline.models.feed import as_inputs
from pipeline.models.inference import predict_proba
from pipeline.training.callbacks import FitResult
from pipeline.training.fit import fit_model

TARGET_RATIO = 6.0
TARGET_MLFLOW_SHARE = 2.0  # percent of training time
CPU = torch.device("cpu")


@dataclasses.dataclass
class Outcome:
    """One training run: throughput and test ROC AUC."""

    samples: int
    seconds: float
    test_auc: float

    @property
    def rate(self) -> float:
        """Training samples per second."""
        return self.samples / self.seconds


# --- the engine -----------------------------------------------------------------------------


def engine_run(model_cfg: ModelConfig, train_cfg: TrainConfig, train: Split, val: Split,
               test: Split, meta: DatasetMeta, seed: int,
               callbacks: Sequence[Any] = ()) -> tuple[Outcome, FitResult]:
    """Fit as the train stage does and score the restored best-epoch model on the test split."""
    # online_augment is off (TrainConfig default), so the augment section is not used.
    result = fit_model(model_cfg, train_cfg, AugmentConfig(), train, val, meta, seed=seed,
                       device=CPU, callbacks=callbacks)
    auc = float(roc_auc_score(test.y, predict_proba(result.model, test.X)))
    return Outcome(result.samples_seen, result.train_seconds, auc), result


# --- the seed-document loop -----------------------------------------------------------------


def seed_cnn(channels: Sequence[int], dropout: float) -> nn.Sequential:
    """The engine's CNN body written out by hand, ending in Sigmoid as in the seed document."""
    layers: list[nn.Module] = []
    in_channels = 1
    for i, width in enumerate(channels):
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU()]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(in_channels, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


def imagefolder_subsets(root: Path, ids: dict[str, list[str]], splits: dict[str, Split],
                        meta: DatasetMeta, size: int) -> tuple[Subset, Subset]:
    """torchvision ImageFolder train/test subsets holding exactly the engine's files."""
    mean, std = meta.norm
    common = [transforms.Grayscale(1), transforms.Resize((size, size))]
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_set = datasets.ImageFolder(
        str(root), transform=transforms.Compose([*common, transforms.RandomRotation(10), *tail]))
    test_set = datasets.ImageFolder(str(root), transform=transforms.Compose([*common, *tail]))
    if train_set.classes[1] != meta.positive_class:
        raise SystemExit(f"{root}: class order {train_set.classes} does not put the positive "
                         f"class {meta.positive_class!r} second")
    where = {Path(path).relative_to(root).as_posix(): i
             for i, (path, _) in enumerate(train_set.samples)}
    subsets = []
    for name, dataset in (("train", train_set), ("test", test_set)):
        missing = [f for f in ids[name] if f not in where]
        if missing:
            raise SystemExit(f"{root}: {len(missing)} {name} files of ids.json are missing "
                             f"(e.g. {missing[0]}); rerun python -m pipeline.stages.preprocess")
        index = [where[f] for f in ids[name]]
        labels = np.array([dataset.targets[i] for i in index], dtype=np.float32)
        if not np.array_equal(labels, splits[name].y):
            raise SystemExit(f"{root}: ImageFolder labels differ from the {name} split's")
        subsets.append(Subset(dataset, index))
    return subsets[0], subsets[1]


def seed_loop_run(train_set: Subset, test_set: Subset, model_cfg: ModelConfig,
                  train_cfg: TrainConfig, seed: int, threads: int) -> Outcome:
    """Train and test as the seed document does; time the epoch loop, decoding included."""
    torch.use_deterministic_algorithms(False)  # the seed document sets no such flag
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = seed_cnn(model_cfg.conv_channels, model_cfg.dropout)
    loss_fn = nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    loader = DataLoader(train_set, batch_size=train_cfg.batch_size, shuffle=True, num_workers=0)
    samples = 0
    start = time.perf_counter()
    for _ in range(train_cfg.epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb).squeeze(1), yb.float())
            loss.backward()
            optimizer.step()
            samples += len(yb)
    seconds = time.perf_counter() - start
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for xb, yb in DataLoader(test_set, batch_size=256, shuffle=False, num_workers=0):
            probs.append(model(xb).squeeze(1))
            labels.append(yb)
    auc = float(roc_auc_score(torch.cat(labels).numpy(), torch.cat(probs).double().numpy()))
    return Outcome(samples, seconds, auc)


# --- reporting --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(values))


def summary(label: str, outcomes: Sequence[Outcome]) -> str:
    """One line: median samples/s (with range), median seconds, median test AUC."""
    rates = [o.rate for o in outcomes]
    return (f"  {label:<38} {median(rates):>9,.0f} samples/s  "
            f"[{min(rates):,.0f}-{max(rates):,.0f}]  "
            f"{median([o.seconds for o in outcomes]):6.2f} s  "
            f"test AUC {median([o.test_auc for o in outcomes]):.4f}")


def verdict(ok: bool) -> str:
    """MET / MISSED."""
    return "MET" if ok else "MISSED"


def check_inputs(test_set: Subset, test: Split, meta: DatasetMeta) -> float:
    """Largest pixel difference between the seed loop's test tensors and what the engine feeds
    its model (the stored uint8 arrays through as_inputs: [0, 1] floats)."""
    mean = torch.tensor(meta.norm[0]).reshape(-1, 1, 1)
    std = torch.tensor(meta.norm[1]).reshape(-1, 1, 1)
    seed_x = torch.stack([test_set[i][0] * std + mean for i in range(len(test_set))])
    return float((seed_x - as_inputs(torch.from_numpy(np.array(test.X)))).abs().max())


def profile_engine(fn: Callable[[], object], top: int) -> str:
    """cProfile one engine fit; the top entries by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def mlflow_overhead(model_cfg: ModelConfig, train_cfg: TrainConfig, splits: dict[str, Split],
                    meta: DatasetMeta, seed: int, repeats: int
                    ) -> tuple[list[float], list[float], list[float]]:
    """Engine fits logged by EpochLogger into a temporary SQLite store: (share %, log s, fit s)."""
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        # Imports MLflow; only this section needs it.
        from pipeline.tracking import metric_log, runs, store

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter

        class TimedEpochLogger(metric_log.EpochLogger):
            """The production logger, plus the seconds its sends to MLflow take."""

            seconds = 0.0

            def timed(self, send: Callable[[], None]) -> None:
                tick = time.perf_counter()
                try:
                    send()
                finally:
                    self.seconds += time.perf_counter() - tick

            def flush(self) -> None:
                self.timed(super().flush)

            def wait(self) -> None:
                self.timed(super().wait)

        store.configure()
        shares, logged, fitted = [], [], []
        for r in range(repeats):
            with runs.start_run(store.experiment_id("bench"), run_name=f"engine-{r}") as run_id:
                metric_log.log_params({**{f"model.{k}": v
                                          for k, v in dataclasses.asdict(model_cfg).items()},
                                       **{f"train.{k}": v
                                          for k, v in dataclasses.asdict(train_cfg).items()}})
                logger = TimedEpochLogger(run_id)
                _, result = engine_run(model_cfg, train_cfg, splits["train"], splits["val"],
                                       splits["test"], meta, seed, callbacks=[logger])
                logger.wait()  # the last batch, as the train stage waits for it
            shares.append(100.0 * logger.seconds / result.train_seconds)
            logged.append(logger.seconds)
            fitted.append(result.train_seconds)
        os.environ.pop("MLFLOW_TRACKING_URI")
    return shares, logged, fitted


def load() -> str:
    """The 1/5/15-minute load averages: other processes on a 2-core machine skew timings."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def auc_pairs(y: np.ndarray, delta: float) -> str:
    """An AUC difference as a count of positive/negative test pairs (the AUC's resolution)."""
    pairs = int((y == 1).sum()) * int((y == 0).sum())
    return f"{delta * pairs:+.1f} of {pairs:,} pairs"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the figures and write them to benchmarks/results/."""
    with captured() as out:
        figures = measure(argv)
    label = figures.pop("label", None)
    write_result("engine_vs_seed_loop" + (f"_{label}" if label else ""), figures,
                 out.getvalue())


def outcomes(runs: Sequence[Outcome]) -> dict[str, list[float]]:
    """Per-repeat samples/s and test ROC AUC, for the results file."""
    return {"samples_per_s": [o.rate for o in runs], "test_auc": [o.test_auc for o in runs]}


def measure(argv: list[str] | None) -> dict[str, Any]:
    """Run the benchmark, print the figures and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs, both sides")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size, both sides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default="data/processed", help="preprocess stage output")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="augment stage output (extra line; skipped if missing)")
    parser.add_argument("--threads", type=int, default=TrainConfig().num_threads,
                        help="threads for both sides in the headline comparison (default: the "
                        "engine's pinned train.num_threads)")
    parser.add_argument("--skip-extras", action="store_true",
                        help="only the headline comparison and the MLflow share")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one engine fit and print the top entries")
    parser.add_argument("--conv-channels", type=int, nargs="+", default=[16, 32],
                        help="the CNN's blocks, both sides (default: the shape its published "
                        "figures used; params.yaml's default model is 16 32 64)")
    parser.add_argument("--label", help="write results/engine_vs_seed_loop_<label>.json")
    args = parser.parse_args(argv)

    splits, meta = load_splits(args.data_dir)
    root = Path(meta.path)
    size = int(meta.input_shape[-1])
    ids = {name: s.ids for name, s in splits.items()}
    model_cfg = ModelConfig(conv_channels=tuple(args.conv_channels))
    # The engine's defaults (= params.yaml's train section) with early stopping off, so both
    # sides run every epoch; both sides get the same thread count.
    threads, other = args.threads, 1 if args.threads > 1 else 2
    train_cfg = dataclasses.replace(TrainConfig(), epochs=args.epochs,
                                    batch_size=args.batch_size, patience=0, num_threads=threads)
    train_set, test_set = imagefolder_subsets(root, ids, splits, meta, size)
    # The engine trains on what the pipeline feeds it: the augment stage's output, which plays
    # the role of the seed loop's per-epoch RandomRotation (decoded and augmented once).
    aug_dir = Path(args.augmented_dir)
    engine_train = splits["train"]
    if (aug_dir / "meta.json").is_file():
        engine_train = load_splits(aug_dir, names=("train",))[0]["train"]
    engine_label = ("augmented train" if engine_train is not splits["train"]
                    else "processed train")

    print("engine vs seed-document loop")
    print(f"  torch {torch.__version__}, {os.cpu_count()} CPU cores, python "
          f"{sys.version.split()[0]}")
    print(f"  data {root} at {size}x{size}: train {len(train_set)}, val {len(splits['val'].y)}, "
          f"test {len(test_set)}; model {model_cfg.type} conv_channels "
          f"{list(model_cfg.conv_channels)}")
    print(f"  {args.epochs} epochs, batch {args.batch_size}, {args.repeats} repeats, medians; "
          f"engine {train_cfg.optimizer} lr {train_cfg.lr} {train_cfg.scheduler}; "
          f"seed loop Adam lr {train_cfg.lr}")
    print(f"  load average before: {load()} (1, 5, 15 min)")
    parity = check_inputs(test_set, splits["test"], meta)
    print(f"  input parity: max |seed-loop test pixel - engine test pixel| = {parity:.2e}")
    if parity > 1e-3:  # the two sides would not be learning the same task
        raise SystemExit(f"input parity {parity:.2e} > 1e-3: the sides see different pixels")

    # Warm-up (not timed): first-call allocations and kernel selection on both sides.
    warm = dataclasses.replace(train_cfg, epochs=1)
    engine_run(model_cfg, warm, splits["train"], splits["val"], splits["test"], meta, args.seed)
    seed_loop_run(train_set, test_set, model_cfg, warm, args.seed, threads=threads)

    engine: list[Outcome] = []
    seed: list[Outcome] = []
    print(f"\nper repeat ({threads} thread(s) each)")
    for r in range(args.repeats):
        e, _ = engine_run(model_cfg, train_cfg, engine_train, splits["val"], splits["test"],
                          meta, args.seed)
        s = seed_loop_run(train_set, test_set, model_cfg, train_cfg, args.seed, threads=threads)
        engine.append(e)
        seed.append(s)
        print(f"  #{r + 1}: engine {e.rate:9,.0f}/s (AUC {e.test_auc:.4f})   seed loop "
              f"{s.rate:7,.0f}/s (AUC {s.test_auc:.4f})   ratio {e.rate / s.rate:5.2f}x")

    ratios = [e.rate / s.rate for e, s in zip(engine, seed, strict=True)]
    engine_auc, seed_auc = median([o.test_auc for o in engine]), median([o.test_auc for o in seed])
    print("\nmedians")
    print(summary(f"engine, {engine_label}, {threads} thr", engine))
    print(summary(f"seed loop, ImageFolder, {threads} thr", seed))
    of_medians = median([o.rate for o in engine]) / median([o.rate for o in seed])
    print(f"  ratio engine/seed loop: {median(ratios):.2f}x (median of per-repeat ratios; "
          f"ratio of medians {of_medians:.2f}x)")
    figures: dict[str, Any] = {
        "args": vars(args), "threads": threads, "engine_input": engine_label,
        "engine": outcomes(engine), "seed_loop": outcomes(seed), "ratios": ratios,
        "ratio_median": median(ratios), "ratio_of_medians": of_medians}

    if not args.skip_extras:
        print("\nextras")
        plain = [engine_run(model_cfg, train_cfg, splits["train"], splits["val"],
                            splits["test"], meta, args.seed)[0] for _ in range(args.repeats)]
        print(summary(f"engine, processed train (no augmentation), {threads} thr", plain))
        alt = dataclasses.replace(train_cfg, num_threads=other)
        engine2 = [engine_run(model_cfg, alt, engine_train, splits["val"], splits["test"],
                              meta, args.seed)[0] for _ in range(args.repeats)]
        seed2 = [seed_loop_run(train_set, test_set, model_cfg, train_cfg, args.seed,
                               threads=other) for _ in range(args.repeats)]
        print(summary(f"engine, {engine_label}, {other} thr", engine2))
        print(summary(f"seed loop, ImageFolder, {other} thr", seed2))
        print(f"  ratio at {other} thread(s): "
              f"{median([o.rate for o in engine2]) / median([o.rate for o in seed2]):.2f}x")
        figures["extras"] = {"engine_processed_train": outcomes(plain), "other_threads": other,
                             "engine_other_threads": outcomes(engine2),
                             "seed_loop_other_threads": outcomes(seed2)}

    # MLflow share where it matters: the train stage's own setting (augmented set, default
    # epochs), since a fixed logging cost looks larger against a 1-second toy fit.
    stage_splits = {**splits, "train": engine_train}
    stage_cfg = dataclasses.replace(train_cfg, epochs=TrainConfig().epochs)
    shares, logged, fitted = mlflow_overhead(model_cfg, stage_cfg, stage_splits, meta,
                                             args.seed, args.repeats)
    print(f"\nMLflow (EpochLogger into a temporary SQLite store; the train stage's setting: "
          f"augmented set, {TrainConfig().epochs} epochs, {threads} thread(s))")
    print(f"  logging {median(logged) * 1000:.1f} ms of {median(fitted):.2f} s training = "
          f"{median(shares):.2f} % (per run: {', '.join(f'{s:.2f}' for s in shares)} %)")

    print(f"\n  load average after: {load()}")
    ratio_ok = median(ratios) >= TARGET_RATIO and engine_auc >= seed_auc
    print("\ntargets")
    print(f"  throughput >= {TARGET_RATIO:g}x seed loop at equal or better test AUC: "
          f"{median(ratios):.2f}x, AUC {engine_auc:.4f} vs {seed_auc:.4f} "
          f"({auc_pairs(splits['test'].y, engine_auc - seed_auc)}) -> {verdict(ratio_ok)}")
    print(f"  MLflow logging <= {TARGET_MLFLOW_SHARE:g} % of training time: "
          f"{median(shares):.2f} % -> {verdict(median(shares) <= TARGET_MLFLOW_SHARE)}")

    if args.profile:
        print("\nprofile: one engine fit (processed train, 1 thread), top 20 by own time")
        print(profile_engine(lambda: engine_run(model_cfg, train_cfg, splits["train"],
                                                splits["val"], splits["test"], meta, args.seed),
                             top=20))
    figures["mlflow"] = {"share_pct": shares, "logged_s": logged, "fit_s": fitted,
                         "share_pct_median": median(shares)}
    figures["label"] = args.label
    figures["targets"] = {"ratio": TARGET_RATIO, "ratio_met": ratio_ok,
                          "mlflow_share_pct": TARGET_MLFLOW_SHARE,
                          "mlflow_met": median(shares) <= TARGET_MLFLOW_SHARE}
    return figures


if __name__ == "__main__":
    main()
