"""glibc's malloc set per kind of process: training keeps freed buffers, serving returns them."""

from __future__ import annotations

import ctypes
import functools
import os

# mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Training: glibc raises both thresholds itself as a process frees large blocks, up to these:
# 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) and twice that for trimming. How far it had got
# depended on what the process freed before: 0 to ~1,200 fresh-page faults in a default-CNN
# step at batch 64 (its 0.5-1 MiB activations), 11-14k samples/s on one Xeon VM.
HOLD_MMAP_FROM = 32 << 20
# Serving: buffers from 1 MiB up are mapped alone and unmapped when freed (see keep_memory_flat).
FLAT_MMAP_FROM = 1 << 20
# A user's own settings for glibc's malloc, which we leave as they are.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt, malloc_trim); None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # musl, macOS, Windows: their allocators are not tuned here
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def user_tuned(environ: dict[str, str] | None = None) -> bool:
    """Has the user set glibc's malloc thresholds through the environment?"""
    env = os.environ if environ is None else environ
    return any(name in env for name in USER_SETTINGS) or (
        "glibc.malloc." in env.get("GLIBC_TUNABLES", ""))


def set_thresholds(mmap_from: int) -> bool:
    """Map blocks from `mmap_from` bytes up alone and trim an arena's top past twice that."""
    libc = glibc()
    if libc is None or user_tuned():
        return False
    # Fixed values also turn off glibc's adaptation, so every process runs the same way.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_from)
                and libc.mallopt(M_TRIM_THRESHOLD, 2 * mmap_from))


@functools.cache
def hold_heap() -> bool:
    """Training: serve blocks under 32 MiB from the heap, keep its top unless 64 MiB are free."""
    # Process-wide and kept after the fit: what a training process wants (the stages, the
    # tuning workers). Blocks freed below an arena's top stay with the process either way.
    return set_thresholds(HOLD_MMAP_FROM)


def keep_memory_flat() -> bool:
    """Serving: make freed request buffers go back to the OS in this process."""
    # glibc raises its mmap threshold to each big buffer freed (up to 32 MB); after that,
    # decoded images (Pillow allocates 16 MB blocks) land in per-thread arenas whose tops it
    # keeps: +4 GB never returned after 50 big requests (benchmarks/serving_load.py). A
    # fixed threshold maps big buffers alone, unmapped on free; ~1 syscall per buffer.
    return set_thresholds(FLAT_MMAP_FROM)


def release_memory() -> None:
    """Hand freed heap pages back to the OS after a request (glibc keeps them otherwise)."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
