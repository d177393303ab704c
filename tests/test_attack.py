"""Every case of benchmarks/attack.py, as a test: a hostile input is handled or refused."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from attack import all_cases
from attacks.common import Case, run_case

CASES = all_cases()
# Longest areas first, so the two lanes end together.
AREA_ORDER = ("faults", "tuning", "serving", "params", "basics", "images", "tables")


@pytest.fixture(scope="module")
def verdicts(request: pytest.FixtureRequest) -> Iterator[dict[int, Future]]:
    """Run the selected cases two at a time (each is a subprocess, mostly start-up, so the
    second core would idle): areas in parallel, each area's cases in order, since an area may
    share one workspace or server between its cases."""
    selected = {id(item.callspec.params["case"]) for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    areas: dict[str, list[Case]] = {}
    for area, case in CASES:
        if id(case) in selected:
            areas.setdefault(area, []).append(case)
    futures: dict[int, Future] = {id(case): Future() for cases in areas.values()
                                  for case in cases}

    def run_area(cases: list[Case]) -> None:
        for case in cases:
            try:
                futures[id(case)].set_result(run_case(case))
            except BaseException as err:  # reported by the case's own test
                futures[id(case)].set_exception(err)

    order = sorted(areas, key=lambda a: AREA_ORDER.index(a) if a in AREA_ORDER else 99)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for area in order:
            pool.submit(run_area, areas[area])
        yield futures


@pytest.mark.slow
@pytest.mark.parametrize(("area", "case"), CASES, ids=[f"{a}: {c.name}" for a, c in CASES])
def test_attack_case(area: str, case: Case, verdicts: dict[int, Future]) -> None:
    ok, what = verdicts[id(case)].result(timeout=900)
    assert ok, f"{area}: {case.name}: {what}"
