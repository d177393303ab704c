"""CPU kernel dispatch pinned to one portable level, so x86-64 machines compute the same bytes.

PyTorch picks its CPU kernels from the CPU it runs on: ATen's vectorised kernels and SLEEF math
(AVX2 or AVX-512), oneDNN's JIT convolutions (up to the CPU's best ISA) and MKL's GEMM (its
vendor- and ISA-specific code path, or one fixed "CNR" branch). Each choice changes float
results, so two machines that differ only in CPU computed different data/augmented and weights.
Each library reads its environment variable when it first computes (not when torch is
imported), so setting them before any tensor operation pins every later kernel.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

MODE_VARIABLE = "PIPELINE_CPU_KERNELS"
PORTABLE, NATIVE = "portable", "native"
# The portable level every x86-64 CPU with AVX2+FMA (Intel or AMD, AVX2 or AVX-512) runs.
PINNED = {
    # ATen kernels and SLEEF math at AVX2 (not AVX-512, not the scalar libm fallback).
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN convolutions: at most the AVX2 JIT kernels.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # MKL GEMM (Linear layers) in conditional-reproducibility mode on its COMPATIBLE branch:
    # MKL honours MKL_CBWR=AVX2 only on Intel CPUs and silently falls back to its per-CPU AUTO
    # branch on AMD (Intel's docs; MKL_VERBOSE shows CNR:AUTO here), while COMPATIBLE is the
    # same code on every x86-64. Its cost here: see README "Reproducibility".
    "MKL_CBWR": "COMPATIBLE",
}
# Not pinned: MKL_DYNAMIC (torch.set_num_threads, which training calls, already turns it off),
# and NumPy's own SIMD dispatch, which must be set before NumPy's import (MLflow and the tests
# import it first) and did not differ where torch did: data/processed matched across machines.
CPUINFO = Path("/proc/cpuinfo")


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux: no portable way to ask, so nothing is pinned
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, for the run's tags."""
    return cpu_fields(cpuinfo).get("model name") or platform.processor() or platform.machine()


def can_pin(cpuinfo: Path = CPUINFO) -> bool:
    """Is this an x86-64 CPU with AVX2 and FMA (what ATen's AVX2 kernels need)?"""
    flags = set(cpu_fields(cpuinfo).get("flags", "").split())
    # ATen trusts ATEN_CPU_CAPABILITY=avx2 without checking the CPU: never set it without them.
    return platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= flags


def kernel_mode(environ: MutableMapping[str, str] | None = None,
                cpuinfo: Path = CPUINFO) -> str:
    """`portable` where the pin applies, else `native` (opted out, or not an AVX2 x86-64)."""
    env = os.environ if environ is None else environ
    wanted = env.get(MODE_VARIABLE, PORTABLE)
    if wanted not in (PORTABLE, NATIVE):
        raise ValueError(f"{MODE_VARIABLE}={wanted!r}: use {PORTABLE!r} (the default: same "
                         f"kernels on every x86-64 CPU with AVX2) or {NATIVE!r} (this CPU's best)")
    return PORTABLE if wanted == PORTABLE and can_pin(cpuinfo) else NATIVE


def pin_kernels(environ: MutableMapping[str, str] | None = None,
                cpuinfo: Path = CPUINFO) -> str:
    """Set PINNED in the environment unless PIPELINE_CPU_KERNELS=native; return the mode."""
    env = os.environ if environ is None else environ
    mode = kernel_mode(env, cpuinfo)
    if mode == PORTABLE:
        # Overridden, not defaulted: a stray export (a cluster module's MKL_CBWR=AUTO) must not
        # change the bytes silently. PIPELINE_CPU_KERNELS=native hands all three back.
        env.update(PINNED)
    return mode


def kernel_settings(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The mode, the CPU model and each pinned variable's value in effect (`unset` if none)."""
    env = os.environ if environ is None else environ
    return {"mode": kernel_mode(env), "cpu": cpu_model(),
            **{name: env.get(name, "unset") for name in PINNED}}
