"""params.yaml loading: defaults, types and every rejection names the key and value."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import Params, default_mapping, load_params, parse_params
from pipeline.core.errors import ConfigError
from pipeline.stages import preprocess, validate
from tests.helpers import REPO


def stated_params(tmp_path: Path) -> Path:
    """The params.yaml under test, copied to tmp_path: the working tree's or the committed one."""
    # The working tree's while it states config.py's defaults (unchanged, or a default being
    # changed in both files); once `dvc exp run -S` has written an experiment into it, HEAD's.
    path = tmp_path / "params.yaml"
    with contextlib.suppress(ConfigError):
        if load_params(REPO / "params.yaml") == Params():
            path.write_text((REPO / "params.yaml").read_text())
            return path
    path.write_text(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, text=True,
                                   capture_output=True, check=True).stdout)
    return path


def test_repo_params_load_typed_and_frozen(tmp_path: Path) -> None:
    params = load_params(stated_params(tmp_path))
    assert isinstance(params, Params)
    assert params.data.source == "digits"
    assert isinstance(params.data.split.train, float)
    with pytest.raises(AttributeError):
        params.data.image_size = 3  # type: ignore[misc]


def test_empty_mapping_gives_defaults() -> None:
    assert parse_params({}) == Params()


def test_params_yaml_states_exactly_the_defaults(tmp_path: Path) -> None:
    # Defaults live in config.py; params.yaml spells them out for users and must agree.
    assert load_params(stated_params(tmp_path)) == Params()


@pytest.mark.parametrize(("source", "metric"), [
    ("digits", "roc_auc"), ("imagefolder", "roc_auc"),
    ("csv", "log_loss"), ("breast_cancer", "log_loss")])
def test_tune_metric_auto_is_resolved_by_the_kind_of_data(source: str, metric: str) -> None:
    params = parse_params({"data": {"source": source}})
    assert params.tune.metric == metric  # every stage and MLflow param sees the name that ran
    chosen = parse_params({"data": {"source": source}, "tune": {"metric": "f1"}})
    assert chosen.tune.metric == "f1"  # a named metric is kept for either kind


def test_default_mapping_states_auto_unresolved(tmp_path: Path) -> None:
    # What tests and benchmarks write as params.yaml before changing data.source: a resolved
    # roc_auc there would pin a table's copy to the image metric.
    stated = yaml.safe_load(stated_params(tmp_path).read_text())
    assert default_mapping()["tune"]["metric"] == stated["tune"]["metric"] == "auto"
    assert parse_params(default_mapping()) == Params()


def test_scientific_notation_without_dot_is_a_number() -> None:
    # PyYAML reads `1e-4` as a string; people write it that way all the time.
    params = parse_params(yaml.safe_load("train: {lr: 1e-4}"))
    assert params.train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"data": {"sauce": "digits"}}, "data.sauce: unknown key"),
    ({"data": {"split": {"train": 0.7, "val": 0.15, "test": 0.15, "x": 1}}}, "data.split.x"),
    ({"seed": "abc"}, "seed = 'abc': must be an integer"),
    ({"seed": 1.5}, "seed = 1.5"),
    ({"data": {"image_size": 3}}, "data.image_size = 3: must be in [4, 1024]"),
    ({"data": {"image_size": "big"}}, "data.image_size = 'big'"),
    ({"model": {"channels": [8]}}, "model.channels: renamed to model.conv_channels"),
    ({"data": {"channels": 2}}, "data.channels = 2"),
    ({"data": {"split": {"train": 1.2, "val": 0.1, "test": 0.1}}},
     "data.split.train = 1.2: must be in (0, 1)"),
    ({"data": {"split": {"train": 0.0, "val": 0.5, "test": 0.5}}}, "data.split.train = 0.0"),
    ({"data": {"split": {"train": 0.5, "val": 0.3, "test": 0.3}}},
     "data.split.train+val+test = 1.1: must sum to 1"),
    ({"data": {"skip_corrupt": "yes"}}, "data.skip_corrupt = 'yes': must be true or false"),
    ({"augment": {"copies": -1}}, "augment.copies = -1"),
    ({"augment": {"rotation": 400}}, "augment.rotation = 400.0"),
    ({"augment": "on"}, "augment = 'on': must be a mapping"),
    ({"train": {"lr": 0}}, "train.lr = 0.0: must be > 0"),
    ({"train": {"lr": float("inf")}}, "train.lr = inf: must be a finite number"),
    ({"mlflow": {"experiment": " "}}, "mlflow.experiment = ' ': must not be empty"),
    ({"train": {"weight_decay": float("nan")}}, "train.weight_decay = nan: must be a finite"),
    ({"train": {"optimizer": "lbfgs"}}, "train.optimizer = 'lbfgs'"),
    ({"train": {"precision": "fp16"}}, "train.precision = 'fp16'"),
    ({"model": {"hidden_sizes": 64}}, "model.hidden_sizes = 64: must be a list"),
    ({"evaluate": {"threshold": 1.5}}, "evaluate.threshold = 1.5"),
    ({"evaluate": {"threshold": "best"}}, "evaluate.threshold = 'best'"),
    ({"model": {"ensemble": 0}}, "model.ensemble = 0: must be in [1, 64]"),
    ({"model": {"embedding": "periodic"}},
     "model.embedding = 'periodic': is for mlp, not 'cnn' (use auto or none)"),
    ({"model": {"type": "resnet18", "ensemble": 3}},
     "model.ensemble = 3: is for logreg, mlp and cnn, not 'resnet18'"),
    ({"data": {"categorical_columns": ["cp", "cp"]}},
     "data.categorical_columns = ['cp', 'cp']: lists a column twice"),
    ({"data": {"numeric_scaling": "robust"}}, "data.numeric_scaling = 'robust'"),
    ({"data": {"source": "mnist"}}, "data.source = 'mnist': must be one of ["),
    ({"tune": {"metric": "auc"}}, "tune.metric = 'auc'"),
])
def test_rejections_name_key_and_value(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert needle in str(info.value)


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("data: {image_size: 2}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: data\.image_size = 2"):
        load_params(path)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: params file is empty"):
        load_params(path)


def test_stage_exits_nonzero_and_writes_nothing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data: {split: {train: 0.9, val: 0.2, test: 0.1}}\n")
    out = tmp_path / "processed"
    with pytest.raises(SystemExit) as info:
        preprocess.main(["--params", str(params), "--out", str(out)])
    assert info.value.code == 2
    assert "must sum to 1" in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [params]


@pytest.mark.parametrize(("path", "ok"), [
    ("data/raw/digits", True), ("data/raw/my.csv", True), ("data/elsewhere", False),
    ("/tmp/abs/images", False), ("data/raw/../../outside", False),
])
def test_validate_stage_refuses_data_dvc_cannot_track(tmp_path: Path, path: str, ok: bool,
                                                      capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"path": path}}))
    argv = ["--params", str(params), "--dvc-yaml", str(REPO / "dvc.yaml"),
            "--out", str(tmp_path / "check.json")]
    if ok:
        validate.main(argv)
        assert (tmp_path / "check.json").read_text() == '{\n  "params": "valid"\n}\n'
        return
    with pytest.raises(SystemExit) as info:
        validate.main(argv)
    assert info.value.code == 2
    assert f"data.path = {path!r}: not inside the preprocess stage's DVC dependencies (data/raw)" \
        in capsys.readouterr().err
    assert not (tmp_path / "check.json").exists()


@pytest.mark.parametrize(("weights", "error"), [
    ("data/weights/r18.pth", None),
    ("data/raw/r18.pth", "model.weights = 'data/raw/r18.pth': not inside the tune and train "
                         "stage's DVC dependencies (data/augmented, data/processed, data/weights)"),
    ("data/weights/gone.pth", "model.weights = 'data/weights/gone.pth': file not found"),
])
def test_validate_stage_refuses_checkpoints_dvc_cannot_track_or_find(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str, error: str | None,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # the checkpoint path is relative to the checkout
    for folder in ("data/weights", "data/raw"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "r18.pth").write_bytes(b"checked when loaded, not here")
    Path("params.yaml").write_text(yaml.safe_dump({"model": {"type": "resnet18",
                                                             "weights": weights}}))
    argv = ["--params", "params.yaml", "--dvc-yaml", str(REPO / "dvc.yaml"), "--out", "c.json"]
    if error is None:
        validate.main(argv)
        assert Path("c.json").is_file()
        return
    with pytest.raises(SystemExit) as info:
        validate.main(argv)
    assert info.value.code == 2
    assert error in capsys.readouterr().err
    assert not Path("c.json").exists()


@pytest.mark.slow  # real `dvc exp run`
def test_dvc_exp_run_set_changes_only_its_own_line(tmp_path: Path) -> None:
    # `dvc exp run -S` rewrites the whole params.yaml (ruamel round trip: flow lists become
    # block lists, null becomes empty); in that layout an experiment's diff is its own lines.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    before = stated_params(tmp_path).read_text()
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: 'true'\n    params: [train.lr]\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "exp", "run", "-S", "train.lr=0.01"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, check=True, timeout=120)
    after = (tmp_path / "params.yaml").read_text().splitlines()
    diff = [line for line in difflib.unified_diff(before.splitlines(), after, n=0, lineterm="")
            if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
    assert len(diff) == 2 and diff[0].startswith("-  lr: ") and re.fullmatch(
        r"\+  lr: 0\.01 *(#.*)?", diff[1]), "\n".join(diff)


# Files a user's runs create or rewrite in their checkout; tests build their own under tmp_path.
WORKSPACE_STATE = r"params\.yaml|dvc\.lock|data\b|reports\b|models\b|mlflow\.db|optuna\.journal"
# stated_params: the working tree's params.yaml only when it states the defaults.
ALLOWED = {("test_config.py", 'REPO / "params.yaml"')}


def test_no_test_reads_the_checkouts_workspace_state() -> None:
    found = {(path.name, hit) for folder in ("tests", "benchmarks")
             for path in sorted((REPO / folder).glob("*.py"))
             for hit in re.findall(rf'REPO(?:\s*/\s*|\.joinpath\()"(?:{WORKSPACE_STATE})[^"]*"',
                                   path.read_text())}
    assert found <= ALLOWED, "read it from git (HEAD), the package defaults or tmp_path"
