"""The READMEs stay true to the tree: every module listed once, every quoted results file there."""

from __future__ import annotations

import json
import re
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"
BENCHMARKS = REPO / "benchmarks"
START, END = "<!-- layout: start", "<!-- layout: end -->"


def layout_section() -> str:
    """The README's layout section: the text between its two markers."""
    text = (REPO / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, \
        f"README.md needs one {START} ...--> and one {END} around the layout section"
    return text.split(START, 1)[1].split(END, 1)[0]


def listed_modules() -> list[str]:
    """Modules the layout lists, as core/config.py: an indented `name.py` line under the
    `pipeline/<subpackage>/` line of its group (the rest of the line is its description)."""
    modules, package = [], None
    for line in layout_section().splitlines():
        if header := re.fullmatch(r"pipeline/([\w/]+)/\s*", line):
            package = header.group(1)
        elif entry := re.match(r"\s+([\w.]+\.py)(\s|$)", line):
            assert package, f"README layout: {entry.group(1)} listed before any pipeline/ line"
            modules.append(f"{package}/{entry.group(1)}")
    return modules


def modules_on_disk() -> set[str]:
    """Every module inside a subpackage of pipeline/, but package markers and entry points."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.parent != PACKAGE and p.name not in ("__init__.py", "__main__.py")}


def test_layout_lists_every_module() -> None:
    missing = sorted(modules_on_disk() - set(listed_modules()))
    assert not missing, f"add to README.md's layout section, one line each: {missing}"


def test_layout_lists_nothing_that_is_gone() -> None:
    gone = sorted(set(listed_modules()) - modules_on_disk())
    assert not gone, f"README.md's layout section lists modules that do not exist: {gone}"


def test_layout_lists_each_module_once() -> None:
    twice = sorted(m for m, n in Counter(listed_modules()).items() if n > 1)
    assert not twice, f"README.md's layout section lists these more than once: {twice}"


def test_layer_overview_names_every_subpackage_once_in_the_module_list_order() -> None:
    """The numbered overview (`1 core/  job`) matches the subpackages on disk, and the module
    list groups them in the same order."""
    overview = re.findall(r"^\s*(\d+) (\w+)/\s+\S", layout_section(), flags=re.MULTILINE)
    numbers, names = [int(n) for n, _ in overview], [name for _, name in overview]
    assert numbers == list(range(1, len(numbers) + 1)), f"layers numbered {numbers}"
    assert sorted(names) == sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    groups = list(dict.fromkeys(m.split("/")[0] for m in listed_modules()))
    assert groups == names, "the module list's groups follow the overview's layer order"


def quoted_results() -> list[str]:
    """Every results file the READMEs name (benchmarks/results/..., or results/... in
    benchmarks/README.md) as a glob: `large_images_*.json`, `<label>` read as `*`."""
    found = []
    for readme in (REPO / "README.md", BENCHMARKS / "README.md"):
        for match in re.findall(r"(?<![\w/])(?:benchmarks/)?results/[\w*<>./-]*[\w*>]",
                                readme.read_text()):
            found.append(re.sub(r"<\w+>", "*", match.removeprefix("benchmarks/")))
    return sorted(set(found))


def written_results() -> list[str]:
    """What the scripts write, as globs: write_result("tuning", ...) is results/tuning.json,
    write_result(f"wide_csv_{args.label}", ...) is results/wide_csv_*.json."""
    names = []
    for script in BENCHMARKS.glob("*.py"):
        for name in re.findall(r'write_result\(\s*f?"([^"]*)"', script.read_text()):
            names.append(f"results/{re.sub(r'{[^}]*}', '*', name)}.json")
    return names


@pytest.mark.parametrize("name", quoted_results())
def test_quoted_results_exist_or_are_what_a_script_writes(name: str) -> None:
    # A figure measured before the writer has its old file or says it was not rerun; a file
    # named for the next run must be one that a script really writes.
    assert list(BENCHMARKS.glob(name)) or any(fnmatch(name, w) for w in written_results()), \
        f"benchmarks/{name} is named in a README, but it is not there and no script writes it"


def test_every_benchmark_script_writes_its_results() -> None:
    scripts = [p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")]
    silent = sorted(p.name for p in scripts if "write_result(" not in p.read_text())
    assert scripts and not silent, f"benchmarks that write no results file: {silent}"


# Written before benchmarks/_results.py: no provenance block. The list may only shrink.
LEGACY_RESULTS = {"cuda_check_h100.json", "large_images_after.json",
                  "large_images_before_20k.json", "peers_after.json", "peers_before.json",
                  "serving_load.json", "transfer_cpu.json", "wide_csv.json"}


@pytest.mark.parametrize("path", sorted(p for p in (BENCHMARKS / "results").glob("*.json")
                                        if p.name not in LEGACY_RESULTS), ids=lambda p: p.name)
def test_written_results_carry_their_provenance(path: Path) -> None:
    record = json.loads(path.read_text())
    assert isinstance(record, dict) and "provenance" in record, f"{path.name}: no provenance"
    made = record["provenance"]
    assert made["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", made["commit"])
    assert made["machine"]["cpu"] and made["machine"]["cores"] >= 1
    assert made["command"] and made["started_utc"] <= made["finished_utc"]
    assert {"start", "end"} <= made["load_average"].keys() and record["name"] == path.stem
