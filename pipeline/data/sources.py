"""Data sources (built-in, ImageFolder, CSV) → labelled, split arrays with typed metadata."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core import fingerprints
from pipeline.core.config import DataConfig, SplitConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.files import atomic_dir, atomic_path
from pipeline.data import arrays
from pipeline.data.arrays import Rows
from pipeline.data.dataset import (
    DatasetMeta,
    ImageSpec,
    Split,
    features_file,
    save_splits,
    write_split_files,
)
from pipeline.data.folders import list_imagefolder
from pipeline.data.images import auto_size, conversion_notes, decode_files, histogram
from pipeline.data.tables import fit_table_spec, read_table, transform_table

log = logging.getLogger(__name__)


# --- built-in sources -----------------------------------------------------------------------


def write_digits(path: Path) -> None:
    """scikit-learn's 8x8 digits as an ImageFolder of PNGs (odd/ and even/)."""
    from sklearn import datasets

    digits = datasets.load_digits()
    with atomic_dir(path) as tmp:
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            folder = tmp / ("odd" if label % 2 else "even")
            folder.mkdir(exist_ok=True)
            # 0..16 intensities → 0..255 grayscale; PNG bytes are deterministic.
            pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    log.info("wrote digits ImageFolder (%d images) to %s", len(digits.target), path)


def write_breast_cancer(path: Path) -> None:
    """scikit-learn's Wisconsin breast-cancer table as a CSV with a `target` label column."""
    from sklearn import datasets

    bunch = datasets.load_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    log.info("wrote breast_cancer CSV (%d rows) to %s", len(frame), path)


@dataclass(frozen=True)
class Source:
    """How a data.source is read: its layout, and for built-ins how and where it is written."""

    kind: Literal["image", "table"]
    write_builtin: Callable[[Path], None] | None = None
    builtin_name: str = ""  # its file or folder under data/raw/ (the builtin stage's outs)


# The one place a data source is added.
SOURCES = {"digits": Source("image", write_digits, "digits"),
           "breast_cancer": Source("table", write_breast_cancer, "breast_cancer.csv"),
           "imagefolder": Source("image"),
           "csv": Source("table")}


def write_builtins(root: Path) -> list[Path]:
    """Write every built-in set under `root` in the layout users bring; return the paths."""
    written = []
    for source in SOURCES.values():
        if source.write_builtin is not None:
            source.write_builtin(root / source.builtin_name)
            written.append(root / source.builtin_name)
    return written


def source_of(cfg: DataConfig) -> Source:
    """The Source for data.source; built-in data is written to data.path on first use."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source = {cfg.source!r}: must be one of {sorted(SOURCES)}")
    source = SOURCES[cfg.source]
    if source.write_builtin is not None and not Path(cfg.path).exists():
        source.write_builtin(Path(cfg.path))
    return source


# --- labels and splits ----------------------------------------------------------------------


def encode_labels(raw: pd.Series | list, positive_class: str | None,
                  where: str) -> tuple[np.ndarray, list[str]]:
    """Map two distinct labels to 0/1; return y and [negative, positive] class names."""
    series = pd.Series(raw)
    if pd.api.types.is_bool_dtype(series):
        names = series.map({True: "True", False: "False"})
    elif pd.api.types.is_float_dtype(series) and (series == series.round()).all():
        names = series.astype(int).astype(str)  # 0.0/1.0 read from CSV mean 0/1
    else:
        names = series.astype(str)
    distinct = sorted(names.unique())
    if len(distinct) != 2:
        shown = distinct[:10] + (["..."] if len(distinct) > 10 else [])
        raise DataError(f"{where}: binary classification needs exactly 2 distinct labels, "
                        f"found {len(distinct)}: {shown}")
    if positive_class is None:
        if set(distinct) in ({"0", "1"}, {"False", "True"}):
            positive = "1" if "1" in distinct else "True"
        else:
            positive = distinct[1]
            log.info("%s: data.positive_class not set; using %r", where, positive)
    else:
        positive = str(positive_class)
        if positive not in distinct:
            raise DataError(f"data.positive_class = {positive_class!r} is not among the "
                            f"labels {distinct} of {where}")
    negative = distinct[0] if distinct[1] == positive else distinct[1]
    return (names == positive).to_numpy(dtype=np.float32), [negative, positive]


def stratified_split(y: np.ndarray, split: SplitConfig, seed: int,
                     classes: list[str]) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test indices; every class must reach val and test."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    try:
        rest, test = train_test_split(index, test_size=split.test, stratify=y,
                                      random_state=seed)
        train, val = train_test_split(rest, test_size=split.val / (split.train + split.val),
                                      stratify=y[rest], random_state=seed)
    except ValueError as err:
        counts = {classes[k]: int((y == k).sum()) for k in (0, 1)}
        raise DataError(f"data.split: cannot split {len(y)} samples with class counts "
                        f"{counts} into train/val/test ({err})") from None
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    for name, idx in parts.items():
        for k, cls in enumerate(classes):
            if not (y[idx] == k).any():
                raise DataError(f"data.split.{name} = {getattr(split, name)}: class {cls!r} "
                                f"has no example in {name} (only {int((y == k).sum())} in all)")
    return parts


# --- the preprocess stage's work ------------------------------------------------------------

ROWS_PER_CHUNK = 1024  # rows copied and summed at a time: bounds memory whatever N is


def preprocess(cfg: DataConfig, seed: int, out: str | Path) -> DatasetMeta:
    """Read and validate the raw source, split it, fit statistics on train, write `out`."""
    source = source_of(cfg)
    if source.kind == "image":
        with atomic_dir(out) as tmp:
            return _preprocess_images(cfg, seed, tmp)
    frame, target, sep, notes = read_table(cfg)
    y, classes = encode_labels(target, cfg.positive_class, f"{cfg.path} column {cfg.target!r}")
    ids = [str(i) for i in frame.index]
    parts = stratified_split(y, cfg.split, seed, classes)
    spec, fit_notes = fit_table_spec(frame, parts["train"], cfg.target, cfg.path, sep,
                                     cfg.categorical_columns, cfg.numeric_scaling)
    meta = DatasetMeta(source=cfg.source, path=cfg.path, classes=(classes[0], classes[1]),
                       table=spec, notes=tuple(notes + fit_notes))
    splits = {name: Split(transform_table(frame.iloc[idx], spec, cfg.path), y[idx],
                          [ids[i] for i in idx]) for name, idx in parts.items()}
    # A row is what the model sees: an id column must not make duplicates look new.
    rows = fingerprints.of_rows(frame.drop(columns=list(spec.dropped)))
    return save_splits(out, splits, meta,
                       {name: [rows[i] for i in idx] for name, idx in parts.items()})


def _preprocess_images(cfg: DataConfig, seed: int, tmp: Path) -> DatasetMeta:
    """Decode with a process pool straight into each split's .npy rows; with skip_corrupt,
    into a scratch file first (the split depends on which files were readable)."""
    files, labels, ids, notes = list_imagefolder(cfg)
    size = cfg.image_size
    if size == "auto":
        size = auto_size(files)
        log.info("data.image_size: auto -> %d px (median shorter side of %s)", size, cfg.path)
    if cfg.skip_corrupt:
        scratch = tmp / ".decoded.npy"
        errors, _, converted = decode_files({scratch: files}, size, cfg.channels)
        keep = np.array([i for i, f in enumerate(files) if f not in errors], dtype=np.int64)
    else:
        # Every file must decode, so the split is known before decoding.
        errors, keep = {}, np.arange(len(files))
    for file in files:
        if file in errors:
            log.warning("skipping %s", errors[file])
    for cls in sorted(set(labels)):
        if not any(labels[i] == cls for i in keep):
            raise DataError(f"{Path(cfg.path) / cls}: no readable image in class folder")
    y, classes = encode_labels([labels[i] for i in keep], cfg.positive_class, cfg.path)
    parts = stratified_split(y, cfg.split, seed, classes)
    outs = {name: features_file(tmp, name) for name in parts}
    if cfg.skip_corrupt:
        with Rows(scratch) as decoded:
            counts = {outs[name]: _copy_rows(decoded, keep[idx], outs[name])
                      for name, idx in parts.items()}
        scratch.unlink()
    else:
        errors, counts, converted = decode_files({outs[name]: [files[i] for i in idx]
                                                  for name, idx in parts.items()},
                                                 size, cfg.channels)
        if errors:
            first = min(errors, key=files.index)  # the error a sequential decode would raise
            raise DataError(f"{errors[first]} (set data.skip_corrupt: true to skip it)")
    mean, std = _channel_stats(counts[outs["train"]])
    skipped = tuple({"file": ids[i], "reason": errors[f]} for i, f in enumerate(files)
                    if f in errors)
    notes += conversion_notes(converted, Path(cfg.path))
    meta = DatasetMeta(source=cfg.source, path=cfg.path, classes=(classes[0], classes[1]),
                       skipped=skipped, notes=tuple(notes),
                       image=ImageSpec(size, cfg.channels, mean, std))
    # Fingerprints: what the gate needs to know which test images a model learned from.
    return write_split_files(
        tmp, {name: y[idx] for name, idx in parts.items()},
        {name: [ids[keep[i]] for i in idx] for name, idx in parts.items()}, meta,
        {name: [fingerprints.of_file(files[keep[i]]) for i in idx] for name, idx in parts.items()})


def _copy_rows(source: Rows, index: np.ndarray, out: Path) -> np.ndarray:
    """Copy source rows `index` into a new .npy; return their histogram (images.histogram)."""
    arrays.create(out, (len(index), *source.row_shape), source.dtype)
    counts = np.zeros((source.row_shape[0], 256), dtype=np.int64)
    with Rows(out, writable=True) as rows:
        for start in range(0, len(index), ROWS_PER_CHUNK):
            chunk = source.gather(index[start:start + ROWS_PER_CHUNK])
            rows.write(start, chunk)
            counts += histogram(chunk)
    return counts


def _channel_stats(counts: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x/255 from per-channel value histograms."""
    # Integer sums are exact: the statistics do not depend on chunking or worker count.
    values = np.arange(256, dtype=np.int64)
    n = counts.sum(axis=1)
    mean = (counts @ values) / (n * 255.0)
    var = np.maximum((counts @ (values * values)) / (n * 255.0 ** 2) - mean ** 2, 0.0)
    std = np.sqrt(var)
    return (tuple(float(m) for m in mean),
            tuple(float(s) if s > 1e-6 else 1.0 for s in std))
