"""The team's services: an authenticated tracking server, and fast, clear errors when a
server or database is down, mistyped or refuses the credentials."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.team import start_server
from pipeline.core.errors import PipelineError, StoreError
from pipeline.core.services import check_server, mask
from tests.helpers import PG_ADMIN, TeamServer, csv_checkout, team_server

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout with processed and augmented data, as after `dvc pull`."""
    return csv_checkout(tmp_path_factory.mktemp("ws"), "table.csv", 60,
                        {"tune": {"enabled": True, "n_trials": 2, "pruner": "none"}})


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TeamServer, str]]:
    """A server with MLflow's basic-auth app, and the admin password it was started with."""
    with team_server(tmp_path_factory.mktemp("auth"), auth=True) as server:
        yield server, os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")


TRAIN = ["pipeline.stages.train", "--params", "params.yaml", "--data-dir", "data/processed",
         "--train-dir", "data/augmented", "--best-params", "none.json", "--out", "out/models",
         "--reports", "out/reports"]
TUNE = ["pipeline.stages.tune", "--params", "params.yaml", "--data-dir", "data/processed",
        "--train-dir", "data/augmented", "--out", "out/best_params.json"]


def stage(root: Path, args: list[str], **env: str) -> tuple[int, str, str, float]:
    """Run a stage in a subprocess with these variables; return code, stdout, stderr, seconds."""
    clean = {k: v for k, v in os.environ.items()
                  if not k.startswith(("MLFLOW_TRACKING_", "OPTUNA_"))}
    tick = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True,
                          text=True, env={**clean, **env}, timeout=300)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - tick


def test_open_server_beyond_loopback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="refusing an open server beyond loopback"):
        start_server(PG_ADMIN, "never", tmp_path, host="0.0.0.0", auth=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        with pytest.raises(PipelineError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
            start_server(PG_ADMIN, "never", tmp_path, host="0.0.0.0")
    assert not (tmp_path / "artifacts").exists()


def test_auth_server_refuses_anonymous_and_works_with_credentials(
        workspace: Path, auth_server: tuple[TeamServer, str]) -> None:
    server, password = auth_server
    request = urllib.request.Request(server.url + "/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 1}', method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    trained = [a.replace("out/", "ok/") for a in TRAIN]
    code, out, err, _ = stage(workspace, trained, MLFLOW_TRACKING_URI=server.url,
                              MLFLOW_TRACKING_USERNAME="admin",
                              MLFLOW_TRACKING_PASSWORD=password)
    assert code == 0, err[-2000:]
    assert password not in out + err
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
        mp.setenv("MLFLOW_TRACKING_URI", server.url)  # artifact repos resolve runs through it
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("binary-classification")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        # Artifacts went through the server's proxy into its artifact store.
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model_files")]
    recorded = json.dumps([run.data.params, run.data.tags])
    assert password not in recorded and "MLFLOW_TRACKING_PASSWORD" not in recorded
    assert any((server.state / "artifacts").rglob("model.safetensors"))


def test_wrong_credentials_and_wrong_path_fail_fast(workspace: Path,
                                                    auth_server: tuple[TeamServer, str]) -> None:
    server, password = auth_server
    cases = [({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": "admin",
               "MLFLOW_TRACKING_PASSWORD": "wrong-password"},
              "the server refused the credentials (401, user 'admin')"),
             ({"MLFLOW_TRACKING_URI": server.url},
              "the server refused the credentials (401, no MLFLOW_TRACKING_USERNAME"),
             ({"MLFLOW_TRACKING_URI": server.url + "/mlfow", "MLFLOW_TRACKING_USERNAME": "admin",
               "MLFLOW_TRACKING_PASSWORD": password}, "no MLflow tracking API")]
    for env, needle in cases:
        assert_fails_fast(workspace, TRAIN, env, needle)
    assert "wrong-password" not in server.log.read_text(errors="replace")


def assert_fails_fast(root: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    """Exit 2 within ~30 s, one line naming the masked URL and the cause, nothing written."""
    module = importlib.import_module(args[0])
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(io.StringIO()) as err:
        for key in [k for k in os.environ if k.startswith(("MLFLOW_TRACKING_", "OPTUNA_"))]:
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        tick = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            module.main(args[1:])
        seconds = time.monotonic() - tick
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert exited.value.code == 2, (env, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    url = env.get("OPTUNA_STORAGE") or env["MLFLOW_TRACKING_URI"]
    assert mask(url) in lines[0] and "s3cret" not in lines[0]
    assert seconds < 30, f"{seconds:.1f} s for {env}"
    assert not (root / "out").exists()


@pytest.mark.parametrize(("args", "env", "needle"), [
    (TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "connection refused"),
    (TRAIN, {"MLFLOW_TRACKING_URI": "http://mlflow-server.invalid:5000"}, "unknown host"),
    (TRAIN, {"MLFLOW_TRACKING_URI": "postgresql://root@127.0.0.1:5432/no_such_database_x"},
     'database "no_such_database_x" does not exist'),
    (TUNE, {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
            "OPTUNA_STORAGE": "postgresql://root:s3cret@127.0.0.1:1/optuna"},
     "cannot connect"),
    (TUNE, {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
            "OPTUNA_STORAGE": "postgresq://root@127.0.0.1:5432/test"},
     "not a usable database URL"),
], ids=["refused", "unknown-host", "no-database", "optuna-down-password-masked",
        "optuna-url-typo"])
def test_unreachable_or_mistyped_services_fail_fast(workspace: Path, args: list[str],
                                                    env: dict[str, str], needle: str) -> None:
    assert_fails_fast(workspace, args, env, needle)


def test_check_server_names_the_cause_of_a_refusal() -> None:
    with pytest.raises(StoreError, match=r"MLFLOW_TRACKING_URI=http://127.0.0.1:9: "
                                         "cannot connect: connection refused"):
        check_server("http://127.0.0.1:9")
    assert mask("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
