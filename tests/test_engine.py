"""The training loop: learns, early-stops to the best epoch, reruns byte-identically."""

from __future__ import annotations

import hashlib
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from pipeline.core.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.core.typed import field_type
from pipeline.data.dataset import ColumnStats, DatasetMeta, ImageSpec, Split, TableSpec
from pipeline.evaluation.metrics import monitor_scores
from pipeline.models.backbones import MIN_SIZE
from pipeline.models.device import (
    autocast,
    model_precision,
    resolve_precision,
    seed_everything,
    select_device,
)
from pipeline.models.feed import Feed
from pipeline.models.inference import predict_batch_size, predict_proba
from pipeline.models.networks import (
    BUILDERS,
    WEIGHTS_FILE,
    GlobalAvgPool,
    PeriodicEmbedding,
    build_model,
    load_model,
    save_model,
)
from pipeline.training.callbacks import Callback
from pipeline.training.crossval import with_embedding
from pipeline.training.engine import TrainingDiverged, fit, pos_weight
from pipeline.training.fit import fit_model
from tests.helpers import image_split

CPU = torch.device("cpu")
META = DatasetMeta("imagefolder", "x", ("a", "b"), image=ImageSpec(8, 1, (0.5,), (0.25,)))
AUG = AugmentConfig()


def build_and_fit(model_cfg: ModelConfig, cfg: TrainConfig, train: Split, val: Split,
                  **kw: object) -> object:
    """fit_model on the tiny 1x8x8 images of this module."""
    return fit_model(model_cfg, cfg, AUG, train, val, META, **kw)  # type: ignore[arg-type]


def images(n: int, seed: int, noise: float = 0.3) -> Split:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float32)
    x = rng.random((n, 1, 8, 8)).astype(np.float32) * noise
    x[y == 1, :, 2:6, 2:6] += 0.6
    return Split(x, y, [str(i) for i in range(n)])


def test_overfits_one_tiny_batch() -> None:
    batch = images(16, 0, noise=1.0)  # noise as strong as the signal: needs memorising
    cfg = TrainConfig(epochs=200, batch_size=16, lr=1e-2, patience=0, scheduler="none",
                      weight_decay=0.0)
    result = build_and_fit(ModelConfig(type="mlp", hidden_sizes=(64,), dropout=0.0), cfg,
                           batch, batch, seed=0, device=CPU, monitor="log_loss")
    assert result.history[-1]["train_loss"] < 0.01
    probs = predict_proba(result.model, batch.X)
    assert ((probs >= 0.5) == batch.y).all()


class Recorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        assert {"train_loss", "val_loss", "val_roc_auc", "lr"} <= set(logs)


def test_early_stopping_restores_best_epoch() -> None:
    # A large learning rate on hard, tiny data makes validation loss bounce around.
    train, val = images(40, 1, noise=1.0), images(40, 2, noise=1.0)
    cfg = TrainConfig(epochs=60, batch_size=8, lr=0.05, patience=4, scheduler="none",
                      optimizer="sgd")
    recorder = Recorder()
    result = build_and_fit(ModelConfig(type="mlp", hidden_sizes=(32,)), cfg, train, val,
                           seed=0, device=CPU, monitor="log_loss", callbacks=[recorder])
    losses = [row["val_log_loss"] for row in result.history]
    assert result.stopped_early and len(losses) < 60
    assert result.best_epoch == int(np.argmin(losses)) + 1 < len(losses)
    assert recorder.epochs == list(range(1, len(losses) + 1))
    # The returned weights are the best epoch's, not the last epoch's.
    restored = monitor_scores(val.y, predict_proba(result.model, val.X), "log_loss")["log_loss"]
    assert restored == pytest.approx(min(losses), rel=1e-5)
    assert restored < losses[-1]


def test_early_stopping_on_the_loss_picks_its_epoch_and_reports_the_score_there() -> None:
    # Noise three times the signal: the validation ROC AUC peaks early, the loss later.
    train, val = images(40, 1, noise=3.0), images(40, 2, noise=3.0)
    cfg = TrainConfig(epochs=25, batch_size=8, lr=0.05, patience=0, scheduler="none",
                      optimizer="sgd", early_stopping="loss")
    result = build_and_fit(ModelConfig(type="mlp", hidden_sizes=(32,)), cfg, train, val,
                           seed=1, device=CPU, monitor="roc_auc")
    losses = [row["val_loss"] for row in result.history]
    aucs = [row["val_roc_auc"] for row in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.best_score == aucs[result.best_epoch - 1]  # the objective, at that epoch
    # On this bouncy run the two rules disagree: the score alone would keep another epoch.
    by_score = build_and_fit(ModelConfig(type="mlp", hidden_sizes=(32,)),
                             replace(cfg, early_stopping="score"), train, val, seed=1,
                             device=CPU, monitor="roc_auc")
    assert by_score.best_epoch != result.best_epoch
    assert by_score.best_score == max(aucs) >= result.best_score


class StopAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.stop = epoch >= self.epoch


def test_a_callback_ends_the_fit_and_a_refit_keeps_the_last_weights() -> None:
    train, val = images(24, 0), images(8, 1)
    cfg = TrainConfig(epochs=10, batch_size=8, lr=0.05, patience=0, scheduler="none")
    result = build_and_fit(ModelConfig(type="logreg"), cfg, train, val, seed=0, device=CPU,
                           callbacks=[StopAt(3)], restore_best=False)
    assert len(result.history) == 3 and not result.stopped_early
    assert result.samples_seen == 3 * len(train.y)
    # restore_best=False: the model is the last epoch's, whichever epoch scored best.
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(result.model(torch.from_numpy(val.X)),
                                                  torch.from_numpy(val.y))
    assert float(loss) == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_ema_keeps_and_validates_the_warmed_up_average_of_every_step() -> None:
    train, val = images(24, 0), images(8, 1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, patience=0, scheduler="none",
                      ema=0.9)
    steps: list[list[torch.Tensor]] = []
    model_cfg = ModelConfig(type="mlp", hidden_sizes=(8,), dropout=0.0)
    hook = register_optimizer_step_post_hook(
        lambda opt, *_: steps.append([p.detach().clone() for g in opt.param_groups
                                      for p in g["params"]]))
    try:
        result = build_and_fit(model_cfg, cfg, train, val, seed=0, device=CPU,
                               restore_best=False)
    finally:
        hook.remove()
    assert len(steps) == 3 * 3  # 24 rows in batches of 8, 3 epochs
    # The average by hand: the first step's weights, then each step's blended in with the
    # warmed-up decay min(0.9, (1+t)/(10+t)) (0.9 from t = 80: never, on 9 steps).
    average = steps[0]
    for t, weights in enumerate(steps[1:], start=1):
        decay = min(0.9, (1 + t) / (10 + t))
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights, strict=True)]
    kept = list(result.model.parameters())
    for a, k, last in zip(average, kept, steps[-1], strict=True):
        torch.testing.assert_close(k.detach(), a)
        assert not torch.allclose(k.detach(), last)  # not the raw last step's weights
    # The validation loss logged is the average's: the kept model scores it.
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(result.model(torch.from_numpy(val.X)),
                                                  torch.from_numpy(val.y))
    assert float(loss) == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)
    # Training itself is untouched: without the average the raw weights are the last step's.
    raw = build_and_fit(model_cfg, replace(cfg, ema=0.0), train, val, seed=0, device=CPU,
                        restore_best=False)
    for r, last in zip(raw.model.parameters(), steps[-1], strict=True):
        assert torch.equal(r.detach(), last)


def fit_and_save(folder: Path, model_type: str, seed: int = 3) -> str:
    kind, _, option = model_type.partition("+")
    cfg = TrainConfig(epochs=3, batch_size=8, patience=0, ema=0.9 if option == "ema" else 0.0)
    model_cfg = ModelConfig(type=kind, conv_channels=(4, 8), hidden_sizes=(8,),
                            embedding="periodic" if option == "periodic" else "none")
    result = build_and_fit(model_cfg, cfg, images(32, 0), images(16, 1), seed=seed,
                           device=CPU)
    save_model(result.model, folder, {"model": {}})
    return hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()


@pytest.mark.parametrize("model_type", ["logreg", "mlp", "mlp+periodic", "cnn", "cnn+ema"])
def test_rerun_is_byte_identical(tmp_path: Path, model_type: str) -> None:
    first = fit_and_save(tmp_path / "a", model_type)
    assert fit_and_save(tmp_path / "b", model_type) == first
    assert fit_and_save(tmp_path / "c", model_type, seed=4) != first


def test_save_load_roundtrip(tmp_path: Path) -> None:
    model_cfg = ModelConfig(type="cnn", conv_channels=(4, 8))
    model = build_model(model_cfg, [1, 8, 8], [0.5], [0.25]).eval()
    save_model(model, tmp_path, {"model": {"type": "cnn", "conv_channels": [4, 8]},
                                 "input_shape": [1, 8, 8], "norm": {"mean": [0.5], "std": [0.25]}})
    loaded, _ = load_model(tmp_path)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_periodic_embedding_saves_loads_and_learns_a_non_monotone_column(tmp_path: Path) -> None:
    # One informative column whose effect turns twice (|x| in a band): what the embedding is for.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = ((np.abs(x[:, 0]) > 0.5) & (np.abs(x[:, 0]) < 1.5)).astype(np.float32)
    stats = ColumnStats(0.0, 0.0, 1.0)
    meta = DatasetMeta("csv", "x", ("a", "b"), table=TableSpec(
        "y", ("u", "v", "w"), {}, {c: stats for c in "uvw"}, {}))
    train, val = Split(x[:400], y[:400], []), Split(x[400:], y[400:], [])
    model_cfg = ModelConfig(type="mlp", hidden_sizes=(16,), embedding="periodic", dropout=0.0)
    torch.manual_seed(0)  # fit_model's seeding: `before` is the fitted model's initial state
    before = build_model(model_cfg, [3], [0.0], [1.0]).body[1].frequencies.detach().clone()
    cfg = TrainConfig(epochs=40, batch_size=32, lr=0.01, patience=0)
    result = fit_model(model_cfg, cfg, AUG, train, val, meta, seed=0, device=CPU)
    model = result.model.eval()
    assert result.best_score > 0.97  # val ROC AUC
    assert not torch.equal(model.body[1].frequencies, before)  # the frequencies are learned
    save_model(model, tmp_path, {"model": {"type": "mlp", "hidden_sizes": [16],
                                           "embedding": "periodic", "dropout": 0.0},
                                 "input_shape": [3], "norm": {"mean": [0.0], "std": [1.0]}})
    loaded, _ = load_model(tmp_path)
    assert torch.equal(model(torch.from_numpy(x)), loaded(torch.from_numpy(x)))


def table_splits(n: int, shape: tuple[int, ...] = (3,)) -> tuple[Split, Split]:
    """n train + validation rows (plus one augmented copy of each training row)."""
    n_train = n * 4 // 5
    y = (np.arange(n) % 2).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    train = Split(np.zeros((2 * n_train, *shape), np.float32), np.tile(y[:n_train], 2),
                  ids[:n_train] + [f"{i}#aug1" for i in ids[:n_train]])
    return train, Split(np.zeros((n - n_train, *shape), np.float32), y[n_train:], ids[n_train:])


@pytest.mark.parametrize(("kind", "n", "shape", "embedding"), [
    ("mlp", 1001, (3,), "periodic"), ("mlp", 1000, (3,), "none"),  # copies are not rows
    ("mlp", 1001, (1, 4, 4), "none"), ("logreg", 1001, (3,), "none"),
    ("cnn", 1001, (1, 4, 4), "none")])
def test_embedding_auto_is_periodic_for_an_mlp_on_a_large_table(
        kind: str, n: int, shape: tuple[int, ...], embedding: str) -> None:
    auto = ModelConfig(type=kind, conv_channels=(4,))
    assert with_embedding(auto, *table_splits(n, shape)).embedding == embedding
    named = ModelConfig(type="mlp", embedding="none")
    assert with_embedding(named, *table_splits(5000)) is named  # a named value is kept
    # Unresolved, the network has none: only the training code knows the data's size.
    built = build_model(auto, shape, [0.0] * shape[0], [1.0] * shape[0])
    assert not any(isinstance(m, PeriodicEmbedding) for m in built.modules())


def test_every_model_type_in_the_schema_has_a_builder() -> None:
    assert set(typing.get_args(field_type(ModelConfig, "type"))) == set(BUILDERS)


def test_model_shapes_and_cnn_on_table() -> None:
    for kind in ("logreg", "mlp", "cnn"):
        model = build_model(ModelConfig(type=kind, conv_channels=(4,)), [3, 8, 8],
                            [0.0] * 3, [1.0] * 3)
        assert model(torch.rand(2, 3, 8, 8)).shape == (2,)
    table = build_model(ModelConfig(type="mlp", ensemble=5), [5], [0.0], [1.0])
    x = torch.rand(4, 5)
    # An ensemble gives one logit per member in training, their mean otherwise.
    assert table.train()(x).shape == (4, 5) and table.eval()(x).shape == (4,)
    members = torch.stack([m(x).squeeze(-1) for m in table.body.members], dim=-1)
    torch.testing.assert_close(table(x), members.mean(-1))
    assert len({float(m[0].weight.sum()) for m in (n[1:] for n in table.body.members)}) == 5
    single = build_model(ModelConfig(type="mlp"), [5], [0.0], [1.0])
    assert single.train()(x).shape == (4,)
    with pytest.raises(ConfigError, match=r"model\.type = 'cnn': needs image data"):
        build_model(ModelConfig(type="cnn"), [5], [0.0], [1.0])


def test_ensemble_members_learn_on_their_own_loss() -> None:
    train, val = images(32, 0, noise=0.1), images(16, 1, noise=0.1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, patience=0, scheduler="none",
                      optimizer="sgd", momentum=0.0)
    fits = [build_and_fit(ModelConfig(type="logreg", ensemble=k), cfg, train, val, seed=0,
                          device=CPU) for k in (1, 3)]
    single, trio = (f.model.body for f in fits)
    # Member 0 starts where the single model does (first from the seeded generator) and, with
    # plain SGD on its own loss, ends where it does: the others do not pull on its gradient.
    for name, value in single.state_dict().items():
        torch.testing.assert_close(trio.members[0].state_dict()[name], value)
    assert not torch.equal(trio.members[1][1].weight, trio.members[0][1].weight)


def test_loss_is_bce_with_logits_on_one_raw_logit() -> None:
    train, val = images(32, 0, noise=0.1), images(16, 1, noise=0.1)
    cfg = TrainConfig(epochs=15, batch_size=8, lr=0.05, patience=0, scheduler="none")
    result = build_and_fit(ModelConfig(type="logreg"), cfg, train, val, seed=0, device=CPU)
    with torch.no_grad():
        logits = result.model(torch.from_numpy(val.X))
    # One unbounded logit per sample: a sigmoid inside the model could not leave [0, 1].
    assert logits.shape == (16,) and logits.abs().max() > 1.0
    # The reported validation loss is BCE-with-logits of exactly these outputs.
    expected = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(val.y))
    assert result.history[result.best_epoch - 1]["val_loss"] == pytest.approx(float(expected),
                                                                   rel=1e-5)
    np.testing.assert_allclose(predict_proba(result.model, val.X),
                               torch.sigmoid(logits).double().numpy(), rtol=1e-6)


def test_divergence_is_a_clear_error() -> None:
    cfg = TrainConfig(epochs=5, batch_size=4, lr=1e6, optimizer="sgd", patience=0)
    bad = images(16, 0)
    bad.X[0, 0, 0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=r"lower train\.lr"):
        build_and_fit(ModelConfig(type="logreg"), cfg, bad, images(8, 1), seed=0, device=CPU)


def test_pos_weight_and_device_override(monkeypatch: pytest.MonkeyPatch) -> None:
    y = np.array([1, 0, 0, 0], dtype=np.float32)
    assert float(pos_weight(y, "balanced")) == 3.0 and pos_weight(y, "none") is None
    monkeypatch.setenv("PIPELINE_DEVICE", "cpu")
    assert select_device() == CPU
    monkeypatch.delenv("PIPELINE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type in (expected, "mps")


def test_class_weight_balanced_changes_training() -> None:
    train = images(30, 0)
    train = Split(train.X[:20], np.r_[np.ones(4), np.zeros(16)].astype(np.float32), train.ids)
    cfg = TrainConfig(epochs=2, batch_size=8, patience=0)
    plain = build_and_fit(ModelConfig(type="logreg"), cfg, train, images(8, 1), seed=0,
                          device=CPU)
    weighted = build_and_fit(ModelConfig(type="logreg"), replace(cfg, class_weight="balanced"),
                             train, images(8, 1), seed=0, device=CPU)
    assert plain.history[0]["train_loss"] != weighted.history[0]["train_loss"]


def test_a_saturated_monitor_keeps_the_epoch_with_the_lower_validation_loss() -> None:
    # Separable data: validation ROC AUC is 1.0 from the first epochs on; without the loss
    # tie-break the first such epoch would be kept and its probabilities are barely trained.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    x[:, 0] += np.where(y == 1, 3.0, -3.0)
    train, val = Split(x[:48], y[:48], list(map(str, range(48)))), Split(
        x[48:], y[48:], list(map(str, range(48, 64))))
    seed_everything(0, 1)
    model = build_model(ModelConfig(type="logreg"), (4,), [0.0] * 4, [1.0] * 4)
    result = fit(model, train, val, TrainConfig(epochs=20, batch_size=16, patience=0, lr=0.01,
                                                scheduler="none"), seed=0,
                 device=torch.device("cpu"))
    aucs = [row["val_roc_auc"] for row in result.history]
    losses = [row["val_loss"] for row in result.history]
    assert aucs.count(1.0) > 1  # the monitor ties
    assert result.best_epoch == 1 + int(np.argmin([loss if auc == 1.0 else np.inf for auc, loss
                                                   in zip(aucs, losses, strict=True)]))
    assert result.best_epoch > aucs.index(1.0) + 1


CUDA = torch.device("cuda")  # a device object only: resolve_precision never touches the GPU


@pytest.mark.parametrize(("precision", "device", "resolved"), [
    ("auto", CPU, "fp32"), ("auto", CUDA, "bf16"), ("fp32", CPU, "fp32"),
    ("fp32", CUDA, "fp32"), ("bf16", CUDA, "bf16"), ("auto", torch.device("mps"), "fp32"),
])
def test_precision_decides_the_autocast_of_every_forward_pass(
        precision: str, device: torch.device, resolved: str) -> None:
    assert resolve_precision(precision, device) == resolved
    # The answer is what the forward passes run in (shown on CPU, where autocast also works).
    with autocast(resolved, CPU):
        out = torch.nn.Linear(4, 1)(torch.ones(2, 4))
    assert out.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[resolved]


def test_bf16_is_refused_for_a_fit_off_cuda_and_a_bf16_model_predicts_in_bf16() -> None:
    with pytest.raises(ConfigError, match=r"train\.precision = 'bf16': .*runs on cpu"):
        resolve_precision("bf16", CPU)
    with pytest.raises(ConfigError, match=r"train\.precision = 'fp16'"):
        resolve_precision("fp16", CPU)
    train, val = images(16, 0), images(8, 1)
    cfg = TrainConfig(epochs=2, batch_size=8, patience=0)
    with pytest.raises(ConfigError, match=r"train\.precision = 'bf16'.*this fit runs on cpu"):
        build_and_fit(ModelConfig(type="logreg"), replace(cfg, precision="bf16"), train, val,
                      seed=0, device=CPU)
    result = build_and_fit(ModelConfig(type="logreg"), cfg, train, val, seed=0, device=CPU)
    assert result.precision == "fp32"
    # A model trained in bf16 (on a GPU) keeps bf16 when it predicts on CPU, so its served
    # answers are the ones its threshold was chosen on; model_config.json says which.
    assert resolve_precision("bf16", CPU, fitting=False) == "bf16"
    p_bf16 = predict_proba(result.model, val.X, precision="bf16")
    assert not np.array_equal(p_bf16, predict_proba(result.model, val.X, precision="fp32"))
    assert model_precision({"precision": "bf16", "train": {"precision": "auto"}}) == "bf16"
    assert model_precision({"train": {}}) == "auto"  # a model from before the key


def test_global_pool_is_the_mean_and_keeps_the_gradient_channels_last() -> None:
    x = torch.randn(8, 5, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    pooled = GlobalAvgPool()(torch.relu(x))
    assert pooled.shape == (8, 5, 1, 1)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(torch.relu(x), 1))
    pooled.sum().backward()
    # AdaptiveAvgPool2d's gradient came back NCHW: ReLU's backward then took the slow path.
    assert x.grad is not None and x.grad.is_contiguous(memory_format=torch.channels_last)


def textbook_cnn(channels: tuple[int, ...], activation: type[torch.nn.Module]) -> torch.nn.Module:
    """Conv → BatchNorm → activation → max-pool, as a user writes it (the pool after it)."""
    layers: list[torch.nn.Module] = []
    c_in = 1
    for i, width in enumerate(channels):
        layers += [torch.nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                   torch.nn.BatchNorm2d(width), activation()]
        if i < len(channels) - 1:
            layers.append(torch.nn.MaxPool2d(2))
        c_in = width
    layers += [GlobalAvgPool(), torch.nn.Flatten(), torch.nn.Dropout(0.0),
               torch.nn.Linear(c_in, 1)]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("activation", "module"), [("relu", torch.nn.ReLU),
                                                    ("gelu", torch.nn.GELU)])
def test_cnn_pools_before_relu_with_the_same_outputs_gradients_and_keys(
        activation: str, module: type[torch.nn.Module], layout: torch.memory_format) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(type="cnn", conv_channels=(4, 8, 8), dropout=0.0, activation=activation)
    body = build_model(cfg, (1, 8, 8), [0.0], [1.0]).body
    reference = textbook_cnn(cfg.conv_channels, module)
    # Same parameter-bearing modules at the same indices: saved weights load either way.
    assert list(body.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(body.state_dict())
    order = [type(m).__name__ for m in body][:4]
    # ReLU is moved after the pool (it commutes with max); GELU is not monotone, so it stays.
    assert order == (["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"] if activation == "relu"
                     else ["Conv2d", "BatchNorm2d", "GELU", "MaxPool2d"])
    # Integer pixels and a flat 6x6 patch: its inner 2x2 pooling window holds four equal
    # values (a tie), and some windows hold only values <= 0.
    x = torch.randint(0, 3, (6, 1, 8, 8)).float()
    x[:, :, :6, :6] = 1.0
    for training in (True, False):  # batch statistics, then the running ones
        outputs = []
        for net in (body, reference):
            net.to(memory_format=layout).train(training)
            inputs = x.clone().contiguous(memory_format=layout).requires_grad_()
            out = net(inputs)
            out.square().sum().backward()
            outputs.append((out, inputs.grad, [p.grad.clone() for p in net.parameters()]))
            net.zero_grad()
        (out, grad_in, grads), (ref_out, ref_grad_in, ref_grads) = outputs
        assert torch.equal(out, ref_out) and torch.equal(grad_in, ref_grad_in)
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))


def test_cpu_inference_batches_stay_small_and_accelerators_take_large_ones() -> None:
    digits = np.zeros((300, 1, 16, 16), np.uint8)
    photos = np.zeros((3, 3, 224, 224), np.uint8)
    cpu = torch.device("cpu")
    assert predict_batch_size(Feed(digits, None, cpu)) == 64
    assert predict_batch_size(Feed(photos, None, cpu)) == 3  # 2**19 values: 3 such photos
    accelerator = Feed(digits, None, cpu)
    accelerator.device = torch.device("cuda")  # the rule only, no GPU needed
    assert predict_batch_size(accelerator) == 2048


def fit_bytes(kind: str, deterministic: bool) -> tuple[bytes, bytes]:
    """A short CPU fit of `kind` with torch's deterministic switch set: weights, predictions."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(deterministic)
        if kind in MIN_SIZE:  # a backbone: its depthwise/SE/hardswish kernels, one epoch
            train, val = image_split(8, 3), image_split(4, 3, seed=1)
            meta = replace(META, image=ImageSpec(32, 3, (0.5,) * 3, (0.25,) * 3))
            cfg = TrainConfig(epochs=1, batch_size=4, patience=0)
        else:
            train, val, meta = images(32, 0), images(16, 1), META
            cfg = TrainConfig(epochs=3, batch_size=8, patience=0)
        model_cfg = ModelConfig(type=kind, conv_channels=(4, 8), hidden_sizes=(8,))
        result = fit_model(model_cfg, cfg, AUG, train, val, meta, seed=3, device=CPU)
        assert torch.are_deterministic_algorithms_enabled() == deterministic  # left as set
        weights = b"".join(v.numpy().tobytes() for v in result.model.state_dict().values())
        return weights, predict_proba(result.model.eval(), val.X).tobytes()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("kind", ["logreg", "mlp", "cnn", "mobilenet_v3_small"])
def test_cpu_fits_and_predictions_are_the_same_without_the_deterministic_switch(
        kind: str) -> None:
    # seed_everything leaves torch.use_deterministic_algorithms off on CPU (turning it on
    # imports TorchInductor's config, ~1.4 s a process): it must not change a bit there.
    assert fit_bytes(kind, deterministic=False) == fit_bytes(kind, deterministic=True)
