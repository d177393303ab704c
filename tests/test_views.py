"""What the team sees in MLflow: run names, the shared runs-table view, adopted test metrics,
and finding runs by their tags."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.lineage import pipeline_run_name
from pipeline.stages import evaluate, train
from pipeline.tracking import runs, store
from pipeline.tracking.views import COLUMNS, VIEW_KEY, run_link
from tests.helpers import make_imagefolder, module_store, run_stages, write_params

# Three `dvc exp run`-like pipelines in one module fixture.
pytestmark = pytest.mark.slow

USER_NOTE = "Our team's notes about this experiment."


@pytest.fixture(scope="module")
def three_experiments(tmp_path_factory: pytest.TempPathFactory,
                      store_template: Path) -> Iterator[dict]:
    """`dvc exp run` as DVC runs stages: train + evaluate under one experiment name; train
    alone under another, reproducing the same weights (DVC then skips evaluate); evaluate alone
    under a third (only evaluate.threshold changed)."""
    root = tmp_path_factory.mktemp("views")
    with module_store(root, store_template) as uri, pytest.MonkeyPatch.context() as mp:
        client = MlflowClient(uri)
        # A description someone already wrote must survive the pipeline's own.
        exp_id = client.create_experiment("binary-classification",
                                          artifact_location=(root / "mlartifacts").as_uri())
        client.set_experiment_tag(exp_id, "mlflow.note.content", USER_NOTE)
        data = {"source": "imagefolder", "path": str(make_imagefolder(root / "images")),
                "positive_class": "dog", "image_size": 8, "channels": 1,
                "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
        params = write_params(root / "params.yaml", {"data": data})
        # The third experiment changes only evaluate.threshold.
        threshold = write_params(root / "params-threshold.yaml",
                                 {"data": data, "evaluate": {"threshold": 0.3}})
        # What DVC exports to every stage of an experiment (checked with a real `dvc exp run`
        # in tests/test_dvc_pipeline.py).
        mp.setenv("DVC_EXP_NAME", "first-exp")
        mp.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
        paths = run_stages(params, root)
        mp.setenv("DVC_EXP_NAME", "second-exp")
        train.main(["--params", str(params), "--data-dir", paths["processed"],
                    "--train-dir", paths["augmented"], "--out", paths["models"],
                    "--reports", paths["reports"],
                    "--best-params", str(root / "models" / "best_params.json")])
        runs = client.search_runs([exp_id], order_by=["attributes.start_time ASC"])
        mp.setenv("DVC_EXP_NAME", "third-exp")
        evaluate.main(["--params", str(threshold), "--data-dir", paths["processed"],
                       "--model-dir", paths["models"], "--reports", paths["reports"]])
        after = client.search_runs([exp_id], order_by=["attributes.start_time ASC"])
        yield {"client": client, "exp_id": exp_id, "runs": runs, "after": after,
               "source": data["path"]}


def test_run_is_named_after_the_dvc_experiment_and_history_is_append_only(
        three_experiments: dict) -> None:
    first = three_experiments["runs"][0]
    # evaluate resumed train's run of the same invocation without renaming it "evaluate".
    assert first.info.run_name == "first-exp"
    assert first.data.tags["pipeline.dvc_exp"] == "first-exp"
    assert first.data.tags["pipeline.dvc_exp_baseline"] == "a" * 40
    assert "test_roc_auc" in first.data.metrics
    assert first.data.tags["pipeline.test_metrics_from"] == first.info.run_id
    assert first.data.tags["pipeline.trained_by"] == first.info.run_id
    # A later experiment's evaluate (same weights) records into a run of its own, linked to
    # the latest run that trained those weights; the earlier runs are left exactly as they were.
    before, after = three_experiments["runs"], three_experiments["after"]
    assert [r.info.run_id for r in after[:2]] == [r.info.run_id for r in before]
    for old, now in zip(before, after[:2], strict=True):
        assert (now.data.metrics, now.data.tags, now.data.params) == (
            old.data.metrics, old.data.tags, old.data.params)
    third = after[2]
    assert len(after) == 3 and third.info.run_name == "third-exp"
    assert third.data.tags["pipeline.dvc_exp"] == "third-exp"
    assert third.data.tags["pipeline.stage"] == "evaluate"
    assert third.data.tags["pipeline.trained_by"] == before[1].info.run_id
    assert third.data.tags["pipeline.test_metrics_from"] == third.info.run_id
    assert third.data.tags["pipeline.model_sha256"] == first.data.tags["pipeline.model_sha256"]
    assert third.data.metrics["test_threshold"] == 0.3
    assert third.data.params["evaluate.threshold"] == "0.3"
    assert first.data.params["evaluate.threshold"] != "0.3"
    assert first.data.metrics["test_threshold"] != 0.3
    # Every run names its data (the user's data.path); evaluate's own run as its train run says.
    assert {r.data.tags["pipeline.data_source"] for r in after} == {
        three_experiments["source"]}


def test_retrain_with_identical_weights_adopts_the_test_metrics(three_experiments: dict) -> None:
    first, second = three_experiments["runs"]
    assert second.info.run_name == "second-exp"
    assert second.data.tags["pipeline.model_sha256"] == first.data.tags["pipeline.model_sha256"]
    test = {k: v for k, v in first.data.metrics.items() if k.startswith("test_")}
    assert test and {k: second.data.metrics[k] for k in test} == test
    assert second.data.tags["pipeline.test_metrics_from"] == first.info.run_id
    assert second.data.tags["pipeline.threshold_rule"] == first.data.tags["pipeline.threshold_rule"]


def test_experiment_carries_a_saved_runs_table_view(three_experiments: dict) -> None:
    tags = three_experiments["client"].get_experiment(three_experiments["exp_id"]).tags
    # The envelope MLflow's UI lists under "Views" (name, createdAt, state as a JSON string).
    envelope = json.loads(tags["mlflow.sharedViewState." + VIEW_KEY])
    assert envelope["name"] and isinstance(envelope["createdAt"], int)
    columns = json.loads(envelope["state"])["selectedColumns"]
    # A study's parent run has its best trial's score (tune.metric: roc_auc) in a column.
    wanted = {f"metrics.`{m}`" for m in (*COLUMNS, "best_val_roc_auc")} | {
        f"tags.`pipeline.{t}`" for t in ("dvc_exp", "data_source", "pruned_at", "pruned_step")}
    assert wanted <= set(columns)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == USER_NOTE


def test_run_links_open_the_ui_on_its_runs_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    page = "#/experiments/3/runs/abc?workflowType=machine_learning"  # not the GenAI pages
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:s3cret@mlflow.team:5000/")
    assert run_link("3", "abc") == f"https://bob:***@mlflow.team:5000/{page}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")
    assert run_link("3", "abc") == (f"`mlflow ui --backend-store-uri sqlite:///"
                                    f"{Path('rel/mlflow.db').resolve()}`, then "
                                    f"http://127.0.0.1:5000/{page}")


def test_outside_an_experiment_the_run_is_named_after_the_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert pipeline_run_name() == "repro"  # not a git checkout
    for cmd in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                                 "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *cmd], check=True, cwd=tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=tmp_path).stdout.strip()
    assert pipeline_run_name() == f"repro@{head[:7]}"


def test_runs_are_found_by_tag_values_of_any_text_newest_first(
        mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store.configure()
    exp = store.experiment_id("lookup")
    client = MlflowClient()
    # Data paths are the user's: quotes and backslashes are matched as they are, not parsed.
    values = ["plain", "it's", 'say "hi"', "C:\\data\\", "%_"]
    made = {v: client.create_run(exp, start_time=1_000 * i, tags={
        "pipeline.data_source": v}).info.run_id for i, v in enumerate(values, 1)}
    for value, run_id in made.items():
        assert runs.find_run(exp, {"pipeline.data_source": value}) == run_id
    with pytest.raises(ValueError, match="both quote characters"):
        runs.find_runs(exp, {"pipeline.data_source": "it's \"both\""})
    # Every match, page after page, newest first; or the newest few; or by status too.
    monkeypatch.setattr(runs, "PAGE", 2)
    for run_id in made.values():
        client.set_tag(run_id, "pipeline.stage", "train")
    newest_first = [made[v] for v in reversed(values)]
    assert [r.info.run_id for r in runs.find_runs(exp, {"pipeline.stage": "train"})] == \
        newest_first
    assert [r.info.run_id for r in runs.find_runs(exp, {"pipeline.stage": "train"}, limit=3)] \
        == newest_first[:3]
    client.set_terminated(made["plain"])
    assert {r.info.run_id for r in runs.find_runs(exp, {}, status="RUNNING")} == \
        set(made.values()) - {made["plain"]}
    assert runs.find_run(exp, {"pipeline.stage": "evaluate"}) is None
