"""Mutual exclusion that holds across hosts: PostgreSQL advisory locks, file locks for one host.

An advisory lock lives in a database session: every host that reaches the database sees it, and
it is released when the holder's connection closes -- also when the holder is SIGKILLed -- so a
dead worker never leaves it held.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

import sqlalchemy
from filelock import FileLock
from sqlalchemy.exc import SQLAlchemyError

from pipeline.core.errors import StoreError
from pipeline.core.services import TIMEOUT, mask

log = logging.getLogger(__name__)


class Lock(Protocol):
    """What FileLock and DatabaseLock share."""

    def acquire(self) -> object: ...
    def release(self) -> None: ...
    @property
    def is_locked(self) -> bool: ...
    def __enter__(self) -> object: ...
    def __exit__(self, *exc: object) -> None: ...


def is_postgres(url: str) -> bool:
    """True for postgresql:// and postgresql+driver:// URLs."""
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class DatabaseLock:
    """A session-level PostgreSQL advisory lock named by a string (re-entrant like FileLock)."""

    def __init__(self, url: str, name: str, poll: float = 0.2) -> None:
        self.url, self.name, self.key, self.poll = url, name, lock_key(name), poll
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool,
                                               connect_args={"connect_timeout": TIMEOUT})
        self.conn: sqlalchemy.Connection | None = None
        self.depth = 0

    @property
    def is_locked(self) -> bool:
        """True while this object holds the lock."""
        return self.depth > 0

    def acquire(self) -> DatabaseLock:
        """Block until the lock is ours (polling, so Ctrl-C and SIGTERM still work)."""
        if self.depth:
            self.depth += 1
            return self
        try:
            conn = self.engine.connect()
            query = sqlalchemy.text("SELECT pg_try_advisory_lock(:k)")
            while not conn.execute(query, {"k": self.key}).scalar():
                conn.rollback()  # don't hold a transaction open while waiting
                time.sleep(self.poll)
            conn.commit()
        except SQLAlchemyError as err:
            raise StoreError(f"lock {self.name!r} on {mask(self.url)}: "
                             f"{str(getattr(err, 'orig', err)).splitlines()[0]}") from None
        self.conn, self.depth = conn, 1
        return self

    def release(self) -> None:
        """Release the lock (closing the session releases it too)."""
        if not self.depth:
            return
        self.depth -= 1
        if self.depth or self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
        finally:
            conn.close()

    def __enter__(self) -> DatabaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_for(location: str, name: str) -> Lock:
    """A lock named `name` kept where `location` (a database URL or a file path) lives."""
    if is_postgres(location):
        return DatabaseLock(location, name)
    if location.startswith("sqlite:///"):
        path = Path(location.removeprefix("sqlite:///"))
        return FileLock(str(path.with_name(f"{path.name}.{name}.lock")))
    if "://" in location and not location.startswith("journal://"):
        # Other databases (MySQL, ...): only this host's processes are serialised.
        log.warning("%s: no cross-host lock for this database; only processes on this host "
                    "are serialised (use PostgreSQL for several hosts)", mask(location))
        return FileLock(str(Path(tempfile.gettempdir()) / f"pipeline-{lock_key(name)}.lock"))
    return FileLock(location.removeprefix("journal://") + f".{name}.lock")


def team_lock(name: str, tracking_uri: str) -> Lock:
    """A lock every teammate's process sees: on the team's PostgreSQL when there is one.

    PIPELINE_LOCK_URL names it explicitly; else OPTUNA_STORAGE or the tracking store when they
    are PostgreSQL (the team setup exports both); else beside a SQLite tracking store.
    """
    for url in (os.environ.get("PIPELINE_LOCK_URL"), os.environ.get("OPTUNA_STORAGE"),
                tracking_uri):
        if url and is_postgres(url):
            return DatabaseLock(url, name)
    if tracking_uri.startswith("sqlite:///"):
        return lock_for(tracking_uri, name)
    log.warning("MLFLOW_TRACKING_URI=%s: no team database to lock %r on; only processes on this "
                "host are serialised (set PIPELINE_LOCK_URL or OPTUNA_STORAGE to PostgreSQL)",
                mask(tracking_uri), name)
    return FileLock(str(Path(tempfile.gettempdir()) / f"pipeline-{lock_key(name)}.lock"))
