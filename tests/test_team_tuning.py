"""Two hosts tune one study on PostgreSQL through the team's MLflow server.

Each "host" is its own folder, its own processes and its own host name (`unshare --uts`), so
same-host shortcuts (pids, local file locks) cannot make these tests pass.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.helpers import TeamServer, csv_checkout

pytestmark = [pytest.mark.slow, pytest.mark.services]
N_TRIALS = 8


def make_host(root: Path, name: str, source: Path | None = None) -> Path:
    """A host's checkout: params.yaml and the data, as `git clone && dvc pull` would leave it."""
    host = root / name
    if source is None:
        csv_checkout(host, "data/raw/table.csv", 120, {
            # Two threads (not TINY's one) and 150 epochs: a trial must train for seconds (at
            # 25 epochs some took 0.4 s, and CI once never caught one of B's mid-way).
            "train": {"epochs": 150, "batch_size": 8, "num_threads": 2},
            "tune": {"enabled": True, "n_trials": N_TRIALS, "pruner": "none",
                     "search_space": {"train.lr": {"low": 1e-4, "high": 0.1, "log": True}}}})
    else:
        shutil.copytree(source, host, ignore=shutil.ignore_patterns("*.log", "models"))
    return host


def on_host(host: Path, name: str, module: str, args: list[str], env: dict[str, str]
            ) -> subprocess.Popen:
    """Start `python -m module args` in `host` under its own UTS namespace and host name."""
    log = open(host / f"{module.rsplit('.', 1)[-1]}.log", "ab")  # noqa: SIM115 (kept open)
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$0" "$@"', sys.executable,
         "-m", module, *args], cwd=host, env=env, stdout=log, stderr=subprocess.STDOUT)


def host_env(server: TeamServer) -> dict[str, str]:
    """The two variables a teammate exports, plus short heartbeats so the test is quick."""
    return {**os.environ, "MLFLOW_TRACKING_URI": server.url, "OPTUNA_STORAGE": server.optuna,
            "PIPELINE_HEARTBEAT_SECONDS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


STAGE_ARGS = ["--params", "params.yaml", "--data-dir", "data/processed", "--train-dir",
              "data/augmented"]


@functools.cache
def team_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database: polling must not open a pool per poll."""
    return optuna.storages.RDBStorage(url)


def the_study(server: TeamServer) -> optuna.Study:
    """The one study in the team database."""
    storage = team_storage(server.optuna)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except (ValueError, KeyError):  # the study does not exist yet
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def frozen_look(proc: subprocess.Popen, look: Callable[[], Any]) -> Any:
    """`look()` while `proc` is stopped; it stays stopped if the look found something."""
    proc.send_signal(signal.SIGSTOP)
    found = None
    try:
        found = look()
    finally:
        if not found:
            proc.send_signal(signal.SIGCONT)
    return found


def b_mid_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """Host B's running trial once it has trained a while, if B has completed one already."""
    on_b = [t for t in study.trials if t.user_attrs.get("host") == "host-b"]
    if not any(t.state == TrialState.COMPLETE for t in on_b):
        return None
    # Not by its reports: without a pruner (as here) a trial reports nothing to Optuna.
    now = datetime.datetime.now()
    return next((t for t in on_b if t.state == TrialState.RUNNING and t.datetime_start
                 and (now - t.datetime_start).total_seconds() > 1.0), None)


def test_two_hosts_one_study_and_a_killed_worker_is_retried(tmp_path: Path,
                                                            shared_server: TeamServer) -> None:
    host_a = make_host(tmp_path, "a")
    host_b = make_host(tmp_path, "b", source=host_a)
    env = host_env(shared_server)
    stage = on_host(host_a, "host-a", "pipeline.stages.tune",
                    [*STAGE_ARGS, "--out", "models/best_params.json"], env)
    worker_b = on_host(host_b, "host-b", "pipeline.cli.tune_worker", STAGE_ARGS, env)
    # Once host B has finished a trial, kill it mid-way through its next one. B is frozen
    # while the study is read, so the trial cannot finish between the look and the kill.
    victim = wait_for(lambda: frozen_look(worker_b, lambda: b_mid_trial(
        the_study(shared_server))), 240, "host-b to finish a trial and be mid-way through another")
    worker_b.send_signal(signal.SIGKILL)
    worker_b.wait()
    killed_at = time.monotonic()
    # Host A fails it by its stopped heartbeat (grace 3 s here) and reruns its params.
    wait_for(lambda: the_study(shared_server).trials[victim.number].state == TrialState.FAIL,
             60, "the killed trial to fail")
    detected = time.monotonic() - killed_at
    assert stage.wait(timeout=300) == 0, (host_a / "tune.log").read_text()[-3000:]

    study = the_study(shared_server)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == N_TRIALS  # exactly n_trials, both hosts
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert detected < 3 + 10, f"failed {detected:.1f} s after the kill"
    hosts = {t.user_attrs["host"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert hosts == {"host-a", "host-b"}
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["host"] == "host-a"
    best = json.loads((host_a / "models" / "best_params.json").read_text())
    assert best["value"] == study.best_value and best["study_name"] == study.study_name

    # MLflow: one parent run, every child under it, tagged with its host, none left RUNNING.
    client = MlflowClient(shared_server.url)
    exp = client.get_experiment_by_name("binary-classification")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "optuna.study_name_parent" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert len(children) == len(study.trials)
    assert {r.data.tags["pipeline.host"] for r in children} == {"host-a", "host-b"}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_number = {r.data.tags["optuna.trial_number"]: r for r in children}
    assert by_number[str(victim.number)].info.status == "KILLED"
    assert by_number[str(victim.number)].data.tags["optuna.trial_state"] == "FAIL"
