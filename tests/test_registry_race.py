"""Concurrent registrations: the gate is atomic per registered model (issue 10 item 7).

N register stages run as separate processes released together by a barrier (after their
imports), against a SQLite store and against a real tracking server on PostgreSQL. Without the
lock they read the same champion and number their audit entries alike (see `race(unlocked=True)`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.locks import DatabaseLock, team_lock
from pipeline.core.tags import Tag
from pipeline.evaluation.metrics import direction
from pipeline.registry.register import earlier_decision
from tests.helpers import REPO, TeamServer, make_csv, module_store, stage_paths, write_params

# Four trainings, then four register processes per test: ~40-60 s each on 2 cores.
pytestmark = pytest.mark.slow
NAME = "table-spam"  # register.model_name: auto for table.csv, positive spam
# Different weights from one data split: (epochs, lr) per model, scores far enough apart.
RECIPES = ((1, 1e-4), (2, 0.01), (6, 0.05), (15, 0.1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> dict:
    """One preprocessed CSV and len(RECIPES) models trained and evaluated on it."""
    from pipeline.stages import augment, evaluate, preprocess, train

    root = tmp_path_factory.mktemp("race")
    with module_store(root, store_template):
        csv = make_csv(root / "table.csv", rows=160)
        data = {"source": "csv", "path": str(csv), "target": "label", "positive_class": "spam",
                "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
        shared = stage_paths(root)
        params = write_params(root / "params.yaml", {"data": data, "model": {"type": "logreg"}})
        preprocess.main(["--params", str(params), "--out", shared["processed"]])
        augment.main(["--params", str(params), "--data-dir", shared["processed"],
                      "--out", shared["augmented"]])
        models = []
        for i, (epochs, lr) in enumerate(RECIPES):
            params = write_params(root / f"p{i}.yaml", {
                "data": data, "model": {"type": "logreg"}, "train": {"epochs": epochs, "lr": lr},
                "register": {"metric": "log_loss", "min_improvement": 0.0}})
            out = {"models": str(root / f"m{i}"), "reports": str(root / f"r{i}")}
            train.main(["--params", str(params), "--data-dir", shared["processed"],
                        "--train-dir", shared["augmented"], "--best-params",
                        str(root / "none.json"), "--out", out["models"],
                        "--reports", out["reports"]])
            evaluate.main(["--params", str(params), "--data-dir", shared["processed"],
                           "--model-dir", out["models"], "--reports", out["reports"]])
            models.append({"params": str(params), **shared, **out})
    return {"root": root, "models": models}


def launch(spec_file: str) -> None:
    """Launcher process: import once, fork one register process per host, release them at once.

    Forking after the imports (no torch op, no MLflow client yet in this process) saves each
    register ~10 s of CPU on a 2-core machine; the children are separate processes with their
    own database connections, locks, working folders and temp folders, like separate hosts.
    """
    spec = json.loads(Path(spec_file).read_text())
    from pipeline.registry import register as registry
    from pipeline.stages import register

    if spec["unlocked"]:  # only for showing that the race is real: the gate without its lock
        registry.team_lock = lambda *args: contextlib.nullcontext()
    release, go = os.pipe()
    children = []
    for host in spec["hosts"]:
        pid = os.fork()
        if pid == 0:
            os.close(go)
            code = 1
            try:
                code = run_host(host, release, register.main)
            except BaseException:
                traceback.print_exc()
                raise
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    os.close(release)
    os.write(go, b"x" * len(children))  # the barrier: every child waits for its byte
    os.close(go)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    raise SystemExit(max(codes, key=abs))


def run_host(host: dict, release: int, main: Callable[[list[str]], None]) -> int:
    """One forked register: its own cwd, temp folder, environment and log file; exit code."""
    os.chdir(host["cwd"])
    os.environ.update(host["env"])
    tempfile.tempdir = None  # re-read TMPDIR
    with open(host["log"], "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    # Timestamped lines show how the hosts' gates interleaved when a check fails.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    assert os.read(release, 1) == b"x"
    logging.getLogger(__name__).info("released")
    try:
        main(host["argv"])
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


def race(trained: dict, where: Path, env: dict[str, str], unlocked: bool = False) -> list[dict]:
    """Run one register process per model, all released at once; return their reports."""
    hosts = []
    for i, m in enumerate(trained["models"]):
        host = where / f"host{i}"  # own cwd and temp dir: no same-host file lock is shared
        (host / "tmp").mkdir(parents=True)
        hosts.append({"cwd": str(host), "log": str(host / "register.log"),
                      "env": {**env, "TMPDIR": str(host / "tmp")}, "argv": [
                          "--params", m["params"], "--data-dir", m["processed"], "--train-dir",
                          m["augmented"], "--model-dir", m["models"], "--metrics",
                          str(Path(m["reports"]) / "metrics.json"), "--out",
                          str(host / "reg.json")]})
    spec = where / "race.json"
    spec.write_text(json.dumps({"hosts": hosts, "unlocked": unlocked}))
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_registry_race import launch; "
         "launch(sys.argv[1])", str(spec)], cwd=where, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300)
    logs = [Path(h["log"]).read_text() if Path(h["log"]).exists() else "" for h in hosts]
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:] + "".join(
        log[-2000:] for log in logs)
    # A brand-new registered model is created once, quietly: nobody is told it "already exists".
    assert not any("already exists" in log or "Waiting up to" in log for log in logs), logs
    assert sum("created registered model" in log for log in logs) == 1, logs
    return [json.loads((Path(h["cwd"]) / "reg.json").read_text()) for h in hosts]


def check_gate_history(client: MlflowClient, n: int) -> None:
    """One linear audit chain of n gates; champion the best by the gate metric; challenger vN."""
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    for number, version in versions.items():  # lineage as mlflow.register_model left it
        assert version.run_id == version.tags[Tag.RUN_ID]
        links = client.get_logged_model(version.source.removeprefix("models:/")).tags
        assert json.loads(links["mlflow.modelVersions"]) == [{"name": NAME,
                                                               "version": int(number)}]
    numbers = sorted(versions, key=int)
    assert numbers == [str(i) for i in range(1, n + 1)]
    trail = [json.loads(value) for key, value in sorted(
        client.get_registered_model(NAME).tags.items()) if key.startswith("audit.")]
    assert sorted((e["version"] for e in trail), key=int) == numbers, trail
    before = None
    for entry in trail:
        assert entry["champion_before"] == before, trail
        before = entry["champion_after"]
        # Each version's tags name the champion it was really compared with.
        tags = versions[entry["version"]].tags
        assert tags["compared_to_version"] == (entry["champion_before"] or "none")
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == before
    metric = champion.tags["gate_metric"]
    scores = {v: float(mv.tags["challenger_score"]) for v, mv in versions.items()}
    assert len(set(scores.values())) == n, scores  # distinct weights, distinct scores
    best = (min if direction(metric) == "minimize" else max)(scores.values())
    assert scores[str(champion.version)] == best, (scores, trail)
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == str(n)


def test_concurrent_registrations_on_sqlite_are_gated_one_at_a_time(
        trained: dict, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # An existing store, as in the issue (a brand-new one is created by the first stage alone).
    MlflowClient(uri).search_experiments()
    reports = race(trained, tmp_path, {"MLFLOW_TRACKING_URI": uri})
    client = MlflowClient(uri)
    check_gate_history(client, len(RECIPES))
    assert sorted(r["version"] for r in reports) == ["1", "2", "3", "4"]
    # What a register that finds its version already gated (by a concurrent register of the
    # same weights) reports instead of gating it twice: that gate's decision.
    for report in reports:
        again = earlier_decision(client, NAME, report["version"])
        assert again is not None
        assert (again.promote, again.reason) == (report["promote"], report["reason"])
    # The lock lives beside the store, where every process using this store finds it.
    assert (tmp_path / f"mlflow.db.registry:{NAME}.lock").exists()


@pytest.fixture
def server_env(shared_server: TeamServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The exports a teammate has: the tracking server and the team's PostgreSQL database."""
    env = {"MLFLOW_TRACKING_URI": shared_server.url, "OPTUNA_STORAGE": shared_server.optuna}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIPELINE_LOCK_URL", raising=False)
    yield env


@pytest.mark.services
def test_concurrent_registrations_on_a_server_lock_in_postgresql(
        trained: dict, tmp_path: Path, server_env: dict) -> None:
    lock = team_lock(f"registry:{NAME}", server_env["MLFLOW_TRACKING_URI"])
    assert isinstance(lock, DatabaseLock) and lock.url == server_env["OPTUNA_STORAGE"]
    client = MlflowClient(server_env["MLFLOW_TRACKING_URI"])
    # A long-running team server is warm; a fresh one's workers open their stores on their first
    # requests, slow enough on a loaded 2-core machine to trip the stages' 10 s service probe.
    for _ in range(4):
        client.search_experiments()
        client.search_registered_models()
    reports = race(trained, tmp_path, server_env)
    check_gate_history(client, len(RECIPES))
    assert sorted(r["version"] for r in reports) == ["1", "2", "3", "4"]
