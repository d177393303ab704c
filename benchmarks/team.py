"""Cost of the team's shared services, against a real `mlflow server` on PostgreSQL (loopback).

Prints, for the default digits config (params.yaml as is, but --trials and --set):
* tracking share: seconds inside MLflow calls and the store's check (outermost, main thread)
  of the train stage (a
  fresh process each time, as DVC runs it),
  as a share of its training seconds -- against the server, and against local SQLite;
* Optuna storage share: seconds inside RDBStorage methods (main thread) of the tune stage, as a
  share of the summed trial durations;
* trials per minute with 2 hosts of 1 thread each (the tune stage plus `pipeline.cli.tune_worker`
  in its own UTS namespace) vs 1 host of 1 thread, each on a fresh study.

Usage: python benchmarks/team.py [--trials 20] [--repeats 3] [--set train.epochs=10]
(Needs PostgreSQL at PIPELINE_TEAM_DATABASE or postgresql://127.0.0.1:5432/postgres.)
Writes benchmarks/results/team.json (figures, printed lines, commit and machine).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import captured, write_result
from benchmarks._workspace import default_params, parse_sets
from pipeline.cli.team import DEFAULT_ADMIN_DB, drop_database, start_server, stop_server
from pipeline.core.typed import deep_merge
from pipeline.stages import augment, preprocess, train, tune
from pipeline.tracking import metric_log, store


class Clock:
    """Seconds spent inside wrapped callables: outermost calls on the main thread only (work
    queued to a background logging thread counts where the main thread waits for it)."""

    def __init__(self) -> None:
        self.seconds, self.depth = 0.0, 0
        self.by_name: dict[str, list[float]] = {}  # name -> [calls, seconds]

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread() or self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            tick = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - tick
                self.seconds += spent
                entry = self.by_name.setdefault(fn.__qualname__, [0, 0.0])
                entry[0] += 1
                entry[1] += spent
                self.depth -= 1
        return timed

    def top(self, n: int = 6) -> str:
        """The n costliest wrapped callables: name calls×, seconds."""
        ranked = sorted(self.by_name.items(), key=lambda kv: -kv[1][1])[:n]
        return "; ".join(f"{name} {calls}x {spent:.2f}s" for name, (calls, spent) in ranked)

    @contextlib.contextmanager
    def patch(self, owners: list[Any]) -> Iterator[Clock]:
        """Wrap every public function/method of the given classes and modules."""
        saved = []
        for owner in owners:
            for name, value in list(vars(owner).items()):
                if name.startswith("_") or not (inspect.isfunction(value)):
                    continue
                saved.append((owner, name, value))
                setattr(owner, name, self.wrap(value))
        try:
            yield self
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


def workspace(root: Path, overrides: dict) -> Path:
    """params.yaml (defaults + overrides) and the processed/augmented data, as after dvc pull."""
    root.mkdir(parents=True)
    params = deep_merge(default_params(), overrides)
    params["data"]["path"] = "data/raw/digits"  # relative: every part runs in root
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with contextlib.chdir(root):
        preprocess.main(["--out", "data/processed"])
        augment.main([])
    return root


def train_share(root: Path, uri: str) -> tuple[float, float]:
    """(seconds in MLflow, seconds training) for one train stage run against `uri`, in a fresh
    process as DVC runs it (a process's first MLflow calls are the costly ones)."""
    out = subprocess.run([sys.executable, __file__, "--one-train-run", str(root), uri],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"train run failed:\n{out.stderr[-3000:]}")
    *lines, last = out.stdout.strip().splitlines()
    print("\n".join(lines))
    figures = json.loads(last)
    return figures["tracking"], figures["fit"]


def one_train_run(root: Path, uri: str) -> None:
    """Run the train stage in this process; print the costliest calls, then the JSON figures."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    fit = Clock()
    clock = Clock()
    import pipeline.stages.train as stage_mod

    stage_mod.fit_final = fit.wrap(stage_mod.fit_final)  # the fit (or cross-fit and refit)
    # The store's check (a request of its own against a server) counts too.
    owners = [MlflowClient, mlflow, metric_log.Background, store]
    with contextlib.chdir(root), clock.patch(owners), contextlib.redirect_stdout(sys.stderr):
        train.main(["--best-params", "none.json", "--out", f"models-{uuid.uuid4().hex[:6]}"])
    print(f"  train run against {uri.split(':')[0]}: {clock.top()}")
    print(json.dumps({"tracking": clock.seconds, "fit": fit.seconds}))


def storage_share(root: Path, uri: str, optuna_url: str, trials: int) -> tuple[float, float]:
    """(seconds in RDBStorage, summed trial seconds) for one tune stage run."""
    os.environ.update(MLFLOW_TRACKING_URI=uri, OPTUNA_STORAGE=optuna_url)
    clock = Clock()
    out = root / f"best-{uuid.uuid4().hex[:6]}.json"
    with contextlib.chdir(root), clock.patch([optuna.storages.RDBStorage]):
        tune.main(["--out", str(out)])
    print(f"  optuna storage: {clock.top()}")
    study = the_study(optuna_url, out)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                if t.datetime_complete)
    return clock.seconds, spent


def the_study(optuna_url: str, best: Path) -> optuna.Study:
    """The study a tune run wrote best_params.json for."""
    name = yaml.safe_load(best.read_text())["study_name"]
    return optuna.load_study(study_name=name, storage=optuna_url)


def on_host(root: Path, host: str, args: list[str], env: dict[str, str],
            log: Path) -> subprocess.Popen:
    """A process in its own UTS namespace with its own host name, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" '
                                 '"$@"', sys.executable, "-m", *args], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def throughput(root: Path, env: dict[str, str], optuna_url: str, hosts: int,
                      seed: int) -> tuple[float, float]:
    """Finished trials and trained epochs per minute of a fresh study (first trial start to
    last trial end). Each study samples its own params (its own seed), so trials differ in
    length: epochs per minute is the work-normalised figure."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["seed"] = seed  # a new study name: nothing resumed
    params["train"]["num_threads"] = 1  # each host: one thread
    name = f"params-{seed}.yaml"
    (root / name).write_text(yaml.safe_dump(params, sort_keys=False))
    best = root / f"best-{seed}.json"
    logs = [root / f"host-{h}-{seed}.log" for h in "ab"]
    procs = [on_host(root, "host-a", ["pipeline.stages.tune", "--params", name, "--out",
                                      str(best)], env, logs[0])]
    if hosts == 2:
        procs.append(on_host(root, "host-b", ["pipeline.cli.tune_worker", "--params", name], env,
                             logs[1]))
    for proc, log in zip(procs, logs, strict=False):
        if proc.wait() != 0:
            raise SystemExit(f"a tuning process failed ({proc.args}):\n"
                             f"{log.read_text(errors='replace')[-3000:]}")
    trials = the_study(optuna_url, best).trials
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    done = sum(t.state.is_finished() and t.state.name != "FAIL" for t in trials)
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    minutes = (end - start).total_seconds() / 60
    return done / minutes, epochs / minutes


def main() -> None:
    """Measure the parts asked for; print them and write them to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="tune.n_trials (default: as "
                        "params.yaml)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", help="params override, e.g. train.epochs=10")
    parser.add_argument("--parts", default="tracking,storage,hosts",
                        help="which figures to measure (comma-separated)")
    parser.add_argument("--one-train-run", nargs=2, metavar=("ROOT", "URI"),
                        help=argparse.SUPPRESS)  # internal: one measured train stage
    args = parser.parse_args()
    if args.one_train_run:
        one_train_run(Path(args.one_train_run[0]), args.one_train_run[1])
        return
    with captured() as out:
        figures = measure(args)
    write_result("team", figures, out.getvalue())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the services, measure, print and return the figures; drop the databases."""
    admin = os.environ.get("PIPELINE_TEAM_DATABASE", DEFAULT_ADMIN_DB)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    figures: dict[str, Any] = {"args": vars(args)}
    # The local defaults (params.yaml) but for the trial count; hosts run 1 thread each.
    overrides = deep_merge({"tune": {"n_trials": args.trials}}, parse_sets(args.set))
    with tempfile.TemporaryDirectory() as tmp:
        root = workspace(Path(tmp) / "ws", overrides)
        server, exports = start_server(admin, prefix, Path(tmp) / "state", port=5099,
                                       workers=1, log=Path(tmp) / "server.log")
        try:
            uri, optuna_url = exports["MLFLOW_TRACKING_URI"], exports["OPTUNA_STORAGE"]
            parts = set(args.parts.split(","))
            rows = []
            for target in () if "tracking" not in parts else (f"sqlite:///{root}/mlflow.db", uri):
                shares = [train_share(root, target) for _ in range(args.repeats)]
                rows.append((target.split(":")[0], [m / f for m, f in shares],
                             statistics.median(f for _, f in shares)))
            figures["tracking"] = [{"store": kind, "share": share, "fit_s_median": fit}
                                   for kind, share, fit in rows]
            for kind, share, fit in rows:
                print(f"tracking ({kind:6s}): median {statistics.median(share):.2%} of training "
                      f"(runs: {', '.join(f'{s:.2%}' for s in share)}; fit {fit:.1f} s)")
            shares = [storage_share(root, uri, optuna_url, args.trials)
                      for _ in range("storage" in parts)]
            figures["storage"] = [{"optuna_s": spent, "trial_s": trial_seconds}
                                  for spent, trial_seconds in shares]
            for spent, trial_seconds in shares:
                print(f"optuna storage (PostgreSQL): {spent:.2f} s of {trial_seconds:.1f} s in "
                      f"trials = {spent / trial_seconds:.2%}")
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OPTUNA_STORAGE": optuna_url}
            one, two = [], []
            for i in range(args.repeats if "hosts" in parts else 0):
                one.append(throughput(root, env, optuna_url, 1, 1000 + i))
                two.append(throughput(root, env, optuna_url, 2, 2000 + i))
            figures["hosts"] = {"per_min_1_host": one, "per_min_2_hosts": two}  # (trials, epochs)
            for k, unit in enumerate(("trials", "epochs") if one else ()):
                ratios = [b[k] / a[k] for a, b in zip(one, two, strict=True)]
                runs = ", ".join(f"{r:.2f}" for r in ratios)
                print(f"{unit}/min: 1 host x 1 thread {statistics.median(a[k] for a in one):.2f}, "
                      f"2 hosts x 1 thread {statistics.median(b[k] for b in two):.2f}; ratio "
                      f"median {statistics.median(ratios):.2f} (runs: {runs})")
        finally:
            stop_server(server)
            for suffix in ("mlflow", "optuna", "auth"):
                drop_database(admin, f"{prefix}_{suffix}")
    return figures


if __name__ == "__main__":
    main()
