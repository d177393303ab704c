"""Every case of benchmarks/attack.py, as a test: a hostile input is handled or refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from attack import all_cases
from attacks.common import run_case

CASES = all_cases()


@pytest.mark.slow
@pytest.mark.parametrize(("area", "case"), CASES, ids=[f"{a}: {c.name}" for a, c in CASES])
def test_attack_case(area: str, case) -> None:
    ok, what = run_case(case)
    assert ok, f"{area}: {case.name}: {what}"
