"""Who owns a RUNNING record (an MLflow run, an Optuna trial): a host and a pid, alive or gone."""

from __future__ import annotations

import os
import platform


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def owner_gone(host: object, pid: object) -> bool:
    """True only when the owner ran on this host and its process no longer exists."""
    if host != platform.node() or pid is None:
        return False  # another host's record: only its own processes (or heartbeats) can judge
    return int(str(pid)) != os.getpid() and not process_alive(int(str(pid)))
