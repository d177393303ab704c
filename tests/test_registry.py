"""Raw-input pyfunc, registration with a champion/challenger gate, predict CLI and serving."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.cli import predict as predict_cli
from pipeline.core.config import RegisterConfig
from pipeline.core.tags import Tag
from pipeline.registry.contract import Contract
from pipeline.registry.gate import decide, download, score
from pipeline.registry.register import audit_trail
from pipeline.stages import evaluate, register, train
from tests.helpers import (
    REPO,
    invoke_images,
    make_csv,
    register_args,
    run_stages,
    served_model,
    write_params,
)

NAME = "images-dog"  # register.model_name: auto for the "images" folder, positive class dog
CSV_NAME = "t-spam"  # ... and for t.csv, positive class spam


def test_first_version_is_champion_with_lineage_tags(tiny_pipeline: dict) -> None:
    report = json.loads((tiny_pipeline["root"] / "registration.json").read_text())
    assert report["version"] == "1" and report["promote"] is True
    assert report["reason"] == "first version: no champion yet"
    client = MlflowClient(tiny_pipeline["uri"])
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
    tags = version.tags
    for key in ("test_roc_auc", "test_accuracy", Tag.PROCESSED, Tag.AUGMENTED, Tag.GIT_COMMIT,
                Tag.PARAMS_SHA, Tag.MODEL_SHA, Tag.RUN_ID, "decision", "decision_reason"):
        assert key in tags, key
    assert tags[Tag.RUN_ID] == report["run_id"] == version.run_id
    run = client.get_run(tags[Tag.RUN_ID])
    # One fact, one name: the run and the version carry the same lineage tags.
    for key in (Tag.PROCESSED, Tag.AUGMENTED, Tag.MODEL_SHA):
        assert run.data.tags[key] == tags[key], key
    assert run.info.status == "FINISHED"
    assert "test_roc_auc" in run.data.metrics  # same run as train + evaluate
    # register.model_name: auto named it after the data folder and the positive class.
    assert report["model_name"] == NAME and run.data.tags[Tag.REGISTERED_MODEL] == NAME
    # The version names its data and its input contract (machine-readable and in words).
    assert tags[Tag.DATA_SOURCE] == str(tiny_pipeline["images"])
    contract = Contract.from_tag(tags[Tag.CONTRACT])
    assert (contract.kind, contract.classes) == ("image", ("cat", "dog"))
    assert tags[Tag.CONTRACT_SUMMARY] == contract.describe() == "images → 'dog' vs 'cat'"


def test_decisions_are_readable_in_the_registry_and_the_run(tiny_pipeline: dict) -> None:
    client = MlflowClient(tiny_pipeline["uri"])
    version = client.get_model_version(NAME, "1")
    # The version's description says the decision in sentences, with what it rests on.
    text = version.description
    assert text.startswith(f"Promoted to champion of {NAME}: its first version.")
    assert "The gate's reason: first version: no champion yet." in text
    for fact in ("images → 'dog' vs 'cat'", str(tiny_pipeline["images"]), version.run_id,
                 "register.metric = log_loss"):
        assert fact in text, fact
    # The model's description: its task, who serves, the trail as a table; no store address.
    model = client.get_registered_model(NAME).description
    assert "**images → 'dog' vs 'cat'**" in model and "`@champion` is v1" in model
    assert "| v1 |" in model and "| promoted |" in model
    assert tiny_pipeline["uri"] not in model + text
    # The registering run keeps the same in audit.md; the JSON tags stay.
    audit_md = mlflow.artifacts.load_text(f"runs:/{version.run_id}/audit.md")
    assert audit_md.startswith(f"# Gate decision on `{NAME}` v1") and text in audit_md
    assert json.loads(client.get_registered_model(NAME).tags["audit.00001"])["version"] == "1"


def test_champion_is_scored_on_its_signature_columns_only(tiny_pipeline: dict, tmp_path: Path,
                                                          capfd) -> None:
    # MLflow warns about every column a signature lacks ("extra inputs ... ignored"); the
    # model ignores them anyway, so the gate passes only the declared ones: no such warning.
    folder = download(NAME, "1", tmp_path / "scored")
    files = sorted((tiny_pipeline["images"] / "cat").glob("*.png"))[:2]
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files], "x1": [1.0, 2.0]})
    capfd.readouterr()
    scored = score(folder, frame)
    assert len(scored.probability) == 2 and set(scored.label) <= {"cat", "dog"}
    assert "extra inputs" not in "".join(capfd.readouterr())


def test_pyfunc_on_png_jpeg_bytes_and_arrays(tiny_pipeline: dict) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    files = sorted((tiny_pipeline["images"] / "dog").glob("*.png"))[:3]
    raw = [f.read_bytes() for f in files]
    by_bytes = model.predict(pd.DataFrame({"image": raw}))
    assert list(by_bytes.columns) == ["probability", "label"]
    assert set(by_bytes["label"]) <= {"cat", "dog"}
    # Base64 text (what JSON clients send) gives the same answer.
    by_b64 = model.predict(pd.DataFrame({"image": [base64.b64encode(r).decode() for r in raw]}))
    np.testing.assert_allclose(by_b64["probability"], by_bytes["probability"])
    # Raw pixel arrays of the same (lossless PNG) images give the same answer.
    pixels = [np.asarray(Image.open(io.BytesIO(r)).convert("L")) for r in raw]
    by_pixels = model.predict(pd.DataFrame({"pixels": pixels}))
    np.testing.assert_allclose(by_pixels["probability"], by_bytes["probability"], atol=1e-6)
    # JPEG bytes decode too.
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw[0])).convert("RGB").save(buffer, format="JPEG")
    jpeg = model.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
    assert 0.0 <= jpeg["probability"][0] <= 1.0
    with pytest.raises(Exception, match="row 0: not a readable image"):
        model.predict(pd.DataFrame({"image": [b"definitely not an image"]}))


def test_predict_cli_reproduces_evaluate_test_predictions(tiny_pipeline: dict,
                                                          tmp_path: Path) -> None:
    paths = tiny_pipeline["paths"]
    ids = json.loads((Path(paths["processed"]) / "ids.json").read_text())["test"]
    files = [str(tiny_pipeline["images"] / i) for i in ids]
    out = tmp_path / "predictions.csv"
    predict_cli.main(["--input", *files, "--output", str(out)])
    got = pd.read_csv(out)
    expected = pd.read_csv(Path(paths["reports"]) / "test_predictions.csv")
    assert got["id"].tolist() == files
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=1e-6)
    assert got["label"].tolist() == expected["predicted"].tolist()


def test_predict_cli_bad_image_fails_without_output(tiny_pipeline: dict, tmp_path: Path,
                                                   capsys) -> None:
    root = tmp_path
    folder = root / "incoming"
    folder.mkdir()
    good = next((tiny_pipeline["images"] / "cat").glob("*.png"))
    (folder / "a.png").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(good.read_bytes()[:20])
    out = root / "bad.csv"
    with pytest.raises(SystemExit) as info:
        predict_cli.main(["--input", str(folder), "--output", str(out)])
    assert info.value.code == 2
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists()
    # A decompression bomb is one more bad image (PIL's limit lowered so a small file is one).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        Image.new("L", (100, 100)).save(folder / "bomb.png")
        predict_cli.main(["--input", str(folder), "--output", str(out), "--skip-bad"])
    (folder / "bomb.png").unlink()
    assert pd.read_csv(out)["id"].tolist() == [str(folder / "a.png")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        predict_cli.main(["--model", "models:/no-such-model@champion", "--input", str(folder),
                          "--output", str(root / "x.csv")])
    assert info.value.code == 2
    assert "--model models:/no-such-model@champion" in capsys.readouterr().err


def post(port: int, body: dict) -> dict:
    """POST JSON to a served model; return the status and the decoded JSON body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return {"status": response.status, "body": json.loads(response.read())}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": json.loads(err.read())}


@pytest.mark.slow
def test_mlflow_models_serve_matches_cli(tiny_pipeline: dict, tmp_path: Path) -> None:
    root = tiny_pipeline["root"]
    files = sorted((tiny_pipeline["images"] / "dog").glob("*"))[:4]
    out = tmp_path / "cli.csv"
    predict_cli.main(["--input", *map(str, files), "--output", str(out)])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_pipeline["uri"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with served_model(f"models:/{NAME}@champion", root, env, wait_s=120) as port:
        answer = {"predictions": invoke_images(port, files)}
        # The README's raw-pixels request, exactly as printed there (integer pixels).
        readme = (REPO / "README.md").read_text()
        (payload,) = re.findall(r"""-d '(\{"dataframe_split": \{"columns": \["pixels"\].*?)'""",
                                readme)
        pixels = post(port, json.loads(payload))
        assert pixels["status"] == 200 and len(pixels["body"]["predictions"]) == 1
        # Requests it cannot read: 400, our one-line message, no server stack trace.
        unknown = post(port, {"dataframe_split": {"columns": ["foo"], "data": [[1]]}})
        broken = post(port, {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFu"]]}})
    assert unknown["status"] == 400
    assert "none of the columns this model reads (image, pixels)" in unknown["body"]["message"]
    assert broken["status"] == 400 and "row 0: not a readable image" in broken["body"]["message"]
    assert "stack_trace" not in unknown["body"] and "stack_trace" not in broken["body"]
    served = pd.DataFrame(answer["predictions"])
    cli = pd.read_csv(out)
    np.testing.assert_allclose(served["probability"], cli["probability"], atol=1e-6)
    assert served["label"].tolist() == cli["label"].tolist()


@pytest.mark.slow  # three pipelines, four registrations
def test_gate_promotes_refuses_and_records(tmp_path: Path, mlflow_uri: str) -> None:
    csv = make_csv(tmp_path / "t.csv", rows=120)
    base = {"data": {"source": "csv", "path": str(csv), "target": "label",
                     "positive_class": "spam",
                     "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
            "model": {"type": "logreg"}, "register": {"metric": "log_loss"}}
    bad = {"train": {"epochs": 1, "lr": 1e-5}}
    worse = {"train": {"epochs": 1, "lr": 1e-6}}
    good = {"train": {"epochs": 20, "lr": 0.05}}
    trained = {}
    for name, overrides in (("bad", bad), ("good", good), ("worse", worse)):
        params = write_params(tmp_path / f"{name}.yaml", {**base, **overrides})
        trained[name] = params, run_stages(params, tmp_path / name)
    reports = []
    # A worse model comes after the good one: a new version, refused by the gate. The bad
    # weights again (same data, same register params): no duplicate version.
    for i, name in enumerate(("bad", "good", "worse", "bad")):
        register.main(register_args(*trained[name], tmp_path / f"reg{i}.json"))
        reports.append(json.loads((tmp_path / f"reg{i}.json").read_text()))
    assert [r["promote"] for r in reports[:3]] == [True, True, False]
    assert "improvement" in reports[1]["reason"] and reports[1]["champion_score"] is not None
    assert reports[2]["reason"].startswith("test log_loss")
    # Same split for all: every test row is new to both models.
    ids = json.loads((Path(trained["worse"][1]["processed"]) / "ids.json").read_text())
    assert reports[2]["excluded_rows"] == 0 and reports[2]["overlap"] == "known"
    assert reports[2]["compared_rows"] == len(ids["test"]) == trail_rows(reports[2])
    assert reports[3]["version"] == "1" and reports[3]["champion_version"] == "2"
    assert reports[3]["outcome"] == "reused" and reports[3]["promote"] is False
    assert "is not (champion: v2)" in reports[3]["reason"]
    client = MlflowClient(mlflow_uri)
    assert len(client.search_model_versions(f"name = '{CSV_NAME}'")) == 3
    assert str(client.get_model_version_by_alias(CSV_NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(CSV_NAME, "challenger").version) == "3"
    v3 = client.get_model_version(CSV_NAME, "3")
    assert v3.tags["decision"] == "rejected" and float(v3.tags["champion_score"]) < float(
        v3.tags["challenger_score"])
    trail = audit_trail(client, CSV_NAME)
    assert [(e["version"], e["champion_after"]) for e in trail] == [
        ("1", "1"), ("2", "2"), ("3", "2")]
    assert reports[2]["audit"] == trail


def trail_rows(report: dict) -> int:
    """Rows the audit trail says the report's decision compared on."""
    return next(e["compared_rows"] for e in report["audit"] if e["version"] == report["version"])


def test_csv_pyfunc_nan_unseen_categories_and_column_errors(tmp_path: Path, mlflow_uri: str,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    csv = make_csv(tmp_path / "t.csv", rows=80)
    # params.yaml in the working directory: predict's default model name is read from it.
    params = write_params(tmp_path / "params.yaml", {"data": {
        "source": "csv", "path": str(csv), "target": "label", "positive_class": "spam",
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}}, "model": {"type": "mlp"}})
    paths = run_stages(params, tmp_path / "r")
    register.main(register_args(params, paths, tmp_path / "reg.json"))
    model = mlflow.pyfunc.load_model(f"models:/{CSV_NAME}@champion")
    rows = pd.DataFrame({"x1": [np.nan, 1.0], "x2": [0.5, np.nan],
                         "colour": ["purple", None], "flag": [True, False]})
    out = model.predict(rows)
    assert out["probability"].between(0, 1).all() and set(out["label"]) <= {"ham", "spam"}
    # The CLI on the raw test rows (label column included) reproduces evaluate.
    frame = pd.read_csv(csv)
    ids = json.loads((Path(paths["processed"]) / "ids.json").read_text())["test"]
    frame.loc[[int(i) for i in ids]].to_csv(tmp_path / "test_rows.csv")
    raw = pd.read_csv(tmp_path / "test_rows.csv", index_col=0)
    raw.to_csv(tmp_path / "test_rows.csv", index=False)
    predict_cli.main(["--input", str(tmp_path / "test_rows.csv"), "--output",
                      str(tmp_path / "pred.csv")])
    expected = pd.read_csv(Path(paths["reports"]) / "test_predictions.csv")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "pred.csv")["probability"],
                               expected["probability"], atol=1e-6)
    # Missing and unexpected columns are named.
    raw.drop(columns=["x2"]).assign(zzz=1).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SystemExit) as info:
        predict_cli.main(["--input", str(tmp_path / "bad.csv"), "--output",
                          str(tmp_path / "bad_out.csv")])
    assert info.value.code == 2
    assert not (tmp_path / "bad_out.csv").exists()
    with pytest.raises(Exception, match=r"missing: \['x2'\]"):
        model.predict(rows.drop(columns=["x2"]))
    # Bad CSVs are one line naming the file, exit 2, nothing written: no tracebacks.
    good = (tmp_path / "test_rows.csv").read_text()
    cases = {
        "missing.csv": (None, r"--input .*missing\.csv: no such file or folder"),
        "latin1.csv": (good.replace("red", "r\xe9d").encode("latin-1"), r"not UTF-8 text"),
        "quote.csv": (good.replace("red", '"red', 1).encode(), r"cannot parse CSV"),
        "inf.csv": (raw.assign(x1=[np.inf, *raw["x1"][1:]]).to_csv(index=False).encode(),
                    r"column 'x1' row 0 holds inf"),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            predict_cli.main(["--input", str(tmp_path / name), "--output",
                              str(tmp_path / "out.csv")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and re.search(needle, err), (name, err)
        assert "Traceback" not in err and not (tmp_path / "out.csv").exists()


def test_decide_directions() -> None:
    cfg = RegisterConfig(metric="roc_auc", min_improvement=0.01)
    assert decide(cfg, 0.9, None, None).promote
    assert not decide(cfg, 0.905, 0.9, "1").promote
    assert decide(cfg, 0.92, 0.9, "1").promote
    low = RegisterConfig(metric="log_loss", min_improvement=0.0)
    assert decide(low, 0.2, 0.3, "1").promote and not decide(low, 0.3, 0.2, "1").promote
    assert decide(cfg, 0.5, None, "1", "KeyError: x").promote


@pytest.mark.slow  # a pipeline of its own, three registrations
def test_register_killed_after_creating_the_version_is_completed_on_rerun(
        tiny_trained: dict, tmp_path: Path, mlflow_uri: str) -> None:
    # Its own store (the shared one stays as the pipeline left it): the shared pipeline's data,
    # trained and evaluated again into it.
    root = tmp_path
    params = root / "idem.yaml"
    params.write_text(tiny_trained["params"].read_text() + "register: {model_name: idem}\n")
    paths = {**tiny_trained["paths"], "models": str(root / "models"),
             "reports": str(root / "reports")}
    train.main(["--params", str(params), "--data-dir", paths["processed"], "--train-dir",
                paths["augmented"], "--best-params", str(root / "none.json"),
                "--out", paths["models"], "--reports", paths["reports"]])
    evaluate.main(["--params", str(params), "--data-dir", paths["processed"],
                   "--model-dir", paths["models"], "--reports", paths["reports"]])
    client = MlflowClient(mlflow_uri)
    register.main(register_args(params, paths, root / "idem0.json"))
    # What a register killed right after `create_model_version` leaves: the version with its
    # lineage tags, but no decision, no alias and no audit entry.
    decided = [k for k in client.get_model_version("idem", "1").tags
               if k == Tag.REGISTER_PARAMS or not k.startswith(("pipeline.", "test_"))]
    for key in decided:
        client.delete_model_version_tag("idem", "1", key)
    for alias in ("champion", "challenger"):
        client.delete_registered_model_alias("idem", alias)
    for key in [k for k in client.get_registered_model("idem").tags if k.startswith("audit.")]:
        client.delete_registered_model_tag("idem", key)
    register.main(register_args(params, paths, root / "idem.json"))
    report = json.loads((root / "idem.json").read_text())
    assert report["version"] == "1" and report["promote"] is True
    assert report["outcome"] == "promoted"
    assert [str(v.version) for v in client.search_model_versions("name = 'idem'")] == ["1"]
    assert client.get_model_version("idem", "1").tags["decision"] == "promoted"
    assert str(client.get_model_version_by_alias("idem", "champion").version) == "1"
    # A forced rerun (or a fresh clone's register on the same store) adds no duplicate and
    # says it reused the version; a new register rule re-gates it without a new version.
    register.main(register_args(params, paths, root / "again.json"))
    again = json.loads((root / "again.json").read_text())
    assert again["version"] == "1" and again["champion_version"] == "1"
    assert again["outcome"] == "reused" and again["reason"].startswith("reused v1")
    assert len(client.search_model_versions("name = 'idem'")) == 1
    assert len(audit_trail(client, "idem")) == 1
