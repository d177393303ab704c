"""House rules that keep the package's shape: checked from the source, not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

MODULES = sorted((REPO / "pipeline").rglob("*.py"))
# The glue between our code and MLflow; everything else stays importable without it.
MLFLOW_GLUE = {"tracking.py", "records.py", "registry.py", "gate.py", "serving.py",
               "pyfunc_model.py", "batch.py", "predict.py", "views.py", "trial_runs.py"}


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_attributes_of_other_objects(path: Path) -> None:
    # `study._storage`, `trial._trial_id`: private APIs of our dependencies break silently.
    bad = [f"{path.name}:{node.lineno} .{node.attr}" for node in ast.walk(tree(path))
           if isinstance(node, ast.Attribute) and node.attr.startswith("_")
           and not node.attr.startswith("__")
           and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert not bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_only_glue_modules_import_mlflow(path: Path) -> None:
    imported = {alias.name.split(".")[0] for node in ast.walk(tree(path))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree(path))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "mlflow" not in imported or path.name in MLFLOW_GLUE


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_broad_exception_handlers(path: Path) -> None:
    broad = [node.lineno for node in ast.walk(tree(path)) if isinstance(node, ast.ExceptHandler)
             and (node.type is None or (isinstance(node.type, ast.Name)
                                        and node.type.id in ("Exception", "BaseException")
                                        and not any(isinstance(n, ast.Raise)
                                                    for n in ast.walk(node))))]
    assert not broad, f"{path.name}: handlers that swallow everything at lines {broad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_files_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 310, "split it by job (see STYLE.md)"


@pytest.mark.parametrize("path", sorted((REPO / "pipeline" / "stages").glob("[!_]*.py")),
                         ids=lambda p: p.name)
def test_stage_is_a_short_run_over_library_calls(path: Path) -> None:
    (run,) = [n for n in tree(path).body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert run.end_lineno is not None and run.end_lineno - run.lineno + 1 <= 20


def test_e2e_repos_ignore_what_a_user_did_in_the_checkout(tmp_path: Path) -> None:
    import yaml

    from pipeline.config import Params, parse_params
    from tests.test_dvc_pipeline import make_repo, sh

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
