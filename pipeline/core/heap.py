"""glibc's malloc kept from handing a training step's freed buffers back to the kernel."""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# glibc raises both itself as a process frees large blocks, up to these: 32 MiB
# (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) and twice that for trimming. How far it had got
# depended on what the process freed before: a default-CNN step at batch 64 allocated its
# 0.5-1 MiB activations from fresh pages 0 to ~1,000 times, 11-14k samples/s on one Xeon VM.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def hold_heap() -> bool:
    """Serve blocks under 32 MiB from the heap and keep up to 64 MiB freed (True where set)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # musl, macOS, Windows: their own allocators, left as they are
    libc = ctypes.CDLL("libc.so.6")
    # Fixed values also turn off glibc's adaptation, so every process runs the same way.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
