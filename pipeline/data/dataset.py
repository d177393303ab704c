"""The contract between stages: typed dataset metadata and split arrays on disk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.files import atomic_dir, read_json, write_json
from pipeline.core.fingerprints import write as write_fingerprints

# A dataset folder (data/processed, data/augmented): per split X_<split>.npy and y_<split>.npy,
# plus ids.json, meta.json and (preprocess) fingerprints.json. Only this module spells it.
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
IDS_FILE = "ids.json"
INFREQUENT = "<infrequent>"  # the one-hot value a capped categorical's other values share
MISSING = "<missing>"  # the indicator of a missing cell, for columns whose training rows had one


@dataclass(frozen=True)
class Split:
    """One split as arrays: features (uint8 images, float32 tables), 0/1 float32 labels, ids.

    Loaded features are read-only memory maps of the stage's .npy files."""

    X: np.ndarray
    y: np.ndarray
    ids: list[str]


@dataclass(frozen=True)
class ImageSpec:
    """Image geometry and the training split's per-channel statistics."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ColumnStats:
    """Train-fitted imputation value and scaling of one numeric CSV column."""

    median: float
    mean: float
    std: float
    quantiles: tuple[float, ...] = ()
    """Training quantiles at evenly spaced levels, mapped onto a standard normal (empty:
    (x - mean) / std instead)."""


@dataclass(frozen=True)
class TableSpec:
    """CSV columns in file order, their kinds, and the train-fitted encodings."""

    target: str
    columns: tuple[str, ...]
    """Every input column of the CSV (the model's input contract), dropped ones included."""
    dtypes: dict[str, str]
    numeric: dict[str, ColumnStats]
    """Standardised columns: numbers, and dates as days since 1970-01-01."""
    categorical: dict[str, tuple[str, ...]]
    """One-hot vocabularies, capped (pipeline/data/tables.py: MIN_FREQUENCY, MAX_CATEGORIES)."""
    dropped: dict[str, str] = field(default_factory=dict)
    """Columns the model ignores (row identifiers, free text) and why."""
    dates: tuple[str, ...] = ()
    """Columns of ISO dates (in `numeric` as days since 1970-01-01)."""
    infrequent: tuple[str, ...] = ()
    """Categorical columns whose other values share one `col=<infrequent>` indicator."""
    missing: tuple[str, ...] = ()
    """Columns whose training rows had missing cells: a `col=<missing>` indicator (a numeric
    cell is also imputed with the median; a category's missing cell is this level)."""
    sep: str = ","
    """The training CSV's field separator."""
    decimal: str = ""
    """A ';' file's decimal mark as decided on the training file (',' or '.'; '' when no
    value decided it, so 1.500 is refused); prediction applies it, never re-decides."""

    def feature_names(self) -> list[str]:
        """Model input names: scaled numerics first (augmentation jitters these), then the
        numerics' missing indicators, then one-hot `col=value` columns."""
        # Order follows `columns`: JSON round trips sort the dict keys.
        names = [c for c in self.columns if c in self.numeric]
        names += [f"{c}={MISSING}" for c in self.columns if c in self.numeric and c in self.missing]
        for col in (c for c in self.columns if c in self.categorical):
            names += [f"{col}={v}" for v in self.categorical[col]]
            names += [f"{col}={INFREQUENT}"] if col in self.infrequent else []
            names += [f"{col}={MISSING}"] if col in self.missing else []
        return names


@dataclass(frozen=True)
class DatasetMeta:
    """What preprocess learned about the data; every later stage reads only this."""

    source: str
    path: str
    classes: tuple[str, str]
    """[negative, positive] label names."""
    image: ImageSpec | None = None
    table: TableSpec | None = None
    skipped: tuple[dict[str, str], ...] = ()
    """Unreadable files skipped under data.skip_corrupt."""
    notes: tuple[dict[str, str], ...] = ()
    """Unusual inputs preprocess handled, as the log said them: {"item", "action", "reason"}
    (ignored files, dropped columns, converted pixel depths)."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Samples per split and class."""
    augment: dict[str, Any] | None = None
    """The augment section that produced a training split (set by the augment stage)."""

    @property
    def kind(self) -> Literal["image", "table"]:
        """image or table."""
        return "image" if self.image is not None else "table"

    @property
    def positive_class(self) -> str:
        """The label predicted as 1."""
        return self.classes[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape without the batch dimension."""
        if self.image is not None:
            return (self.image.channels, self.image.size, self.image.size)
        assert self.table is not None
        return (len(self.table.feature_names()),)

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) for images; identity for tables (standardised already)."""
        if self.image is not None:
            return self.image.mean, self.image.std
        return (0.0,), (1.0,)

    def with_counts(self, splits: dict[str, Split]) -> DatasetMeta:
        """A copy whose counts describe `splits`."""
        return self.with_labels({name: s.y for name, s in splits.items()})

    def with_labels(self, labels: dict[str, np.ndarray]) -> DatasetMeta:
        """A copy whose counts describe these 0/1 labels per split."""
        counts = {name: {self.classes[0]: int((y == 0).sum()), self.classes[1]: int((y == 1).sum())}
                  for name, y in labels.items()}
        return dataclasses.replace(self, counts=counts)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (what meta.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DatasetMeta:
        """Inverse of to_json."""
        image = raw.get("image")
        table = raw.get("table")
        return cls(
            source=raw["source"], path=raw["path"], classes=tuple(raw["classes"]),
            image=None if image is None else ImageSpec(
                image["size"], image["channels"], tuple(image["mean"]), tuple(image["std"])),
            table=None if table is None else TableSpec(
                table["target"], tuple(table["columns"]), dict(table["dtypes"]),
                {k: ColumnStats(**{**v, "quantiles": tuple(v.get("quantiles", ()))})
                 for k, v in table["numeric"].items()},
                {k: tuple(v) for k, v in table["categorical"].items()},
                dropped=dict(table.get("dropped", {})), dates=tuple(table.get("dates", ())),
                infrequent=tuple(table.get("infrequent", ())),
                missing=tuple(table.get("missing", ())), sep=table.get("sep", ","),
                decimal=table.get("decimal", "")),
            skipped=tuple(raw.get("skipped", ())), notes=tuple(raw.get("notes", ())),
            counts=raw.get("counts", {}),
            augment=raw.get("augment"))

    def write(self, path: str | Path) -> None:
        """Write meta.json atomically."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> DatasetMeta:
        """Read a meta.json written by `write`; an older layout is an error naming the file."""
        try:
            return cls.from_json(read_json(path))
        except (KeyError, TypeError) as err:
            raise DataError(f"{path}: not a dataset metadata file of this pipeline version "
                            f"({type(err).__name__}: {err}); rerun preprocess") from None


def features_file(folder: str | Path, split: str) -> Path:
    """Where a dataset folder holds a split's features (writers that stream rows fill it)."""
    return Path(folder) / f"X_{split}.npy"


def labels_file(folder: str | Path, split: str) -> Path:
    """Where a dataset folder holds a split's 0/1 labels."""
    return Path(folder) / f"y_{split}.npy"


def save_splits(out: str | Path, splits: dict[str, Split], meta: DatasetMeta,
                fingerprints: dict[str, list[str]] | None = None) -> DatasetMeta:
    """Write .npy arrays (deterministic bytes, unlike .npz) plus ids, the raw examples'
    fingerprints (pipeline/core/fingerprints.py) when given, and meta, atomically; return
    the meta written (with counts)."""
    with atomic_dir(out) as tmp:
        for name, s in splits.items():
            np.save(features_file(tmp, name),
                    np.ascontiguousarray(s.X, dtype=feature_dtype(s.X)))
        return write_split_files(tmp, {name: s.y for name, s in splits.items()},
                                 {name: s.ids for name, s in splits.items()}, meta, fingerprints)


def write_split_files(folder: Path, labels: dict[str, np.ndarray], ids: dict[str, list[str]],
                      meta: DatasetMeta, fingerprints: dict[str, list[str]] | None = None
                      ) -> DatasetMeta:
    """Complete a folder being built whose features are already at `features_file`: labels,
    ids, fingerprints when given, and meta with its counts (returned)."""
    if fingerprints is not None:
        write_fingerprints(folder, fingerprints)
    for name, y in labels.items():
        np.save(labels_file(folder, name), np.ascontiguousarray(y, dtype=np.float32))
    write_json(folder / IDS_FILE, ids)
    meta = meta.with_labels(labels)
    meta.write(folder / META_FILE)
    return meta


def load_splits(folder: str | Path, names: tuple[str, ...] = SPLITS
                ) -> tuple[dict[str, Split], DatasetMeta]:
    """Load what save_splits wrote; a missing file names the stage that should have made it."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise DataError(f"{folder}: no {META_FILE}; run the stage that writes it first "
                        f"(dvc repro)")
    ids = read_json(folder / IDS_FILE)
    # Features are memory-mapped: the training loop preloads or streams them
    # (pipeline/models/feed.py).
    splits = {name: Split(load_array(features_file(folder, name), mmap_mode="r"),
                          load_array(labels_file(folder, name)), ids[name]) for name in names}
    return splits, DatasetMeta.read(folder / META_FILE)


def load_array(path: Path, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """np.load, with a missing, truncated or foreign file reported as one line naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable array ({err}); rerun the stage that writes it "
                        "(dvc repro -f -s <stage>)") from None


def feature_dtype(X: np.ndarray) -> type:
    """uint8 for images (0..255, scaled on the device per batch), float32 for everything else."""
    return np.uint8 if X.dtype == np.uint8 else np.float32
