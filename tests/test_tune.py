"""Optuna tuning stage: search-space validation, pruning, resume, parallel workers, MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.config import load_params, parse_params
from pipeline.core.errors import ConfigError
from pipeline.stages import train as train_stage
from pipeline.stages import tune as tune_stage
from pipeline.tuning.study import LOSS_ATTR, best_trial
from tests.helpers import (
    csv_checkout,
    csv_tune_params,
    load_study,
    run_stages,
    stage_paths,
    tune_args,
    write_params,
)


@pytest.mark.parametrize(("space", "needle"), [
    ({"train.nope": {"low": 1, "high": 2}}, "tune.search_space.train.nope"),
    ({"data.path": {"choices": ["a"]}}, "is not a train.* or model.* key"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "train.lr.low = 0.1: must be < high"),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "must be > 0 with log: true"),
    ({"train.batch_size": {"choices": []}}, "choices = []: must not be empty"),
    ({"train.batch_size": {"choices": ["big"]}}, "train.batch_size = 'big'"),
    ({"train.optimizer": {"low": 1, "high": 2}}, "a range needs a numeric key"),
    ({"train.lr": {"low": 0.1}}, "needs low and high, or choices"),
    ({"train.lr": {"lo": 0.1, "high": 1}}, "tune.search_space.train.lr.lo: unknown key"),
    # Ranges must lie inside the key's own allowed range.
    ({"model.dropout": {"low": 0.1, "high": 2.0}},
     "tune.search_space.model.dropout.high: model.dropout = 2.0: must be in [0, 1)"),
    ({"train.batch_size": {"low": 0, "high": 64}},
     "tune.search_space.train.batch_size.low: train.batch_size = 0: must be >= 1"),
    ({"train.batch_size": {"low": 1.5, "high": 64}}, "train.batch_size = 1.5: must be an integer"),
    ({"train.lr": {"low": 1e-4, "high": float("inf"), "log": True}},
     "tune.search_space.train.lr.high = inf: must be a finite number"),
])
def test_search_space_rejections(space: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params({"tune": {"search_space": space}})
    assert needle in str(info.value)


def tiny_images(folder: Path) -> dict:
    """The data section for the tiny ImageFolder at 8 px, half/quarter/quarter split."""
    return {"source": "imagefolder", "path": str(folder), "positive_class": "dog",
            "image_size": 8, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}


def child_runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("binary-classification")
    return [r for r in client.search_runs([exp.experiment_id], max_results=500)
            if "optuna.trial_number" in r.data.tags]


def test_pruned_trials_show_in_mlflow_and_best_params_flow(
        tune_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.tracking.views")
    params = csv_tune_params(tune_env, n_trials=8)
    source = str(tune_env / "table.csv")  # the user's data.path names a CSV source
    run_stages(params, tune_env, upto="augment")
    tune_stage.main(tune_args(params, tune_env, "models/best_params.json"))
    study = load_study(tune_env)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for s in states) == 8
    client = MlflowClient()
    children = child_runs(client)
    assert len(children) == len(study.trials) == 8
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
        # KILLED reads as a crash in the UI: the name and a tag say the pruner stopped it, where.
        pruned = trial.state.name == "PRUNED"
        epoch = max(trial.intermediate_values) if pruned else None
        assert run.info.run_name == f"trial-{trial.number}" + (
            f" pruned@epoch{epoch}" if pruned else "")
        assert run.data.tags.get("pipeline.pruned_at") == (str(epoch) if pruned else None)
        assert run.data.tags.get("pipeline.pruned_step") == ("epoch" if pruned else None)
        assert run.data.tags["pipeline.data_source"] == source
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert "duration_seconds" in run.data.metrics
    parent_id = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parent_id) == 1
    parent = client.get_run(parent_id.pop())
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == study.study_name
    # tune.metric auto on a table: the study minimised the validation log loss.
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert parent.data.metrics["best_val_log_loss"] == pytest.approx(study.best_value)
    assert parent.data.tags["pipeline.data_source"] == source
    figures = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optimization_history.png", "slice.png"} <= figures
    # The tuned values are what train uses.
    best = json.loads((tune_env / "models" / "best_params.json").read_text())
    assert best["params"] == study.best_params
    paths = run_stages(params, tune_env, upto="train")
    config = json.loads((Path(paths["models"]) / "model_config.json").read_text())
    assert config["train"]["lr"] == pytest.approx(study.best_params["train.lr"])
    trained = client.search_runs([parent.info.experiment_id], "tags.`pipeline.stage` = 'train'")
    assert trained[0].data.params["tune.metric"] == "log_loss"  # what it early-stopped on
    assert config["train"]["batch_size"] == study.best_params["train.batch_size"]
    # `dvc exp show` reads them beside params.yaml's train.lr (nothing else differs here).
    fitted = json.loads((Path(paths["reports"]) / "train_metrics.json").read_text())
    # The tuned values, and what `auto` resolved to (CPU: fp32; no folds on this split).
    assert {k: fitted["trained"][k] for k in study.best_params} == study.best_params
    assert fitted["trained"]["train.precision"] == "fp32"
    assert "train.patience" not in fitted["trained"]
    exp = parent.info.experiment_id
    (train_run,) = client.search_runs([exp], "tags.`pipeline.stage` = 'train'")
    assert train_run.data.tags["pipeline.data_source"] == source
    # The train stage says where to open its run (a SQLite store: with which command).
    assert (f"train: MLflow run {train_run.info.run_name} ({train_run.info.run_id}): `mlflow ui "
            f"--backend-store-uri sqlite:///{tune_env / 'mlflow.db'}`, then http://127.0.0.1:5000/"
            f"#/experiments/{exp}/runs/{train_run.info.run_id}?workflowType=machine_learning"
            ) in caplog.text


@pytest.mark.parametrize(("folds", "unit"), [(3, "fold"), (0, "epoch")])
def test_a_pruned_trial_is_named_after_the_steps_it_counts(
        tmp_path: Path, mlflow_uri: str, folds: int, unit: str) -> None:
    """Cross-validating trials report folds, others epochs: the run's name and tags say which."""
    from pipeline.data.dataset import load_splits
    from pipeline.tracking import store
    from pipeline.tuning.objective import TuneJob, run_trial

    root = csv_checkout(tmp_path / "ws", "data/raw/t.csv", 60, {
        "train": {"epochs": 3}, "tune": {"enabled": True, "pruner": "median"}})
    params = load_params(root / "params.yaml")
    store.configure()
    exp = store.experiment_id(params.mlflow.experiment)
    parent = MlflowClient().create_run(exp).info.run_id
    job = TuneJob(params, str(root / "data" / "processed"), str(root / "data" / "augmented"),
                  "unused", "s", parent, exp, folds=folds)
    processed, meta = load_splits(job.data_dir, names=("val",))
    train = load_splits(job.train_dir, names=("train",))[0]["train"]
    # Every score is under 2: the pruner stops the trial at its first step out of warm-up.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=2.0,
                                                                      n_warmup_steps=2))
    with pytest.raises(optuna.TrialPruned):
        run_trial(job, study.ask(), train, processed["val"], meta)
    (run,) = MlflowClient().search_runs([exp], "tags.`optuna.trial_number` = '0'")
    assert run.info.run_name == f"trial-0 pruned@{unit}2"
    assert {k: run.data.tags[f"pipeline.{k}"] for k in ("pruned_at", "pruned_step",
                                                        "data_source")} == {
        "pruned_at": "2", "pruned_step": unit, "data_source": "data/raw/t.csv"}


@pytest.mark.slow  # two studies
def test_sequential_study_is_reproducible(tune_env: Path, monkeypatch) -> None:
    params = csv_tune_params(tune_env, n_trials=4, pruner="none")
    run_stages(params, tune_env, upto="augment")
    results = []
    for i in range(2):
        monkeypatch.setenv("OPTUNA_STORAGE", str(tune_env / f"study{i}.journal"))
        tune_stage.main(tune_args(params, tune_env, f"best{i}.json"))
        results.append(json.loads((tune_env / f"best{i}.json").read_text()))
    assert results[0] == results[1]


@pytest.mark.slow  # a study run, then resumed
def test_rerun_resumes_and_stops_at_n_trials(tune_env: Path) -> None:
    params = csv_tune_params(tune_env, n_trials=3, pruner="none")
    run_stages(params, tune_env, upto="augment")
    tune_stage.main(tune_args(params, tune_env))
    first = [t.number for t in load_study(tune_env).trials]
    # Raising n_trials extends the same study; completed trials are not redone.
    raised = Path(params)
    raised.write_text(raised.read_text().replace("n_trials: 3", "n_trials: 5"))
    tune_stage.main(tune_args(params, tune_env))
    study = load_study(tune_env)
    assert [t.number for t in study.trials][:3] == first and len(study.trials) == 5


@pytest.mark.slow  # two worker processes
def test_two_workers_finish_n_trials_with_one_child_run_each(tune_env: Path) -> None:
    params = csv_tune_params(tune_env, n_trials=6, n_workers=2, pruner="none")
    run_stages(params, tune_env, upto="augment")
    tune_stage.main(tune_args(params, tune_env))
    study = load_study(tune_env)
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["pid"] for t in study.trials} and len(
        {t.user_attrs["pid"] for t in study.trials}) == 2
    children = child_runs(MlflowClient())
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert all(r.info.status == "FINISHED" for r in children)


def test_sqlite_storage_refused_for_parallel_workers(tune_env: Path, monkeypatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    params = csv_tune_params(tune_env, n_workers=2)
    run_stages(params, tune_env, upto="augment")
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tune_env / 'optuna.db'}")
    with pytest.raises(SystemExit) as info:
        tune_stage.main(tune_args(params, tune_env))
    assert info.value.code == 2
    assert "tune.n_workers = 2: SQLite" in capsys.readouterr().err
    assert not (tune_env / "best_params.json").exists()


def trial_run_opened(number: int) -> bool:
    """Whether trial `number` has its MLflow child run yet, in the store the worker uses."""
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not this process's last store
    experiment = client.get_experiment_by_name("binary-classification")
    return experiment is not None and bool(client.search_runs(
        [experiment.experiment_id], f"tags.`optuna.trial_number` = '{number}'"))


def kill_inside_trial(params: Path, root: Path, journal: str, completed: int, out: str) -> int:
    """Run the tune stage in a subprocess; SIGKILL it once `completed` trials are done and the
    next one is running. Return the killed pid."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.tune",
                             *tune_args(params, root, out)], cwd=root,
                            env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if not (root / journal).exists() or proc.poll() is not None:
                continue
            try:
                trials = load_study(root, journal).trials
            except ValueError:  # the journal file exists before the study is written to it
                continue
            states = [t.state.name for t in trials]
            # Once the worker has marked the trial as its own (a few ms after creating it) and
            # opened its MLflow run (the test checks that run ends KILLED; killed earlier, the
            # trial would have no run at all).
            if states.count("COMPLETE") == completed and states[-1:] == ["RUNNING"] \
                    and "pid" in trials[-1].user_attrs and trial_run_opened(completed):
                break
        else:
            pytest.fail(f"tuning never reached a running trial after {completed} complete")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.pid


@pytest.mark.slow
def test_kill_anywhere_then_rerun_gives_the_uninterrupted_result(tune_env: Path,
                                                                 monkeypatch) -> None:
    # Trials long enough that the kill lands inside one; no pruning, so trials finish in order.
    params = csv_tune_params(tune_env, rows=300, n_trials=7, pruner="none")
    Path(params).write_text(Path(params).read_text().replace("epochs: 6", "epochs: 60"))
    run_stages(params, tune_env, upto="augment")

    def use_stores(name: str) -> str:
        monkeypatch.setenv("OPTUNA_STORAGE", str(tune_env / f"{name}.journal"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tune_env / name}.db")
        return f"{name}.journal"

    def tune_and_train(name: str) -> tuple[bytes, str]:
        tune_stage.main(tune_args(params, tune_env, f"{name}.json"))
        best = tune_env / f"{name}.json"
        p = stage_paths(tune_env)
        train_stage.main(["--params", str(params), "--data-dir", p["processed"], "--train-dir",
                          p["augmented"], "--best-params", str(best), "--out",
                          str(tune_env / name / "models"), "--reports",
                          str(tune_env / name / "reports")])
        weights = tune_env / name / "models" / "model.safetensors"
        return best.read_bytes(), hashlib.sha256(weights.read_bytes()).hexdigest()

    def history(journal: str) -> list[tuple[dict, float]]:
        return [(t.params, t.value) for t in load_study(tune_env, journal).trials
                if t.state.name == "COMPLETE"]

    use_stores("straight")
    straight = tune_and_train("straight")
    straight_history = history("straight.journal")
    assert len(straight_history) == 7
    # Kill inside a random start-up trial (after 2) and inside a TPE trial (after 5).
    for completed in (2, 5):
        name = f"killed{completed}"
        journal = use_stores(name)
        pid = kill_inside_trial(params, tune_env, journal, completed, f"{name}.json")
        assert tune_and_train(name) == straight, f"killed after {completed} trials"
        # Not just the same winner: the same trials, in the same order, with the same scores.
        assert history(journal) == straight_history
        study = load_study(tune_env, journal)
        (killed,) = [t for t in study.trials if t.state.name == "FAIL"]
        assert killed.number == completed and killed.user_attrs["pid"] == pid
        # The next trial redraws the dead one's params (all of them, even if it died between
        # two suggestions) and completes.
        retried = study.trials[completed + 1]
        assert retried.params.items() >= killed.params.items()
        assert retried.params == straight_history[completed][0]
        assert "RUNNING" not in [t.state.name for t in study.trials]
        runs = MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name("binary-classification").experiment_id])
        assert not [r for r in runs if r.info.status == "RUNNING"]
        statuses = {r.data.tags.get("optuna.trial_number"): r.info.status for r in runs}
        assert statuses[str(completed)] == "KILLED"


PG_URL = os.environ.get("PIPELINE_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


@pytest.mark.services
def test_postgres_storage_with_heartbeat(tune_env: Path, monkeypatch) -> None:
    """Teams point OPTUNA_STORAGE at PostgreSQL; the stage runs there with heartbeats."""
    import sqlalchemy

    # This machine kind (and CI) runs PostgreSQL on loopback: a missing server is a failure.
    engine = sqlalchemy.create_engine(PG_URL)
    engine.connect().close()
    params = csv_tune_params(tune_env, n_trials=3, pruner="none")
    run_stages(params, tune_env, upto="augment")
    monkeypatch.setenv("OPTUNA_STORAGE", PG_URL)
    # The study name is content-derived, so an earlier CI run's study would be resumed: start clean.
    storage = optuna.storages.RDBStorage(PG_URL)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith("binary-classification-"):
            optuna.delete_study(study_name=summary.study_name, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated Optuna arguments
        tune_stage.main(tune_args(params, tune_env, "best.json"))
    name = json.loads((tune_env / "best.json").read_text())["study_name"]
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # Each trial beat a heartbeat into the database (what lets other hosts fail dead trials).
    with engine.connect() as conn:
        beats = conn.execute(sqlalchemy.text(
            "select count(*) from trial_heartbeats h join trials t on h.trial_id = t.trial_id "
            "join studies s on s.study_id = t.study_id where s.study_name = :name"),
            {"name": name}).scalar()
    assert beats == 3


@pytest.mark.slow  # a study, the train stage, and a train stage with other params
@pytest.mark.parametrize("metric", ["roc_auc", "log_loss"])
def test_trials_train_exactly_like_the_train_stage(tune_env: Path, imagefolder: Path,
                                                   metric: str) -> None:
    """A trial with the train stage's params gets the train stage's score (early-stopped on
    the same tune.metric), online augment on."""
    tmp_path = tune_env
    params = write_params(tmp_path / "params.yaml", {
        "data": tiny_images(imagefolder),
        "model": {"type": "cnn"}, "augment": {"hflip": True},
        "train": {"epochs": 4, "online_augment": True},
        # One point in the space: the trial must train exactly what train will train.
        "tune": {"enabled": True, "n_trials": 1, "pruner": "none", "metric": metric,
                 "search_space": {"train.lr": {"choices": [0.01]}}}})
    run_stages(params, tmp_path, upto="augment")
    tune_stage.main(tune_args(params, tmp_path, "models/best_params.json"))
    best = json.loads((tmp_path / "models" / "best_params.json").read_text())
    paths = run_stages(params, tmp_path, upto="train")
    trained = json.loads((Path(paths["reports"]) / "train_metrics.json").read_text())
    assert best["params"] == {"train.lr": 0.01}
    assert best["value"] == trained[f"best_val_{metric}"]
    # Epoch by epoch, the trial's validation loss is the train stage's (float-exact).
    (trial,) = child_runs(MlflowClient())
    trial_losses = [m.value for m in sorted(MlflowClient().get_metric_history(
        trial.info.run_id, "val_loss"), key=lambda m: m.step)]
    history = json.loads((Path(paths["reports"]) / "train_history.json").read_text())
    assert trial_losses == [row["val_loss"] for row in history]
    # ...and the loss that breaks ties between trials is the one at the kept epoch.
    (done,) = load_study(tmp_path).trials
    assert done.user_attrs[LOSS_ATTR] == history[trained["best_epoch"] - 1]["val_loss"]
    # Without online augmentation the losses differ, so the equality above is no coincidence.
    plain = write_params(tmp_path / "plain.yaml", {**yaml.safe_load(params.read_text()),
                                                    "train": {"epochs": 4, "lr": 0.01}})
    other = run_stages(plain, tmp_path / "plain", upto="train")
    assert [row["val_loss"] for row in json.loads(
        (Path(other["reports"]) / "train_history.json").read_text())] != trial_losses


@pytest.mark.slow  # two 10-trial studies per pruner
@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_reporting_only_the_epochs_the_pruner_reads_changes_no_decision(
        tune_env: Path, pruner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.tuning.objective

    assert pipeline.tuning.objective.report_epochs(pruner, 20) == {2, 6, 18}
    params = csv_tune_params(tune_env, n_trials=10, pruner=pruner)
    run_stages(params, tune_env, upto="augment")
    outcomes = []
    for journal, steps in (("sparse.journal", pipeline.tuning.objective.report_epochs),
                           ("dense.journal", lambda name, epochs: None)):
        monkeypatch.setenv("OPTUNA_STORAGE", str(tune_env / journal))
        monkeypatch.setattr(pipeline.tuning.objective, "report_epochs", steps)
        tune_stage.main(tune_args(params, tune_env, f"{journal}.json"))
        study = load_study(tune_env, journal)
        outcomes.append([(t.state, t.params, t.value, t.user_attrs["epochs_run"],
                          {s: v for s, v in t.intermediate_values.items() if s in (2, 6)})
                         for t in study.trials])
    sparse, dense = outcomes
    assert sparse == dense  # same pruned trials, same epochs trained, same values at rungs
    assert any(state == optuna.trial.TrialState.PRUNED for state, *_ in sparse)
    assert len(load_study(tune_env, "sparse.journal").trials[0].intermediate_values) <= 2


def test_dead_trials_runs_end_killed_even_when_closed_before_optuna_heard(mlflow_uri: str
                                                                          ) -> None:
    from pipeline.tracking import store
    from pipeline.tuning import trial_runs

    store.configure()
    exp = store.experiment_id("e")
    parent = MlflowClient().create_run(exp).info.run_id
    # Trial 0 closed its run and then its worker died before telling Optuna; trial 1 died
    # mid-way; trial 2 raised (FAILED by its own hand); trial 3 completed and was told.
    for number, state in ((0, "COMPLETE"), (2, None), (3, "COMPLETE")):
        with pytest.raises(RuntimeError) if state is None else contextlib.nullcontext(), \
                trial_runs.trial_run(exp, parent, "s", number, {}, "digits") as run:
            if state is None:
                raise RuntimeError("boom")
            run.state = state
    MlflowClient().create_run(exp, tags={"optuna.study_name": "s", "optuna.trial_number": "1",
                                         "optuna.trial_state": "RUNNING"})
    trial_runs.end_trial_runs(exp, "s", [0, 1])
    runs = {r.data.tags["optuna.trial_number"]: r
            for r in MlflowClient().search_runs([exp], "tags.`optuna.trial_number` != ''")}
    seen = {n: (r.info.status, r.data.tags["optuna.trial_state"]) for n, r in runs.items()}
    assert seen == {"0": ("KILLED", "FAIL"), "1": ("KILLED", "FAIL"), "2": ("FAILED", "FAIL"),
                    "3": ("FINISHED", "COMPLETE")}


def test_sweep_ends_the_runs_of_trials_failed_by_anyone_once(mlflow_uri: str) -> None:
    # Optuna's own stale-trial check (at the start of another worker's trial) fails a dead
    # worker's trial without telling the pipeline: the next sweep still ends its run.
    from pipeline.tracking import store
    from pipeline.tuning import trial_runs

    store.configure()
    exp = store.experiment_id("e")
    study = optuna.create_study()
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), 0.5)
    client = MlflowClient()
    runs = [client.create_run(exp, tags={"optuna.study_name": "s", "optuna.trial_number": str(n),
                                         "optuna.trial_state": state}).info.run_id
            for n, state in ((0, "RUNNING"), (1, "COMPLETE"))]
    client.set_terminated(runs[1], "FINISHED")
    swept = trial_runs.DeadTrialRuns(exp, "s")
    swept.sweep(study.trials)
    assert [client.get_run(r).info.status for r in runs] == ["KILLED", "FINISHED"]
    assert client.get_run(runs[0]).data.tags["optuna.trial_state"] == "FAIL"
    assert swept.done == {0}


@pytest.mark.slow
def test_two_workers_best_trial_score_is_what_train_reproduces(
        tune_env: Path, imagefolder: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two workers train each trial on num_threads // 2 threads; train uses that count too
    (best_params.json says it), so it reproduces the best trial's score exactly."""
    tmp_path = tune_env
    caplog.set_level(logging.INFO, logger="pipeline.training.fit")
    params = write_params(tmp_path / "params.yaml", {
        "data": tiny_images(imagefolder),
        "model": {"type": "cnn"}, "train": {"epochs": 3, "num_threads": 2},
        "tune": {"enabled": True, "n_trials": 4, "n_workers": 2, "pruner": "none",
                 "metric": "log_loss",
                 "search_space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}}})
    run_stages(params, tmp_path, upto="augment")
    tune_stage.main(tune_args(params, tmp_path, "models/best_params.json"))
    best = json.loads((tmp_path / "models" / "best_params.json").read_text())
    study = load_study(tmp_path)
    assert {t.user_attrs["num_threads"] for t in study.trials} == {1} == {best["num_threads"]}
    assert best["value"] == study.best_value
    paths = run_stages(params, tmp_path, upto="train")
    trained = json.loads((Path(paths["reports"]) / "train_metrics.json").read_text())
    config = json.loads((Path(paths["models"]) / "model_config.json").read_text())
    assert config["train"]["num_threads"] == 1 and config["precision"] == "fp32"
    assert trained["best_val_log_loss"] == best["value"]
    assert "train.num_threads: 1 (the thread count the tuning trials ran with" in caplog.text
    # On params.yaml's 2 threads (a best_params.json without the count) the float sums differ,
    # so the equality above is no coincidence (measured: 0.0756178045 vs 0.0756178014).
    older = tmp_path / "older.json"
    older.write_text(json.dumps({k: v for k, v in best.items() if k != "num_threads"}))
    p = stage_paths(tmp_path)
    train_stage.main(["--params", str(params), "--data-dir", p["processed"], "--train-dir",
                      p["augmented"], "--best-params", str(older), "--out", str(tmp_path / "m2"),
                      "--reports", str(tmp_path / "r2")])
    two = json.loads((tmp_path / "r2" / "train_metrics.json").read_text())
    assert json.loads((tmp_path / "m2" / "model_config.json").read_text())[
        "train"]["num_threads"] == 2
    assert two["best_val_log_loss"] != best["value"]


def test_a_tie_on_the_objective_goes_to_the_lower_validation_loss() -> None:
    def add(study: optuna.Study, value: float, loss: float | None) -> None:
        attrs = {} if loss is None else {LOSS_ATTR: loss}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))

    study = optuna.create_study(direction="maximize")
    with pytest.raises(ValueError):
        best_trial(study)
    for value, loss in [(1.0, 0.30), (0.99, 0.01), (1.0, 0.05), (1.0, None), (1.0, 0.05)]:
        add(study, value, loss)
    assert best_trial(study).number == 2  # tied at 1.0: lowest loss, then the earliest
    assert study.best_trial.number == 0  # what Optuna alone would pick: the first of the tie
    add(study, 1.0 + 1e-12, 0.2)  # a fold mean's last bits: still the same tie
    assert best_trial(study).number == 2
    add(study, 1.0 + 1e-6, 0.9)  # a real gain wins whatever its loss
    assert best_trial(study).number == 6
    low = optuna.create_study(direction="minimize")  # tune.metric: log_loss
    for value, loss in [(0.2, 0.5), (0.1, 0.4), (0.1, 0.3)]:
        add(low, value, loss)
    assert best_trial(low).number == 2
