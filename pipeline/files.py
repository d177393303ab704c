"""Atomic writes: a killed stage never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.procs import owner_gone

# Temp names carry their writer (`.NAME.tmp-HOST-PID-…`), so a later run can remove what a
# killed writer left, and .dvcignore can keep them out of DVC's hashes (`.*.tmp-*`).
TMP_MARK = ".tmp-"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{TMP_MARK}{platform.node()}-{os.getpid()}-"


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temp files/dirs next to `target` whose writer on this host is gone (SIGKILL)."""
    pattern = re.compile(re.escape(f".{target.name}{TMP_MARK}") + r"(?P<host>.+)-(?P<pid>\d+)-")
    removed = []
    for path in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        match = pattern.match(path.name)
        if match and owner_gone(match["host"], match["pid"]):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's private 0700 would surprise teammates
    try:
        yield tmp
        if target.exists():
            # Move the old copy aside first so the swap itself is a single rename.
            old = target.with_name(f"{_temp_prefix(target)}old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp file path next to `target`; on success rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=target.suffix,
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically with sorted keys so equal content gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
