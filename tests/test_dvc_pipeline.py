"""End-to-end `dvc repro` on a tiny config in temporary copies of the repository (real DVC)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.tags import Tag
from tests.helpers import E2E, make_repo, sh

pytestmark = pytest.mark.slow

def lock_outs(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"]}


@pytest.fixture(scope="module")
def two_clones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    clones = (make_repo(root / "a", E2E), make_repo(root / "b", E2E))
    # Side by side: a tiny repro is mostly process start-up (imports), one core's work each;
    # the identical hashes below also show that a busy machine changes no byte.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda clone: sh(clone, "dvc", "repro"), clones))
    return clones


def test_repro_runs_every_stage_and_reports(two_clones: tuple[Path, Path]) -> None:
    repo = two_clones[0]
    for path in ("data/processed/meta.json", "data/augmented/X_train.npy",
                 "models/model.safetensors", "reports/metrics.json",
                 "reports/figures/roc.png", "mlflow.db"):
        assert (repo / path).exists(), path
    assert not (repo / "mlruns").exists()
    shown = sh(repo, "dvc", "metrics", "show").stdout
    assert "roc_auc" in shown and "accuracy" in shown
    plots = sh(repo, "dvc", "plots", "show").stdout
    assert "index.html" in plots
    # Images only, so the page renders offline (DVC's Vega pages load vega.js from a CDN).
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert html.count("<img") == 5 and "http" not in html


def test_second_repro_is_a_noop(two_clones: tuple[Path, Path]) -> None:
    out = sh(two_clones[0], "dvc", "repro").stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_two_fresh_clones_give_identical_lock_hashes(two_clones: tuple[Path, Path]) -> None:
    a, b = two_clones
    for stage in ("preprocess", "augment", "tune", "train", "evaluate"):
        assert lock_outs(a, stage) == lock_outs(b, stage), stage


def test_any_bad_params_edit_fails_every_repro(two_clones: tuple[Path, Path]) -> None:
    repo = two_clones[0]
    params = repo / "params.yaml"
    good = params.read_text()
    try:
        for typo in ("sede: 1\n", "trian: {lr: 0.1}\n"):
            params.write_text(good + typo)
            for _ in range(2):  # and again: a failed validation is not remembered as done
                proc = sh(repo, "dvc", "repro", check=False)
                assert proc.returncode != 0
                assert f"{typo.split(':')[0]}: unknown key" in proc.stderr + proc.stdout
    finally:
        params.write_text(good)
    # DVC removed the check's output before the failed run: it is redone (0.5 s), nothing else.
    assert ran(sh(repo, "dvc", "repro").stdout) == {"validate"}
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "repro").stdout


@pytest.mark.parametrize(("module", "affected"), [
    ("pipeline/training/engine.py", {"tune", "train"}),
    ("pipeline/data/images.py", {"builtin", "preprocess", "register"}),
])
def test_editing_a_module_stales_only_the_stages_that_import_it(
        two_clones: tuple[Path, Path], module: str, affected: set[str]) -> None:
    # dvc.yaml lists each stage's run-time imports, no more: a training-loop edit must not
    # re-decode every image. (Stages downstream rerun only if their inputs' bytes change.)
    repo = two_clones[0]
    path = repo / module
    original = path.read_text()
    path.write_text(original + "# edited\n")
    try:
        stale = set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    finally:
        path.write_text(original)
    assert stale == affected
    assert not set(json.loads(sh(repo, "dvc", "status", "--json").stdout))


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_changing_a_tuned_key_reruns_only_validate_and_train(two_clones: tuple[Path, Path]) -> None:
    repo = two_clones[1]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    # With tuning on, train.lr is a tuned key: the study is not redone, only train reruns (and
    # it reproduces the same weights, since the tuned lr overrides params.yaml, so evaluate and
    # register see unchanged inputs). Which params each stage lists is checked against what it
    # reads in tests/test_dvc_yaml.py.
    out = sh(repo, "dvc", "exp", "run", "-n", "tuned-lr", "-S", "train.lr=0.01").stdout
    assert ran(out) == {"validate", "train"}
    # The new MLflow run is named after the experiment DVC exported to the stage, and reads
    # right although evaluate did not run: it adopted the test metrics of the run whose weights
    # it reproduced (the first repro's, named after its commit).
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("binary-classification")
    runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])
            if Tag.MODEL_SHA in r.data.tags]
    first, new = runs[0], runs[-1]
    assert first.info.run_name.startswith("repro@") and len(runs) == 2
    assert new.info.run_name == "tuned-lr" and new.data.tags[Tag.DVC_EXP] == "tuned-lr"
    assert new.data.tags[Tag.TEST_METRICS_FROM] == first.info.run_id
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert new.data.metrics["test_log_loss"] == pytest.approx(metrics["log_loss"])



def test_an_evaluate_only_experiment_records_a_run_of_its_own(
        two_clones: tuple[Path, Path]) -> None:
    repo = two_clones[1]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("binary-classification")
    before = {r.info.run_id: r.data for r in client.search_runs([exp.experiment_id])}
    out = sh(repo, "dvc", "exp", "run", "-n", "threshold-03", "-S",
             "evaluate.threshold=0.3").stdout
    assert ran(out) == {"validate", "evaluate", "register"}
    after = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    new = after[0]
    assert new.info.run_id not in before and len(after) == len(before) + 1
    assert new.info.run_name == "threshold-03" and new.data.tags[Tag.STAGE] == "evaluate"
    assert new.data.metrics["test_threshold"] == 0.3
    assert new.data.params["evaluate.threshold"] == "0.3"
    trainer = client.get_run(new.data.tags[Tag.TRAINED_BY])
    assert trainer.data.tags[Tag.STAGE] == "train"
    assert trainer.data.tags[Tag.MODEL_SHA] == new.data.tags[Tag.MODEL_SHA]
    # Evaluate and register of one `dvc exp run` share its run; the earlier runs are untouched.
    assert new.data.tags[Tag.REGISTERED_VERSION] and new.data.tags[Tag.GATE_DECISION]
    for old in after[1:]:
        data = before[old.info.run_id]
        assert (old.data.metrics, old.data.params, old.data.tags) == (
            data.metrics, data.params, data.tags), old.info.run_name

def team_env(shared: Path) -> dict[str, str]:
    """A teammate's settings: the shared tracking store and Optuna storage."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{shared / 'mlflow.db'}",
            "OPTUNA_STORAGE": str(shared / "optuna.journal")}


def sh_env(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`sh` with extra environment variables (the store settings `sh` clears)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(args, cwd=cwd, env={**os.environ, "PATH": path, **env},
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_fresh_clone_registers_and_a_pulled_clone_reruns_nothing(
        two_clones: tuple[Path, Path], tmp_path: Path) -> None:
    # A committed workspace, as the repository's main branch holds one: dvc.lock and the
    # outputs git keeps. The study's and register's outputs are DVC's, not git's.
    origin = two_clones[0]
    sh(origin, "git", "add", "-A")
    sh(origin, "git", "commit", "-qm", "results")
    tracked = sh(origin, "git", "ls-files").stdout.split()
    assert "reports/registration.json" not in tracked and "models/best_params.json" not in tracked
    shared = tmp_path / "shared"
    shared.mkdir()
    env = team_env(shared)
    # A fresh clone: every stage whose real effect lives in the store runs against it.
    mine = tmp_path / "mine"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(mine))
    assert {"tune", "train", "evaluate", "register"} <= ran(sh_env(mine, env, "dvc",
                                                                   "repro").stdout)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("digits-odd", "champion")
    exp = client.get_experiment_by_name("binary-classification")
    parents = client.search_runs([exp.experiment_id], f"tags.`{Tag.STUDY_PARENT}` != ''")
    assert len(parents) == 1
    trials = client.search_runs([exp.experiment_id],
                                f"tags.`{Tag.PARENT_RUN}` = '{parents[0].info.run_id}'")
    assert len(trials) == E2E["tune"]["n_trials"]
    pipeline_run = client.get_run(champion.run_id)
    assert {"test_roc_auc", "best_epoch"} <= set(pipeline_run.data.metrics)
    predicted = sh_env(mine, env, "python", "-m", "pipeline.cli.predict", "--input",
                       "data/raw/digits/odd", "--output", "predictions.csv")
    assert predicted.returncode == 0 and (mine / "predictions.csv").is_file()
    # Shared: a DVC remote, the commit that records this clone's outputs.
    sh(mine, "dvc", "remote", "add", "-q", "-d", "team", str(tmp_path / "remote"))
    sh(mine, "dvc", "push", "-q")
    sh(mine, "git", "add", "-A")
    sh(mine, "git", "commit", "-qm", "our results")
    # A teammate on the same store: pull, repro: nothing runs, no version is added.
    theirs = tmp_path / "theirs"
    sh(tmp_path, "git", "clone", "-q", str(mine), str(theirs))
    sh(theirs, "dvc", "pull", "-q")
    out = sh_env(theirs, env, "dvc", "repro").stdout
    assert "Running stage" not in out and "Data and pipelines are up to date" in out
    assert len(client.search_model_versions("name = 'digits-odd'")) == 1
    # A new, empty store: predict names what DVC thinks was registered, and the fix.
    empty = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--input",
                           "data/raw/digits/odd", "--output", "p.csv"], cwd=theirs,
                          env={**os.environ, **empty}, capture_output=True, text=True)
    assert proc.returncode == 2 and "dvc repro -f -s register" in proc.stderr
    assert f"digits-odd v{champion.version} was registered in" in proc.stderr
