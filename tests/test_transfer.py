"""Transfer learning: a backbone fine-tuned from a local checkpoint of another task."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.cli import predict as predict_cli
from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.core.lineage import file_sha256
from pipeline.data.dataset import Split
from pipeline.models.backbones import HEAD, load_checkpoint, read_checkpoint
from pipeline.models.device import seed_everything
from pipeline.models.networks import build_model
from pipeline.stages import evaluate, register
from pipeline.stages import train as train_stage
from pipeline.stages import tune as tune_stage
from pipeline.training.engine import fit
from tests.helpers import (
    image_split,
    invoke_images,
    make_imagefolder,
    run_stages,
    served_model,
    stage_paths,
    write_params,
)

CPU = torch.device("cpu")


def stripes(n: int, seed: int) -> Split:
    """Task B: horizontal stripes (positive) vs noise, unlike task A's bright square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 128, (n, 1, 32, 32), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.float32)
    x[y == 1, :, ::4, :] = 255
    return Split(x, y, [str(i) for i in range(n)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 trained on task A (RGB, bright square), its whole state dict saved as .pth."""
    seed_everything(0, 1)
    model = build_model(ModelConfig(type="resnet18"), (3, 32, 32), [0.5] * 3, [0.25] * 3)
    result = fit(model, image_split(16, 3), image_split(8, 3, seed=1),
                 TrainConfig(epochs=1, batch_size=8, patience=0), seed=0, device=CPU)
    path = tmp_path_factory.mktemp("weights") / "task_a.pth"
    torch.save(result.model.state_dict(), path)
    return path


def backbone_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The file's body.net.* tensors outside the replaced head."""
    return [k for k in state if k.startswith("body.net.") and not k.startswith("body.net.fc.")]


@pytest.mark.parametrize("freeze", ["backbone", "none"])
def test_fine_tunes_from_the_file_with_a_fresh_head(checkpoint: Path, freeze: str) -> None:
    file = torch.load(checkpoint, weights_only=True)
    cfg = ModelConfig(type="resnet18", weights=str(checkpoint), freeze=freeze)
    seed_everything(1, 1)
    model = build_model(cfg, (1, 32, 32), [0.5], [0.25])  # grayscale task B
    report = load_checkpoint(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for key in backbone_keys(file):
        assert torch.equal(before[key], file[key]), key
    # The head is the one-logit head of this model, not the file's.
    assert not torch.equal(before["body.net.fc.weight"], file["body.net.fc.weight"])
    assert sorted(report["skipped"]) == ["body.net.fc.bias", "body.net.fc.weight",
                                         "norm.mean", "norm.std"]
    assert report["loaded"] == len(backbone_keys(file))
    result = fit(model, stripes(16, 0), stripes(8, 1), TrainConfig(epochs=2, batch_size=8,
                                                                    patience=0), seed=1, device=CPU)
    after = result.model.state_dict()
    changed = [k for k in backbone_keys(file) if not torch.equal(after[k], file[k])]
    if freeze == "backbone":
        assert changed == []  # weights and BatchNorm statistics alike
    else:
        assert "body.net.conv1.weight" in changed and "body.net.bn1.running_mean" in changed
    assert not torch.equal(after["body.net.fc.weight"], before["body.net.fc.weight"])


@pytest.mark.parametrize("arch", sorted(HEAD))
def test_torchvision_keys_in_safetensors_and_wrapped_dicts_load(arch: str,
                                                                tmp_path: Path) -> None:
    import torchvision

    seed_everything(0, 1)
    net = torchvision.models.get_model(arch, weights=None)  # ImageNet shapes: 1000-class head
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": state, "epoch": 3}, tmp_path / "w.pth")  # a training script's file
    for name in ("w.safetensors", "w.pth"):
        cfg = ModelConfig(type=arch, weights=str(tmp_path / name))
        model = build_model(cfg, (3, 32, 32), [0.5] * 3, [0.25] * 3)
        report = load_checkpoint(model, cfg)
        assert sorted(report["skipped"]) == [f"{HEAD[arch]}.bias", f"{HEAD[arch]}.weight"]
        loaded = model.state_dict()
        for key, value in state.items():
            if not key.startswith(HEAD[arch] + "."):
                assert torch.equal(loaded["body.net." + key], value), key


def test_wrong_shape_wrong_architecture_and_unreadable_files_name_what_is_wrong(
        checkpoint: Path, tmp_path: Path) -> None:
    state = read_checkpoint(str(checkpoint))
    bad = dict(state, **{"body.net.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    torch.save(bad, tmp_path / "shape.pth")
    cfg = ModelConfig(type="resnet18", weights=str(tmp_path / "shape.pth"))
    model = build_model(cfg, (1, 32, 32), [0.5], [0.25])
    with pytest.raises(ConfigError, match=r"key 'body.net.layer1.0.conv1.weight' has shape "
                                          r"\(64, 64, 1, 1\), resnet18 needs \(64, 64, 3, 3\)"):
        load_checkpoint(model, cfg)
    wrong = ModelConfig(type="efficientnet_b0", weights=str(checkpoint))
    with pytest.raises(ConfigError, match=r"key .body\.net\.conv1\.weight. is not a efficientnet"):
        load_checkpoint(build_model(wrong, (1, 32, 32), [0.5], [0.25]), wrong)
    partial = {k: v for k, v in state.items() if "layer4" not in k}
    save_file({k: v.contiguous() for k, v in partial.items()}, str(tmp_path / "part.safetensors"))
    cfg = ModelConfig(type="resnet18", weights=str(tmp_path / "part.safetensors"))
    with pytest.raises(ConfigError, match=r"lacks \d+ resnet18 key\(s\), e.g. 'layer4"):
        load_checkpoint(build_model(cfg, (1, 32, 32), [0.5], [0.25]), cfg)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"model.weights = '.*junk.pth': not a readable"):
        read_checkpoint(str(tmp_path / "junk.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="holds no state dict"):
        read_checkpoint(str(tmp_path / "list.pth"))


def test_config_refuses_weights_freeze_and_norm_where_they_mean_nothing() -> None:
    with pytest.raises(ConfigError, match=r"weights = .w\.pth.: needs a torchvision model\.type"):
        ModelConfig(type="cnn", weights="w.pth")
    with pytest.raises(ConfigError, match=r"freeze = .backbone.: needs model\.weights"):
        ModelConfig(type="resnet18", freeze="backbone")
    with pytest.raises(ConfigError, match="norm = 'imagenet': ImageNet statistics are for"):
        ModelConfig(type="mlp", norm="imagenet")


def stage_params(root: Path, images: Path, weights: str, **model: object) -> Path:
    return write_params(root / "params.yaml", {
        "data": {"source": "imagefolder", "path": str(images), "positive_class": "dog",
                 "image_size": 32, "channels": 1,
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "model": {"type": "resnet18", "weights": weights, **model},
        "train": {"epochs": 2, "batch_size": 8}})


@pytest.mark.parametrize("problem", ["missing", "shape"])
def test_train_stage_exits_2_and_writes_nothing_for_a_bad_checkpoint(
        problem: str, checkpoint: Path, tmp_path: Path, imagefolder: Path, mlflow_uri: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "ckpt.pth"
    if problem == "shape":
        state = torch.load(checkpoint, weights_only=True)
        state["body.net.bn1.weight"] = torch.ones(3)
        torch.save(state, weights)
    params = stage_params(tmp_path, imagefolder, str(weights))
    paths = run_stages(params, tmp_path, upto="augment")
    models = tmp_path / "models"
    with pytest.raises(SystemExit) as info:
        train_stage.main(["--params", str(params), "--data-dir", paths["processed"],
                          "--train-dir", paths["augmented"],
                          "--best-params", str(models / "best_params.json"),
                          "--out", str(models), "--reports", str(tmp_path / "reports")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (f"model.weights = '{weights}': file not found" in err if problem == "missing"
            else "key 'body.net.bn1.weight' has shape (3,), resnet18 needs (64,)" in err)
    assert not models.exists() and not (tmp_path / "reports").exists()


@pytest.mark.slow  # two resnet18 train stages
def test_train_stage_records_the_checkpoint_and_reruns_byte_identically(
        checkpoint: Path, tmp_path: Path, imagefolder: Path, mlflow_uri: str) -> None:
    import mlflow

    hashes = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        params = stage_params(root, imagefolder, str(checkpoint), freeze="backbone",
                              norm="imagenet")
        paths = run_stages(params, root, upto="train")
        hashes.append(file_sha256(Path(paths["models"]) / "model.safetensors"))
    config = json.loads((Path(paths["models"]) / "model_config.json").read_text())
    assert config["weights_sha256"] == file_sha256(checkpoint)
    assert config["norm"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert hashes[0] == hashes[1]
    saved = load_file(str(Path(paths["models"]) / "model.safetensors"))
    file = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], file[k]) for k in backbone_keys(file))  # frozen
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.data.tags["pipeline.checkpoint_sha256"] for r in runs] == [
        file_sha256(checkpoint)] * 2


@pytest.mark.slow
def test_fine_tuned_backbone_tunes_registers_predicts_and_serves(
        checkpoint: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("OPTUNA_STORAGE", str(tmp_path / "optuna.journal"))
    images = make_imagefolder(tmp_path / "images", per_class=16)
    params = write_params(tmp_path / "params.yaml", {
        "data": {"source": "imagefolder", "path": str(images), "positive_class": "dog",
                 "image_size": 32, "channels": 1,
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "model": {"type": "resnet18", "weights": str(checkpoint), "norm": "imagenet"},
        "train": {"epochs": 2, "batch_size": 8},
        "tune": {"enabled": True, "n_trials": 2, "pruner": "none", "search_space": {
            "train.lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "model.freeze": {"choices": ["none", "backbone"]}}}})
    p, common = stage_paths(tmp_path), ["--params", str(params)]
    run_stages(params, tmp_path, upto="augment")
    best = tmp_path / "models" / "best_params.json"
    tune_stage.main([*common, "--data-dir", p["processed"], "--train-dir", p["augmented"],
                     "--out", str(best)])
    assert json.loads(best.read_text())["params"]["model.freeze"] in ("none", "backbone")
    train_stage.main([*common, "--data-dir", p["processed"], "--train-dir", p["augmented"],
                      "--best-params", str(best), "--out", p["models"], "--reports", p["reports"]])
    evaluate.main([*common, "--data-dir", p["processed"], "--model-dir", p["models"],
                   "--reports", p["reports"]])
    register.main([*common, "--data-dir", p["processed"], "--train-dir", p["augmented"],
                   "--model-dir", p["models"], "--metrics", f"{p['reports']}/metrics.json",
                   "--out", str(tmp_path / "registration.json")])
    version = mlflow.MlflowClient().get_model_version_by_alias("images-dog", "champion")
    assert version.tags["pipeline.checkpoint_sha256"] == file_sha256(checkpoint)
    # The raw-input pyfunc (predict CLI) reproduces evaluate's test predictions ...
    ids = json.loads((Path(p["processed"]) / "ids.json").read_text())["test"]
    files = [images / i for i in ids]
    predict_cli.main(["--input", *map(str, files), "--output", str(tmp_path / "cli.csv")])
    cli = pd.read_csv(tmp_path / "cli.csv")
    expected = pd.read_csv(Path(p["reports"]) / "test_predictions.csv")
    np.testing.assert_allclose(cli["probability"], expected["probability"], atol=1e-6)
    # ... and so does `mlflow models serve` on the champion.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with served_model("models:/images-dog@champion", tmp_path, env, wait_s=120) as port:
        served = pd.DataFrame(invoke_images(port, files))
    np.testing.assert_allclose(served["probability"], cli["probability"], atol=1e-6)
