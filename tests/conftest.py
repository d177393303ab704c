"""Shared fixtures (helpers they use, and tests import, are in tests/helpers.py): tiny data and
params files, MLflow stores, tuning storage, the team's server, and one tiny trained pipeline."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REPO,
    TeamServer,
    empty_store,
    make_csv,
    make_imagefolder,
    module_store,
    register_args,
    run_stages,
    store_at,
    team_server,
    write_params,
)

PACKAGE = REPO / "pipeline"


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A tiny mixed-format ImageFolder."""
    return make_imagefolder(tmp_path / "images")


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    """A tiny CSV with numeric, categorical, boolean and missing values."""
    return make_csv(tmp_path / "table.csv")


@pytest.fixture
def image_params(tmp_path: Path, imagefolder: Path) -> Path:
    """Params pointing at the tiny ImageFolder."""
    return write_params(tmp_path / "params.yaml", {"data": {
        "source": "imagefolder", "path": str(imagefolder), "positive_class": "dog",
        "image_size": 8, "channels": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})


@pytest.fixture
def csv_params(tmp_path: Path, table_csv: Path) -> Path:
    """Params pointing at the tiny CSV."""
    return write_params(tmp_path / "params.yaml", {"data": {
        "source": "csv", "path": str(table_csv), "target": "label", "positive_class": "spam",
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})


@pytest.fixture(autouse=True)
def _isolated_tracking_uri() -> Iterator[None]:
    """Undo a stage's mlflow.set_tracking_uri: it sets a process global and the environment."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:  # fast tests never import it; don't make them pay for it
        import mlflow

        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None clears both
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Undo what loading a logged pyfunc in-process does: MLflow puts the model's shipped copy
    of `pipeline` first on sys.path, and later tests' subprocesses (tune workers) would import
    that copy instead of this checkout."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n, m in sys.modules.items() if n.split(".")[0] == "pipeline"
                 and not str(getattr(m, "__file__", "") or "").startswith(str(PACKAGE))]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store that the store fixtures copy."""
    return empty_store(tmp_path_factory.mktemp("store-template") / "mlflow.db")


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_template: Path) -> str:
    """A real MLflow SQLite store under tmp_path for this test."""
    uri = store_at(tmp_path, store_template)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # dvc.lock / git lookups see an empty workspace
    return uri


@pytest.fixture
def tune_env(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with its own MLflow store and an Optuna journal (OPTUNA_STORAGE) in it."""
    monkeypatch.setenv("OPTUNA_STORAGE", str(tmp_path / "optuna.journal"))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory,
                   store_template: Path) -> dict[str, Any]:
    """The tiny trained pipeline of tiny_pipeline, built once per session; MLFLOW_TRACKING_URI
    and cwd are left alone (a test of a store of its own reads the shared outputs with it)."""
    root = tmp_path_factory.mktemp("tiny-pipeline")
    with module_store(root, store_template) as uri:
        images = make_imagefolder(root / "images", per_class=16)
        params = write_params(root / "params.yaml", {"data": {
            "source": "imagefolder", "path": str(images), "positive_class": "dog",
            "image_size": 8, "channels": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}})
        paths = run_stages(params, root)
        from pipeline.stages import register

        register.main(register_args(params, paths, root / "registration.json"))
    return {"root": root, "uri": uri, "paths": paths, "params": params, "images": images}


@pytest.fixture
def tiny_pipeline(tiny_trained: dict[str, Any],
                  monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A tiny trained pipeline, shared by the whole session: the tiny ImageFolder (16 images a
    class) preprocessed, augmented, trained (TINY: a 3-epoch MLP), evaluated and registered
    (champion v1 of `images-dog`) in one MLflow store; MLFLOW_TRACKING_URI and cwd point at it
    during the test. Keys: root, uri, paths (run_stages'), params, images. Read it; a test
    that changes its files or records into its store must work on a copy or a store of its
    own, since every later test sees what it leaves."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_trained["uri"])
    monkeypatch.chdir(tiny_trained["root"])  # predict reads the model name from params.yaml
    mlflow.set_tracking_uri(tiny_trained["uri"])
    return tiny_trained


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    """One tracking server on PostgreSQL for a test module (no auth, loopback)."""
    with team_server(tmp_path_factory.mktemp("team")) as server:
        yield server
