"""Atomic writes: a killed stage never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import DataError, OutputError
from pipeline.core.procs import owner_gone

# Temp names carry their writer (`.NAME.tmp-HOST-PID-…`), so a later run can remove what a
# killed writer left, and .dvcignore can keep them out of DVC's hashes (`.*.tmp-*`).
TMP_MARK = ".tmp-"
# A full disk, a full quota or the file-size limit (`ulimit -f`): the user frees space and reruns.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(err: BaseException) -> bool:
    """True for an OSError saying no more bytes fit (ENOSPC, EDQUOT, EFBIG)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


# What frees room for each: the fix the one-line error names.
FIXES = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space in your quota",
         errno.EFBIG: "raise the file-size limit (`ulimit -f`)"}


def disk_full_error(where: str | Path, err: OSError) -> OutputError:
    """One line naming what was being written (its final name, not a temp's) and the errno."""
    temp = rf"{re.escape(TMP_MARK)}[^/]*"
    shown = re.sub(rf"(?<![^/])([^/]+)/\.\1{temp}", r"\1", str(where))  # atomic_update's
    shown = re.sub(rf"\.([^/]+?){temp}", r"\1", shown)  # atomic_path's, atomic_dir's
    code = err.errno or 0
    return OutputError(f"{shown}: cannot write: {os.strerror(code)} "
                       f"({errno.errorcode.get(code, code)}); {FIXES.get(code, 'free space')} "
                       "and rerun (the previous outputs are kept)")


@contextlib.contextmanager
def reporting_disk_full(target: str | Path) -> Iterator[None]:
    """Turn a disk-full OSError raised inside into an OutputError naming the file (when the
    OS says which) or `target`."""
    try:
        yield
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise disk_full_error(err.filename or target, err) from None


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
    with reporting_disk_full(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's private 0700 would surprise teammates
    try:
        with reporting_disk_full(target):
            yield tmp
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, a folder replacing a folder in one rename."""
    if target.is_dir() and not target.is_symlink():
        # Move the old copy aside first so the swap itself is a single rename.
        old = target.with_name(f"{_temp_prefix(target)}old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_update(folder: str | Path) -> Iterator[Path]:
    """Yield a temp dir inside `folder`; on success each entry written in it replaces the same
    name in `folder` (entries it lacks stay); on an error nothing in `folder` changes."""
    # For stages whose outputs share a folder with other stages' (models/, reports/), and that
    # must record them in MLflow before they become outputs: a failed upload changes nothing.
    # Inside, not beside: `folder` may be a mount or a link to another disk.
    folder = Path(folder)
    marker = folder / folder.name  # temps are named after it: `.models.tmp-HOST-PID-…`
    with reporting_disk_full(folder):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(marker)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(marker), dir=folder))
    tmp.chmod(0o777 & ~_umask())
    try:
        with reporting_disk_full(folder):
            yield tmp
        for entry in sorted(tmp.iterdir()):
            _swap_in(entry, folder / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp file path next to `target`; on success rename it over `target`."""
    target = Path(target)
    with reporting_disk_full(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=target.suffix,
                                    dir=target.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with reporting_disk_full(target):
            yield tmp
        # After the writer: one that recreates the file (safetensors) would leave mkstemp's 0600.
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically with sorted keys so equal content gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed one is a DataError naming it."""
    fix = "rerun the stage that writes it (`dvc repro`), or restore it (`dvc checkout`)"
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {fix}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column "
                        f"{err.colno}); it is truncated or corrupt: {fix}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; it is corrupt: {fix}") from None
