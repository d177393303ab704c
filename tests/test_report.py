"""The experiment report: a real git + DVC repo, a baseline commit and a `dvc exp run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.report import cli as report
from pipeline.report.compare import (
    BEST_PARAMS,
    LOCK,
    METRICS,
    REGISTRATION,
    TRAIN_METRICS,
    Side,
    build_report,
    lock_hashes,
)
from pipeline.report.render import Link, Report, Row, table_json
from tests.helpers import TINY, make_repo, merge, sh

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
    # Directions written out here, not asked of the code under test.
    for key, gain in (("roc_auc", new["roc_auc"] - base["roc_auc"]),  # higher is better
                      ("log_loss", base["log_loss"] - new["log_loss"])):  # lower is better
        assert metrics[key]["verdict"] == ("better" if gain > 0 else "worse" if gain < 0
                                           else "same"), key
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
    registered = json.loads((repo / "reports" / "registration.json").read_text())
    runs = section(data, "MLflow runs")
    assert runs["run_id (registration.json)"]["new"] == registered["run_id"]
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "| train.lr | 0.003 | 0.01 | changed |" in md and "![roc.png at lr-up]" in md
    assert not data["missing"]
    # On a server, the registering run is linked inside its experiment (the UI's own route).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    runs = section(render(repo, tmp_path / "served", "--rev", "lr-up"), "MLflow runs")
    run, experiment = registered["run_id"], registered["experiment_id"]
    assert runs["run_id (registration.json)"]["new"] == {
        "text": run, "url": f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run}"
                            "?workflowType=machine_learning"}


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


def test_the_default_out_folder_is_under_the_repo_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    for folder in (repo, elsewhere):
        folder.mkdir()
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "-c", "user.name=ci",
                 "-c", "user.email=ci@example.com", "commit", "-qm", "dvc init"]):
        sh(repo, *args)
    monkeypatch.chdir(elsewhere)
    report.main(["--repo", str(repo)])
    assert (repo / "reports" / "compare" / "report.md").is_file()


def side(label: str, **files: dict[str, Any]) -> Side:
    """A Side holding the given files (keys are the report's path constants' names)."""
    paths = {"metrics": METRICS, "train": TRAIN_METRICS, "best": BEST_PARAMS, "lock": LOCK,
             "reg": REGISTRATION}
    return Side(label, label * 8, data={paths[k]: v for k, v in files.items()})


def tables(built: Report) -> dict[str, dict[str, Row]]:
    """A built report's rows by section title (up to " (" or ",") and name."""
    return {s.title.split(" (")[0].split(",")[0]: {r.name: r for r in s.rows}
            for s in built.sections}


def test_directions_decide_better_and_worse() -> None:
    base = side("a", metrics={"log_loss": 0.3, "roc_auc": 0.9, "n": 10},
                train={"best_val_log_loss": 0.2, "epochs_run": 5})
    new = side("b", metrics={"log_loss": 0.2, "roc_auc": 0.8, "n": 10},
               train={"best_val_log_loss": 0.25, "epochs_run": 7})
    found = tables(build_report(base, new, "sqlite:///mlflow.db"))
    metrics, training = found["Test metrics"], found["Training"]
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
    rows = tables(built)["Tuned params used by train"]
    assert rows["train.lr"].change == pytest.approx(0.01)
    assert rows["best val roc_auc (study)"].verdict == "better"
    assert "Changed params: train.lr (tuned)." in built.summary
    assert not [s for s in built.sections if s.title.startswith("Trained with")]


def test_values_trained_with_have_their_own_table() -> None:
    base = side("a", train={"best_epoch": 3, "trained": {"train.num_threads": 2}})
    new = side("b", train={"best_epoch": 3, "trained": {"train.num_threads": 4}})
    built = build_report(base, new, "sqlite:///mlflow.db")
    assert tables(built)["Trained with"]["train.num_threads"].change == 2
    assert set(tables(built)["Training"]) == {"best_epoch"}
    assert "Changed params: train.num_threads (trained)." in built.summary


def test_a_tracking_server_gets_links_without_credentials() -> None:
    # registration.json's shape (pipeline/registry/register.py): the registering run and its
    # experiment, and an audit trail whose entries name runs too (a list: not rows of their own).
    registration = {"run_id": "abc", "experiment_id": "7", "model_name": "m", "version": "3",
                    "audit": [{"version": "3", "run_id": "abc", "champion_before": None}]}
    old = {"run_id": "old", "model_name": "m", "version": "2"}  # written before experiment_id
    built = build_report(side("a", reg=old), side("b", reg=registration),
                         "https://bob:s3cret@mlflow.example.com:5000")
    links = tables(built)["MLflow runs"]
    assert set(links) == {"run_id (registration.json)", "model version"}
    assert links["run_id (registration.json)"].new == Link(
        "abc", "https://mlflow.example.com:5000/#/experiments/7/runs/abc"
               "?workflowType=machine_learning")
    assert links["run_id (registration.json)"].base == Link(
        "old", "https://mlflow.example.com:5000/#/runs/old?workflowType=machine_learning")
    assert links["model version"].new.url.endswith("/#/models/m/versions/3")
    assert "s3cret" not in json.dumps(table_json(built), default=str)


def test_mlflow_facts_copied_into_the_report_match_their_source() -> None:
    # The report must not import mlflow, so it keeps copies of what these glue modules know.
    from pipeline.report import runs as report_runs
    from pipeline.tracking import store, views

    assert report_runs.DEFAULT_TRACKING_URI == store.DEFAULT_TRACKING_URI
    assert report_runs.LOCAL_UI == views.LOCAL_UI and report_runs.ML_MODE == views.ML_MODE
    assert report_runs.RUN_ROUTE.format(experiment="7", run="r1") == views.run_url("7", "r1")


@pytest.mark.slow  # a fresh interpreter
def test_the_report_runs_without_mlflow_torch_or_optuna() -> None:
    code = ("import sys, pipeline.report.cli; print(sorted({'mlflow', 'torch', 'optuna', "
            "'pipeline.stages._common'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == "[]"


def test_a_value_that_is_not_finite_gets_no_verdict() -> None:
    base = side("a", metrics={"log_loss": float("nan"), "roc_auc": 0.9, "f1": 0.5},
                train={"best_val_roc_auc": 0.8})
    new = side("b", metrics={"log_loss": 0.2, "roc_auc": float("nan"), "f1": float("inf")},
               train={"best_val_roc_auc": float("nan")})
    found = tables(build_report(base, new, "sqlite:///mlflow.db"))
    assert [found["Test metrics"][k].verdict for k in ("f1", "log_loss", "roc_auc")] == [""] * 3
    assert found["Training"]["best_val_roc_auc"].verdict == ""


def test_studies_on_different_metrics_are_shown_side_by_side_unjudged() -> None:
    base = side("a", best={"enabled": True, "params": {}, "metric": "roc_auc", "value": 0.99})
    new = side("b", best={"enabled": True, "params": {}, "metric": "log_loss", "value": 0.05})
    tuned = tables(build_report(base, new, "sqlite:///mlflow.db"))["Tuned params used by train"]
    assert tuned["best val roc_auc (study)"] == Row("best val roc_auc (study)", 0.99, None)
    assert tuned["best val log_loss (study)"] == Row("best val log_loss (study)", None, 0.05)


def lock(md5: str) -> dict[str, Any]:
    """A dvc.lock whose preprocess stage wrote data/processed with the given md5."""
    return {"stages": {"preprocess": {"outs": [{"path": "data/processed", "md5": md5}]}}}


def test_other_test_splits_or_fold_counts_get_no_verdicts() -> None:
    metrics = ({"log_loss": 0.3, "roc_auc": 0.9}, {"log_loss": 0.2, "roc_auc": 0.95})
    train = ({"best_val_log_loss": 0.3, "cv_folds": 0}, {"best_val_log_loss": 0.2, "cv_folds": 0})
    built = build_report(side("a", metrics=metrics[0], train=train[0], lock=lock("1.dir")),
                         side("b", metrics=metrics[1], train=train[1], lock=lock("2.dir")),
                         "sqlite:///mlflow.db")
    found = tables(built)
    assert [found["Test metrics"]["log_loss"].verdict, found["Test metrics"]["roc_auc"].verdict,
            found["Training"]["best_val_log_loss"].verdict] == ["", "", ""]
    assert found["Test metrics"]["log_loss"].change == pytest.approx(-0.1)
    assert built.summary[0] == ("Test sets differ (data/processed differs in dvc.lock): the "
                                "metrics are not comparable row for row, so none is judged.")
    # The same split, but a fold mean against a validation score.
    built = build_report(side("a", metrics=metrics[0], train=train[0], lock=lock("1.dir")),
                         side("b", metrics=metrics[1], train={**train[1], "cv_folds": 5},
                              lock=lock("1.dir")), "sqlite:///mlflow.db")
    found = tables(built)
    assert found["Test metrics"]["log_loss"].verdict == "better"
    assert found["Training"]["best_val_log_loss"].verdict == ""
    assert ("Training scores not judged: cv_folds differ (0 → 5), so best_val_* is a fold mean "
            "at one revision and a validation score at the other.") in built.summary


def test_lineage_hashes_are_hash_values_not_the_algorithm() -> None:
    outs = [{"path": "p", "hash": "md5", "md5": "a.dir"}, {"path": "m", "etag": "e1"},
            {"path": "x", "checksum": "c1"}, {"path": "raw", "hash": "md5"}]
    assert lock_hashes({"stages": {"a": {"outs": outs}}}) == {
        "p": "a.dir", "m": "e1", "x": "c1", "raw": ""}


def test_tuned_keys_are_not_repeated_as_trained_with() -> None:
    base = side("a", best={"enabled": True, "params": {"train.lr": 0.01}},
                train={"trained": {"train.lr": 0.01, "train.num_threads": 2}})
    new = side("b", best={"enabled": True, "params": {"train.lr": 0.02}},
               train={"trained": {"train.lr": 0.02, "train.num_threads": 4}})
    built = build_report(base, new, "sqlite:///mlflow.db")
    assert set(tables(built)["Trained with"]) == {"train.num_threads"}
    assert "Changed params: train.lr (tuned), train.num_threads (trained)." in built.summary
