"""torchvision backbones as model bodies: built with weights=None, one-logit head, any channels.

Nothing is downloaded: weights, if any, come from a file the user provides (model.weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError

# Each downsamples by 32: a smaller image reaches the last stage as less than one pixel.
MIN_SIZE = {"resnet18": 32, "mobilenet_v3_small": 32, "efficientnet_b0": 32}
# The ones whose classifier has a dropout before the last linear layer (resnet18 has none).
WITH_DROPOUT = {"mobilenet_v3_small", "efficientnet_b0"}


class Backbone(nn.Module):
    """A torchvision network under `net` (the same state-dict keys for any input channels);
    grayscale input is repeated to 3 channels, so an RGB first conv and its weights fit."""

    def __init__(self, net: nn.Module, gray: bool) -> None:
        super().__init__()
        self.net, self.gray = net, gray

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if self.gray else x)


def backbone(cfg: ModelConfig, input_shape: Sequence[int]) -> nn.Module:
    """torchvision `cfg.type` with weights=None and a one-logit head, for (C, H, W) inputs."""
    import torchvision  # only backbone models pay for the import

    if len(input_shape) != 3:
        raise ConfigError(f"model.type = {cfg.type!r}: needs image data, but the inputs are a "
                          f"table of {input_shape[0]} features (use mlp or logreg)")
    channels, size = input_shape[0], min(input_shape[1:])
    if size < MIN_SIZE[cfg.type]:
        raise ConfigError(f"data.image_size = {size}: model.type = {cfg.type!r} needs images of "
                          f"at least {MIN_SIZE[cfg.type]} px (it downsamples by 32)")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels = {channels}: torchvision backbones take 1 or 3")
    extra = {"dropout": cfg.dropout} if cfg.type in WITH_DROPOUT else {}
    net = torchvision.models.get_model(cfg.type, weights=None, num_classes=1, **extra)
    return Backbone(net, gray=channels == 1)
