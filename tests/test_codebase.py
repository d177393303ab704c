"""House rules that keep the package's shape: checked from the source, not by convention."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

MODULES = sorted((REPO / "pipeline").rglob("*.py"))
# The glue between our code and MLflow; everything else stays importable without it.
MLFLOW_GLUE = {"tracking/store.py", "tracking/runs.py", "tracking/metric_log.py",
               "tracking/records.py", "tracking/views.py",
               "tuning/trial_runs.py", "registry/register.py", "registry/gate.py",
               "registry/serving.py", "registry/signature.py", "registry/pyfunc_model.py",
               "registry/batch.py", "cli/predict.py"}


def rel(path: Path) -> str:
    """The module's path inside pipeline/, e.g. tracking/runs.py."""
    return path.relative_to(REPO / "pipeline").as_posix()


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_private_attributes_of_other_objects(path: Path) -> None:
    # `study._storage`, `trial._trial_id`: private APIs of our dependencies break silently.
    bad = [f"{path.name}:{node.lineno} .{node.attr}" for node in ast.walk(tree(path))
           if isinstance(node, ast.Attribute) and node.attr.startswith("_")
           and not node.attr.startswith("__")
           and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert not bad


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_only_glue_modules_import_mlflow(path: Path) -> None:
    imported = {alias.name.split(".")[0] for node in ast.walk(tree(path))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree(path))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "mlflow" not in imported or rel(path) in MLFLOW_GLUE


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_broad_exception_handlers(path: Path) -> None:
    broad = [node.lineno for node in ast.walk(tree(path)) if isinstance(node, ast.ExceptHandler)
             and (node.type is None or (isinstance(node.type, ast.Name)
                                        and node.type.id in ("Exception", "BaseException")
                                        and not any(isinstance(n, ast.Raise)
                                                    for n in ast.walk(node))))]
    assert not broad, f"{path.name}: handlers that swallow everything at lines {broad}"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_every_module_says_its_one_job_in_one_sentence(path: Path) -> None:
    # Modules are split by job, not by length (STYLE.md): no line cap; a module whose job no
    # longer fits one opening sentence is the one to split.
    doc = ast.get_docstring(tree(path))
    assert doc, f"{rel(path)}: no docstring saying what the module is for"
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", summary)
    assert len(sentences) == 1 and summary.endswith((".", ":")), \
        f"{rel(path)}: its summary is {len(sentences)} sentences: {summary!r}"


# The package's layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = ["core", "data", "models", "evaluation", "training", "tracking", "tuning", "registry",
          "report", "stages", "cli"]


def module_name(path: Path) -> str:
    """pipeline.tracking.runs for pipeline/tracking/runs.py (a package for its __init__.py)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pipeline_imports(path: Path) -> set[str]:
    """Every pipeline module this file imports, `if TYPE_CHECKING:` blocks included."""
    names: set[str] = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    known = {module_name(m) for m in MODULES}
    return {n for n in names if n in known and n != "pipeline"}


def layer(module: str) -> int:
    """Index in LAYERS of pipeline.<layer>.…; pipeline/__init__.py counts as core (it pins CPU
    kernels before anything else loads, pipeline/core/cpu.py)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else 0


def test_every_module_sits_in_a_layer() -> None:
    assert {p.relative_to(REPO / "pipeline").parts[0] for p in MODULES
            if p.parent != REPO / "pipeline"} == set(LAYERS)
    assert [p.name for p in MODULES if p.parent == REPO / "pipeline"] == ["__init__.py"]


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_imports_go_down_the_layers(path: Path) -> None:
    here = layer(module_name(path))
    upward = sorted(m for m in pipeline_imports(path) if layer(m) > here)
    assert not upward, f"{rel(path)} (layer {LAYERS[here]}) imports higher layers: {upward}"


def test_no_import_cycles() -> None:
    graph = {module_name(p): pipeline_imports(p) for p in MODULES}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*stack, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


@pytest.mark.parametrize("path", sorted((REPO / "pipeline" / "stages").glob("[!_]*.py")),
                         ids=rel)
def test_stage_is_a_short_run_over_library_calls(path: Path) -> None:
    (run,) = [n for n in tree(path).body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert run.end_lineno is not None and run.end_lineno - run.lineno + 1 <= 20


def test_e2e_repos_ignore_what_a_user_did_in_the_checkout(tmp_path: Path) -> None:
    import yaml

    from pipeline.core.config import Params, parse_params
    from tests.helpers import make_repo, sh

    checkout = tmp_path / "checkout"
    sh(tmp_path, "git", "clone", "-q", str(REPO), str(checkout))
    # What the README's own `dvc exp run -S train.lr=0.01` leaves behind, plus stray files.
    params = checkout / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.003", "lr: 0.01"))
    (checkout / "pipeline" / "scratch.py").write_text("raise SystemExit('not ours')\n")
    repo = make_repo(tmp_path / "repo", {"seed": 7}, source=checkout)
    built = parse_params(yaml.safe_load((repo / "params.yaml").read_text()))
    assert built.train.lr == Params().train.lr and built.seed == 7
    assert not (repo / "pipeline" / "scratch.py").exists()


def test_pipeline_tag_names_live_in_the_tag_class() -> None:
    # A "pipeline.…" string is a tag name unless it names one of our modules (a logger's or an
    # import's name): those stay where they are used, every tag name in pipeline/core/tags.py.
    modules = {module_name(m) for m in MODULES}
    strays = [f"{rel(path)}:{node.lineno} {node.value!r}" for path in MODULES
              if rel(path) != "core/tags.py" for node in ast.walk(tree(path))
              if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("pipeline.") and node.value not in modules]
    assert not strays, "tag names outside pipeline/core/tags.py's Tag"


TEST_MODULES = sorted((REPO / "tests").glob("test_*.py"))


def test_test_modules_import_no_other_test_module() -> None:
    # Shared helpers live in tests/helpers.py (fixtures in conftest.py): importing a test module
    # runs its module-level code and, under pytest, collects its tests twice.
    bad = [f"{path.name}:{node.lineno} {node.module}" for path in TEST_MODULES
           for node in ast.walk(tree(path)) if isinstance(node, ast.ImportFrom)
           and (node.module or "").startswith(("tests.test_", "test_"))]
    bad += [f"{path.name}:{node.lineno} {alias.name}" for path in TEST_MODULES
            for node in ast.walk(tree(path)) if isinstance(node, ast.Import)
            for alias in node.names if alias.name.startswith(("tests.test_", "test_"))]
    assert not bad


# Names a test uses only with PostgreSQL up: the team's server and database URLs.
SERVICE_NAMES = {"PG_ADMIN", "PG_URL", "team_server", "shared_server"}


def marks(decorators: list[ast.expr]) -> set[str]:
    """The pytest.mark.<name> marks among these decorators or in a pytestmark value."""
    return {node.attr for d in decorators for node in ast.walk(d)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark"}


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: p.name)
def test_tests_that_need_postgresql_are_marked_services(path: Path) -> None:
    # `make test-fast` (-m "not slow and not services") must run where PostgreSQL is absent.
    module = tree(path)
    module_marks = marks([n.value for n in module.body if isinstance(n, ast.Assign)
                          and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)])
    functions = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    fixtures = {name for name, f in functions.items() if "fixture" in ast.dump(ast.Module(
        body=[ast.Expr(d) for d in f.decorator_list], type_ignores=[]))}

    def uses(name: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether function `name`, or a fixture of this module it requests, names a service."""
        f = functions[name]
        names = {n.id for n in ast.walk(f) if isinstance(n, ast.Name)}
        names |= {a.arg for a in f.args.args}
        return bool(names & SERVICE_NAMES) or any(
            uses(a, seen | {name}) for a in names & fixtures - seen - {name})

    unmarked = [name for name, f in functions.items() if name.startswith("test_")
                and uses(name) and "services" not in module_marks | marks(f.decorator_list)]
    assert not unmarked, "add @pytest.mark.services"
