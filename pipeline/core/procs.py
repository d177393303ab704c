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


def _is_dvc(cmdline: list[str]) -> bool:
    # `dvc ...` (a console script run by python), `python -m dvc ...`, or DVC's executor.
    head = cmdline[:3]
    return any(os.path.basename(arg) == "dvc" for arg in head) or (
        "-m" in head and head.index("-m") + 1 < len(head) and head[head.index("-m") + 1] == "dvc")


def invocation_id() -> str:
    """host:pid:start of the `dvc` process running this stage, else of this process."""
    # One `dvc repro` / `dvc exp run` is one dvc process; a stage started by hand stands alone.
    import psutil  # imported here: only the stages that open an MLflow run need it

    me = psutil.Process()
    owner = me
    try:
        owner = next((p for p in me.parents() if _is_dvc(p.cmdline())), me)
        start = owner.create_time()
    except psutil.Error:  # a parent exited or is not ours to read: this process stands alone
        owner, start = me, me.create_time()
    return f"{platform.node()}:{owner.pid}:{start:.3f}"
