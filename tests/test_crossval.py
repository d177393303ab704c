"""Small data: stratified folds over train + val, out-of-fold threshold, the fold models or a
refit on train + val."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.core.errors import ConfigError
from pipeline.core.lineage import file_sha256
from pipeline.data.dataset import Split, load_splits
from pipeline.evaluation.metrics import choose_threshold
from pipeline.models.networks import Classifier, Ensemble, load_model
from pipeline.stages import tune as tune_stage
from pipeline.training.crossval import make_pool, resolve_folds
from tests.helpers import csv_checkout, run_stages


def test_folds_are_stratified_disjoint_and_keep_copies_with_their_original() -> None:
    y = np.array([0, 1] * 15 + [1] * 10, dtype=np.float32)  # 15 negatives, 25 positives
    ids = [f"s{i}" for i in range(40)]
    train = Split(np.zeros((70, 2), np.float32),
                  np.concatenate([y[:35], y[:35]]), ids[:35] + [f"{i}#aug1" for i in ids[:35]])
    val = Split(np.zeros((5, 2), np.float32), y[35:], ids[35:])
    pool = make_pool(train, val, 5, seed=3)
    assert pool.n_sources == 40 and len(pool.data.y) == 75
    assert sorted(np.bincount(pool.folds).tolist()) == [8] * 5  # every sample held out once
    for fold in range(5):
        held = pool.folds == fold
        assert y[held].sum() == 5  # 25 positives / 5 folds: stratified
        # A held-out sample's augmented copy is never in that fold's training rows.
        train_rows = np.flatnonzero(pool.folds[pool.source] != fold)
        assert not set(pool.source[train_rows]) & set(np.flatnonzero(held))
    assert [pool.data.ids[i] for i in pool.originals] == ids  # un-augmented rows, in order
    again = make_pool(train, val, 5, seed=3)
    assert np.array_equal(again.folds, pool.folds)  # seeded


def test_auto_cross_validates_small_data_with_both_classes_in_every_fold() -> None:
    assert resolve_folds("auto", 400, 150) == 5 and resolve_folds("auto", 5000, 2000) == 0
    assert resolve_folds("auto", 40, 3) == 3  # 3 positives: at most 3 folds
    assert resolve_folds("auto", 40, 1) == 0
    assert resolve_folds(3, 5000, 2000) == 3 and resolve_folds(0, 10, 5) == 0
    with pytest.raises(ConfigError, match=r"train.cv_folds = 5: train \+ val hold only 4 "):
        resolve_folds(5, 100, 4)


def test_refit_on_train_and_val_and_evaluate_thresholds_out_of_fold(
        tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.training.callbacks")
    root = csv_checkout(tmp_path / "ws", "data/raw/t.csv", 80,
                        {"train": {"cv_folds": 3, "epochs": 4, "cv_model": "refit"},
                         "evaluate": {"threshold": "f1"}})
    monkeypatch.chdir(root)
    p = run_stages(Path("params.yaml"), Path("data"))  # preprocess .. evaluate, in-process
    ids = json.loads((Path(p["processed"]) / "ids.json").read_text())
    basis = pd.read_csv(Path(p["reports"]) / "threshold_predictions.csv", dtype={"id": str})
    # Every train and validation sample once, out of fold; never a test sample.
    assert sorted(basis["id"]) == sorted(ids["train"] + ids["val"])
    assert not set(basis["id"]) & set(ids["test"])
    assert sorted(basis["fold"].unique()) == [0, 1, 2]
    metrics = json.loads((Path(p["reports"]) / "metrics.json").read_text())
    assert metrics["threshold"] == choose_threshold(basis["label"].to_numpy(),
                                                    basis["probability"].to_numpy(), "f1")
    fitted = json.loads((Path(p["reports"]) / "train_metrics.json").read_text())
    assert fitted["cv_folds"] == 3 and fitted["epochs_run"] == fitted["refit_epochs"]
    # Untuned: params.yaml's values, with each `auto` resolved (CPU: fp32; a table of 80 rows).
    assert fitted["trained"] == {"train.precision": "fp32", "model.embedding": "none"}
    # The refit saw every augmented train row and every val row each epoch.
    splits, _ = load_splits(p["augmented"], names=("train",))
    (run,) = [r for r in MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()])
        if "samples_per_second" in r.data.metrics]
    n_rows = len(splits["train"].y) + len(ids["val"])
    samples = run.data.metrics["samples_per_second"] * run.data.metrics["train_seconds"]
    assert samples == pytest.approx(fitted["refit_epochs"] * n_rows, rel=1e-6)
    # tune.metric auto on a table: the folds are scored by their validation log loss.
    history = MlflowClient().get_metric_history(run.info.run_id, "fold_val_log_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert fitted["best_val_log_loss"] == pytest.approx(np.mean([m.value for m in history]))
    # The console summary says the folds' score the refit was chosen by, not its in-sample one.
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "pipeline.training.callbacks"
                  and r.getMessage().startswith("train: ")]
    assert summary == (f"train: cv mean val_log_loss={fitted['best_val_log_loss']:.4f} over 3 "
                       f"folds; refit {fitted['refit_epochs']} epochs on train+val")


@pytest.mark.parametrize("kept", ["folds", "refit"])
def test_cross_validated_training_reruns_byte_identically(tmp_path: Path, mlflow_uri: str,
                                                          kept: str) -> None:
    digests = []
    for name in ("a", "b"):
        root = csv_checkout(tmp_path / name, "data/raw/t.csv", 60,
                            {"train": {"cv_folds": 3, "epochs": 3, "cv_model": kept}})
        with contextlib.chdir(root):
            run_stages(Path("params.yaml"), Path("data"), upto="train")
        digests.append([file_sha256(root / "data" / f) for f in
                        ("models/model.safetensors", "reports/threshold_predictions.csv")])
    assert digests[0] == digests[1]


def test_tuning_reports_folds_as_steps_and_logs_them_in_the_trial_run(
        tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTUNA_STORAGE", str(tmp_path / "optuna.journal"))
    root = csv_checkout(tmp_path / "ws", "data/raw/t.csv", 60, {
        "train": {"cv_folds": 3, "epochs": 3},
        "tune": {"enabled": True, "n_trials": 2, "pruner": "none"}})
    data = root / "data"
    tune_stage.main(["--params", str(root / "params.yaml"), "--data-dir",
                     str(data / "processed"), "--train-dir", str(data / "augmented"),
                     "--out", str(tmp_path / "best.json")])
    import optuna

    best = json.loads((tmp_path / "best.json").read_text())
    study = optuna.load_study(study_name=best["study_name"],
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(
                                      str(tmp_path / "optuna.journal"))))
    client = MlflowClient()
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2, 3]  # one step per fold
        (run,) = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.`optuna.trial_number` = '{trial.number}'")
        folds = [m.value for m in client.get_metric_history(run.info.run_id,  # auto: a table
                                                            "fold_val_log_loss")]
        assert len(folds) == 3
        assert trial.value == pytest.approx(np.mean(folds))
        assert trial.intermediate_values[3] == pytest.approx(np.mean(folds))
        assert run.data.tags["pipeline.data_source"] == "data/raw/t.csv"


def test_fold_models_are_kept_averaged_with_their_out_of_fold_predictions_and_curves(
        tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.training.callbacks")
    root = csv_checkout(tmp_path / "ws", "data/raw/t.csv", 80, {
        "train": {"cv_folds": 3, "epochs": 4, "cv_model": "folds"},
        "model": {"ensemble": 2}})
    monkeypatch.chdir(root)
    p = run_stages(Path("params.yaml"), Path("data"))
    model, config = load_model(p["models"])
    fitted = json.loads((Path(p["reports"]) / "train_metrics.json").read_text())
    assert fitted["cv_folds"] == 3 and fitted["fold_models"] == 3
    assert "refit_epochs" not in fitted and fitted["trained"]["model.ensemble"] == 6
    assert config["model"]["ensemble"] == 6 and len(model.body.members) == 6
    # Members are the fold models in fold order (2 each): each pair, on its fold's held-out
    # rows, gives the out-of-fold probabilities the threshold is chosen on.
    basis = pd.read_csv(Path(p["reports"]) / "threshold_predictions.csv", dtype={"id": str})
    processed, _ = load_splits(p["processed"], names=("train", "val"))
    x = {i: row for split in processed.values() for i, row in zip(split.ids, split.X,
                                                                 strict=True)}
    for fold in range(3):
        held = basis[basis["fold"] == fold]
        pair = Classifier(model.norm, Ensemble(model.body.members[2 * fold:2 * fold + 2])).eval()
        with torch.no_grad():
            p_fold = torch.sigmoid(pair(torch.from_numpy(np.stack([x[i] for i in held["id"]]))))
        assert p_fold.squeeze(-1).numpy() == pytest.approx(held["probability"].to_numpy(),
                                                           abs=1e-6)
    # The ensemble averages all six logits.
    rows = torch.from_numpy(np.stack(list(x.values())[:5]))
    with torch.no_grad():
        mean = torch.cat([m(model.norm(rows)) for m in model.body.members], -1).mean(-1)
        assert torch.allclose(model(rows), mean, atol=1e-6)
    # Each fold's curves are in the run under fold<i>/; the plain ones are their mean.
    client = MlflowClient()
    (run,) = [r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])
        if "samples_per_second" in r.data.metrics]
    folds = [[m.value for m in sorted(client.get_metric_history(run.info.run_id,
                                                                f"fold{i}/val_loss"),
                                      key=lambda m: m.step)] for i in (1, 2, 3)]
    plain = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"),
                                     key=lambda m: m.step)]
    assert len(plain) == 4 and plain == pytest.approx(np.mean(folds, axis=0))
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "pipeline.training.callbacks"
                  and r.getMessage().startswith("train: ")]
    assert summary.endswith("over 3 folds; kept the 3 fold models (logits averaged)")
