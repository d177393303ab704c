"""Small data: k-fold cross-validation over train + validation, then the fold models averaged
or a refit on all of it.

With a few hundred samples a 15 % validation split is a few dozen: the tuning objective, the
early-stopping epoch and the decision threshold chosen on it are mostly noise, and the model
never sees that data. Here every train + validation sample is held out exactly once (stratified
folds over source samples: an augmented copy goes with its original), the objective is the mean
fold score, the train stage keeps the k fold models (their logits averaged) or refits for the
folds' median best epoch on all of it, and the threshold is chosen on the out-of-fold
predictions. Test is never touched.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.data.augment import source_id
from pipeline.data.dataset import DatasetMeta, Split
from pipeline.models.inference import predict_proba
from pipeline.models.networks import Classifier, Ensemble
from pipeline.training.callbacks import Callback, FitResult
from pipeline.training.fit import fit_model

# Train + validation samples up to which train.cv_folds: auto cross-validates (5 folds).
AUTO_MAX_SAMPLES = 1000
AUTO_FOLDS = 5


def resolve_folds(cv_folds: int | str, n_samples: int, n_minority: int) -> int:
    """The fold count train.cv_folds means for this many train + validation samples (0: off);
    every fold must hold both classes, so k is at most the minority class's count."""
    if cv_folds == "auto":
        k = AUTO_FOLDS if n_samples <= AUTO_MAX_SAMPLES else 0
        return min(k, n_minority) if n_minority >= 2 else 0
    k = int(cv_folds)
    if k > n_minority:
        raise ConfigError(f"train.cv_folds = {k}: train + val hold only {n_minority} samples of "
                          "the smaller class, and every fold needs one; use fewer folds or 0")
    return k


def source_labels(train: Split, val: Split) -> dict[str, float]:
    """Each source sample of train + val and its label (augmented copies are not samples)."""
    return dict(zip(map(source_id, (*train.ids, *val.ids)),
                    np.concatenate([train.y, val.y]).tolist(), strict=True))


def folds_for(cv_folds: int | str, train: Split, val: Split) -> int:
    """resolve_folds for these splits (counted by source sample: copies are not samples)."""
    labels = source_labels(train, val)
    positives = int(sum(labels.values()))
    return resolve_folds(cv_folds, len(labels), min(positives, len(labels) - positives))


def with_embedding(model_cfg: ModelConfig, train: Split, val: Split) -> ModelConfig:
    """model.embedding auto for these splits: periodic for an MLP on a table of more than
    AUTO_MAX_SAMPLES train + validation samples (where cv_folds auto stops cross-validating),
    none otherwise. benchmarks/README.md (tables): on tables of a few hundred rows periodic
    features were mixed, and on wine and iris (178, 150 rows) they lost to the baselines."""
    if model_cfg.embedding != "auto":
        return model_cfg
    large_table = train.X.ndim == 2 and len(source_labels(train, val)) > AUTO_MAX_SAMPLES
    return dataclasses.replace(model_cfg, embedding="periodic" if model_cfg.type == "mlp"
                               and large_table else "none")


@dataclass(frozen=True)
class Pool:
    """Train (augmented) rows and validation rows together, each row tied to its source sample."""

    data: Split
    source: np.ndarray  # per row: index of its source sample
    originals: np.ndarray  # per source sample: the row holding it un-augmented
    folds: np.ndarray  # per source sample: the fold that holds it out

    @property
    def n_sources(self) -> int:
        """Distinct samples (augmented copies and oversampled repeats are not counted)."""
        return len(self.originals)


def make_pool(train: Split, val: Split, k: int, seed: int) -> Pool:
    """Pool the splits and assign stratified folds to source samples (seeded)."""
    from sklearn.model_selection import StratifiedKFold

    ids = list(train.ids) + list(val.ids)
    index: dict[str, int] = {}
    source = np.array([index.setdefault(source_id(i), len(index)) for i in ids])
    originals = np.unique(source, return_index=True)[1]  # first row of each source
    data = Split(np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y]), ids)
    y = data.y[originals]
    folds = np.empty(len(originals), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        folds[held] = fold
    return Pool(data, source, originals, folds)


def rows(split: Split, idx: np.ndarray) -> Split:
    """The rows `idx` of a split, as a new Split."""
    return Split(split.X[idx], split.y[idx], [split.ids[i] for i in idx])


@dataclass
class CrossFit:
    """Per-fold results and the out-of-fold predictions, one per source sample."""

    results: list[FitResult]  # each fold's fit, its best-epoch model included
    oof: np.ndarray
    pool: Pool

    @property
    def scores(self) -> list[float]:
        """Each fold's best validation score."""
        return [r.best_score for r in self.results]

    @property
    def best_epochs(self) -> list[int]:
        """Each fold's best epoch."""
        return [r.best_epoch for r in self.results]

    @property
    def score(self) -> float:
        """The objective: mean best validation score over folds."""
        return float(np.mean(self.scores))

    @property
    def loss(self) -> float:
        """Mean validation loss at the folds' best epochs (breaks a tie of scores)."""
        return float(np.mean([r.best_loss for r in self.results]))

    @property
    def epochs(self) -> int:
        """Epochs for the refit: the median of the folds' best epochs (at least 1)."""
        return max(1, round(statistics.median(self.best_epochs)))


def cross_fit(model_cfg: ModelConfig, train_cfg: TrainConfig, augment: AugmentConfig,
              pool: Pool, meta: DatasetMeta, *, seed: int, device: torch.device, monitor: str,
              callbacks: Callable[[int], Sequence[Callback]] = lambda fold: (),
              on_fold: Callable[[int, FitResult, list[float]], None] | None = None) -> CrossFit:
    """Fit once per fold on the other folds' rows, score and predict the held-out originals."""
    k = int(pool.folds.max()) + 1
    scores, results = [], []
    oof = np.full(pool.n_sources, np.nan)
    for fold in range(k):
        train_rows = np.flatnonzero(pool.folds[pool.source] != fold)
        held = np.flatnonzero(pool.folds == fold)
        result = fit_model(model_cfg, train_cfg, augment, rows(pool.data, train_rows),
                           rows(pool.data, pool.originals[held]), meta, seed=seed,
                           device=device, monitor=monitor, callbacks=callbacks(fold))
        oof[held] = predict_proba(result.model, pool.data.X[pool.originals[held]],
                                  precision=train_cfg.precision)  # as the fold was validated
        scores.append(result.best_score)
        results.append(result)
        if on_fold is not None:
            on_fold(fold, result, scores)
    return CrossFit(results, oof, pool)


def mean_history(results: Sequence[FitResult]) -> list[dict[str, float]]:
    """Per epoch, the mean of each logged value over the folds (their validation columns are
    held-out scores), up to the last epoch every fold trained: past it the mean would be over
    the folds still running, and its curves would jump where one stopped early."""
    return [{**{key: float(np.mean([r.history[epoch][key] for r in results]))
                for key in results[0].history[epoch]}, "epoch": epoch + 1}
            for epoch in range(min(len(r.history) for r in results))]


def fold_ensemble(cv: CrossFit) -> FitResult:
    """The k fold models as one network averaging their logits (members of an ensemble each
    become members), scored by the folds' mean; its history is the folds' mean curves."""
    members: list[torch.nn.Module] = []
    for result in cv.results:
        body = result.model.body
        members += list(body.members) if isinstance(body, Ensemble) else [body]
    # The inputs' standardisation comes from the data's statistics: the same in every fold.
    first = cv.results[0]
    model = Classifier(first.model.norm, Ensemble(members)).eval()
    return FitResult(model, mean_history(cv.results), cv.epochs, cv.score, first.monitor,
                     stopped_early=any(r.stopped_early for r in cv.results),
                     samples_seen=sum(r.samples_seen for r in cv.results),
                     train_seconds=sum(r.train_seconds for r in cv.results),
                     device=first.device, precision=first.precision,
                     cv_folds=len(cv.results), fold_models=True)


class FoldVerdict(Callback):
    """Puts the folds' verdict (mean score, median epoch) into a refit's result for callbacks."""
    # The refit's in-sample "validation" score chose nothing; the folds' mean did.

    def __init__(self, cv: CrossFit) -> None:
        self.cv = cv

    def on_fit_end(self, result: FitResult) -> None:
        result.best_epoch, result.best_score = self.cv.epochs, self.cv.score
        result.cv_folds = len(self.cv.scores)


class StopAfter(Callback):
    """Ends a fit after `epochs` epochs, leaving the learning-rate schedule as configured."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.stop = epoch >= self.epochs


def refit(model_cfg: ModelConfig, train_cfg: TrainConfig, augment: AugmentConfig, pool: Pool,
          meta: DatasetMeta, cv: CrossFit, *, seed: int, device: torch.device, monitor: str,
          callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train on every pooled row for the folds' median best epoch and keep those weights."""
    # The folds found their best epoch under the schedule of train.epochs: same schedule here,
    # stopped at that epoch (a schedule compressed to it would anneal differently).
    cfg = dataclasses.replace(train_cfg, patience=0)
    # Its "validation" rows are in the training data: reported, never used to choose weights,
    # and FoldVerdict (first) makes the progress line and the result say the folds' score.
    return fit_model(model_cfg, cfg, augment, pool.data, rows(pool.data, pool.originals), meta,
                     seed=seed, device=device, monitor=monitor,
                     callbacks=[FoldVerdict(cv), *callbacks, StopAfter(cv.epochs)],
                     restore_best=False)
