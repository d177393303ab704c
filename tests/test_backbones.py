"""torchvision backbones: built without weights, one logit, grayscale or RGB, trainable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.models.backbones import MIN_SIZE
from pipeline.models.device import seed_everything
from pipeline.models.networks import build_model
from pipeline.training.engine import fit
from tests.helpers import image_split


# efficientnet_b0 is the slowest to build (~2 s): the fast lane keeps the other two.
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow)
                                  if a == "efficientnet_b0" else a for a in sorted(MIN_SIZE)])
@pytest.mark.parametrize("channels", [1, 3])
def test_builds_without_weights_and_trains_a_step(arch: str, channels: int) -> None:
    seed_everything(0, 1)
    model = build_model(ModelConfig(type=arch), (channels, 32, 32), [0.5] * channels,
                        [0.25] * channels)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, channels, 32, 32)
    assert model(x).shape == (4,)  # one logit per sample
    train, val = image_split(8, channels), image_split(4, channels, seed=1)
    result = fit(model, train, val, TrainConfig(epochs=1, batch_size=4, patience=0),
                 seed=0, device=torch.device("cpu"))
    after = result.model.state_dict()
    assert any(not torch.equal(state[k], after[k]) for k in state if "weight" in k)
    assert np.isfinite(result.history[0]["train_loss"])


@pytest.mark.parametrize("arch", sorted(MIN_SIZE))
def test_images_below_the_minimum_name_the_key_and_the_minimum(arch: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.image_size = 16: model.type = '{arch}' needs "
                                          rf"images of at least {MIN_SIZE[arch]} px"):
        build_model(ModelConfig(type=arch), (3, 16, 16), [0.5] * 3, [0.25] * 3)


def test_tables_and_odd_channel_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs image data"):
        build_model(ModelConfig(type="resnet18"), (10,), [0.0], [1.0])
    with pytest.raises(ConfigError, match=r"data\.channels = 2"):
        build_model(ModelConfig(type="resnet18"), (2, 32, 32), [0.5] * 2, [0.25] * 2)


def test_grayscale_and_rgb_share_state_dict_keys() -> None:
    # A checkpoint trained on RGB loads into a grayscale model of the same type, and back.
    gray = build_model(ModelConfig(type="resnet18"), (1, 32, 32), [0.5], [0.25])
    rgb = build_model(ModelConfig(type="resnet18"), (3, 32, 32), [0.5] * 3, [0.25] * 3)
    body = {k for k in gray.state_dict() if k.startswith("body.")}
    assert body == {k for k in rgb.state_dict() if k.startswith("body.")}
