"""Ctrl-C handling that no timing can show reliably: a SIGINT inside a finalizer."""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from pipeline.core.interrupts import Interrupted, interrupt, interruptible, redeliver


@pytest.fixture(autouse=True)
def ctrl_c_handled() -> Iterator[None]:
    """Ctrl-C handled as in a terminal: a background job (`make test &`) starts with SIGINT
    ignored, and interruptible() rightly leaves an ignored SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class CtrlCWhenCollected:
    """Stands for an SQLAlchemy weakref callback that a Ctrl-C happened to land in."""

    def __del__(self) -> None:
        interrupt()


def test_ctrl_c_inside_a_finalizer_is_raised_in_ordinary_code(
        capfd: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted), interruptible():
        CtrlCWhenCollected()  # collected at once: Python would print its Interrupted and go on
        gc.collect()
        for _ in range(50):  # ordinary code for 5 s: the redelivered SIGINT is raised here
            time.sleep(0.1)
    assert "Exception ignored" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # and the hooks are put back
    assert sys.unraisablehook is not redeliver


def test_other_unraisable_errors_still_reach_pythons_hook(
        capfd: pytest.CaptureFixture[str]) -> None:
    class Broken:
        def __del__(self) -> None:
            raise ValueError("finalizer bug")

    with interruptible():
        Broken()
        gc.collect()
    assert "finalizer bug" in capfd.readouterr().err
