"""Two teammates share one git remote, one DVC remote and the team's MLflow server on PostgreSQL.

A runs the pipeline and pushes; B clones, pulls and reruns nothing; B's `dvc exp run` lands in
the same MLflow experiment named after the DVC experiment, is gated against A's champion on the
server, and is shared back with `dvc exp push`; B serves the champion from the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import E2E, TeamServer, invoke_images, make_repo, served_model

pytestmark = [pytest.mark.slow, pytest.mark.services]
NAME = "digits-odd"  # register.model_name: auto on the default data


def run(cwd: Path, env: dict[str, str], *args: str) -> str:
    """Run a command as a teammate would (the team's variables set); return its output."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_and_predict(repo: Path, env: dict[str, str], files: list[Path]) -> list[float]:
    """Probabilities from `mlflow models serve -m models:/NAME@champion` for these images."""
    with served_model(f"models:/{NAME}@champion", repo, env) as port:
        return [row["probability"] for row in invoke_images(port, files)]


def test_teammates_share_results_experiments_and_the_registry(
        tmp_path: Path, shared_server: TeamServer) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": shared_server.url,
           "OPTUNA_STORAGE": shared_server.optuna,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    origin, cache = tmp_path / "origin.git", tmp_path / "dvc-remote"
    run(tmp_path, env, "git", "init", "-q", "--bare", str(origin))
    a = make_repo(tmp_path / "a", E2E)
    run(a, env, "dvc", "remote", "add", "-d", "team", str(cache))
    run(a, env, "git", "remote", "add", "origin", str(origin))
    run(a, env, "dvc", "repro")
    run(a, env, "dvc", "push")
    run(a, env, "git", "add", "-A")
    run(a, env, "git", "commit", "-qm", "results")
    run(a, env, "git", "push", "-q", "origin", "HEAD:main")

    # B: clone, pull, repro -- nothing reruns, same metrics, same model bytes.
    b = tmp_path / "b"
    run(tmp_path, env, "git", "clone", "-q", "-b", "main", str(origin), str(b))
    run(b, env, "git", "config", "user.email", "b@example.com")
    run(b, env, "git", "config", "user.name", "b")
    run(b, env, "dvc", "pull")
    out = run(b, env, "dvc", "repro")
    assert "Running stage" not in out, out
    assert json.loads(run(b, env, "dvc", "metrics", "diff", "--json")) == {}
    assert sha(b / "models" / "model.safetensors") == sha(a / "models" / "model.safetensors")
    client = MlflowClient(shared_server.url)
    champion = client.get_model_version_by_alias(NAME, "champion")

    # B's experiment: a new model, logged to the same experiment and gated on the server.
    out = run(b, env, "dvc", "exp", "run", "-n", "b-lr", "-S", "tune.enabled=false",
              "-S", "train.lr=0.02")
    exp = client.get_experiment_by_name("binary-classification")
    (b_run,) = client.search_runs([exp.experiment_id], "tags.`pipeline.dvc_exp` = 'b-lr'")
    assert b_run.info.run_name == "b-lr" and b_run.info.status == "FINISHED"
    assert b_run.data.params["train.lr"] == "0.02"
    for tag in ("pipeline.dvc.data/processed", "mlflow.source.git.commit",
                "pipeline.model_sha256", "pipeline.registered_version"):
        assert b_run.data.tags.get(tag), tag
    version = b_run.data.tags["pipeline.registered_version"]
    decided = client.get_model_version(NAME, version).tags
    assert decided["compared_to_version"] == champion.version
    # The gate re-scored A's champion on the current test split: its score is A's own.
    assert float(decided["champion_score"]) == pytest.approx(
        float(champion.tags["test_log_loss"]), abs=1e-6)
    better = float(decided["challenger_score"]) < float(decided["champion_score"])
    assert decided["decision"] == ("promoted" if better else "rejected")
    now = client.get_model_version_by_alias(NAME, "champion").version
    assert now == (version if better else champion.version)

    # Experiments travel through git: A pulls B's and sees it.
    run(b, env, "dvc", "exp", "push", "origin", "b-lr")
    run(a, env, "dvc", "exp", "pull", "origin", "b-lr")
    shown = json.loads(run(a, env, "dvc", "exp", "show", "--json", "-A"))
    assert "b-lr" in json.dumps(shown)

    # B serves the champion from the server's registry: the CLI's probabilities.
    files = sorted((b / "data" / "raw" / "digits" / "odd").glob("*.png"))[:3]
    run(b, env, sys.executable, "-m", "pipeline.cli.predict", "--input", *map(str, files),
        "--output", str(tmp_path / "cli.csv"))
    cli = pd.read_csv(tmp_path / "cli.csv")["probability"].tolist()
    assert serve_and_predict(b, env, files) == pytest.approx(cli, abs=1e-6)
