"""Where a benchmark's figures go: benchmarks/results/<name>.json, with what produced them.

Every figure the READMEs quote comes from such a file, written by its script at the end of a
run and never edited by hand. Next to the figures each file records its provenance: the git
commit (and whether the working tree had changes), the UTC start and end times, the machine
(CPU model, cores, RAM, GPU if torch saw one), the load average at start and end, the Python
and library versions, and the exact command line. Standard library only: `cuda_check.py` runs
on GPU machines that have little more than torch.

    from _results import captured, write_result
    with captured() as out:          # optional: keep what the script printed, too
        ...
    write_result("engine_vs_seed_loop", figures, out.getvalue())
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "optuna", "mlflow", "dvc")

# The scripts import this module before they start measuring, so import time is their start:
# the load average then says whether the machine was idle when the run began.
STARTED = dt.datetime.now(dt.UTC)
LOAD_AT_START = os.getloadavg()


def write_result(name: str, figures: dict, text: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json: the figures, the printed text and the provenance."""
    record: dict[str, Any] = {"name": name, "figures": figures}
    if text is not None:
        record["text"] = text.rstrip("\n").splitlines()  # one string per line: readable JSON
    record["provenance"] = provenance()
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Atomic: an interrupted run leaves the previous result, never half a file.
    tmp.write_text(json.dumps(record, indent=2, default=plain) + "\n")
    tmp.replace(path)
    print(f"figures written to {path.relative_to(REPO)}", flush=True)
    return path


def provenance() -> dict[str, Any]:
    """Commit, times, machine, load, versions and command line of this run."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty,
            "started_utc": STARTED.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(sys.orig_argv), "cwd": os.getcwd(),
            "machine": machine(),
            "load_average": {"start": rounded(LOAD_AT_START), "end": rounded(os.getloadavg())},
            "python": platform.python_version(), "packages": versions()}


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD's full hash, whether tracked or new files differ from it); None where no git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line for line in git("status", "--porcelain").splitlines()
                   if "benchmarks/results/" not in line]  # earlier results are not code
    except (OSError, subprocess.CalledProcessError):
        return None, None  # a GPU machine given a copy of the tree without .git
    return commit, bool(changed)


def machine() -> dict[str, Any]:
    """CPU model, cores (all and usable), RAM, OS, and the CUDA device if torch is loaded."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "ram_gib": ram_gib(),
            "os": platform.platform(), "arch": platform.machine()}
    torch = sys.modules.get("torch")  # never imported here: loading torch takes seconds
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    """Total memory from /proc/meminfo, in GiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def rounded(load: tuple[float, float, float]) -> list[float]:
    """The 1, 5 and 15 minute load averages to two decimals (about 2.0 is busy on 2 cores)."""
    return [round(value, 2) for value in load]


def versions() -> dict[str, str]:
    """Installed versions of the libraries whose speed the figures depend on."""
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def plain(value: Any) -> Any:
    """JSON for what json does not know: numpy scalars and arrays, paths, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


class Tee(io.TextIOBase):
    """A stdout that also keeps a copy of everything written to it."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def getvalue(self) -> str:
        """Everything printed so far."""
        return self.copy.getvalue()


@contextlib.contextmanager
def captured() -> Iterator[Tee]:
    """Print as usual and keep a copy, for write_result's text."""
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee
