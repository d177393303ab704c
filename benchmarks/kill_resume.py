"""Acceptance check: SIGKILL `dvc repro` in the middle of tuning, rerun, inspect the study.

Run from the repo root:  .venv/bin/python benchmarks/kill_resume.py [--trials 8] [--kill-after 3]
                         [--set KEY=VALUE ...]

In a fresh temporary copy of the repository (default params, fewer trials so it finishes in a
few minutes), start `dvc repro`, wait until `--kill-after` trials have finished, SIGKILL the whole
process group (dvc and the stage it runs), rerun `dvc repro`, then print the trial states, retries
and MLflow run statuses. Passes when the study holds exactly n_trials complete+pruned trials, no
RUNNING trial, no duplicate finished trial, no RUNNING MLflow run, and no trial run still tagged
optuna.trial_state=RUNNING.
`--set` adds params.yaml overrides in the copy (e.g. train.epochs=10 for a quicker run).
Writes benchmarks/results/kill_resume.json (figures, printed lines, commit and machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from _results import captured, write_result
from _workspace import clean_env, make_repo, merge, parse_sets
from mlflow.tracking import MlflowClient

from pipeline.core.tags import Tag


def study(dest: Path) -> optuna.Study | None:
    """The (single) study in the copy's journal, if it exists yet."""
    path = dest / "optuna.journal"
    if not path.exists():
        return None
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return None
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage)


def main() -> None:
    """Kill, resume, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=3)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params.yaml override in the copy (repeatable)")
    args = parser.parse_args()
    with captured() as out:
        figures = measure(args)
    write_result("kill_resume", figures, out.getvalue())


def measure(args: argparse.Namespace) -> dict:
    """Kill, resume, print and return what the study and the store hold."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        dest = make_repo(Path(tmp) / "repo",
                         merge(parse_sets(args.set), {"tune": {"n_trials": args.trials}}))
        log = (Path(tmp) / "first.log").open("w")
        proc = subprocess.Popen(["dvc", "repro"], cwd=dest, env=clean_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            time.sleep(0.5)
            s = study(dest)
            states = [t.state.name for t in s.trials] if s else []
            if states.count("COMPLETE") + states.count("PRUNED") >= args.kill_after and \
                    states and states[-1] == "RUNNING":
                break
            if proc.poll() is not None:
                raise SystemExit("dvc repro ended before it could be killed; see first.log")
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the tune stage it started
        proc.wait()
        print(f"killed dvc repro with trial states {Counter(states)}")
        start = time.perf_counter()
        second = subprocess.run(["dvc", "repro"], cwd=dest, env=clean_env(), capture_output=True,
                                text=True)
        print(f"rerun: exit {second.returncode} in {time.perf_counter() - start:.0f} s")
        if second.returncode:
            print(second.stdout[-3000:], second.stderr[-3000:])
        s = study(dest)
        assert s is not None
        states = Counter(t.state.name for t in s.trials)
        finished = states["COMPLETE"] + states["PRUNED"]
        # A failed trial's params are redrawn by the next trial (the sampler is seeded from the
        # study's progress), so show which trial repeated each failed one.
        trials = s.trials
        redrawn = [(t.number, t.params == trials[t.number + 1].params) for t in trials
                   if t.state.name == "FAIL" and t.number + 1 < len(trials)]
        print(f"trial states after rerun: {dict(states)}; failed trial → params redrawn by the "
              f"next: {redrawn}")
        client = MlflowClient(f"sqlite:///{dest / 'mlflow.db'}")
        exp = client.get_experiment_by_name("binary-classification")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        print(f"MLflow run statuses: {dict(Counter(r.info.status for r in runs))}")
        trial_tags = Counter(r.data.tags[Tag.TRIAL_STATE] for r in runs
                             if Tag.TRIAL_STATE in r.data.tags)
        print(f"MLflow trial runs by {Tag.TRIAL_STATE}: {dict(trial_tags)}")
        ok = (finished == args.trials and states["RUNNING"] == 0
              and all(r.info.status != "RUNNING" for r in runs)
              and trial_tags["RUNNING"] == 0 and second.returncode == 0)
        print(f"n_trials={args.trials}: {finished} finished (complete+pruned), "
              f"{states['RUNNING']} running -> {'PASS' if ok else 'FAIL'}")
    return {"args": vars(args), "rerun_exit": second.returncode, "trial_states": dict(states),
            "redrawn": redrawn, "run_statuses": dict(Counter(r.info.status for r in runs)),
            "trial_run_tags": dict(trial_tags), "passed": ok}


if __name__ == "__main__":
    main()
