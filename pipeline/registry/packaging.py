"""Pinned dependencies: what a logged model ships (the modules its pyfunc imports and the exact
versions of the packages they import), and the environment lock every install resolves from.

Both are derived from the code and the installed distributions when asked, so they cannot drift
from what the model really runs. Imports only the standard library: `make lock` runs it with a
bare interpreter (`python -m pipeline.registry.packaging REPORT`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.lineage import canonical

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pipeline/, this file is in pipeline/registry
ROOT = PACKAGE_DIR.parent
# The pyfunc's models-from-code entry: everything a logged model runs is imported from here.
ENTRY = "pipeline.registry.pyfunc_model"
# Function-level imports run only on some paths (psutil in pipeline/core/procs.py: the stages'
# run identity, never while serving). Of the shipped ones, a model runs those of the backbone
# module if it is a backbone type (torchvision): only such models pin them.
BACKBONES_MODULE = "pipeline.models.backbones"
LOCK_FILE = "requirements.lock"
# Wheels published for Linux only (CUDA libraries, Triton): pinned under this marker, so the
# lock, resolved on Linux x86-64, still installs on macOS or Windows.
LINUX_ONLY = re.compile(r"(nvidia|cuda)-.+|triton")
LINUX_MARKER = 'sys_platform == "linux" and platform_machine == "x86_64"'


@dataclass(frozen=True)
class Imports:
    """What one of our modules imports: our modules, and other top-level packages."""

    ours: frozenset[str]
    eager: frozenset[str]
    """Third-party top-level names imported when the module is (at module level)."""
    lazy: frozenset[str]
    """Third-party top-level names imported only inside functions: paid on those paths."""


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file defining our `module` (a package's __init__.py), if there is one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if parts[1:] else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    """Every import in a module as (dotted name, inside a function?), TYPE_CHECKING ones aside:
    they never run."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _type_checking(node.test):
            self.generic_visit(node)
            return
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: `.` is the package holding this module
            parts = self.module.split(".")[:None if self.is_package else -1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        # `from pipeline import serving` imports the module pipeline.registry.serving.
        self.found += [(name, self.depth > 0) for name in
                       [base, *(f"{base}.{alias.name}" for alias in node.names)] if name]


def module_imports(module: str, package_dir: Path = PACKAGE_DIR) -> Imports:
    """What our `module` imports, read from its source (nothing is imported)."""
    path = module_file(module, package_dir)
    if path is None:
        raise ModuleNotFoundError(f"{module}: no such module under {package_dir}")
    collector = _ImportCollector(module, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    ours, eager, lazy = set(), set(), set()
    for name, inside in collector.found:
        top = name.split(".")[0]
        if top == PACKAGE:
            # `from pipeline.x import f` also lists pipeline.x.f: keep only real modules.
            ours.update(n for n in parents(name) if module_file(n, package_dir))
        elif top not in sys.stdlib_module_names:
            (lazy if inside else eager).add(top)
    return Imports(frozenset(ours), frozenset(eager), frozenset(lazy - eager))


def parents(module: str) -> list[str]:
    """`module` and each package above it (Python runs their __init__.py first)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def shipped_modules(entry: str = ENTRY, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Our modules a logged model runs: the import closure of `entry`, lazy imports included."""
    seen: set[str] = set()
    todo = parents(entry)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += module_imports(module, package_dir).ours
    return sorted(seen)


def model_code(dest_dir: str | Path) -> Path:
    """Copy the shipped modules into a new `dest_dir/pipeline` package; return its folder."""
    target = Path(dest_dir) / PACKAGE
    target.mkdir(parents=True)  # must be new: a leftover file would ship too
    for module in shipped_modules():
        source = module_file(module)
        assert source is not None  # shipped_modules lists only modules that have a file
        copy = target / source.relative_to(PACKAGE_DIR)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy)
    return target


def distribution_of(top: str, providers: dict[str, list[str]]) -> str:
    """The one installed distribution to pin for the top-level import `top`."""
    names = {canonical(d) for d in providers.get(top, ())}
    if not names:
        raise ModuleNotFoundError(f"{top}: imported by the model's code, but no installed "
                                  "distribution provides it")
    # mlflow's files come in mlflow, mlflow-skinny and mlflow-tracing: pin the one that brings
    # the others, as `pip install` of it would.
    required = {(d, canonical(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]))
                for d in names for r in importlib.metadata.requires(d) or ()}
    roots = sorted(n for n in names if not any((d, n) in required for d in names - {n}))
    if len(roots) != 1:
        raise LookupError(f"{top}: provided by {sorted(names)}; cannot tell which to pin")
    return roots[0]


def pin(distribution: str) -> str:
    """`name==version` at the installed version, without a local build tag (`+cu130`)."""
    return f"{canonical(distribution)}=={importlib.metadata.version(distribution).split('+')[0]}"


def pinned_requirements(modules: Iterable[str], lazy_from: Iterable[str] = ()) -> list[str]:
    """Exact pins of what `modules` import at module level and `lazy_from` inside functions."""
    lazy = set(lazy_from)
    tops: set[str] = set()
    for module in modules:
        found = module_imports(module)
        tops |= found.eager | (found.lazy if module in lazy else set())
    providers = importlib.metadata.packages_distributions()
    return sorted({pin(distribution_of(top, providers)) for top in tops})


def model_requirements(model_type: str) -> list[str]:
    """The pip requirements of a logged model of `model_type` (torchvision for backbones)."""
    from pipeline.core.config import BACKBONES  # config imports PyYAML: `make lock` has none

    lazy_from = (BACKBONES_MODULE,) if model_type in BACKBONES else ()
    return pinned_requirements(shipped_modules(), lazy_from)


def lock_lines(report: dict[str, Any]) -> list[str]:
    """requirements.lock from pip's install report: a header, then `name==version` sorted."""
    env = report["environment"]
    header = [f"# Written by `make lock`: what pip {report['pip_version']} resolved for "
              f"'.[dev,bench]' from nothing, on Python {env['python_full_version']}, "
              f"{env['sys_platform']} {env['platform_machine']}.",
              "# Do not edit. `make setup`, CI and the tests' fresh virtualenvs install with "
              f"`-c {LOCK_FILE}`."]
    pins = {}
    for item in report["install"]:
        name = canonical(item["metadata"]["name"])
        if name == PACKAGE:  # the project itself: installed from the checkout
            continue
        marker = f" ; {LINUX_MARKER}" if LINUX_ONLY.fullmatch(name) else ""
        pins[name] = f"{name}=={item['metadata']['version']}{marker}"
    return header + [pins[name] for name in sorted(pins)]


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.registry.packaging REPORT`: print the lock for pip's install report."""
    parser = argparse.ArgumentParser(description="Print requirements.lock for a report of "
                                     "`pip install --dry-run --ignore-installed --report`.")
    parser.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(lock_lines(json.loads(args.report.read_text()))))


if __name__ == "__main__":
    main()
