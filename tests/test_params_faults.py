"""params.yaml faults (duplicate keys, library ranges), one validation for every entry point,
and credentials masked in every form the database drivers accept."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from pipeline.cli import tune_worker
from pipeline.core.config import SEED_MAX, load_params
from pipeline.core.errors import ConfigError, StoreError
from pipeline.core.services import check_database, mask
from pipeline.stages import validate
from tests.helpers import PG_ADMIN, REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "needle"), [
    ("seed: 1\ntrain:\n  lr: 0.1\n  batch_size: 32\n  lr: 0.2\n",
     "key 'train.lr' appears twice (lines 3 and 5)"),
    ("seed: 1\nseed: 2\n", "key 'seed' appears twice (lines 1 and 2)"),
    ("tune:\n  search_space:\n    train.lr: {low: 0.1, high: 0.2, low: 0.01}\n",
     "key 'tune.search_space.train.lr.low' appears twice (lines 3 and 3)"),
    ("train: {lr: 0.1}\ntrain: {epochs: 2}\n", "key 'train' appears twice (lines 1 and 2)"),
    ('train:\n  lr: 0.1\n  "lr": 0.2\n', "key 'train.lr' appears twice (lines 2 and 3)"),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path: Path, text: str,
                                                               needle: str) -> None:
    with pytest.raises(ConfigError, match=r"params\.yaml: " + needle.replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        load_params(write(tmp_path, text))


def test_merge_keys_may_be_overridden_and_anchors_are_checked_where_defined(
        tmp_path: Path) -> None:
    # `<<: *anchor` then a key of its own is how YAML overrides a merged value, not a mistake.
    text = ("train: &t\n  lr: 0.01\n  epochs: 3\nmodel: {dropout: 0.2}\n"
            "augment:\n  <<: {copies: 1, rotation: 5.0}\n  copies: 0\n")
    params = load_params(write(tmp_path, text))
    assert params.augment.copies == 0 and params.augment.rotation == 5.0
    with pytest.raises(ConfigError, match=r"key 'train\.lr' appears twice \(lines 2 and 3\)"):
        load_params(write(tmp_path, "train: &t\n  lr: 0.01\n  lr: 0.02\nx: *t\n"))


def test_yaml_errors_are_one_line_with_the_position(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 1: ") as err:
        load_params(write(tmp_path, "train: [unclosed\n"))
    assert "\n" not in str(err.value)
    (tmp_path / "params.yaml").write_bytes(b"seed: 1\ndata: {path: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 2, byte b'\\xe9'\)"):
        load_params(tmp_path / "params.yaml")


def edge(key: str, value: object) -> dict:
    section, _, name = key.rpartition(".")
    body: dict = {"tune": {"enabled": False}, "model": {"type": "logreg"}}
    if section:
        body.setdefault(section, {})[name] = value
    else:
        body[name] = value
    return body


# key: (lowest accepted, highest accepted); one step beyond either end is refused.
BOUNDS = {"seed": (0, SEED_MAX), "train.batch_size": (1, 2**63 - 1),
          "train.epochs": (1, 2**63 - 1), "train.num_threads": (1, 1024),
          "tune.n_workers": (1, 1024), "tune.n_trials": (1, 2**63 - 1),
          "augment.copies": (0, 50), "data.image_size": (4, 1024),
          "train.patience": (0, 2**63 - 1), "register.min_gate_rows": (1, 2**63 - 1)}


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_every_integer_range_the_libraries_impose(tmp_path: Path, key: str) -> None:
    low, high = BOUNDS[key]
    for ok in (low, high):
        load_params(write(tmp_path, yaml.safe_dump(edge(key, ok))))
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=rf"{key} = {bad}: "):
            load_params(write(tmp_path, yaml.safe_dump(edge(key, bad))))


def test_the_issue_seed_is_refused_by_validate(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    params = write(tmp_path, "seed: 4294967296\n")
    with pytest.raises(SystemExit) as exit_:
        validate.main(["--params", str(params), "--dvc-yaml", str(REPO / "dvc.yaml"),
                       "--out", str(tmp_path / "out.json")])
    assert exit_.value.code == 2 and not (tmp_path / "out.json").exists()
    assert "seed = 4294967296: must be in [0, 4294967295]" in capsys.readouterr().err


@pytest.mark.parametrize(("body", "needle"), [
    ({"train": {"batch_size": 1}, "tune": {"enabled": False}},
     "train.batch_size = 1: model.type 'cnn' trains BatchNorm"),
    ({"tune": {"search_space": {"train.batch_size": {"low": 1, "high": 64}}}},
     "tune.search_space.train.batch_size = 1: model.type 'cnn'"),
    ({"model": {"type": "logreg"}, "train": {"batch_size": 1},
      "tune": {"search_space": {"model.type": {"choices": ["logreg", "resnet18"]}}}},
     "train.batch_size = 1: model.type 'resnet18'"),
    ({"tune": {"search_space": {"model.hidden_sizes": {"choices": [[8], [16]]}}}},
     "Optuna tunes only plain values"),
    ({"tune": {"search_space": {"train.batch_size": {"choices": [32, 32]}}}},
     "lists a value twice"),
])
def test_search_space_and_batch_norm_limits(tmp_path: Path, body: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_params(write(tmp_path, yaml.safe_dump(body)))


def test_batch_size_one_is_fine_where_no_batch_norm_trains(tmp_path: Path) -> None:
    for body in ({"model": {"type": "mlp"}, "train": {"batch_size": 1}},
                 {"train": {"batch_size": 1}},  # tuned: the search space's sizes are used
                 {"tune": {"search_space": {"train.batch_size": {"choices": [2, 8]}}}}):
        load_params(write(tmp_path, yaml.safe_dump(body)))


@pytest.mark.parametrize("text", ["seed: 1\nseed: 2\n", "seed: 4294967296\n",
                                  "data: {path: /tmp/elsewhere}\n",
                                  "model: {type: resnet18, weights: data/weights/none.pth}\n"])
def test_tune_worker_validates_exactly_as_the_validate_stage(
        tmp_path: Path, text: str, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # a worker runs in a checkout: dvc.yaml is there
    params = write(tmp_path, text)
    errors = []
    for main, argv in ((validate.main, ["--out", str(tmp_path / "out.json")]),
                       (tune_worker.main, [])):
        with pytest.raises(SystemExit) as exit_:
            main(["--params", str(params), *argv])
        assert exit_.value.code == 2
        errors.append(capsys.readouterr().err.strip())
    assert errors[0] == errors[1] and errors[0].startswith("error: ")


SECRET = "hunter2"
FORMS = [
    "postgresql://u:hunter2@h:5432/db", "postgresql://u:hun@ter2@h/db",
    "postgresql://h/db?user=u&password=hunter2", "postgresql://h/db?user=u&Password=hunter2",
    "postgresql://h/db?sslpassword=hunter2", "mysql://h/db?user=u&passwd=hunter2&x=1",
    "mssql+pyodbc://h/db?driver=d&PWD=hunter2", "http://h/api?token=hunter2",
    "postgresql://h/db?secret=hunter2#frag", "host=h user=u password=hunter2 dbname=d",
    "host=h password = 'hun ter2' port=1", "DRIVER={d};SERVER=h;UID=u;PWD={hunter2};",
    "connect args {'password': 'hunter2'}", "error: OPTUNA_STORAGE='postgresql://u:hunter2@h/'",
]


@pytest.mark.parametrize("text", FORMS)
def test_mask_hides_every_credential_form(text: str) -> None:
    masked = mask(text)
    assert SECRET not in masked and "hun ter2" not in masked and "***" in masked


def test_mask_keeps_what_holds_no_secret_and_hides_secret_env_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("sqlite:///mlflow.db", "http://127.0.0.1:5000", "optuna.journal",
                 "postgresql://u@h/db?sslmode=require", 'password authentication failed'):
        assert mask(text) == text
    monkeypatch.setenv("PGPASSWORD", "s3cr3t-value")
    assert mask("FATAL: bad s3cr3t-value") == "FATAL: bad ***"


def test_errors_logs_and_study_tags_hold_no_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> None:
    url = "postgresql://127.0.0.1:1/db?user=u&password=hunter2"  # nothing listens on port 1
    with pytest.raises(StoreError) as err:
        check_database(url, "OPTUNA_STORAGE")
    assert SECRET not in str(err.value) and "password=***" in str(err.value)
    monkeypatch.setenv("OPTUNA_STORAGE", url)
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        tune_worker.main(["--params", str(write(tmp_path, "seed: 1\n"))])
    out = capsys.readouterr()
    assert SECRET not in out.err + out.out and "password=***" in out.err
    from pipeline.core.locks import lock_for

    with caplog.at_level(logging.WARNING):
        lock_for("mysql://h/db?user=u&password=hunter2", "x")
    assert "password=***" in caplog.text and SECRET not in caplog.text


@pytest.mark.services
def test_study_tags_hold_no_password(mlflow_uri: str) -> None:
    # The storage URL is real (the study's parent run is created under a lock in it).
    from mlflow.tracking import MlflowClient

    from pipeline.core.config import Params
    from pipeline.core.tags import Tag
    from pipeline.tracking import store
    from pipeline.tuning import tune

    store.configure()
    storage = PG_ADMIN + ("&" if "?" in PG_ADMIN else "?") + "password=hunter2"  # trust auth
    run = MlflowClient().get_run(tune.parent_run_id(Params(), "masked-study", storage))
    assert SECRET not in str(run.data.tags) and "password=***" in run.data.tags[Tag.STORAGE]
