"""Sources (built-in, ImageFolder, CSV) → validated arrays, stratified splits, train-only stats."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.config import DataConfig, SplitConfig
from pipeline.errors import DataError
from pipeline.files import atomic_dir, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


@dataclass(frozen=True)
class Split:
    """One split as arrays: features (float32), labels (0/1 float32) and sample ids."""

    X: np.ndarray
    y: np.ndarray
    ids: list[str]


# --- built-in sources -----------------------------------------------------------------------


def materialize_builtin(cfg: DataConfig) -> None:
    """Write scikit-learn's bundled set to `cfg.path` once, in the layout users bring."""
    path = Path(cfg.path)
    if cfg.source not in ("digits", "breast_cancer") or path.exists():
        return
    from sklearn import datasets

    if cfg.source == "digits":
        digits = datasets.load_digits()
        with atomic_dir(path) as tmp:
            for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
                folder = tmp / ("odd" if label % 2 else "even")
                folder.mkdir(exist_ok=True)
                # 0..16 intensities → 0..255 grayscale; PNG bytes are deterministic.
                pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
        log.info("wrote digits ImageFolder (%d images) to %s", len(digits.target), path)
    else:
        bunch = datasets.load_breast_cancer(as_frame=True)
        frame = bunch.data.copy()
        frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        log.info("wrote breast_cancer CSV (%d rows) to %s", len(frame), path)


# --- images ---------------------------------------------------------------------------------


def decode_image(source: str | Path | bytes, size: int, channels: int) -> np.ndarray:
    """Decode one encoded image to float32 (C, size, size) in [0, 1]; raise DataError if bad."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()  # force the full decode so truncation is caught here, not later
            return image_to_array(img, size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from None


def image_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert any PIL mode to grayscale/RGB, resize, and scale to float32 [0, 1] CHW."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto black so alpha never leaks into intensities.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def read_imagefolder(cfg: DataConfig) -> tuple[np.ndarray, list[str], list[str], list[dict]]:
    """Decode an ImageFolder with exactly two class subfolders; return X, labels, ids, skipped."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.path = {cfg.path!r}: directory not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != 2:
        raise DataError(f"{root}: expected exactly 2 class folders, found {len(classes)} "
                        f"({', '.join(classes) or 'none'})")
    arrays, labels, ids, skipped = [], [], [], []
    for cls in classes:
        files = sorted(p for p in (root / cls).rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{root / cls}: class folder is empty")
        for file in files:
            rel = file.relative_to(root).as_posix()
            try:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataError(f"{file}: not an image file (suffix {file.suffix!r}; "
                                    f"expected one of {sorted(IMAGE_SUFFIXES)})")
                arrays.append(decode_image(file, cfg.image_size, cfg.channels))
            except DataError as err:
                if not cfg.skip_corrupt:
                    raise DataError(f"{err} (set data.skip_corrupt: true to skip it)") from None
                log.warning("skipping %s", err)
                skipped.append({"file": rel, "reason": str(err)})
                continue
            labels.append(cls)
            ids.append(rel)
        if not any(label == cls for label in labels):
            raise DataError(f"{root / cls}: no readable image in class folder")
    return np.stack(arrays).astype(np.float32), labels, ids, skipped


# --- tables ---------------------------------------------------------------------------------


def read_table(cfg: DataConfig) -> tuple[pd.DataFrame, pd.Series]:
    """Read a CSV; return feature frame and raw target; reject what cannot be learned from."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path = {cfg.path!r}: CSV file not found")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot parse CSV ({err})") from None
    if frame.empty:
        raise DataError(f"{path}: CSV has a header but no rows")
    if cfg.target not in frame.columns:
        raise DataError(f"{path}: target column data.target = {cfg.target!r} not found "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    target = frame.pop(cfg.target)
    if target.isna().any():
        rows = list(np.flatnonzero(target.isna().to_numpy())[:5])
        raise DataError(f"{path}: target column {cfg.target!r} has {int(target.isna().sum())} "
                        f"missing values (rows {rows})")
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides target {cfg.target!r}")
    for col in frame.columns:
        check_numeric_column(path, frame[col])
    return frame, target


def check_numeric_column(path: Path | str, column: pd.Series) -> None:
    """Reject a mostly-numeric column that holds text: almost always a data-entry error."""
    if is_numeric(column):
        return
    present = column.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().mean() >= 0.5:
        bad = present[numbers.isna()]
        raise DataError(f"{path}: column {column.name!r} is numeric but row {bad.index[0]} "
                        f"holds text {bad.iloc[0]!r}")


def is_numeric(column: pd.Series) -> bool:
    """True for numeric and boolean columns."""
    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def fit_table_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Fit imputation values, standardisation and categorical vocabularies on training rows."""
    numeric, categorical, dtypes = {}, {}, {}
    for col in frame.columns:
        column = frame[col]
        dtypes[str(col)] = ("bool" if pd.api.types.is_bool_dtype(column) else
                            "int" if pd.api.types.is_integer_dtype(column) else
                            "float" if is_numeric(column) else "string")
        if is_numeric(column):
            values = column.astype(float)
            median = float(values.median()) if values.notna().any() else 0.0
            filled = values.fillna(median)
            std = float(filled.std(ddof=0))
            numeric[str(col)] = {"median": median, "mean": float(filled.mean()),
                                 "std": std if std > 1e-12 else 1.0}
        else:
            categorical[str(col)] = sorted({str(v) for v in column.dropna()})
    return {"columns": [str(c) for c in frame.columns], "numeric": numeric,
            "categorical": categorical, "dtypes": dtypes}


def table_feature_names(stats: dict[str, Any]) -> list[str]:
    """Model input names: standardised numerics first, then one-hot `col=value` indicators."""
    # Column order comes from the "columns" list: JSON round trips sort the dict keys.
    names = [c for c in stats["columns"] if c in stats["numeric"]]
    for col in (c for c in stats["columns"] if c in stats["categorical"]):
        names += [f"{col}={v}" for v in stats["categorical"][col]]
    return names


def transform_table(frame: pd.DataFrame, stats: dict[str, Any], where: str = "input") -> np.ndarray:
    """Apply train-fitted imputation, scaling and one-hot encoding; unseen categories → zeros."""
    expected = stats["columns"]
    missing = [c for c in expected if c not in frame.columns]
    extra = [str(c) for c in frame.columns if str(c) not in expected]
    if missing or extra:
        raise DataError(f"{where}: columns do not match training data "
                        f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
    parts = []
    for col in (c for c in expected if c in stats["numeric"]):
        s = stats["numeric"][col]
        column = frame[col]
        if not is_numeric(column):
            check_numeric_column(where, column)
            column = pd.to_numeric(column, errors="coerce")
        values = column.astype(float).fillna(s["median"]).to_numpy()
        parts.append(((values - s["mean"]) / s["std"])[:, None])
    for col in (c for c in expected if c in stats["categorical"]):
        vocab = stats["categorical"][col]
        values = frame[col].map(lambda v: None if pd.isna(v) else str(v)).to_numpy()
        parts.append((values[:, None] == np.asarray(vocab, dtype=object)[None, :]).astype(float))
    return np.concatenate(parts, axis=1).astype(np.float32)


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


def preprocess(cfg: DataConfig, seed: int) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read and validate the raw source, split it, fit statistics on train, return arrays+meta."""
    materialize_builtin(cfg)
    kind = "table" if cfg.source in ("csv", "breast_cancer") else "image"
    skipped: list[dict] = []
    if kind == "image":
        X, raw_labels, ids, skipped = read_imagefolder(cfg)
        y, classes = encode_labels(raw_labels, cfg.positive_class, cfg.path)
    else:
        frame, target = read_table(cfg)
        y, classes = encode_labels(target, cfg.positive_class,
                                   f"{cfg.path} column {cfg.target!r}")
        ids = [str(i) for i in frame.index]
    parts = stratified_split(y, cfg.split, seed, classes)
    meta: dict[str, Any] = {"source": cfg.source, "path": cfg.path, "kind": kind,
                            "classes": classes, "positive_class": classes[1],
                            "skipped": skipped}
    if kind == "image":
        train_x = X[parts["train"]]
        mean = train_x.mean(axis=(0, 2, 3))
        std = train_x.std(axis=(0, 2, 3))
        meta["image"] = {"size": cfg.image_size, "channels": cfg.channels,
                         "mean": [float(m) for m in mean],
                         "std": [float(s) if s > 1e-6 else 1.0 for s in std]}
        meta["input_shape"] = list(X.shape[1:])
        meta["norm"] = {"mean": meta["image"]["mean"], "std": meta["image"]["std"]}
        arrays = {name: X[idx] for name, idx in parts.items()}
    else:
        stats = fit_table_stats(frame.iloc[parts["train"]])
        meta["table"] = {**stats, "target": cfg.target}
        meta["feature_names"] = table_feature_names(stats)
        meta["input_shape"] = [len(meta["feature_names"])]
        # Table features are standardised here, so the model's own normalisation is identity.
        meta["norm"] = {"mean": [0.0], "std": [1.0]}
        arrays = {name: transform_table(frame.iloc[idx], stats, cfg.path)
                  for name, idx in parts.items()}
    splits = {name: Split(arrays[name], y[idx], [ids[i] for i in idx])
              for name, idx in parts.items()}
    meta["counts"] = split_counts(splits, classes)
    return splits, meta


def split_counts(splits: dict[str, Split], classes: list[str]) -> dict[str, dict[str, int]]:
    """Samples per split and class, for metadata and sanity checks."""
    return {name: {classes[0]: int((s.y == 0).sum()), classes[1]: int((s.y == 1).sum())}
            for name, s in splits.items()}


def save_splits(out: str | Path, splits: dict[str, Split], meta: dict[str, Any]) -> None:
    """Write .npy arrays (deterministic bytes, unlike .npz) plus ids and meta, atomically."""
    with atomic_dir(out) as tmp:
        for name, s in splits.items():
            np.save(tmp / f"X_{name}.npy", np.ascontiguousarray(s.X, dtype=np.float32))
            np.save(tmp / f"y_{name}.npy", np.ascontiguousarray(s.y, dtype=np.float32))
        write_json(tmp / "ids.json", {name: s.ids for name, s in splits.items()})
        write_json(tmp / META_FILE, meta)


def load_splits(folder: str | Path, names: tuple[str, ...] = SPLITS
                ) -> tuple[dict[str, Split], dict[str, Any]]:
    """Load what save_splits wrote; a missing file names the stage that should have made it."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise DataError(f"{folder}: no {META_FILE}; run the stage that writes it first "
                        f"(dvc repro)")
    ids = read_json(folder / "ids.json")
    splits = {name: Split(np.load(folder / f"X_{name}.npy"), np.load(folder / f"y_{name}.npy"),
                          ids[name]) for name in names}
    return splits, read_json(folder / META_FILE)
