"""The experiment report: a real git + DVC repo, a baseline commit and a `dvc exp run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import report
from pipeline.metrics import improvement
from pipeline.report_compare import BEST_PARAMS, METRICS, TRAIN_METRICS, Side, build_report
from pipeline.report_render import Link
from pipeline.report_runs import run_rows
from tests.conftest import TINY, merge
from tests.test_dvc_pipeline import make_repo, sh

# The smallest complete pipeline: built-in digits at 8x8, logistic regression, no study.
SMALL = merge(TINY, {"data": {"image_size": 8}, "model": {"type": "logreg"}})
FIGURES = {"calibration.png", "confusion_matrix.png", "precision_recall.png", "roc.png",
           "training_curves.png"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline committed with its results, then experiment `lr-up` (train.lr 0.01) run."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo", SMALL)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    sh(repo, "dvc", "exp", "run", "-n", "lr-up", "-S", "train.lr=0.01")
    return repo


def render(repo: Path, out: Path, *args: str) -> dict[str, Any]:
    """Run the CLI in-process; return report.json's sections by title prefix."""
    report.main(["--repo", str(repo), "--out", str(out), *args])
    return json.loads((out / "report.json").read_text())


def section(data: dict[str, Any], title: str) -> dict[str, dict[str, Any]]:
    """The rows of the section whose title starts with `title`, by name."""
    (found,) = [s for s in data["sections"] if s["title"].startswith(title)]
    return {row["name"]: row for row in found["rows"]}


def at(repo: Path, rev: str, path: str) -> dict[str, Any]:
    """A git-tracked JSON file at a revision, read with git itself."""
    return json.loads(sh(repo, "git", "show", f"{rev}:{path}").stdout)


@pytest.mark.slow
def test_report_compares_an_experiment_with_its_baseline(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "report"
    data = render(repo, out, "--base", "HEAD", "--rev", "lr-up")
    refs = sh(repo, "git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    (exp_sha,) = [line.split()[0] for line in refs.stdout.splitlines()
                  if line.endswith("/lr-up")]
    assert data["new"] == {"label": "lr-up", "commit": exp_sha}  # DVC resolved the name
    assert section(data, "Params that differ") == {"train.lr": {
        "name": "train.lr", "base": 0.003, "new": 0.01, "change": "changed", "verdict": ""}}
    base, new = at(repo, "HEAD", METRICS), at(repo, exp_sha, METRICS)
    metrics = section(data, "Test metrics")
    assert set(metrics) == set(base)
    for key in ("roc_auc", "log_loss", "accuracy", "f1", "tp"):
        assert metrics[key]["change"] == pytest.approx(new[key] - base[key]), key
    for key in ("roc_auc", "log_loss"):
        gain = improvement(key, new[key], base[key])
        assert metrics[key]["verdict"] == ("better" if gain > 0 else "worse" if gain else "same")
    assert metrics["tp"]["verdict"] == ""  # a count, not a score
    # Both revisions' figures, from the DVC cache, beside the Markdown and inline in the HTML.
    assert {f["name"] for f in data["figures"] if f["base"] and f["new"]} == FIGURES
    for side in ("base", "rev"):
        assert {p.name for p in (out / "figures" / side).iterdir()} == FIGURES
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 * len(FIGURES)
    assert "<script" not in page and 'src="http' not in page
    # The gate: v1 was promoted with no champion; the experiment's v2 was compared with v1.
    gate = section(data, "Gate decision")
    outcome = json.loads((repo / "reports" / "registration.json").read_text())["outcome"]
    assert gate["decision"]["base"] == "promoted" and gate["decision"]["new"] == outcome
    assert gate["compared with champion"]["base"] == "no champion"
    assert gate["compared with champion"]["new"] == "v1"
    lineage = section(data, "Data lineage")
    assert lineage["data/processed"]["change"] == "same"
    assert lineage["models/model.safetensors"]["change"] == "changed"
    runs = section(data, "MLflow runs")
    assert runs["run_id (registration.json)"]["new"] == json.loads(
        (repo / "reports" / "registration.json").read_text())["run_id"]
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "| train.lr | 0.003 | 0.01 | changed |" in md and "![roc.png at lr-up]" in md
    assert not data["missing"]


@pytest.mark.slow
def test_missing_outputs_are_stated_not_fatal(repo: Path, tmp_path: Path) -> None:
    # The first commit ran nothing: no dvc.lock, no metrics, no registration.
    data = render(repo, tmp_path / "first", "--base", "HEAD~1")
    missing = [note for label, note in data["missing"] if label == "HEAD~1"]
    assert "dvc.lock: not at HEAD~1" in missing
    assert "reports/registration.json: declared in dvc.yaml but not produced at HEAD~1" in missing
    assert data["new"]["label"] == "workspace"
    assert section(data, "Test metrics")["n"]["base"] is None
    # A clone without the DVC cache: the workspace's files are read from disk, the base's
    # cached outputs are named with the command that fetches them.
    clone = tmp_path / "clone"
    shutil.copytree(repo, clone, symlinks=True)
    shutil.rmtree(clone / ".dvc" / "cache")
    data = render(clone, tmp_path / "nocache")
    notes = dict(((label, note.split(":")[0]), note) for label, note in data["missing"])
    assert "not in the local DVC cache" in notes[("HEAD", "reports/registration.json")]
    assert "not in the local DVC cache" in notes[("HEAD", "reports/figures")]
    assert not [label for label, _ in data["missing"] if label == "workspace"]
    assert {f["name"] for f in data["figures"] if f["new"] and not f["base"]} == FIGURES


@pytest.mark.slow
def test_a_bad_revision_or_out_folder_is_one_line_and_exit_2(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--base", "no-such-rev"], ["--rev", "no-such-exp"],
                 ["--out", str(repo / "reports")]):
        with pytest.raises(SystemExit) as stop:
            report.main(["--repo", str(repo), "--out", str(tmp_path / "r"), *args])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert (repo / "reports" / "metrics.json").exists()  # the refused --out is untouched


def side(label: str, **files: dict[str, Any]) -> Side:
    """A Side holding the given files (keys are the report's path constants' names)."""
    paths = {"metrics": METRICS, "train": TRAIN_METRICS, "best": BEST_PARAMS}
    return Side(label, label * 8, data={paths[k]: v for k, v in files.items()})


def test_directions_decide_better_and_worse() -> None:
    base = side("a", metrics={"log_loss": 0.3, "roc_auc": 0.9, "n": 10},
                train={"best_val_log_loss": 0.2, "epochs_run": 5})
    new = side("b", metrics={"log_loss": 0.2, "roc_auc": 0.8, "n": 10},
               train={"best_val_log_loss": 0.25, "epochs_run": 7})
    sections = {s.title.split(" (")[0]: {r.name: r for r in s.rows}
                for s in build_report(base, new, "sqlite:///mlflow.db").sections}
    metrics, training = sections["Test metrics"], sections["Training"]
    assert metrics["log_loss"].verdict == "better" and metrics["roc_auc"].verdict == "worse"
    assert metrics["log_loss"].change == pytest.approx(-0.1) and metrics["n"].verdict == ""
    assert training["best_val_log_loss"].verdict == "worse"
    assert training["epochs_run"].change == 2 and training["epochs_run"].verdict == ""


def test_tuned_params_are_compared_and_named_in_the_summary() -> None:
    base = side("a", best={"enabled": True, "params": {"train.lr": 0.01}, "metric": "roc_auc",
                           "value": 0.9})
    new = side("b", best={"enabled": True, "params": {"train.lr": 0.02}, "metric": "roc_auc",
                          "value": 0.95})
    built = build_report(base, new, "sqlite:///mlflow.db")
    (tuned,) = [s for s in built.sections if s.title.startswith("Tuned")]
    rows = {r.name: r for r in tuned.rows}
    assert rows["train.lr"].change == pytest.approx(0.01)
    assert rows["best val roc_auc (study)"].verdict == "better"
    assert "Changed params: train.lr (tuned)." in built.summary
    assert not [s for s in built.sections if s.title.startswith("Trained with")]


def test_values_trained_with_have_their_own_table() -> None:
    base = side("a", train={"best_epoch": 3, "trained": {"train.num_threads": 2}})
    new = side("b", train={"best_epoch": 3, "trained": {"train.num_threads": 4}})
    built = build_report(base, new, "sqlite:///mlflow.db")
    tables = {s.title.split(" (")[0].split(",")[0]: {r.name: r for r in s.rows}
              for s in built.sections}
    assert tables["Trained with"]["train.num_threads"].change == 2
    assert set(tables["Training"]) == {"best_epoch"}
    assert "Changed params: train.num_threads (trained)." in built.summary


def test_a_tracking_server_gets_links_without_credentials() -> None:
    registration = {"run_id": "abc", "model_name": "m", "version": "3"}
    rows, note = run_rows({"registration.json": ({}, registration),
                           "train_metrics.json": ({}, {"run_id": "t1", "experiment_id": "7"})},
                          ({}, registration), "https://bob:s3cret@mlflow.example.com:5000")
    links = {r.name: r.new for r in rows}
    assert links["run_id (registration.json)"] == Link(
        "abc", "https://mlflow.example.com:5000/#/runs/abc?workflowType=machine_learning")
    assert links["run_id (train_metrics.json)"].url == (
        "https://mlflow.example.com:5000/#/experiments/7/runs/t1"
        "?workflowType=machine_learning")
    assert links["model version"].url.endswith("/#/models/m/versions/3")
    assert "s3cret" not in note + json.dumps([str(r) for r in rows])


def test_mlflow_facts_copied_into_the_report_match_their_source() -> None:
    # The report must not import mlflow, so it keeps copies of what these glue modules know.
    from pipeline import report_runs, tracking, views

    assert report_runs.DEFAULT_TRACKING_URI == tracking.DEFAULT_TRACKING_URI
    assert report_runs.LOCAL_UI == views.LOCAL_UI and report_runs.ML_MODE == views.ML_MODE
    assert report_runs.RUN_ROUTE.format(experiment="7", run="r1") == views.run_url("7", "r1")


def test_the_report_runs_without_mlflow_torch_or_optuna() -> None:
    code = ("import sys, pipeline.report; "
            "print(sorted({'mlflow', 'torch', 'optuna'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == "[]"
