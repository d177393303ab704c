"""The champion/challenger gate compares both models only on test rows neither learned from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from pipeline.core import fingerprints
from pipeline.core.config import RegisterConfig
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta
from pipeline.registry.audit import unseen_by
from pipeline.registry.contract import IMAGE_INPUTS, Contract, ContractError
from pipeline.registry.gate import check_contract, comparison, decide, enough, score
from pipeline.registry.register import contract_of
from pipeline.stages import register
from tests.helpers import make_csv, run_stages, write_params

NAME = "spam-filter"  # one explicit register.model_name: the runs below share it


def register_stage(params: Path, paths: dict[str, str], out: Path) -> dict:
    """Run the register stage in-process; return its report."""
    register.main(["--params", str(params), "--data-dir", paths["processed"], "--train-dir",
                   paths["augmented"], "--model-dir", paths["models"], "--metrics",
                   str(Path(paths["reports"]) / "metrics.json"), "--out", str(out)])
    return json.loads(out.read_text())


def learned_by(version: str, into: Path) -> set[str]:
    """The fingerprints a registered version says it learned from (its artifact)."""
    folder = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(into))
    return fingerprints.read_learned(Path(folder) / "artifacts" / fingerprints.LEARNED_FILE)


@pytest.mark.slow  # several pipelines and registrations
def test_other_split_is_compared_on_rows_neither_model_learned_from(
        tmp_path: Path, mlflow_uri: str) -> None:
    csv = make_csv(tmp_path / "t.csv", rows=240)
    data = {"source": "csv", "path": str(csv), "target": "label", "positive_class": "spam"}
    reports = {}
    for seed in (0, 1):
        params = write_params(tmp_path / f"s{seed}.yaml", {
            "seed": seed, "data": data, "model": {"type": "logreg"},
            "register": {"min_gate_rows": 5, "model_name": NAME}})
        paths = run_stages(params, tmp_path / f"s{seed}")
        reports[seed] = register_stage(params, paths, tmp_path / f"s{seed}.json")
    challenger = reports[1]
    seen = fingerprints.read(paths["processed"])  # the seed-1 split: today's
    champion_learned = learned_by("1", tmp_path / "v1")
    challenger_learned = learned_by("2", tmp_path / "v2")
    assert challenger_learned == set(seen["train"]) | set(seen["val"])
    test = seen["test"]
    clean = [f for f in test if f not in champion_learned | challenger_learned]
    # Most of today's test rows were in the champion's train or validation split.
    assert 5 <= len(clean) < len(test) / 2
    assert challenger["compared_rows"] == len(clean)
    assert challenger["excluded_rows"] == len(test) - len(clean)
    assert challenger["overlap"] == "known" and challenger["champion_version"] in ("1", "2")
    assert f"compared on {len(clean)} test rows neither model learned from" in \
        challenger["reason"]
    assert f"{len(test) - len(clean)} excluded" in challenger["reason"]


def test_too_few_new_rows_or_one_class_keeps_the_champion_and_says_why() -> None:
    cfg = RegisterConfig(metric="roc_auc", min_gate_rows=3)
    test = ["a", "b", "c", "d", "e"]
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    few = comparison(test, {"a"}, {"b", "c"})  # d, e: two rows, below the minimum
    one_class = comparison(test, {"a"}, {"c"})  # b, d, e: three rows, all positive
    assert not enough(few, y, cfg.min_gate_rows) and not enough(one_class, y, cfg.min_gate_rows)
    assert enough(comparison(test, set(), {"e"}), y, cfg.min_gate_rows)
    kept = decide(cfg, None, None, "4", compared=few)
    assert not kept.promote and kept.champion_version == "4"
    assert kept.challenger_score is None and kept.champion_score is None
    assert "register.min_gate_rows = 3" in kept.reason
    assert "compared on 2 test rows neither model learned from; 3 excluded" in kept.reason
    assert (kept.compared_rows, kept.excluded_rows, kept.overlap) == (2, 3, "known")


@pytest.mark.slow  # two pipelines, one a 60-epoch 256x256 MLP that memorises its rows
def test_a_champion_trained_on_todays_test_rows_cannot_win_by_them(
        tmp_path: Path, mlflow_uri: str) -> None:
    """The champion saw most of today's test rows (its table held them, twice over, so its
    own validation rewarded memorising them); the gate scores it on the others only."""
    rng = np.random.default_rng(0)
    rows = 600
    x = rng.normal(size=(rows, 4))
    label = np.where(x[:, 0] + rng.normal(scale=1.5, size=rows) > 0, "spam", "ham")
    table = pd.DataFrame(x, columns=["x1", "x2", "x3", "x4"]).assign(label=label)
    table.to_csv(tmp_path / "today.csv", index=False)
    data = {"target": "label", "positive_class": "spam", "source": "csv"}
    # Accuracy: memorised rows are right, not merely confident (log loss would punish the
    # champion's overconfident misses elsewhere more than it gains).
    gate = {"metric": "accuracy", "min_gate_rows": 10, "model_name": NAME}
    # Today's split first (the challenger's), so the champion can be rigged against it.
    challenger = write_params(tmp_path / "challenger.yaml", {
        "data": {**data, "path": str(tmp_path / "today.csv")}, "model": {"type": "logreg"},
        "train": {"epochs": 10, "lr": 0.05}, "register": gate})
    today = run_stages(challenger, tmp_path / "challenger")
    test_ids = [int(i) for i in json.loads(Path(today["processed"], "ids.json").read_text())[
        "test"]]
    held_out = test_ids[:20]  # the only test rows the champion never sees
    rigged = table.drop(index=held_out)
    pd.concat([rigged, rigged]).to_csv(tmp_path / "rigged.csv", index=False)
    champion = write_params(tmp_path / "champion.yaml", {
        "data": {**data, "path": str(tmp_path / "rigged.csv")},
        "model": {"type": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0},
        "train": {"epochs": 60, "lr": 0.01, "weight_decay": 0.0, "batch_size": 32},
        "register": gate})
    v1 = register_stage(champion, run_stages(champion, tmp_path / "champion"),
                        tmp_path / "v1.json")
    assert v1["version"] == "1" and v1["promote"] is True
    v2 = register_stage(challenger, today, tmp_path / "v2.json")

    seen = fingerprints.read(today["processed"])
    learned = learned_by("1", tmp_path / "v1m") | learned_by("2", tmp_path / "v2m")
    clean = np.array([f not in learned for f in seen["test"]])
    assert clean.sum() == v2["compared_rows"] >= 20
    assert all(seen["test"][test_ids.index(i)] not in learned for i in held_out)
    # Re-score both as the gate does: on all of today's test rows the rigged champion looks
    # better, because it learned most of them; on the rows it did not learn, it is not.
    frame = table.loc[test_ids].drop(columns=["label"])
    y = (table.loc[test_ids, "label"] == "spam").to_numpy(dtype=np.float64)
    everything = np.ones(len(y), dtype=bool)
    old = score(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1",
                                                    dst_path=str(tmp_path / "s1")), frame)
    new = score(mlflow.artifacts.download_artifacts(f"models:/{NAME}/2",
                                                    dst_path=str(tmp_path / "s2")), frame)
    assert old.metric(y, "spam", "accuracy", everything) > new.metric(y, "spam", "accuracy",
                                                                      everything)
    assert v2["champion_score"] == pytest.approx(old.metric(y, "spam", "accuracy", clean))
    assert v2["challenger_score"] == pytest.approx(new.metric(y, "spam", "accuracy", clean))
    # Its score in the decision is the honest one, well below its score on rows it learned.
    assert v2["champion_score"] < old.metric(y, "spam", "accuracy", everything) - 0.1


def test_a_champion_without_a_record_is_compared_as_before_and_says_so() -> None:
    compared = comparison(["a", "b", "c", "d"], {"a"}, None)
    assert compared.rows.tolist() == [False, True, True, True] and compared.overlap == "unknown"
    decision = decide(RegisterConfig(metric="roc_auc"), 0.9, 0.8, "3", compared=compared)
    assert decision.promote and decision.overlap == "unknown"
    assert "overlap with them is unknown" in decision.reason
    assert f"compared on 3 test rows {unseen_by(False)};" in decision.reason
    assert (decision.compared_rows, decision.excluded_rows) == (3, 1)


@pytest.mark.slow  # two pipelines and registrations
def test_a_model_of_another_task_is_refused_and_the_champion_stays(
        tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's breast-cancer example under the name the digits model serves, in small:
    a table of other columns under a name whose champion takes these columns."""
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    spam = make_csv(tmp_path / "t.csv", rows=80)
    other = tmp_path / "other.csv"
    pd.read_csv(spam).drop(columns=["flag"]).rename(columns={"x2": "x9"}).to_csv(other,
                                                                                  index=False)
    runs = {}
    for stem, csv in (("t", spam), ("other", other)):
        params = write_params(tmp_path / f"{stem}.yaml", {
            "data": {"source": "csv", "path": str(csv), "target": "label",
                     "positive_class": "spam", "split": split},
            "model": {"type": "logreg"}, "register": {"model_name": NAME}})
        runs[stem] = params, run_stages(params, tmp_path / stem)
    first = register_stage(*runs["t"], tmp_path / "t.json")
    assert first["model_name"] == NAME and first["promote"] is True
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        register_stage(*runs["other"], tmp_path / "other.json")
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    # Both contracts in words, how they differ, and the name to use (auto's, for this data).
    assert (f"error: registered model '{NAME}' serves table of 4 columns (x1, x2, colour, …) "
            "→ 'spam' vs 'ham' (champion v1); this model takes table of 3 columns (x1, x9, "
            "colour) → 'spam' vs 'ham'") in err
    assert "1 column only here (x9), 2 columns only there (x2, flag)" in err
    assert "set register.model_name to 'other-spam' (what register.model_name: auto" in err
    # Refused before anything was written: no version, no output, no failed run.
    client = MlflowClient(mlflow_uri)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert not (tmp_path / "other.json").exists()
    experiment = client.get_experiment_by_name("binary-classification")
    assert {r.info.status for r in client.search_runs([experiment.experiment_id])} == {
        "FINISHED"}
    # The auto name is free and takes it; a champion registered before versions carried a
    # contract tag is read from its logged model; a taken auto name gets the contract's hash.
    mine = contract_of(DatasetMeta.read(Path(runs["other"][1]["processed"]) / "meta.json"))
    client.delete_model_version_tag(NAME, "1", Tag.CONTRACT)
    with pytest.raises(ContractError, match=f"'{NAME}-{mine.fingerprint()}'"):
        check_contract(client, NAME, mine, auto_name=NAME)
    check_contract(client, "other-spam", mine, auto_name="other-spam")  # a new name: fine


class Constant(mlflow.pyfunc.PythonModel):
    """A stand-in pyfunc: only its logged signature and metadata matter to the contract."""

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"probability": [0.5] * len(model_input)})


def old_version(client: MlflowClient, name: str, inputs: Schema, said: dict | None,
                tag: str | None = None, champion: bool = True) -> str:
    """Register a version as older pipelines did: no contract tag (unless `tag`), the logged
    signature `inputs`, and `said` as its `pipeline` metadata (None: none at all)."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Constant(), signature=ModelSignature(inputs=inputs),
            pip_requirements=["mlflow"], metadata=None if said is None else {"pipeline": said})
    version = str(mlflow.register_model(info.model_uri, name).version)
    if tag is not None:
        client.set_model_version_tag(name, version, Tag.CONTRACT, tag)
    if champion:
        client.set_registered_model_alias(name, "champion", version)
    return version


LEGACY_IMAGES = Schema([ColSpec(DataType.binary, "image", required=False),
                        ColSpec(Array(DataType.double), "pixels", required=False)])


def test_an_image_champion_logged_before_pixels_were_any_serves_the_same_task(
        tmp_path: Path, mlflow_uri: str) -> None:
    """Before commit ddf4dc0 image versions logged `pixels` as `array` (now `any`); read from
    its signature (no contract tag), such a champion still serves today's image models."""
    client = MlflowClient(mlflow_uri)
    old_version(client, "digits-odd", LEGACY_IMAGES, {"kind": "image", "classes": ["even", "odd"],
                                                      "image": {"size": 8, "channels": 1}})
    assert Tag.CONTRACT not in client.get_model_version("digits-odd", "1").tags
    today = Contract.of("image", ("even", "odd"), list(IMAGE_INPUTS))
    check_contract(client, "digits-odd", today, auto_name="digits-odd")  # accepted
    with pytest.raises(ContractError) as info:
        check_contract(client, "digits-odd", Contract.of("image", ("odd", "even"),
                                                         list(IMAGE_INPUTS)), "digits-even")
    assert "another prediction task (labels odd/even, not even/odd)" in str(info.value)
    assert "the same task" not in str(info.value)


def test_a_champion_whose_contract_cannot_be_read_defers_to_the_newest_readable_version(
        tmp_path: Path, mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    table = Schema([ColSpec(DataType.double, "x1"), ColSpec(DataType.string, "colour")])
    served = Contract.of("table", ("ham", "spam"), [("x1", "double"), ("colour", "string")])
    old_version(client, NAME, table, None, tag=served.to_tag(), champion=False)
    old_version(client, NAME, table, None, tag="{not json")  # v2, the champion: unreadable
    other = Contract.of("table", ("ham", "spam"), [("x9", "double")])
    with pytest.raises(ContractError, match=r"\(v1, its newest readable version \(champion v2's "
                       r"contract cannot be read\)\); this model takes table of 1 column \(x9\)"):
        check_contract(client, NAME, other, auto_name="other-spam")
    check_contract(client, NAME, served, auto_name=NAME)  # the task v1 says: accepted


def test_a_name_with_no_readable_contract_warns_and_registers(
        tmp_path: Path, mlflow_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    client = MlflowClient(mlflow_uri)
    old_version(client, NAME, Schema([ColSpec(DataType.double, "x1")]), None)
    with caplog.at_level(logging.WARNING, logger="pipeline.registry.gate"):
        check_contract(client, NAME, Contract.of("table", ("a", "b"), [("y", "double")]), NAME)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pipeline.registry.gate"]
    assert warning.startswith(f"registered model '{NAME}': none of its 1 versions (newest v1) "
                              "has an input contract that can be read")
    assert "set register.model_name to a name of its own" in warning
