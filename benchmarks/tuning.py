"""Tuning cost: trial-epochs, wall time and best value per pruner; Optuna overhead; 1 vs 2 workers.

Every arm is a real ``pipeline.tuning.tune.run_study`` call, exactly what the tune stage runs: the
default data (``data/processed`` for validation, ``data/augmented`` for training), the
``params.yaml`` model, train settings and search space, a seeded TPE sampler, nested MLflow runs
and the Optuna journal file storage. Only these change per arm: ``tune.pruner``, ``seed``
(which also seeds the sampler), ``tune.n_trials`` and ``tune.n_workers``. Each arm gets a fresh
journal file and study name in a temporary folder, and MLflow writes to a throw-away SQLite
store there. Both data folders are copied there once at the start, so a ``dvc repro`` elsewhere
cannot change the data between arms. The only file written inside the repository is
benchmarks/results/tuning.json (every arm's figures, the printed tables, commit and machine).

Figures, per pruner and seed (the seeds run one after the other, and the pruner order rotates
from seed to seed):

* trial-epochs: the epochs that the study's trials actually trained, summed over trials. This is
  the trial's ``epochs_run`` user attribute (reports to Optuna are sparse: only the epochs the
  pruner reads). Pruning and early
  stopping (``train.patience``) both cut trials short and are counted the same way for every
  pruner.
* wall time: seconds around ``run_study``, data loading and study set-up included.
* best value: ``study.best_value``, the best validation metric (``tune.metric``).
* savings vs ``none``: ``1 - pruner / none`` for trial-epochs and for wall time. Each ratio is
  taken within the same seed of the same run, then the median over the seeds is quoted.

Target (from the issue): the pruner saves >= 40 % of trial-epochs, and its best value is within
0.005 of no pruning. Both are judged on the medians over the seeds. A best value that beats no
pruning also counts as within.

Optuna overhead: while the single-worker arms run, the Optuna entry points that the tune code
calls are wrapped with timers. These are ``create_study`` (with the storage it opens),
``Study.optimize`` minus the time inside the objective (ask, tell and the storage writes),
``Trial.suggest_*`` (the sampler), ``Trial.report`` and ``Trial.set_user_attr`` (storage),
``Trial.should_prune`` (the pruner), and the ``Study.get_trials`` and ``best_value`` reads that
the worker loop makes. Nested calls count once. The figure is that time per trial and as a share
of the mean trial time (arm wall time / trials). Target: <= 1 %.

Workers: the same study (pruner ``none``, the first seed) with ``tune.n_workers`` 1 and 2, as
trials per minute of wall time (process start-up included) and between the first trial's start
and the last trial's end. With 2 workers, each one trains with ``train.num_threads // 2`` threads,
as the tune code does.

Before every timed arm the script waits (polling every 10 s, for up to ``--max-wait`` seconds)
until no other ``pipeline.stages``, ``pytest``, ``dvc`` or ``benchmarks/`` process is running.
It prints the load average at the start and end of each arm. An arm during which such a process
ran (polled every 2 s) is marked ``*`` and run once more; the clean run is kept, else the faster
one. Run from the repository root on an otherwise idle machine, after ``dvc repro`` or the
preprocess and augment stages::

    .venv/bin/python benchmarks/tuning.py                       # all pruners, 3 seeds, workers
    .venv/bin/python benchmarks/tuning.py --trials 12           # fewer trials for every arm
    .venv/bin/python benchmarks/tuning.py --pruners none median --seeds 0 --skip-workers

This is a benchmark that prints figures, not a test: the exit status is 0 whether or not the
targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import torch
from _results import captured, write_result

import pipeline.tuning.tune as tune_mod
from pipeline.core.config import Params, load_params
from pipeline.core.tags import Tag
from pipeline.evaluation.metrics import LOWER_IS_BETTER
from pipeline.models.device import select_device
from pipeline.tracking import runs, store

# Also runs in the spawned 2-worker processes (they import this module as __mp_main__).
optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNERS = ("none", "median", "successive_halving", "hyperband")
TARGET_SAVING = 0.40  # share of trial-epochs saved vs no pruning
TARGET_BEST_DELTA = 0.005  # best value at most this much worse than no pruning
TARGET_OVERHEAD = 0.01  # Optuna's share of trial time
OTHERS = r"pipeline\.stages|pytest|dvc|benchmarks/"  # this process and its parents excluded
EXPERIMENT = "bench-tuning"


# --- waiting for an idle machine ------------------------------------------------------------


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _ancestors() -> set[int]:
    """This process and its parents (a shell whose command line names a pattern is not busy)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def others() -> list[str]:
    """Other running processes that match pipeline.stages, pytest, dvc or benchmarks/."""
    try:
        out = subprocess.run(["pgrep", "-af", OTHERS], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError:
        return []
    mine = _ancestors()
    return [line[:100] for line in out.splitlines()
            if line.split(maxsplit=1) and int(line.split(maxsplit=1)[0]) not in mine]


def wait_idle(max_wait: float, poll: float = 10.0) -> bool:
    """Wait until no other pipeline/pytest/dvc process runs; False if max_wait ran out."""
    deadline = time.monotonic() + max_wait
    busy = others()
    if busy:
        print(f"    waiting for {len(busy)} other process(es) to end: {busy[0]}", flush=True)
    while busy:
        if time.monotonic() >= deadline:
            print(f"    still busy after {max_wait:.0f} s; measuring anyway (noisy)", flush=True)
            return False
        time.sleep(poll)
        busy = others()
    return True


class Watch:
    """Polls for other pipeline/pytest/dvc processes in the background while an arm runs."""

    def __init__(self, every: float = 2.0) -> None:
        self.every, self.seen = every, False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(self.every):
            if others():
                self.seen = True

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.seen = self.seen or bool(others())


# --- Optuna's own time ----------------------------------------------------------------------


class OptunaClock:
    """Wraps the Optuna entry points the tune code calls and sums the seconds spent inside."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    def total(self) -> float:
        """Seconds in Optuna, all parts."""
        return sum(self.seconds.values())

    def wrap(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        """Time fn into `part` unless it is called from inside another timed Optuna call."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return fn(*args, **kwargs)
            self.depth = 1
            tick = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - tick
                self.depth = 0

        return timed

    def wrap_optimize(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Time Study.optimize minus the objective (whose Optuna calls are timed on their own)."""

        @functools.wraps(fn)
        def timed(study: optuna.Study, func: Callable[..., float], *args: Any,
                  **kwargs: Any) -> Any:
            inside = 0.0

            def objective(trial: optuna.Trial) -> float:
                nonlocal inside
                saved, self.depth = self.depth, 0
                tick = time.perf_counter()
                try:
                    return func(trial)
                finally:
                    inside += time.perf_counter() - tick
                    self.depth = saved

            outer = self.depth
            self.depth = 1
            tick = time.perf_counter()
            try:
                return fn(study, objective, *args, **kwargs)
            finally:
                if not outer:
                    self.seconds["ask/tell + storage (optimize)"] += (
                        time.perf_counter() - tick - inside)
                self.depth = outer

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[OptunaClock]:
        """Patch the wrappers in for the duration of the block (this process only)."""
        study_cls, trial_cls = optuna.study.Study, optuna.trial.Trial
        targets: list[tuple[Any, str, Any]] = [
            (study_cls, "optimize", self.wrap_optimize(study_cls.optimize)),
            (optuna, "create_study", self.wrap(optuna.create_study, "study open + storage")),
            # open_study looks make_storage up in pipeline.tuning.tune (imported from
            # pipeline.tuning.study).
            (tune_mod, "make_storage", self.wrap(tune_mod.make_storage,
                                                 "study open + storage")),
            (study_cls, "get_trials", self.wrap(study_cls.get_trials, "storage reads")),
            (study_cls, "best_value", property(self.wrap(study_cls.best_value.fget,
                                                         "storage reads"))),
            (trial_cls, "report", self.wrap(trial_cls.report, "report")),
            (trial_cls, "set_user_attr", self.wrap(trial_cls.set_user_attr, "user attrs")),
            (trial_cls, "should_prune", self.wrap(trial_cls.should_prune, "pruner")),
        ]
        for name in ("suggest_float", "suggest_int", "suggest_categorical"):
            targets.append((trial_cls, name, self.wrap(getattr(trial_cls, name), "sampler")))
        with contextlib.ExitStack() as stack:
            for owner, name, value in targets:
                stack.enter_context(mock.patch.object(owner, name, value))
            yield self


# --- one study ------------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    """One run_study call and what it produced."""

    pruner: str
    seed: int
    n_trials: int
    n_workers: int
    wall: float
    trial_epochs: int
    best: float
    states: dict[str, int]
    early_stopped: int
    active: float  # first trial start to last trial end, seconds
    in_trials: float  # sum of each trial's start..complete span, seconds
    optuna: dict[str, float]
    load_start: str
    load_end: str
    noisy: bool

    @property
    def optuna_seconds(self) -> float:
        """Seconds inside Optuna (single-worker arms only)."""
        return sum(self.optuna.values())


def variant(params: Params, pruner: str, seed: int, n_trials: int, n_workers: int) -> Params:
    """params.yaml with only the benchmarked keys changed."""
    return dataclasses.replace(params, seed=seed, tune=dataclasses.replace(
        params.tune, pruner=pruner, n_trials=n_trials, n_workers=n_workers))


def run_arm(params: Params, workdir: Path, args: argparse.Namespace, *, pruner: str, seed: int,
            n_trials: int, n_workers: int = 1, timed: bool = True) -> Arm:
    """Run one fresh study the way the tune stage does and collect its figures."""
    job_params = variant(params, pruner, seed, n_trials, n_workers)
    name = f"bench-{pruner}-s{seed}-w{n_workers}-{uuid.uuid4().hex[:8]}"
    storage = str(workdir / f"{name}.journal")
    noisy = False
    if timed:
        noisy = not wait_idle(args.max_wait)
    start_load = load()
    clock = OptunaClock()
    # The parent run as pipeline.tuning.tune.parent_run tags it; spawned workers find the MLflow
    # store through MLFLOW_TRACKING_URI, which main() sets before any arm runs.
    exp_id = store.experiment_id(EXPERIMENT)
    with Watch() as watch, runs.start_run(exp_id, run_name=f"tune {name}", tags={
            Tag.STUDY_PARENT: name, Tag.STUDY: name, Tag.STORAGE: storage,
            Tag.STAGE: "tune"}) as run_id:
        job = tune_mod.TuneJob(params=job_params, data_dir=args.data_dir,
                               train_dir=args.train_dir, storage=storage, study_name=name,
                               parent_run_id=run_id,
                               experiment_id=store.experiment_id(EXPERIMENT))
        with clock.installed() if n_workers == 1 else contextlib.nullcontext(clock):
            tick = time.perf_counter()
            study = tune_mod.run_study(job)
            wall = time.perf_counter() - tick
    noisy = noisy or (timed and watch.seen)
    trials = study.get_trials(deepcopy=False)
    epochs = params.train.epochs
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in trials
             if t.datetime_start is not None and t.datetime_complete is not None]
    active = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else float("nan")
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    try:
        best = study.best_value
    except ValueError:
        best = float("nan")
    return Arm(pruner=pruner, seed=seed, n_trials=n_trials, n_workers=n_workers, wall=wall,
               trial_epochs=sum(t.user_attrs.get("epochs_run", 0) for t in trials), best=best,
               states=states,
               early_stopped=sum(1 for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                                 and t.user_attrs.get("epochs_run", epochs) < epochs),
               active=active, in_trials=sum(e - s for s, e in spans),
               optuna=dict(clock.seconds) if n_workers == 1 else {},
               load_start=start_load, load_end=load(), noisy=noisy)


def run_timed(params: Params, workdir: Path, args: argparse.Namespace, **kw: Any) -> Arm:
    """run_arm; once more if another pipeline/pytest/dvc process showed up during it."""
    arm = run_arm(params, workdir, args, **kw)
    if arm.noisy:
        print("    another process ran during this arm; running it again", flush=True)
        again = run_arm(params, workdir, args, **kw)
        if not again.noisy or again.wall < arm.wall:
            arm = again
    return arm


# --- report ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def better_delta(value: float, reference: float, metric: str) -> float:
    """value - reference, signed so that positive means better than the reference."""
    return reference - value if metric in LOWER_IS_BETTER else value - reference


def arm_line(arm: Arm) -> str:
    """One per-arm row."""
    pruned = arm.states.get("PRUNED", 0)
    failed = arm.states.get("FAIL", 0)
    return (f"  {arm.pruner:<19} {arm.seed:>4} {arm.trial_epochs:>7} {arm.wall:>8.1f} "
            f"{arm.best:>9.5f} {pruned:>6} {arm.early_stopped:>7} {failed:>4}   "
            f"[{arm.load_start}] -> [{arm.load_end}]{' *' if arm.noisy else ''}")


def pct(x: float) -> str:
    """A share as a signed percentage."""
    return f"{100 * x:+.1f} %"


def report_pruners(arms: dict[tuple[str, int], Arm], pruners: Sequence[str],
                   seeds: Sequence[int], metric: str) -> None:
    """Median table per pruner, savings vs none, and which pruners meet the target."""
    print("\nper pruner: medians over seeds "
          f"{', '.join(map(str, seeds))} (savings and deltas are taken per seed vs `none`)")
    print(f"  {'pruner':<19} {'trial-ep':>8} {'ep saved':>9} {'wall s':>8} {'wall saved':>10} "
          f"{'best val':>9} {'Δbest':>9} {'worst Δ':>9} {'pruned':>6}  target")
    meets: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for pruner in pruners:
        mine = [arms[(pruner, s)] for s in seeds]
        row = {"epochs": median([a.trial_epochs for a in mine]),
               "wall": median([a.wall for a in mine]), "best": median([a.best for a in mine]),
               "pruned": median([a.states.get("PRUNED", 0) for a in mine])}
        saved_text = wall_text = delta_text = worst_text = "-"
        verdict = "(reference)" if pruner == "none" else "n/a (no `none` arms)"
        if "none" in pruners and pruner != "none":
            ref = [arms[("none", s)] for s in seeds]
            savings = [1 - a.trial_epochs / r.trial_epochs for a, r in zip(mine, ref, strict=True)]
            wall_saved = [1 - a.wall / r.wall for a, r in zip(mine, ref, strict=True)]
            deltas = [better_delta(a.best, r.best, metric) for a, r in zip(mine, ref, strict=True)]
            row |= {"saving": median(savings), "wall_saved": median(wall_saved),
                    "delta": median(deltas)}
            ok = row["saving"] >= TARGET_SAVING and row["delta"] >= -TARGET_BEST_DELTA
            every = all(s >= TARGET_SAVING and d >= -TARGET_BEST_DELTA
                        for s, d in zip(savings, deltas, strict=True))
            saved_text = f"{100 * row['saving']:.1f} %"
            wall_text = f"{100 * row['wall_saved']:.1f} %"
            delta_text, worst_text = f"{row['delta']:+.5f}", f"{min(deltas):+.5f}"
            verdict = ("MEETS" if ok else "misses") + (" (every seed)" if every else
                                                      " (not every seed)" if ok else "")
            if ok:
                meets.append(pruner)
        rows[pruner] = row
        print(f"  {pruner:<19} {row['epochs']:>8.0f} {saved_text:>9} {row['wall']:>8.1f} "
              f"{wall_text:>10} {row['best']:>9.5f} {delta_text:>9} {worst_text:>9} "
              f"{row['pruned']:>6.0f}  {verdict}")
    print(f"  target: >= {100 * TARGET_SAVING:.0f} % of trial-epochs saved and Δbest >= "
          f"-{TARGET_BEST_DELTA} (median over seeds; Δ > 0 means better than `none`)")
    if "none" not in pruners:
        return
    print(f"  pruners that meet the target: {', '.join(meets) if meets else 'none of them'}")
    if meets:
        pick = max(meets, key=lambda p: (round(rows[p]["delta"], 5), -rows[p]["wall"]))
        print(f"  best of those (highest median Δbest, then lowest median wall): {pick}")


def report_overhead(arms: Sequence[Arm]) -> None:
    """Optuna seconds per trial and as a share of trial time, per pruner and in total."""
    print("\nOptuna overhead (single-worker arms; time inside Optuna entry points, see docstring)")
    by: dict[str, list[Arm]] = defaultdict(list)
    for arm in arms:
        by[arm.pruner].append(arm)
    print(f"  {'pruner':<19} {'ms/trial':>8} {'trial s':>7} {'share':>6} {'max':>6} "
          f"{'report':>9}   mean ms/trial per part (they add up to the mean)")
    shares = []
    for pruner, mine in by.items():
        per_trial = median([a.optuna_seconds / a.n_trials for a in mine])
        trial_s = median([a.wall / a.n_trials for a in mine])
        mine_shares = [a.optuna_seconds / a.wall for a in mine]
        shares.extend(mine_shares)
        per_report = median([a.optuna.get("report", 0.0) / a.trial_epochs for a in mine])
        parts: dict[str, float] = defaultdict(float)
        for a in mine:
            for k, v in a.optuna.items():
                parts[k] += v / a.n_trials / len(mine)
        text = ", ".join(f"{k} {1000 * v:.1f}" for k, v in sorted(parts.items(),
                                                                  key=lambda kv: -kv[1]))
        print(f"  {pruner:<19} {1000 * per_trial:>8.1f} {trial_s:>7.2f} "
              f"{100 * median(mine_shares):>5.2f}% {100 * max(mine_shares):>5.2f}% "
              f"{1000 * per_report:>6.2f} ms   mean {1000 * sum(parts.values()):.1f} = {text}")
    overall = median(shares)
    print("  ms/trial, trial s (arm wall / trials) and share: medians over seeds; max: worst "
          "seed; report: ms per\n  Trial.report call (one per trained epoch, a journal write)")
    print(f"  median over all {len(shares)} arms: {100 * overall:.2f} % of trial time, worst arm "
          f"{100 * max(shares):.2f} % (target <= {100 * TARGET_OVERHEAD:.0f} %: "
          f"{'met' if overall <= TARGET_OVERHEAD else 'missed'})")
    outside = median([(a.wall - a.in_trials) / a.n_trials for a in arms])
    print(f"  cross-check: wall time outside the trials' own start..complete span (data loading, "
          f"study open,\n  worker loop) is {1000 * outside:.0f} ms/trial; it is pipeline and "
          "Optuna time together.")


def report_workers(one: Arm, two: Arm) -> None:
    """Trials per minute with 1 and 2 workers."""
    print("\n1 vs 2 workers (pruner none, same study settings)")
    print(f"  {'workers':>7} {'trials':>6} {'trial-ep':>8} {'wall s':>7} {'trials/min':>10} "
          f"{'ep/min':>7} {'trials/min*':>11} {'best val':>9}   load")
    rates = {}
    for arm in (one, two):
        per_min = 60 * arm.n_trials / arm.wall
        active = 60 * arm.n_trials / arm.active
        rates[arm.n_workers] = (per_min, active, 60 * arm.trial_epochs / arm.wall)
        print(f"  {arm.n_workers:>7} {arm.n_trials:>6} {arm.trial_epochs:>8} {arm.wall:>7.1f} "
              f"{per_min:>10.2f} {60 * arm.trial_epochs / arm.wall:>7.1f} {active:>11.2f} "
              f"{arm.best:>9.5f}   [{arm.load_start}] -> [{arm.load_end}]"
              f"{' *' if arm.noisy else ''}")
    print(f"  2 workers / 1 worker: trials/min x{rates[2][0] / rates[1][0]:.2f}, "
          f"trial-epochs/min x{rates[2][2] / rates[1][2]:.2f}, "
          f"trials/min* x{rates[2][1] / rates[1][1]:.2f}")
    print("  * between the first trial's start and the last trial's end (no process start-up).")
    print("  The workers use sampler seeds seed+worker, so the 2-worker study samples other "
          "configurations\n  (batch size, early stopping) than the 1-worker one; "
          "trial-epochs/min corrects for trial length.")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the figures and write them to benchmarks/results/."""
    with captured() as out:
        figures = measure(argv)
    write_result("tuning", figures, out.getvalue())


def measure(argv: list[str] | None) -> dict[str, Any]:
    """Run the benchmark, print the figures and return every arm's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="params.seed values (also the sampler seeds); medians over them")
    parser.add_argument("--trials", type=int, default=None,
                        help="tune.n_trials for every pruner arm (default: params.yaml)")
    parser.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS))
    parser.add_argument("--skip-workers", action="store_true",
                        help="leave out the 1 vs 2 workers comparison")
    parser.add_argument("--worker-trials", type=int, default=8,
                        help="tune.n_trials for each workers arm")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds to wait for other pipeline/pytest/dvc processes per arm")
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--train-dir", default="data/augmented")
    args = parser.parse_args(argv)

    for folder in (args.data_dir, args.train_dir):
        if not Path(folder, "meta.json").is_file():
            sys.exit(f"{folder} is missing: run `dvc repro` (or the preprocess and augment "
                     "stages) first")
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    n_trials = args.trials or params.tune.n_trials
    pruners = list(dict.fromkeys(args.pruners))
    metric = params.tune.metric

    print("tuning benchmark: pruners, Optuna overhead, workers")
    print(f"  {platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"optuna {optuna.__version__}, python {sys.version.split()[0]}, device "
          f"{select_device()}")
    print(f"  {args.params}: model {params.model.type} {list(params.model.conv_channels)}, "
          f"epochs {params.train.epochs}, patience {params.train.patience}, threads "
          f"{params.train.num_threads}, metric val_{metric}, search space "
          f"{', '.join(params.tune.search_space)}")
    trials_note = (f"{n_trials} (params.yaml)" if n_trials == params.tune.n_trials else
                   f"{n_trials} for every arm (params.yaml has {params.tune.n_trials})")
    print(f"  trials per study: {trials_note}; seeds {args.seeds}; pruners {pruners}")
    for pruner in pruners:
        pr = tune_mod.make_pruner(pruner, params.train.epochs)
        settings = {k.lstrip("_"): v for k, v in vars(pr).items()
                    if isinstance(v, int | float | str) and not k.startswith("__")}
        default = "  <- params.yaml tune.pruner" if pruner == params.tune.pruner else ""
        print(f"    {pruner}: {type(pr).__name__} {settings}{default}")
    print(f"  load average at start: {load()} (1, 5, 15 min)", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        workdir = Path(tmp)
        # Snapshot the data once, so a `dvc repro` elsewhere cannot change it between arms.
        wait_idle(args.max_wait)
        for name in ("data_dir", "train_dir"):
            copy = workdir / "data" / Path(getattr(args, name)).name
            shutil.copytree(getattr(args, name), copy)
            setattr(args, name, str(copy))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        store.configure()
        started = time.perf_counter()
        # Warm-up, not timed: MLflow store creation, imports, first-call allocations.
        warm = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=2))
        run_arm(warm, workdir, args, pruner="none", seed=args.seeds[0], n_trials=1, timed=False)

        print("\nper arm (trial-ep = epochs trained over all trials; early = complete trials "
              "stopped by patience)")
        print(f"  {'pruner':<19} {'seed':>4} {'trial-ep':>7} {'wall s':>8} {'best val':>9} "
              f"{'pruned':>6} {'early':>7} {'fail':>4}   load start -> end", flush=True)
        arms: dict[tuple[str, int], Arm] = {}
        for i, seed in enumerate(args.seeds):
            shift = i % len(pruners)
            for pruner in pruners[shift:] + pruners[:shift]:
                arms[(pruner, seed)] = run_timed(params, workdir, args, pruner=pruner, seed=seed,
                                                 n_trials=n_trials)
                print(arm_line(arms[(pruner, seed)]), flush=True)

        report_pruners(arms, pruners, args.seeds, metric)
        report_overhead(list(arms.values()))
        figures: dict[str, Any] = {
            "args": vars(args), "n_trials": n_trials, "metric": metric,
            "default_pruner": params.tune.pruner,
            "arms": [dataclasses.asdict(arm) for arm in arms.values()]}

        if not args.skip_workers:
            one = run_timed(params, workdir, args, pruner="none", seed=args.seeds[0],
                            n_trials=args.worker_trials, n_workers=1)
            two = run_timed(params, workdir, args, pruner="none", seed=args.seeds[0],
                            n_trials=args.worker_trials, n_workers=2)
            report_workers(one, two)
            figures["workers"] = [dataclasses.asdict(one), dataclasses.asdict(two)]
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end: {load()}")
    return figures


if __name__ == "__main__":
    main()
