"""Networks that emit one logit, plus build/save/load helpers that never pickle a module."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.files import atomic_path, read_json
from pipeline.models.backbones import MIN_SIZE, backbone

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                                           "silu": nn.SiLU}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


class Standardize(nn.Module):
    """(x - mean) / std with per-channel (images) or scalar (tables) statistics from train."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], image: bool) -> None:
        super().__init__()
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GlobalAvgPool(nn.Module):
    """Mean over each feature map, as (N, C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool2d, not AdaptiveAvgPool2d(1): the adaptive pool's gradient comes back in NCHW
        # layout, and the activation's backward against a channels_last input then takes
        # PyTorch's slow mixed-layout path (~30x: 12 % of a default CNN step on CPU).
        return nn.functional.avg_pool2d(x, x.shape[-2:])


class PeriodicEmbedding(nn.Module):
    """Each feature x → ReLU(Linear_f([sin 2πcx, cos 2πcx])) with learned frequencies c: the
    flattened (N, features * dim) input of an MLP ("PLR" numeric embeddings)."""

    def __init__(self, features: int, frequencies: int = 16, dim: int = 8,
                 sigma: float = 0.1) -> None:
        super().__init__()
        self.out_features = features * dim  # the next layer's width, as nn.Linear names it
        # sigma: the frequencies' initial spread; on quantile-normal table inputs 0.1 scored
        # better than 1 in a one-off comparison (issue 23's notes; not a stored benchmark).
        self.frequencies = nn.Parameter(torch.randn(features, frequencies) * sigma)
        bound = 1 / math.sqrt(2 * frequencies)  # nn.Linear's init, one layer per feature
        self.weight = nn.Parameter(torch.empty(features, 2 * frequencies, dim)
                                   .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(features, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * self.frequencies * x.unsqueeze(-1)
        periodic = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
        out = torch.einsum("nfk,fkd->nfd", periodic, self.weight) + self.bias
        return torch.relu(out).flatten(1)


class Classifier(nn.Module):
    """Standardise → body → one logit per sample (shape (N,))."""

    def __init__(self, norm: Standardize, body: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x)).squeeze(-1)


class Ensemble(nn.Module):
    """Member bodies side by side: in training each member's logit (shape (N, k), one loss
    each), otherwise their mean (shape (N, 1))."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([member(x) for member in self.members], dim=-1)
        return logits if self.training else logits.mean(dim=-1, keepdim=True)


def logreg(cfg: ModelConfig, input_shape: Sequence[int]) -> nn.Module:
    """One linear layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 1))


def mlp(cfg: ModelConfig, input_shape: Sequence[int]) -> nn.Module:
    """Flatten (and embed, per model.embedding), then Linear → activation → dropout per hidden
    width, then one logit."""
    n_in, act = math.prod(input_shape), ACTIVATIONS[cfg.activation]
    layers: list[nn.Module] = [nn.Flatten()]
    # auto means none here: training.crossval.with_embedding resolves it from the data's size.
    if cfg.embedding == "periodic":
        layers.append(embedding := PeriodicEmbedding(n_in))
        n_in = embedding.out_features
    for width in cfg.hidden_sizes:
        layers += [nn.Linear(n_in, width), act(), nn.Dropout(cfg.dropout)]
        n_in = width
    layers.append(nn.Linear(n_in, 1))
    return nn.Sequential(*layers)


def activate_and_pool(activation: str, pool: list[nn.Module]) -> list[nn.Module]:
    """A conv block's activation and (between blocks) max-pooling, in the cheaper order."""
    if activation != "relu":
        return [ACTIVATIONS[activation](), *pool]
    # ReLU commutes with max-pooling, values and gradients alike (a window's first maximum is
    # the first of its ReLU'd values too, and one at or below zero gets no gradient either
    # way), so pooling first runs it on a quarter of the values. In place: neither pooling
    # nor BatchNorm keeps its output for the backward pass. Parameter-free, so saved state
    # dicts keep their keys. (The first block's ReLU, forward and backward, alone took ~4 % of
    # a default CNN step on CPU: 165 of ~4,000 µs.) A backward hook on this ReLU would need
    # inplace=False, and a forward hook on the pool sees its output ReLU'd.
    return [*pool, nn.ReLU(inplace=True)]


def cnn(cfg: ModelConfig, input_shape: Sequence[int]) -> nn.Module:
    """Conv → BatchNorm → activation blocks, global average pooling, dropout, one logit."""
    if len(input_shape) != 3:
        raise ConfigError(f"model.type = {cfg.type!r}: needs image data, but the inputs are a "
                          f"table with {math.prod(input_shape)} features (use mlp or logreg)")
    in_channels = input_shape[0]
    layers: list[nn.Module] = []
    for i, width in enumerate(cfg.conv_channels):
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width)]
        # Halve the resolution between blocks; the last block is pooled globally instead.
        pool = [nn.MaxPool2d(2)] if i < len(cfg.conv_channels) - 1 else []
        layers += activate_and_pool(cfg.activation, pool)
        in_channels = width
    layers += [GlobalAvgPool(), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(in_channels, 1)]
    return nn.Sequential(*layers)


# model.type → the body that maps standardised inputs to one logit.
BUILDERS: dict[str, Callable[[ModelConfig, Sequence[int]], nn.Module]] = {
    "logreg": logreg, "mlp": mlp, "cnn": cnn,
    **{name: backbone for name in MIN_SIZE}}


def build_model(cfg: ModelConfig, input_shape: Sequence[int], mean: Sequence[float],
                std: Sequence[float]) -> Classifier:
    """Build the network for `cfg.type` on inputs of `input_shape` (without the batch dim)."""
    # Members are built one after another from the seeded generator: each its own init.
    body = (BUILDERS[cfg.type](cfg, input_shape) if cfg.ensemble == 1 else
            Ensemble([BUILDERS[cfg.type](cfg, input_shape) for _ in range(cfg.ensemble)]))
    return Classifier(Standardize(mean, std, image=len(input_shape) == 3), body)


def save_model(model: nn.Module, folder: str | Path, config: dict[str, Any]) -> None:
    """Write the state dict (safetensors, no pickle) and the JSON needed to rebuild the model."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        # save_file's bytes, written by Python: a full disk is an OSError, not a SafetensorError.
        tmp.write_bytes(save(state))
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model(folder: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a saved model from its JSON config and safetensors weights (eval mode, CPU)."""
    folder = Path(folder)
    path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    retrain = "rerun the train stage (`dvc repro train`) or restore it (`dvc checkout`)"
    for file in (path, weights):
        if not file.is_file():
            raise DataError(f"{file}: not found; run the train stage first (`dvc repro train`)")
    config = read_json(path)
    try:
        model = build_model(ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in config["model"].items()}),
                            config["input_shape"], config["norm"]["mean"], config["norm"]["std"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a model config the train stage wrote "
                        f"({type(err).__name__}: {err}); {retrain}") from None
    try:
        state = load_file(str(weights))
    except SafetensorError as err:  # empty, truncated or overwritten
        raise DataError(f"{weights}: not a readable safetensors file ({err}); {retrain}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # the weights of another model
        raise DataError(f"{weights}: does not fit {path} ({str(err).splitlines()[-1].strip()}); "
                        f"{retrain}") from None
    return model.eval(), config
