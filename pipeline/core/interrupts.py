"""Ctrl-C during tuning: one handler for the first SIGINT, and worker processes that all stop.

The first Ctrl-C raises Interrupted where the code runs; later ones are ignored, so the
clean-up (failing the trial, closing its MLflow run, stopping workers) is never cut short.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

# Exit status after Ctrl-C (128 + SIGINT, what shells report).
INTERRUPTED_EXIT = 130
# How long stopped workers get to fail their trials and exit before they are killed.
STOP_SECONDS = 30.0
# How soon a Ctrl-C that a finalizer swallowed is sent again (redeliver).
REDELIVER_SECONDS = 0.05


class Interrupted(BaseException):
    """Ctrl-C during tuning. Not a KeyboardInterrupt, which Optuna catches to fail the trial
    with a logged traceback: the worker fails its own trials, quietly."""


def interrupt(signum: int = signal.SIGINT, frame: object = None) -> None:
    """The SIGINT handler (also called directly): ignore further Ctrl-C, raise Interrupted."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted


def redeliver(unraisable: Any) -> None:
    """sys.unraisablehook inside interruptible(): Interrupted raised in a finalizer or a weakref
    callback (Python only prints it there, as a traceback) comes again as a fresh SIGINT, which
    the handler raises in ordinary code; anything else goes to Python's own hook."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupt)
    # Sent from a timer thread, not raised here: a handler run inside this hook would raise
    # into the hook, which Python prints and drops all over again. Sent to the main thread, not
    # the process: a process-wide signal may land on the timer thread, and then a main thread
    # blocked in a wait (sleep, a lock, a socket) would not wake to run the handler.
    again = threading.Timer(REDELIVER_SECONDS, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    again.daemon = True
    again.start()


@contextlib.contextmanager
def interruptible(always: bool = False) -> Iterator[None]:
    """Ctrl-C raises Interrupted inside (main thread; nested: no-op). A SIGINT ignored on entry
    (a background job) stays ignored unless `always` (worker processes started so)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is interrupt \
            or (previous is signal.SIG_IGN and not always):
        yield
        return
    signal.signal(signal.SIGINT, interrupt)
    # A Ctrl-C that lands while the garbage collector runs a finalizer (SQLAlchemy's weakref
    # callbacks, seen in CI) would be printed and lost; redeliver raises it where code resumes.
    hook, sys.unraisablehook = sys.unraisablehook, redeliver
    try:
        yield
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, previous)


def start_quietly(processes: list[BaseProcess]) -> None:
    """Start processes that ignore Ctrl-C until they handle it (one that came while a process
    imported torch would print a traceback); stop_all reaches them instead."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for process in processes:
            process.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def stop_all(processes: list[BaseProcess], grace: float = STOP_SECONDS) -> None:
    """SIGINT every live process (each second: one still starting ignores it), wait until they
    exit, kill those still alive after `grace` seconds."""
    deadline = time.monotonic() + grace
    while (alive := [p for p in processes if p.is_alive()]) and time.monotonic() < deadline:
        for process in alive:  # alive: started, so its pid is set (never 0: a whole group)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(process.pid), signal.SIGINT)  # type: ignore[arg-type]
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=1.0)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
