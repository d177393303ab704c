"""dvc.yaml is code: each stage's code deps are its import closure, its params what it reads."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.config import Params, load_params
from pipeline.registry.packaging import module_file, shipped_modules
from tests.helpers import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def holds_code(init: Path) -> bool:
    """Does a package __init__.py run anything (more than its docstring)?"""
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                   for n in ast.parse(init.read_text()).body)


def import_closure(module: str) -> set[str]:
    """Every pipeline/ file importing `module` runs, at any depth or indentation (not under
    `if TYPE_CHECKING:`, which never runs), plus the package __init__.py files that run code."""
    files = [f for m in shipped_modules(module) if (f := module_file(m)) is not None]
    return {f.relative_to(REPO).as_posix() for f in files
            if f.name != "__init__.py" or holds_code(f)}


def stage_module(stage: dict[str, Any]) -> str:
    return next(w for w in stage["cmd"].split() if w.startswith("pipeline.stages."))


# Code a stage runs without importing it: register logs pyfunc_model.py as a models-from-code
# file and loads it back through MLflow to score the challenger and the champion.
LOADED_BY_PATH = {"register": "pipeline.registry.pyfunc_model"}


def code_closure(name: str) -> set[str]:
    """The pipeline/ files stage `name` runs: its module's import closure, plus loaded code."""
    files = import_closure(stage_module(STAGES[name]))
    if name in LOADED_BY_PATH:
        extra = module_file(LOADED_BY_PATH[name])
        assert extra is not None and extra.name in "".join(
            p.read_text() for p in map(REPO.joinpath, files))
        files |= import_closure(LOADED_BY_PATH[name])
    return files


def test_closure_holds_the_package_init_that_pins_cpu_kernels() -> None:
    # Every stage runs pipeline/__init__.py (it pins the CPU kernels, which changes results)
    # whatever it imports; a docstring-only __init__.py (pipeline/stages/) is left out.
    for name in STAGES:
        closure = code_closure(name)
        assert {"pipeline/__init__.py", "pipeline/core/cpu.py"} <= closure, name
        assert "pipeline/stages/__init__.py" not in closure


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_equal_import_closure(name: str) -> None:
    listed = {d for d in STAGES[name]["deps"] if d.startswith("pipeline/")}
    wanted = code_closure(name)
    assert listed == wanted, (f"{name}: missing {sorted(wanted - listed)}, "
                              f"extra {sorted(listed - wanted)}")


@pytest.mark.parametrize("name", ["builtin", "preprocess", "augment"])
def test_data_stages_run_no_model_training_or_tracking_code(name: str) -> None:
    # Editing the training loop, the study or the registry must not re-decode every image.
    layers = {Path(f).parts[1] for f in code_closure(name) if len(Path(f).parts) > 2}
    assert layers <= {"core", "data", "stages"}, f"{name} runs {sorted(layers)}"


def test_closure_follows_from_imports_and_nested_imports(tmp_path: Path) -> None:
    # The checker itself: a stage importing tracking reaches lineage and tags through it.
    closure = code_closure("evaluate")
    assert {"pipeline/tracking/runs.py", "pipeline/core/lineage.py",
            "pipeline/core/tags.py"} <= closure
    assert "pipeline/tuning/tune.py" not in closure


# --- params: what each stage reads --------------------------------------------------------


def traced(obj: Any, reads: set[str], prefix: str = "") -> Any:
    """A copy of a frozen config whose sections record each dotted leaf key read from them."""
    cls = type(obj)
    names = {f.name for f in dataclasses.fields(obj)}

    class Traced(cls):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str) -> Any:
            value = object.__getattribute__(self, name)
            # Copies made by dataclasses.replace carry no trace: only the originals report.
            trace = object.__getattribute__(self, "__dict__").get("_trace")
            if trace is not None and name in names and not dataclasses.is_dataclass(value):
                trace[1].add(trace[0] + name)
            return value

    copy = object.__new__(Traced)
    for name in names:
        value = object.__getattribute__(obj, name)
        if dataclasses.is_dataclass(value):
            value = traced(value, reads, f"{prefix}{name}.")
        object.__setattr__(copy, name, value)
    object.__setattr__(copy, "_trace", (prefix, reads))
    return copy


def leaves(entries: list[str]) -> set[str]:
    """dvc.yaml params entries (a section or a dotted key) expanded to leaf keys."""
    from pipeline.core.typed import flatten

    every = set(flatten(Params()))
    return {k for k in every for e in entries if k == e or k.startswith(f"{e}.")}


def stage_args(module: Any, root: Path, **paths: str) -> argparse.Namespace:
    from pipeline.stages._common import parse_stage_args

    defaults = {name: str(root / default) for name, default in module.PATHS.items()}
    argv = [x for name, value in {**defaults, **paths}.items()
            for x in (f"--{name.replace('_', '-')}", value)]
    return parse_stage_args(argv, "", module.PATHS)


def run_traced(params_path: Path, root: Path, names: list[str], reads: dict[str, set[str]]
               ) -> None:
    """Run stages in order on one params file, each with its own read recorder."""
    import importlib

    for name in names:
        module = importlib.import_module(f"pipeline.stages.{name.rstrip('2')}")
        seen = reads.setdefault(name.rstrip("2"), set())
        module.run(traced(load_params(params_path), seen), stage_args(module, root))


@pytest.fixture(scope="module")
def stage_reads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Leaf keys each stage read over two runs that together take every code path."""
    from tests.helpers import make_csv, make_imagefolder, write_params

    root = tmp_path_factory.mktemp("reads")
    reads: dict[str, set[str]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("OPTUNA_STORAGE", str(root / "optuna.journal"))
        mp.chdir(root)
        split = {"train": 0.5, "val": 0.25, "test": 0.25}
        # Images (one corrupt), online augmentation, tuning on; register twice so the gate
        # compares against a champion.
        folder = make_imagefolder(root / "img")
        (folder / "cat" / "corrupt.png").write_bytes(b"not a png")
        images = write_params(root / "images.yaml", {
            "data": {"source": "imagefolder", "path": str(folder), "positive_class": "dog",
                     "image_size": 8, "skip_corrupt": True, "split": split},
            "train": {"epochs": 2, "online_augment": True},
            "tune": {"enabled": True, "n_trials": 2, "pruner": "none"}})
        (root / "a").mkdir()
        run_traced(images, root / "a", ["builtin", "preprocess", "augment", "tune", "train",
                                        "evaluate", "register", "register2"], reads)
        # A table with tuning off: train reads the tuned keys from params.yaml instead.
        table = write_params(root / "table.yaml", {
            "data": {"source": "csv", "path": str(make_csv(root / "t.csv")), "target": "label",
                     "positive_class": "spam", "split": split},
            "tune": {"enabled": False}})
        (root / "b").mkdir()
        run_traced(table, root / "b", ["preprocess", "augment", "tune", "train"], reads)
    return reads


def test_validate_stage_watches_the_whole_params_file() -> None:
    # Its job is to load (and so check) every key whenever anything in params.yaml changes,
    # new keys included; DVC's `params.yaml:` with no key list means exactly that.
    assert STAGES["validate"]["params"] == [{"params.yaml": None}]
    assert "reports/params_check.json" in STAGES["preprocess"]["deps"]


@pytest.mark.slow  # its fixture runs every stage, twice, tuning and registering included
@pytest.mark.parametrize("name", sorted(set(STAGES) - {"validate"}))
def test_params_equal_the_keys_the_stage_reads(name: str,
                                               stage_reads: dict[str, set[str]]) -> None:
    listed = leaves(STAGES[name].get("params", []))
    read = stage_reads[name]
    assert listed == read, f"{name}: missing {sorted(read - listed)}, extra {sorted(listed - read)}"


def test_tracer_sees_reads_but_not_replaced_copies() -> None:
    reads: set[str] = set()
    params = traced(Params(), reads)
    assert params.train.lr > 0 and params.data.split.train > 0
    dataclasses.replace(params.train, lr=0.1).lr  # noqa: B018 (a read of the copy)
    assert reads >= {"train.lr", "data.split.train"}
    assert "train.epochs" in reads  # replace() read it from the original to copy it
