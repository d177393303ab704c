"""Where and in what precision a model runs: device choice, seeding, bf16 autocast."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import ConfigError


def select_device() -> torch.device:
    """cuda, then mps, then cpu; PIPELINE_DEVICE overrides (it never changes results on CPU)."""
    wanted = os.environ.get("PIPELINE_DEVICE")
    if wanted:
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, num_threads: int, device: torch.device | None = None) -> None:
    """Seed every RNG, force deterministic kernels on accelerators and pin the CPU threads."""
    # cuBLAS needs this before its first use to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # On CPU the switch changes no kernel our networks run, forward or backward, at a pinned
    # thread count (tests/test_engine.py: the same trained bytes with it on and off), and
    # turning it on imports TorchInductor's config: ~1.4 s in every stage and trial process.
    if device is not None and device.type != "cpu":
        # Some CUDA kernels (pooling backward) lack a deterministic variant: warn there.
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Filling every fresh tensor with NaN only helps debug kernels that read uninitialised
    # memory; deterministic kernels don't, and the fill costs ~12 % of a small CNN's step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(num_threads)


def resolve_precision(precision: str, device: torch.device, *, fitting: bool = True) -> str:
    """fp32 or bf16 for train.precision on `device` (auto: bf16 on CUDA, fp32 elsewhere)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision = {precision!r}: must be auto, fp32 or bf16")
    cuda = device.type == "cuda"
    # A bf16 fit on CPU is refused (~4x slower, and not what byte-identical CPU reruns are
    # checked with); a bf16 model predicting on CPU keeps bf16, so its answers are the ones
    # its threshold was chosen on.
    if precision == "bf16" and not cuda and fitting:
        raise ConfigError(f"train.precision = 'bf16': bf16 autocast needs a CUDA device, and "
                          f"this fit runs on {device.type}; use auto or fp32")
    return "bf16" if precision == "bf16" or (cuda and precision == "auto") else "fp32"


def model_precision(config: dict[str, Any]) -> str:
    """The precision a saved model's validation, threshold and test predictions were made in."""
    # model_config.json records the resolved one; older files only train.precision (or none).
    return config.get("precision") or config["train"].get("precision", "auto")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Forward passes in `precision` (resolve_precision's answer); bf16 needs no loss scaling."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
