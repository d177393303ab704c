"""Typed, frozen configuration loaded once from params.yaml; the only place keys are known."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.core.errors import ConfigError
from pipeline.core.metric_names import GateMetric, MonitorMetric, TuneMetric
from pipeline.core.space import SearchParam, check_space
from pipeline.core.typed import build, in_range, require
from pipeline.core.yamlfile import read_yaml, refuse_renamed

RENAMED = {"model.channels": "model.conv_channels"}  # old keys fail, naming the new one
# model.type values built by torchvision (pipeline/models/backbones.py).
BACKBONES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
BATCHNORM = ("cnn", *BACKBONES)  # model.type values whose training fails on a batch of one
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and scikit-learn's random_state take 32 bits
MAX_PARALLEL = 1024  # threads or processes: more than any machine has (torch takes a C int)
# data.source → what it holds (pipeline/data/sources.py SOURCES says how each is read; a test
# keeps the two in step): tune.metric auto depends on it before any data is read.
SOURCE_KINDS: dict[str, Literal["image", "table"]] = {
    "digits": "image", "breast_cancer": "table", "imagefolder": "image", "csv": "table"}
# tune.metric auto, per kind. Tables: the log loss (benchmarks/tables.py: better accuracy, ROC
# AUC and log loss means over 11 tables; on the 3 tables of benchmarks/peers.py a better log
# loss on all 3); images: ROC AUC (with log loss, digits and textures lost accuracy).
AUTO_METRIC: dict[str, MonitorMetric] = {"table": "log_loss", "image": "roc_auc"}


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
        in_range(self, "train val test", 0, 1, low_open=True, high_open=True)
        total = self.train + self.val + self.test
        require(abs(total - 1.0) < 1e-6, "train+val+test", round(total, 6), "must sum to 1")


@dataclass(frozen=True)
class DataConfig:
    """Where the raw data lives and how it is read and split."""

    source: str = "digits"
    """A source in pipeline/data/sources.py SOURCES: digits, breast_cancer, imagefolder or csv."""
    path: str = "data/raw/digits"
    """ImageFolder root (two class subfolders) or CSV file; built-in sets are written here once."""
    target: str = "target"
    """CSV column holding the label (ignored for images: the folder name is the label)."""
    positive_class: str | None = "odd"
    """Positive label; None means 1/True, or the second class folder in sort order."""
    image_size: int | Literal["auto"] = "auto"
    """Images are resized to image_size x image_size; auto: the images' median shorter side,
    within [16, 64] (small images keep their detail, photos stay cheap on a CPU)."""
    channels: Literal[1, 3] = 1
    """Image channels fed to the model: 1 converts every image to grayscale, 3 to RGB."""
    csv_sep: str = "auto"
    """CSV field separator: auto detects , ; tab or | from the header, else that character."""
    skip_corrupt: bool = False
    """Skip unreadable images with a warning (recorded in metadata) instead of failing."""
    categorical_columns: tuple[str, ...] = ()
    """CSV columns read as categories although they hold numbers (codes such as 1-4 for a
    chest-pain type): one-hot, not one standardised number. Text columns are categories anyway."""
    numeric_scaling: Literal["quantile", "standard"] = "quantile"
    """CSV numbers: quantile maps each column through its training quantiles onto a normal
    (outliers and skew do not dominate); standard subtracts the mean and divides by the std."""
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.image_size != "auto":
            in_range(self, "image_size", 4, 1024)
        require(bool(self.path), "path", self.path, "must not be empty")
        require(len(set(self.categorical_columns)) == len(self.categorical_columns),
                "categorical_columns", list(self.categorical_columns), "lists a column twice")
        require(self.csv_sep == "auto" or (len(self.csv_sep) == 1 and self.csv_sep not in
                " \n\r\""), "csv_sep", self.csv_sep, "must be auto or one character other "
                "than space (shifts columns), newline or quote")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of the training split (validation and test are never augmented)."""

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
        in_range(self, "copies", 0, 50)
        in_range(self, "rotation", 0, 180)
        in_range(self, "translate scale brightness contrast", 0, 1, high_open=True)
        in_range(self, "noise_std jitter_std", 0)


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture; all models emit one logit."""

    type: Literal["logreg", "mlp", "cnn", "resnet18", "mobilenet_v3_small",
                  "efficientnet_b0"] = "cnn"
    """logreg/mlp flatten images; cnn and backbones need images (backbones >= 32 px, no weights)."""
    weights: str | None = None
    """Backbones: a local checkpoint (torchvision state dict, .pth or .safetensors) under
    data/weights/ to start from; its classifier head is replaced by the one-logit head."""
    freeze: Literal["none", "backbone"] = "none"
    """backbone trains only the classifier on top of the loaded weights (BatchNorm kept fixed)."""
    norm: Literal["data", "imagenet"] = "data"
    """Input standardisation: the train split's channel statistics, or ImageNet's (its weights)."""
    hidden_sizes: tuple[int, ...] = (64,)
    """MLP hidden layer widths."""
    conv_channels: tuple[int, ...] = (16, 32, 64)
    """CNN block widths; each but the last halves the size (3 blocks see a whole 16 px digit)."""
    dropout: float = 0.1
    """Dropout before every linear layer except logreg's (and resnet18's, which has none)."""
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    """Nonlinearity for MLP and CNN."""
    embedding: Literal["auto", "none", "periodic"] = "auto"
    """MLP inputs: as they are, or each feature through learned periodic features (sin and cos
    of 16 learned frequencies, then its own linear layer to 8 values and a ReLU; Gorishniy et
    al. 2022, "PLR"), which lets a small network fit sharp and non-monotone effects of one
    column. auto: periodic for an MLP on a table of more than 1,000 train + validation rows,
    none otherwise (resolved from the data: pipeline/training/crossval.py with_embedding)."""
    ensemble: int = 1
    """Networks trained side by side on the same batches, each from its own initialisation and
    on its own loss; the model's logit is their mean (logreg, mlp, cnn). 1 by default: five
    members did not beat one on benchmarks/tables.py (results/tables_ensemble1.json)."""

    def __post_init__(self) -> None:
        in_range(self, "dropout", 0, 1, high_open=True)
        in_range(self, "ensemble", 1, 64)
        require(self.ensemble == 1 or self.type in ("logreg", "mlp", "cnn"), "ensemble",
                self.ensemble, f"is for logreg, mlp and cnn, not {self.type!r} (use 1)")
        require(all(h > 0 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes,
                 "must be positive")
        require(self.embedding != "periodic" or self.type == "mlp", "embedding",
                self.embedding, f"is for mlp, not {self.type!r} (use auto or none)")
        require(len(self.conv_channels) > 0 and all(c > 0 for c in self.conv_channels),
                 "conv_channels", self.conv_channels, "must be a non-empty list of positive ints")
        backbone = self.type in BACKBONES
        require(self.weights is None or backbone, "weights", self.weights,
                f"needs a torchvision model.type ({', '.join(BACKBONES)}), not {self.type!r}")
        require(self.weights is None or bool(self.weights.strip()), "weights", self.weights,
                "must be a path or null")
        # Frozen random features train a linear probe on noise: almost surely a mistake.
        require(self.freeze == "none" or self.weights is not None, "freeze", self.freeze,
                "needs model.weights (a frozen backbone without a checkpoint stays random)")
        require(self.norm == "data" or backbone, "norm", self.norm,
                f"ImageNet statistics are for torchvision backbones, not {self.type!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; any field here may be tuned via tune.search_space."""

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
    early_stopping: Literal["score", "loss"] = "score"
    """What picks the best epoch: the tuned metric (ties by loss), or the validation loss."""
    grad_clip: float = 0.0
    """Max gradient norm; 0 disables clipping."""
    ema: float = 0.0
    """Per-step decay of an exponential moving average of the weights, validated and kept
    instead of the raw ones (warmed up: min(ema, (1+t)/(10+t)) at step t); 0 disables."""
    class_weight: Literal["none", "balanced"] = "none"
    """balanced sets pos_weight = negatives / positives of the training split."""
    online_augment: bool = False
    """Fresh batched augmentation (the augment section's ops) on the device every epoch; images."""
    num_threads: int = 2
    """CPU threads; pinned because float reductions depend on it (byte-identical reruns)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast of every forward pass, predictions too: auto is bf16 on CUDA, fp32 elsewhere."""
    cv_folds: int | Literal["auto"] = "auto"
    """k >= 2: k-fold cross-validation over train + val for the tuning objective, the epoch
    count and the threshold (out-of-fold), then the model cv_model says; 0: the validation
    split decides; auto: 5 folds up to 1000 train + val samples, else 0."""
    cv_model: Literal["folds", "refit"] = "folds"
    """After k-fold CV, the model kept: folds (the k fold models, their logits averaged) or
    refit (one network trained on train + val for the folds' median best epoch)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(self.cv_folds == "auto" or self.cv_folds == 0 or self.cv_folds >= 2,
                "cv_folds", self.cv_folds, "must be auto, 0 (off) or >= 2")
        in_range(self, "batch_size epochs", 1)
        in_range(self, "num_threads", 1, MAX_PARALLEL)
        in_range(self, "weight_decay patience grad_clip", 0)
        in_range(self, "momentum", 0, 1, high_open=True)
        in_range(self, "ema", 0, 1, high_open=True)


@dataclass(frozen=True)
class EvaluateConfig:
    """How test predictions are turned into labels."""

    threshold: float | Literal["f1", "youden"] = "f1"
    """A fixed probability, or a rule applied on the validation split (never on test)."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, float):
            in_range(self, "threshold", 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class TuneConfig:
    """Optuna study settings."""

    enabled: bool = True
    """False makes train use params.yaml as is (tune writes best_params.json with no params)."""
    n_trials: int = 20
    """Complete + pruned trials the study stops at, across restarts; failed ones are retried."""
    timeout: float | None = None
    """Optional wall-clock budget in seconds for this invocation."""
    metric: TuneMetric = "auto"
    """Validation metric to optimise and early-stop on (trials and train); log_loss minimised.
    auto: log_loss for tables, roc_auc for images (Params holds the resolved name)."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "successive_halving"
    """Stops unpromising trials early from per-epoch validation reports."""
    n_workers: int = 1
    """Worker processes sharing the study (and the CPU threads) through the storage."""
    search_space: dict[str, SearchParam] = field(default_factory=lambda: {
        "train.lr": SearchParam(low=3e-4, high=3e-2, log=True),
        "train.batch_size": SearchParam(choices=(32, 64, 128)),
        "train.weight_decay": SearchParam(low=1e-6, high=1e-1, log=True),
        "model.dropout": SearchParam(low=0.0, high=0.5),
    })
    """Per `train.*` / `model.*` key: {low, high, log} or {choices: [...]}."""

    def __post_init__(self) -> None:
        in_range(self, "n_trials", 1)
        in_range(self, "n_workers", 1, MAX_PARALLEL)
        if self.timeout is not None:
            require(self.timeout > 0, "timeout", self.timeout, "must be > 0")
        require(len(self.search_space) > 0 or not self.enabled, "search_space",
                 self.search_space, "must not be empty when tuning is enabled")


@dataclass(frozen=True)
class MlflowConfig:
    """Experiment naming (the tracking URI is an environment setting, not a param)."""

    experiment: str = "binary-classification"
    """MLflow experiment that receives every run of this pipeline."""

    def __post_init__(self) -> None:
        require(bool(self.experiment.strip()), "experiment", self.experiment, "must not be empty")


@dataclass(frozen=True)
class RegisterConfig:
    """Model registry and champion/challenger gate."""

    model_name: str = "auto"
    """Registered model name (one input contract each); auto: <data.path name>-<positive class>."""
    metric: GateMetric = "log_loss"
    """Test metric compared between challenger and champion (log_loss/brier: lower is better)."""
    min_improvement: float = 0.0
    """Challenger must beat the champion by at least this much (and by more than 0)."""
    min_gate_rows: int = 30
    """Fewest test rows new to both models for the gate to decide by score; else champion kept."""

    def __post_init__(self) -> None:
        in_range(self, "min_improvement", 0)
        in_range(self, "min_gate_rows", 1)
        require(bool(self.model_name), "model_name", self.model_name, "must not be empty")


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
        require(0 <= self.seed <= SEED_MAX, "seed", self.seed,
                f"must be in [0, {SEED_MAX}] (numpy and scikit-learn seeds are 32-bit)")
        require(self.data.source in SOURCE_KINDS, "data.source", self.data.source,
                f"must be one of {sorted(SOURCE_KINDS)}")
        if self.tune.metric == "auto":
            # Resolved here, once: every stage, trial and MLflow param sees the metric that ran.
            metric = AUTO_METRIC[SOURCE_KINDS[self.data.source]]
            object.__setattr__(self, "tune", replace(self.tune, metric=metric))
        check_space(self.tune.search_space if self.tune.enabled else {}, self.train, self.model,
                    BATCHNORM)


def default_mapping() -> dict[str, Any]:
    """The code's defaults as params.yaml states them: `auto` values unresolved."""
    raw = asdict(Params())
    raw["tune"]["metric"] = TuneConfig.metric  # Params holds what `auto` resolved to
    return raw


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Build typed Params from an already-parsed YAML mapping."""
    if not isinstance(raw, dict | None):
        raise ConfigError(f"params: top level must be a mapping, got {type(raw).__name__}")
    refuse_renamed(raw or {}, RENAMED)
    return build(Params, raw or {})


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate params.yaml; errors name the file, key and value."""
    path = Path(path)
    raw = read_yaml(path, "params file")  # a key given twice is refused, not silently kept
    if raw is None:
        # A mistake (a bad merge, a truncated copy), not a wish for defaults nobody chose.
        raise ConfigError(f"{path}: params file is empty; start from the repository's "
                          "params.yaml")
    try:
        return parse_params(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
