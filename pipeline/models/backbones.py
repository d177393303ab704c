"""torchvision backbones as model bodies: built with weights=None, one-logit head, any channels.

Nothing is downloaded: weights, if any, come from a file the user provides (model.weights).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.config import BACKBONES, ModelConfig
from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)

# Each downsamples by 32: a smaller image reaches the last stage as less than one pixel.
MIN_SIZE = dict.fromkeys(BACKBONES, 32)
# The ones whose classifier has a dropout before the last linear layer (resnet18 has none).
WITH_DROPOUT = {"mobilenet_v3_small", "efficientnet_b0"}
# The last linear layer, replaced by the one-logit head: never taken from a checkpoint.
HEAD = {"resnet18": "fc", "mobilenet_v3_small": "classifier.3", "efficientnet_b0": "classifier.1"}
# What freeze: backbone leaves trainable: the classifier block on top of the pooled features.
CLASSIFIER = {"resnet18": "fc", "mobilenet_v3_small": "classifier",
              "efficientnet_b0": "classifier"}
# torchvision's ImageNet preprocessing statistics (x in [0, 1]), for model.norm: imagenet.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A torchvision network under `net` (the same state-dict keys for any input channels);
    grayscale input is repeated to 3 channels, so an RGB first conv and its weights fit."""

    def __init__(self, net: nn.Module, gray: bool, frozen_except: str | None = None) -> None:
        super().__init__()
        self.net, self.gray, self.frozen_except = net, gray, frozen_except
        if frozen_except is not None:
            for name, param in net.named_parameters():
                param.requires_grad_(name.startswith(frozen_except + "."))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # expand is a view; input already widened to 3 channels (ImageNet norm) passes as is.
        return self.net(x.expand(-1, 3, -1, -1) if self.gray else x)

    def train(self, mode: bool = True) -> Backbone:
        """As nn.Module.train, but a frozen backbone stays in eval mode: its BatchNorm
        statistics and stochastic depth must not change what the checkpoint computes."""
        super().train(mode)
        if self.frozen_except is not None:
            self.net.eval()
            self.net.get_submodule(self.frozen_except).train(mode)
        return self


def backbone(cfg: ModelConfig, input_shape: Sequence[int]) -> nn.Module:
    """torchvision `cfg.type` with weights=None and a one-logit head, for (C, H, W) inputs."""
    import torchvision  # only backbone models pay for the import

    if len(input_shape) != 3:
        raise ConfigError(f"model.type = {cfg.type!r}: needs image data, but the inputs are a "
                          f"table of {input_shape[0]} features (use mlp or logreg)")
    channels, size = input_shape[0], min(input_shape[1:])
    if size < MIN_SIZE[cfg.type]:
        raise ConfigError(f"data.image_size = {size}: model.type = {cfg.type!r} needs images of "
                          f"at least {MIN_SIZE[cfg.type]} px (it downsamples by 32); set "
                          f"data.image_size to a number >= {MIN_SIZE[cfg.type]} (auto takes "
                          "the images' own size)")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels = {channels}: torchvision backbones take 1 or 3")
    extra = {"dropout": cfg.dropout} if cfg.type in WITH_DROPOUT else {}
    net = torchvision.models.get_model(cfg.type, weights=None, num_classes=1, **extra)
    return Backbone(net, gray=channels == 1,
                    frozen_except=CLASSIFIER[cfg.type] if cfg.freeze == "backbone" else None)


def input_norm(cfg: ModelConfig, data_norm: tuple[Sequence[float], Sequence[float]]
               ) -> tuple[Sequence[float], Sequence[float]]:
    """The (mean, std) the model standardises with: the train split's, or ImageNet's."""
    # ImageNet's 3 values on 1-channel input broadcast it to 3 standardised channels, as the
    # grayscale images would have been in an RGB pipeline.
    return (IMAGENET_MEAN, IMAGENET_STD) if cfg.norm == "imagenet" else data_norm


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only: no code is unpickled)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.weights = {path!r}: file not found (put the checkpoint under "
                          "data/weights/ and `dvc add` it)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state: Any = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: the path is what the user needs
        raise ConfigError(f"model.weights = {path!r}: not a readable checkpoint "
                          f"({type(err).__name__}: {err})") from None
    # Training scripts often save {"model": state_dict, "optimizer": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights = {path!r}: holds no state dict (names → tensors)")
    return state


def load_checkpoint(model: nn.Module, cfg: ModelConfig) -> dict[str, Any]:
    """Copy `cfg.weights` into the backbone of `model` (a Classifier, or a bare Backbone); the
    head stays fresh.

    Keys may be torchvision's (conv1.weight) or this pipeline's (body.net.conv1.weight, from a
    saved model); the head and saved input statistics are skipped and reported; any other key
    that does not fit is an error naming it.
    """
    assert cfg.weights is not None
    net = model.get_submodule("body.net" if hasattr(model, "body") else "net")
    own, head = net.state_dict(), HEAD[cfg.type] + "."
    where = f"model.weights = {cfg.weights!r}"
    loaded, skipped = {}, []
    for key, value in read_checkpoint(cfg.weights).items():
        name = key.removeprefix("module.").removeprefix("body.net.")
        if name.startswith(head) or name.startswith("norm."):
            skipped.append(key)
        elif name in loaded:  # e.g. both conv1.weight and body.net.conv1.weight
            raise ConfigError(f"{where}: key {key!r} holds {name!r} a second time")
        elif name not in own:
            raise ConfigError(f"{where}: key {key!r} is not a {cfg.type} parameter (a "
                              "checkpoint of another architecture?)")
        elif value.shape != own[name].shape:
            raise ConfigError(f"{where}: key {key!r} has shape {tuple(value.shape)}, "
                              f"{cfg.type} needs {tuple(own[name].shape)}")
        else:
            loaded[name] = value.to(own[name].dtype)
    missing = sorted(k for k in own if k not in loaded and not k.startswith(head)
                     and not k.endswith("num_batches_tracked"))  # absent in old checkpoints
    if missing:
        raise ConfigError(f"{where}: lacks {len(missing)} {cfg.type} key(s), e.g. "
                          f"{missing[0]!r} (a checkpoint of another architecture?)")
    net.load_state_dict(loaded, strict=False)
    log.info("model.weights: %d tensors loaded from %s; skipped (replaced head, input "
             "statistics): %s", len(loaded), cfg.weights, ", ".join(skipped) or "none")
    return {"path": cfg.weights, "loaded": len(loaded), "skipped": skipped}


def check_checkpoint(cfg: ModelConfig, input_shape: Sequence[int]) -> None:
    """Load `cfg.weights` into a throwaway model: a bad file fails before any run or trial."""
    if cfg.weights is not None:
        load_checkpoint(backbone(cfg, input_shape), cfg)
