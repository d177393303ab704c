"""One tuning trial: sample params, fit or cross-validate them in a nested run, report them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import optuna

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.data.dataset import DatasetMeta, Split
from pipeline.models.device import select_device
from pipeline.tracking import metric_log, runs
from pipeline.training.callbacks import Callback, FitResult
from pipeline.training.crossval import cross_fit, make_pool, with_embedding
from pipeline.training.fit import apply_tuned, fit_model
from pipeline.tuning import trial_runs
from pipeline.tuning.study import LOSS_ATTR, report_epochs, suggest

# The trial's user attribute holding the CPU threads it trained with.
THREADS_ATTR = "num_threads"


def trial_threads(num_threads: int, n_workers: int) -> int:
    """CPU threads per trial: parallel workers share the cores instead of oversubscribing."""
    return max(1, num_threads // n_workers)


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs (picklable for spawn)."""

    params: Params
    data_dir: str
    train_dir: str
    storage: str
    study_name: str
    parent_run_id: str
    experiment_id: str
    worker: int = 0
    folds: int = 0  # > 0: trials cross-validate (train.cv_folds resolved for the data)


class ReportToOptuna(Callback):
    """Report the validation metric each epoch (or the running fold mean after each fold)
    and prune when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, run_id: str,
                 epochs: set[int] | None = None) -> None:
        self.trial, self.metric, self.run_id = trial, metric, run_id
        # The last step reported, and what steps count: a pruned trial's run is named by both.
        self.step, self.unit = 0, "epoch"
        self.epochs = epochs  # the epochs the pruner reads (study.report_epochs); None: all
        self.trained = 0  # epochs trained so far, over all folds

    def on_fold(self, fold: int, result: FitResult, scores: list[float]) -> None:
        """After fold `fold` (0-based): its score into the trial's run, the mean to Optuna."""
        self.step, self.unit = fold + 1, "fold"  # pruned@fold2: after 2 folds
        self.trained += len(result.history)
        metric_log.log_metrics({f"fold_val_{self.metric}": result.best_score,
                                "fold_best_epoch": result.best_epoch}, self.run_id, step=fold)
        self.trial.report(sum(scores) / len(scores), fold + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold + 1}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.step = self.trained = epoch  # the run's name says where a pruned trial stopped
        if self.epochs is not None and epoch not in self.epochs:
            return
        self.trial.report(logs[f"val_{self.metric}"], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def run_trial(job: TuneJob, trial: optuna.Trial, train: Split, val: Split,
              meta: DatasetMeta) -> float:
    """Train one sampled configuration, exactly as the train stage would (with the trial's
    thread count, which best_params.json hands to train), in a nested run."""
    params = job.params
    values = suggest(trial, params.tune.search_space)
    try:
        train_cfg, model_cfg = apply_tuned(params.train, params.model, values)
    except ConfigError as err:
        raise PipelineError(f"trial {trial.number}: invalid sampled params {values}: {err}") \
            from None
    model_cfg = with_embedding(model_cfg, train, val)  # as fit_final resolves it
    # Float reductions depend on the thread count: the trial records it, train uses it.
    threads = trial_threads(train_cfg.num_threads, params.tune.n_workers)
    train_cfg = replace(train_cfg, num_threads=threads)
    trial.set_user_attr(THREADS_ATTR, threads)
    with trial_runs.trial_run(job.experiment_id, job.parent_run_id, job.study_name, trial.number,
                              {**values, "worker": job.worker}, runs.data_source(meta)) as run:
        logger = metric_log.EpochLogger(run.run_id)
        reporter = ReportToOptuna(trial, params.tune.metric, run.run_id,
                                  report_epochs(params.tune.pruner, train_cfg.epochs))
        try:
            if job.folds:  # small data: folds are the reported steps, the objective their mean
                pool = make_pool(train, val, job.folds, params.seed)
                cv = cross_fit(model_cfg, train_cfg, params.augment, pool, meta,
                               seed=params.seed, device=select_device(),
                               monitor=params.tune.metric, on_fold=reporter.on_fold)
                score, best_epoch, loss = cv.score, cv.epochs, cv.loss
            else:
                result = fit_model(model_cfg, train_cfg, params.augment, train, val, meta,
                                   seed=params.seed, device=select_device(),
                                   monitor=params.tune.metric, callbacks=[reporter, logger])
                score, best_epoch, loss = result.best_score, result.best_epoch, result.best_loss
        except optuna.TrialPruned:
            logger.flush()
            logger.wait()
            run.state, run.pruned_at, run.unit = "PRUNED", reporter.step, reporter.unit
            # Reports are sparse: the epochs trained are stored once (benchmarks sum them).
            trial.set_user_attr("epochs_run", reporter.trained)
            raise
        logger.wait()
        trial.set_user_attr("epochs_run", reporter.trained)
        trial.set_user_attr(LOSS_ATTR, loss)
        run.state, run.metrics = "COMPLETE", {"objective": score, "best_epoch": best_epoch}
        return score
