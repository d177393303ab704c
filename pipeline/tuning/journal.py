"""Optuna's journal file, made to survive a torn last record (kill -9, a full disk).

Optuna skips a last line without a newline and then appends the next record onto it, after
which every read fails. Here a torn last line is cut off, under the journal's own lock (so no
live writer is mid-record), when the file is opened and before every append; a bad record
further up is refused with one line that says how to keep the records before it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from pipeline.core.errors import StoreError

log = logging.getLogger(__name__)


def open_journal(path: str) -> optuna.storages.JournalStorage:
    """The journal storage at `path` (created if missing), its torn tail cut first."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFile(path))  # reads every record
    except ValueError:  # a record Optuna cannot parse before the last line
        raise StoreError(corrupt_journal(path)) from None
    except OSError as err:
        raise StoreError(f"OPTUNA_STORAGE = {path}: cannot use it as an Optuna journal: "
                         f"{err.strerror}") from None


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend that cuts a torn last line before reading and writing."""

    def __init__(self, path: str) -> None:
        self.path, self.lock = path, JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self.lock)
        with held(self.lock):
            cut_torn_tail(path, parse=True)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append (one write, fsynced), after cutting a tail another process tore."""
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in logs).encode()
        with held(self.lock):
            cut_torn_tail(self.path, parse=False)  # a newline check: one read of the tail
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


@contextlib.contextmanager
def held(lock: JournalFileSymlinkLock) -> Iterator[None]:
    """Hold the journal's lock (Optuna's own writers take the same one)."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def cut_torn_tail(path: str, parse: bool) -> None:
    """Truncate the last line when it has no newline or (parse) is not JSON, with a warning.

    Only the last line: every other one is a complete record that other workers may have read.
    """
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if not parse and f.read(1) == b"\n":
            return  # the check before every append: one byte read
        f.seek(0)
        first = f.readline(1 << 20)
        if not is_journal(first):
            raise StoreError(not_a_journal(path, first))
        start = last_line_start(f, size)
        f.seek(start)
        tail = f.read()
        if not is_torn(tail, parse):
            return
        f.truncate(start)  # one syscall: a reader sees the torn line or none of it
        f.flush()
        os.fsync(f.fileno())
    shown = tail[:40] + (b"..." if len(tail) > 40 else b"")
    log.warning("%s: dropped its torn last record, bytes %d-%d (%d bytes: %r), left by a "
                "killed or out-of-space write; the study resumes from the records before it",
                path, start, size, size - start, shown)


def is_journal(first_line: bytes) -> bool:
    """A journal's first line is a record (a JSON object with an op_code), or torn from one."""
    if not first_line.endswith(b"\n"):
        return first_line.startswith(b"{")
    try:
        record = json.loads(first_line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def is_torn(line: bytes, parse: bool) -> bool:
    """A last line is torn without its newline, or (parse) when it is not a JSON object."""
    if not line.endswith(b"\n"):
        return True
    if not parse:
        return False
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError included
        return True


def last_line_start(f: IO[bytes], size: int, chunk: int = 1 << 16) -> int:
    """Offset of the file's last line (just after the last newline before its final byte)."""
    end = size - 1  # a final newline ends the last line
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def not_a_journal(path: str, first_line: bytes) -> str:
    """The one-line refusal for a file that is not an Optuna journal (never truncated)."""
    head = first_line[:20] + (b"..." if len(first_line) > 20 else b"")
    return (f"OPTUNA_STORAGE = {path}: not an Optuna journal (it starts with {head!r}); "
            "point OPTUNA_STORAGE at the study's journal file or a database URL")


def corrupt_journal(path: str) -> str:
    """The one-line refusal for a journal with a bad record before its last line."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                json.loads(line)
            except ValueError:
                if offset == 0:
                    return not_a_journal(path, line)
                return (f"OPTUNA_STORAGE = {path}: line {number} (byte {offset}) is not an "
                        "Optuna journal record, so the study cannot be read; keep the records "
                        f"before it with `truncate -s {offset} {path}` (their trials resume) "
                        "or move the file away to start the study afresh")
            offset += len(line)
    return f"OPTUNA_STORAGE = {path}: Optuna cannot read this journal; move it away"
