"""The SQLite file behind a local tracking store: where it is, and whether a stage may use it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import StoreError


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory)."""
    if urlparse(uri).scheme != "sqlite" or uri == "sqlite://":
        return None
    return Path(unquote(uri[len("sqlite:///"):]))


def check_sqlite(uri: str, db: Path, must_exist: bool) -> None:
    """Refuse a SQLite store in a missing folder, a missing one where `must_exist`, a damaged
    one always, before a stage writes anything: SQLite would silently start an empty one."""
    if not db.parent.is_dir():
        raise StoreError(f"MLFLOW_TRACKING_URI={uri}: folder {db.parent} does not exist")
    if not db.is_file() or db.stat().st_size == 0:
        if must_exist:
            raise StoreError(f"MLFLOW_TRACKING_URI={uri}: {db} is missing or empty, so it lacks "
                             "the runs and models this step needs: restore it, or record them "
                             "anew into a fresh store: `dvc repro -f --downstream train`")
        return
    # Every page (~2 s per GB): MLflow's first query reads a few, so a torn file would fail
    # mid-run, after the stage wrote its outputs.
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            problem = con.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.OperationalError as err:  # locked, unreadable: nothing to restore
        raise StoreError(f"MLFLOW_TRACKING_URI={uri}: tracking store failed: {err}") from None
    except sqlite3.DatabaseError as err:  # not a database, malformed
        problem = str(err)
    if problem != "ok":
        raise StoreError(f"MLFLOW_TRACKING_URI={uri}: tracking store failed: {problem}; restore "
                         f"{db} from a copy, or move it aside to start a fresh store")
