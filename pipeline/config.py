"""Typed, frozen configuration loaded once from params.yaml; the only place keys are known."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError


def _require(ok: bool, key: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


@dataclass(frozen=True)
class SplitConfig:
    """Stratified split fractions; they must sum to 1."""

    train: float = 0.7
    """Share of samples used to fit weights and every preprocessing statistic."""
    val: float = 0.15
    """Share used for early stopping, tuning and choosing the decision threshold."""
    test: float = 0.15
    """Share touched only by the evaluate stage."""

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            _require(0.0 < value < 1.0, name, value, "must be in (0, 1)")
        total = self.train + self.val + self.test
        _require(abs(total - 1.0) < 1e-6, "train+val+test", round(total, 6), "must sum to 1")


@dataclass(frozen=True)
class DataConfig:
    """Where the raw data lives and how it is read and split."""

    source: Literal["digits", "breast_cancer", "imagefolder", "csv"] = "digits"
    """Built-in sets are written to `path` once, then read like user data."""
    path: str = "data/raw/digits"
    """ImageFolder root (two class subfolders) or CSV file."""
    target: str = "target"
    """CSV column holding the label (ignored for images: the folder name is the label)."""
    positive_class: str | None = "odd"
    """Positive label; None means 1/True, or the second class folder in sort order."""
    image_size: int = 16
    """Images are resized to image_size x image_size."""
    channels: Literal[1, 3] = 1
    """1 converts every image to grayscale, 3 to RGB."""
    skip_corrupt: bool = False
    """Skip unreadable images with a warning (recorded in metadata) instead of failing."""
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        _require(self.image_size >= 4, "image_size", self.image_size, "must be >= 4")
        _require(self.image_size <= 1024, "image_size", self.image_size, "must be <= 1024")
        _require(bool(self.path), "path", self.path, "must not be empty")


@dataclass(frozen=True)
class AugmentConfig:
    """Offline augmentation of the training split (validation and test are never augmented)."""

    enabled: bool = True
    """False copies the training split through unchanged."""
    copies: int = 2
    """Extra augmented copies per training sample (the originals are always kept)."""
    rotation: float = 10.0
    """Max absolute rotation in degrees."""
    translate: float = 0.1
    """Max shift as a fraction of the image side."""
    scale: float = 0.1
    """Max relative zoom in or out."""
    hflip: bool = False
    """Random horizontal flips (off for digits: a mirrored 2 is not a digit)."""
    vflip: bool = False
    """Random vertical flips."""
    brightness: float = 0.1
    """Max additive brightness change on [0, 1] pixels."""
    contrast: float = 0.1
    """Max relative contrast change around each image's mean."""
    noise_std: float = 0.02
    """Std of additive Gaussian pixel noise."""
    jitter_std: float = 0.05
    """Std of Gaussian jitter on standardised numeric table features."""
    oversample: bool = False
    """Tables: resample the minority class up to the majority count."""

    def __post_init__(self) -> None:
        _require(0 <= self.copies <= 50, "copies", self.copies, "must be in [0, 50]")
        _require(0 <= self.rotation <= 180, "rotation", self.rotation, "must be in [0, 180]")
        for name in ("translate", "scale", "brightness", "contrast"):
            value = getattr(self, name)
            _require(0 <= value < 1, name, value, "must be in [0, 1)")
        for name in ("noise_std", "jitter_std"):
            value = getattr(self, name)
            _require(value >= 0, name, value, "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture; all models emit one logit."""

    type: Literal["logreg", "mlp", "cnn"] = "cnn"
    """logreg and mlp flatten images; cnn needs image data."""
    hidden_sizes: tuple[int, ...] = (64,)
    """MLP hidden layer widths."""
    channels: tuple[int, ...] = (16, 32)
    """CNN conv block widths; each block halves the spatial size."""
    dropout: float = 0.1
    """Dropout before every linear layer except logreg's."""
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    """Nonlinearity for MLP and CNN."""

    def __post_init__(self) -> None:
        _require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _require(all(h > 0 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes,
                 "must be positive")
        _require(len(self.channels) > 0 and all(c > 0 for c in self.channels), "channels",
                 self.channels, "must be a non-empty list of positive ints")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; every field here may be tuned via tune.search_space."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    """sgd uses `momentum`; adamw decouples weight decay."""
    lr: float = 3e-3
    """Peak learning rate."""
    batch_size: int = 64
    """Samples per optimiser step."""
    weight_decay: float = 1e-4
    """L2 (sgd/adam) or decoupled (adamw) weight decay."""
    momentum: float = 0.9
    """SGD momentum."""
    epochs: int = 30
    """Maximum epochs; early stopping may end sooner."""
    scheduler: Literal["none", "cosine"] = "cosine"
    """Cosine decays the learning rate to 0 over `epochs`."""
    patience: int = 8
    """Epochs without validation improvement before stopping; 0 disables early stopping."""
    grad_clip: float = 0.0
    """Max gradient norm; 0 disables clipping."""
    class_weight: Literal["none", "balanced"] = "none"
    """balanced sets pos_weight = negatives / positives of the training split."""
    online_augment: bool = False
    """Extra batched flips/noise on the device every epoch (images only)."""
    num_threads: int = 2
    """CPU threads; pinned because float reductions depend on it (byte-identical reruns)."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        _require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _require(self.patience >= 0, "patience", self.patience, "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0")
        _require(self.num_threads >= 1, "num_threads", self.num_threads, "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """How test predictions are turned into labels."""

    threshold: float | Literal["f1", "youden"] = "f1"
    """A fixed probability, or a rule applied on the validation split (never on test)."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, float):
            _require(0 < self.threshold < 1, "threshold", self.threshold, "must be in (0, 1)")


@dataclass(frozen=True)
class SearchParam:
    """One tuned key: a numeric range (optionally log-scaled) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TuneConfig:
    """Optuna study settings."""

    enabled: bool = True
    """False makes train use params.yaml as is (tune writes an empty best_params.json)."""
    n_trials: int = 20
    """Finished trials (complete, pruned or failed) the study stops at, across restarts."""
    timeout: float | None = None
    """Optional wall-clock budget in seconds for this invocation."""
    metric: Literal["roc_auc", "average_precision", "accuracy", "f1", "log_loss"] = "roc_auc"
    """Validation metric to optimise; log_loss is minimised, the rest maximised."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "successive_halving"
    """Stops unpromising trials early from per-epoch validation reports."""
    n_workers: int = 1
    """Worker processes sharing the study through the journal file."""
    search_space: dict[str, SearchParam] = field(default_factory=lambda: {
        "train.lr": SearchParam(low=1e-4, high=3e-2, log=True),
        "train.batch_size": SearchParam(choices=(32, 64, 128)),
        "train.weight_decay": SearchParam(low=1e-6, high=1e-2, log=True),
    })
    """Per `train.*` / `model.*` key: {low, high, log} or {choices: [...]}."""

    def __post_init__(self) -> None:
        _require(self.n_trials >= 1, "n_trials", self.n_trials, "must be >= 1")
        _require(self.n_workers >= 1, "n_workers", self.n_workers, "must be >= 1")
        if self.timeout is not None:
            _require(self.timeout > 0, "timeout", self.timeout, "must be > 0")
        _require(len(self.search_space) > 0 or not self.enabled, "search_space",
                 self.search_space, "must not be empty when tuning is enabled")


@dataclass(frozen=True)
class MlflowConfig:
    """Experiment naming (the tracking URI is an environment setting, not a param)."""

    experiment: str = "binary-classification"
    """MLflow experiment that receives every run of this pipeline."""


@dataclass(frozen=True)
class RegisterConfig:
    """Model registry and champion/challenger gate."""

    model_name: str = "binary-classifier"
    """Registered model name."""
    metric: Literal["roc_auc", "average_precision", "accuracy", "f1", "log_loss", "brier"] = (
        "log_loss")
    """Test metric compared between challenger and champion (log_loss/brier: lower is better)."""
    min_improvement: float = 0.0
    """Challenger must beat the champion by at least this much to be promoted."""

    def __post_init__(self) -> None:
        _require(self.min_improvement >= 0, "min_improvement", self.min_improvement,
                 "must be >= 0")
        _require(bool(self.model_name), "model_name", self.model_name, "must not be empty")


@dataclass(frozen=True)
class Params:
    """The whole params.yaml."""

    seed: int = 42
    """Drives splits, augmentation, initialisation, batch order and the tuning sampler."""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        if self.tune.enabled:
            validate_search_space(self.tune.search_space, self.train, self.model)


def validate_search_space(space: dict[str, SearchParam], train: TrainConfig,
                          model: ModelConfig) -> None:
    """Check each tuned key exists in train/model and its range or choices make sense."""
    sections = {"train": train, "model": model}
    for key, spec in space.items():
        full = f"tune.search_space.{key}"
        section, _, name = key.partition(".")
        _require(section in sections and name in {f.name for f in dataclasses.fields(
            sections[section])}, full, key, "is not a train.* or model.* key")
        if spec.choices is not None:
            _require(spec.low is None and spec.high is None, full, spec,
                     "give either choices or low/high, not both")
            _require(len(spec.choices) > 0, f"{full}.choices", list(spec.choices),
                     "must not be empty")
            for choice in spec.choices:
                # Validate each choice by building the section with it.
                try:
                    dataclasses.replace(sections[section], **{name: _coerce(
                        _field_type(type(sections[section]), name), choice, full)})
                except ConfigError as err:
                    raise ConfigError(f"{full}.choices: {err}") from None
            continue
        _require(spec.low is not None and spec.high is not None, full, spec,
                 "needs low and high, or choices")
        assert spec.low is not None and spec.high is not None
        _require(spec.low < spec.high, f"{full}.low", spec.low, f"must be < high ({spec.high})")
        _require(not spec.log or spec.low > 0, f"{full}.low", spec.low,
                 "must be > 0 with log: true")
        kind = _field_type(type(sections[section]), name)
        _require(kind in (int, float), full, key, "a range needs a numeric key; use choices")


# --- generic loader -------------------------------------------------------------------------


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(kind: Any, value: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key} = {value!r}: expected one of {_describe(kind)}")
    if origin is Literal:
        _require(value in args and type(value) in {type(a) for a in args}, key, value,
                 f"must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(kind):
        if value is None:
            value = {}
        _require(isinstance(value, dict), key, value, "must be a mapping")
        return _build(kind, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        _require(isinstance(value, list | tuple), key, value, "must be a list")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), key, value, "must be a mapping")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is bool:
        _require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if kind is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value,
                 "must be an integer")
        return value
    if kind is float:
        # YAML reads 1e-4 (no dot) as a string; accept it as a number like a person would.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} = {value!r}: must be a number") from None
        _require(isinstance(value, int | float) and not isinstance(value, bool), key, value,
                 "must be a number")
        return float(value)
    if kind is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a class label such as 1 is a string for matching purposes
        _require(isinstance(value, str), key, value, "must be a string")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")


def _describe(kind: Any) -> str:
    args = typing.get_args(kind)
    return " | ".join(str(list(typing.get_args(a))) if typing.get_origin(a) is Literal
                      else getattr(a, "__name__", str(a)) for a in args)


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(_field_type(cls, name), value, f"{prefix}.{name}" if prefix else name)
              for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}.{err}") from None
        raise


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Build typed Params from an already-parsed YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: top level must be a mapping, got {type(raw).__name__}")
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate params.yaml; errors name the file, key and value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_params(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (or section) to dotted keys, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    items = (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name != "tune.search_space":
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def apply_overrides(train: TrainConfig, model: ModelConfig,
                    overrides: dict[str, Any]) -> tuple[TrainConfig, ModelConfig]:
    """Return train/model sections with dotted `train.x` / `model.y` overrides applied."""
    per: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in per:
            raise ConfigError(f"{key}: override must be a train.* or model.* key")
        cls = TrainConfig if section == "train" else ModelConfig
        per[section][name] = _coerce(_field_type(cls, name), value, key)
    try:
        return (dataclasses.replace(train, **per["train"]),
                dataclasses.replace(model, **per["model"]))
    except TypeError as err:
        raise ConfigError(f"override: {err}") from None
