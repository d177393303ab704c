"""The default `dvc repro` from scratch (tuning on), timed per stage, at two or more commits.

For each repeat and each commit in turn (alternating, so a drift of the machine's speed hits
every commit alike): a fresh `git clone` of this repository at that commit, then `dvc repro`
with the default params and local stores, timed in total and per stage (from the moment DVC
announces a stage to the next announcement), and the epochs the study's trials trained in all
(tune's workload: it moves when scores move and the pruner decides otherwise, so tune's seconds
per trial-epoch compare commits where its seconds alone do not). The clone's own `pipeline/`
package runs (`python -m` from the clone's root), with this interpreter's installed libraries.
Prints the median per commit and each commit's ratio to the first one.

    .venv/bin/python benchmarks/repro.py --revs 17f956b HEAD --repeats 3

Writes benchmarks/results/repro.json (every run's per-stage seconds, medians, commit, machine).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _results import captured, write_result
from _workspace import REPO, clean_env

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def clone(rev: str, dest: Path) -> str:
    """A fresh clone of this repository at `rev`; its full commit hash."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=dest, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True,
                          text=True, check=True).stdout.strip()


def timed_repro(root: Path) -> dict[str, float]:
    """Seconds per stage of `dvc repro` in `root`, and the total."""
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro"], cwd=root, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail[-40:], line]
        if found := STAGE_LINE.search(line):
            marks.append((found.group(1), time.perf_counter()))
    end = time.perf_counter()
    if proc.wait():
        raise SystemExit(f"dvc repro failed in {root}:\n{''.join(tail)}")
    stages = {name: round(nxt - at, 2) for (name, at), (_, nxt)
              in zip(marks, [*marks[1:], ("end", end)], strict=True)}
    return {**stages, "total": round(end - start, 2)}


def trial_epochs(root: Path) -> int:
    """Epochs the study's trials trained in all (pruned ones included): tune's workload, which
    moves from commit to commit when scores move and the pruner decides otherwise."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return sum(int(t.user_attrs.get("epochs_run", 0)) for t in study.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", nargs="+", default=["HEAD"],
                        help="commits to time (the first is the reference for ratios)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revs}
    commits: dict[str, str] = {}
    with captured() as out:
        for repeat in range(args.repeats):
            for rev in args.revs:
                with tempfile.TemporaryDirectory(prefix="repro-") as tmp:
                    root = Path(tmp) / "repo"
                    commits[rev] = clone(rev, root)
                    runs[rev].append(timed_repro(root))
                    epochs = trial_epochs(root)
                    runs[rev][-1] |= {"trial_epochs": epochs,
                                      "tune_s_per_epoch": runs[rev][-1]["tune"] / epochs}
                print(f"repeat {repeat + 1} {rev} ({commits[rev][:7]}): "
                      + ", ".join(f"{k} {v:.3g}" for k, v in runs[rev][-1].items()), flush=True)
        medians = {rev: {stage: statistics.median(r.get(stage, 0.0) for r in rs)
                         for stage in rs[0]} for rev, rs in runs.items()}
        first = args.revs[0]
        for rev, median in medians.items():
            ratio = medians[first]["total"] / median["total"]
            print(f"{rev} ({commits[rev][:7]}): median dvc repro {median['total']:.1f} s "
                  f"({ratio:.2f}x {first}); per stage "
                  + ", ".join(f"{k} {v:.3g}" for k, v in median.items() if k != "total"))
    write_result("repro", {"revs": args.revs, "commits": commits, "runs": runs,
                           "medians": medians}, out.getvalue())


if __name__ == "__main__":
    main()
