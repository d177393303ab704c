"""train + evaluate stages against a real MLflow SQLite store under tmp_path."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.data.dataset import load_splits
from pipeline.evaluation.metrics import choose_threshold
from pipeline.models.inference import predict_proba
from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE, load_model
from pipeline.stages import train
from tests.helpers import TINY, run_stages, write_params


def only_run(client: MlflowClient, name: str = "binary-classification"):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_train_and_evaluate_land_in_one_mlflow_run(tiny_pipeline: dict, tmp_path: Path) -> None:
    paths, root = tiny_pipeline["paths"], tiny_pipeline["root"]
    client = MlflowClient(tiny_pipeline["uri"])
    run = only_run(client)
    assert run.info.status == "FINISHED"
    # Full flattened config as params.
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["data.source"] == "imagefolder"
    assert run.data.params["model.type"] == "mlp"
    # Per-epoch curves: one point per epoch.
    history = client.get_metric_history(run.info.run_id, "val_roc_auc")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    # Final test metrics from evaluate, in the same run.
    metrics = json.loads((Path(paths["reports"]) / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_roc_auc"] == pytest.approx(metrics["roc_auc"])
    # Lineage tags.
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"]
    # Train opens its run through the client (no context providers): the user and source
    # columns MLflow's own start_run fills are filled all the same.
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"]
    assert tags["pipeline.torch"] and tags["pipeline.threads"] == str(TINY["train"]["num_threads"])
    assert tags["pipeline.device"] == "cpu" and tags["pipeline.input_shape"] == "1x8x8"
    # DVC's folder hash, as dvc.lock writes it: md5 + ".dir".
    assert len(tags["pipeline.dvc.data/processed"]) == 36
    assert tags["pipeline.dvc.data/processed"].endswith(".dir")
    # Artifacts: plots, metrics, history, the trained model's files.
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "model_files", "metrics.json", "train_history.json",
            "test_predictions.csv", "data"} <= names
    # The data contract the weights learned under, as the processed data holds it.
    meta = client.download_artifacts(run.info.run_id, "data/meta.json", str(tmp_path))
    assert Path(meta).read_bytes() == (Path(paths["processed"]) / "meta.json").read_bytes()
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"roc.png", "precision_recall.png", "calibration.png", "confusion_matrix.png",
            "training_curves.png"} <= plots
    # The run keeps the weights and config as plain files, byte for byte what models/ holds;
    # the one MLflow logged model is the registered pyfunc (register's), none per train run.
    (tmp_path / "run-model").mkdir()
    copy = Path(client.download_artifacts(run.info.run_id, "model_files",
                                          str(tmp_path / "run-model")))
    assert {p.name for p in copy.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (copy / name).read_bytes() == (Path(paths["models"]) / name).read_bytes()
    (logged,) = client.search_logged_models([run.info.experiment_id])
    champion = client.get_model_version_by_alias("images-dog", "champion")
    assert champion.source == f"models:/{logged.model_id}"
    assert logged.source_run_id == run.info.run_id
    # Datasets with the DVC hash as digest.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert inputs["test"].dataset.digest == tags["pipeline.dvc.data/processed"][:36]
    # Artifacts live beside the DB, never in ./mlruns.
    assert (root / "mlartifacts").is_dir() and not (root / "mlruns").exists()


def test_threshold_is_chosen_on_validation(tiny_pipeline: dict) -> None:
    paths = tiny_pipeline["paths"]
    splits, _ = load_splits(paths["processed"])
    model, _ = load_model(paths["models"])
    expected = choose_threshold(splits["val"].y, predict_proba(model, splits["val"].X), "f1")
    metrics = json.loads((Path(paths["reports"]) / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(expected)
    assert metrics["threshold_rule"] == "f1"


def test_failing_stage_leaves_run_failed(tmp_path: Path, image_params: Path,
                                         mlflow_uri: str) -> None:
    paths = run_stages(image_params, tmp_path, upto="augment")
    # Poison the input statistics (std 0 → inf/NaN inputs): the loop raises TrainingDiverged
    # inside the MLflow run. (Stored images are uint8 and cannot hold a NaN themselves.)
    meta_path = Path(paths["processed"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["image"]["std"] = [0.0] * len(meta["image"]["std"])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as info:
        train.main(["--params", str(image_params), "--data-dir", paths["processed"],
                    "--train-dir", paths["augmented"], "--out", paths["models"],
                    "--reports", paths["reports"]])
    assert info.value.code == 2
    run = only_run(MlflowClient(mlflow_uri))
    assert run.info.status == "FAILED"
    assert not (Path(paths["processed"]).parent / "models" / "model.safetensors").exists()


def test_csv_pipeline_and_tuned_params_applied(tmp_path: Path, table_csv: Path,
                                               mlflow_uri: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    params = write_params(tmp_path / "params.yaml", {"data": {
        "source": "csv", "path": str(table_csv), "target": "label", "positive_class": "spam",
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}}, "model": {"type": "logreg"}})
    caplog.set_level(logging.INFO, logger="pipeline.training.fit")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "best_params.json").write_text(json.dumps(
        {"params": {"train.lr": 0.0123, "train.batch_size": 8}}))
    paths = run_stages(params, tmp_path)
    config = json.loads((Path(paths["models"]) / "model_config.json").read_text())
    assert config["train"]["lr"] == 0.0123 and config["train"]["batch_size"] == 8
    run = only_run(MlflowClient(mlflow_uri))
    assert run.data.params["train.lr"] == "0.0123"
    assert run.data.tags["pipeline.tuned_keys"] == "train.batch_size,train.lr"
    # An explicit params.yaml value that tuning overrides is reported, key by key.
    assert ("train.lr: tuned value 0.0123 (from " in caplog.text
            and "replaces params.yaml's 0.003; to train with yours, drop train.lr from "
                "tune.search_space or set tune.enabled: false" in caplog.text)


def test_online_augmentation_changes_training_but_stays_reproducible(
        tmp_path: Path, imagefolder: Path, mlflow_uri: str) -> None:
    def fit(name: str, online: bool) -> bytes:
        params = write_params(tmp_path / f"{name}.yaml", {"data": {
            "source": "imagefolder", "path": str(imagefolder), "positive_class": "dog",
            "image_size": 8, "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
            "model": {"type": "cnn"}, "train": {"online_augment": online},
            "augment": {"hflip": True}})
        paths = run_stages(params, tmp_path / name, upto="train")
        return (Path(paths["models"]) / "model.safetensors").read_bytes()

    plain, online, again = fit("plain", False), fit("online", True), fit("again", True)
    assert online != plain and online == again


@pytest.mark.parametrize(("store", "needle"), [
    ("garbage", r"MLFLOW_TRACKING_URI=sqlite:///.*/mlflow\.db: tracking store failed: "),
    ("missing", r"MLFLOW_TRACKING_URI=sqlite:///.*/nowhere/mlflow\.db: folder .*nowhere does "
                r"not exist"),
])
def test_unusable_tracking_store_is_one_line(tmp_path: Path, image_params: Path, store: str,
                                             needle: str, monkeypatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    paths = run_stages(image_params, tmp_path, upto="augment")
    db = tmp_path / ("nowhere" if store == "missing" else "") / "mlflow.db"
    if store == "garbage":
        db.write_text("this is not a database " * 10)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(SystemExit) as info:
        train.main(["--params", str(image_params), "--data-dir", paths["processed"],
                    "--train-dir", paths["augmented"], "--out", paths["models"],
                    "--reports", paths["reports"]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and re.search(needle, err) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()  # no store created somewhere unexpected
    assert not Path(paths["models"], "model.safetensors").exists()


def test_copied_store_does_not_write_into_the_original(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core.errors import StoreError
    from pipeline.tracking import store

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    store.configure()
    store.experiment_id("exp")
    shutil.copy(tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    store.configure()
    with pytest.raises(StoreError, match=r"experiment 'exp' keeps its artifacts in .*/a/mlartifacts"
                                         r", not beside this store \(.*/b/mlartifacts\)"):
        store.experiment_id("exp")
    other = MlflowClient().get_experiment(store.experiment_id("other"))
    assert other.artifact_location.endswith("/b/mlartifacts")  # new experiments follow the store
    assert not (tmp_path / "a" / "mlartifacts").exists()
