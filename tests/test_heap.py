"""glibc's malloc per process kind: training reuses freed blocks instead of faulting them in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from pipeline.core.config import TrainConfig
from pipeline.core.heap import hold_heap, user_tuned
from pipeline.training.engine import fit
from tests.helpers import image_split

# A step's shape in small: four 1 MiB blocks live at once (the first conv block's activations
# at batch 64), all freed, again. Prints what the setter returned and the fresh-page faults
# of one round after warm-up.
PROBE = """
import resource, sys
import numpy as np
from pipeline.core.heap import hold_heap
held = hold_heap() if sys.argv[1] == "held" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(22):
    if round == 2:
        before = faults()
    blocks = [np.ones(1 << 18, np.float32) for _ in range(4)]
    del blocks
print(held, (faults() - before) / 20)
"""

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def probe(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not user_tuned({k: v})}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True, env={**clean, **env}).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; other allocators are left alone")
def test_a_held_heap_reuses_freed_blocks_where_glibc_hands_them_back() -> None:
    held = probe("held")
    assert held[0] == "True" and held[1] < 10, held
    plain = probe("plain")
    if plain[1] < 500:  # e.g. transparent huge pages on every heap: nothing to compare with
        pytest.skip(f"glibc here did not trim the freed blocks ({plain[1]} faults a round)")
    # glibc's adaptive thresholds trim the 4 MiB freed at the heap's top each round: 1,024
    # fresh 4 KiB pages to fault in again.


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; other allocators are left alone")
def test_a_users_own_malloc_settings_are_left_alone() -> None:
    assert user_tuned({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert user_tuned({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert not user_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    # Their setting applies, ours does not: the rounds fault as glibc was told.
    told, faults = probe("held", MALLOC_TRIM_THRESHOLD_="0", MALLOC_MMAP_THRESHOLD_="65536")
    assert told == "False" and faults > 500, (told, faults)


def test_fit_holds_the_heap_for_its_process() -> None:
    hold_heap.cache_clear()
    data = image_split(16, 1, size=8)
    cfg = TrainConfig(epochs=1, batch_size=8, num_threads=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1),
                                torch.nn.Flatten(0))
    fit(model, data, data, cfg, seed=0, device=torch.device("cpu"))
    assert hold_heap.cache_info().currsize == 1  # called (False where glibc is not the libc)
