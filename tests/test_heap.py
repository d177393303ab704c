"""glibc's heap held for training: freed activation-sized blocks are reused, not faulted in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A step's shape in small: four 1 MiB blocks live at once (the first conv block's activations
# at batch 64), all freed, again. Prints the fresh-page faults of one round after warm-up.
PROBE = """
import resource, sys
import numpy as np
from pipeline.core.heap import hold_heap
held = sys.argv[1] == "held" and hold_heap()
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


def faults_per_round(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; other allocators are left alone")
def test_a_held_heap_reuses_freed_blocks_where_glibc_hands_them_back() -> None:
    plain, held = faults_per_round("plain"), faults_per_round("held")
    assert held[0] == "True"
    # glibc's adaptive thresholds trim the 4 MiB freed at the heap's top each round: 1,024
    # fresh 4 KiB pages to fault in again; held, the round reuses them.
    assert plain[1] > 500, plain
    assert held[1] < 10, held
