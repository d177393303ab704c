"""Issue 20: preprocess time and peak memory for a CSV with a row-id column, vs rows.

Generates a CSV (deterministic) and runs the preprocess stage CLI on it as a subprocess, the way
DVC does, recording wall time, the peak RSS of the largest process (getrusage of the waited
children, what `/usr/bin/time -v` reports) and the sampled peak RSS of the whole process tree,
the width of the arrays written, and the notes meta.json gives.

Layouts: `issue` is the issue's case (a string id per row + 5 numeric columns, which one-hot
encoding turned into 14,005 features at 20,000 rows); `mixed` adds a 6-value segment, a
2,000-value city and an ISO date column.

    .venv/bin/python benchmarks/wide_csv.py                           # 20000:issue 200000:mixed
    .venv/bin/python benchmarks/wide_csv.py --cases 2000:mixed        # smoke
    git worktree add /tmp/before HEAD && .venv/bin/python benchmarks/wide_csv.py \\
        --repo /tmp/before --label before --cases 20000:issue          # the code before the fix

Results go to benchmarks/results/wide_csv_<label>.json (default label: after) with the commit
and the machine (benchmarks/_results.py); `code_commit` is the commit of the --repo measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml
from _results import write_result
from _workspace import commit

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
TIME = "/usr/bin/time"  # GNU time: -f %M is the peak RSS of the process it runs


def make_csv(path: Path, n: int, layout: str) -> None:
    """n rows: `id`, x1..x5 (x1 carries the label signal), label; `mixed` adds categoricals
    and a date."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({"id": [f"row-{i:07d}" for i in range(n)]})
    for k in range(1, 6):
        frame[f"x{k}"] = (rng.normal(size=n) + (k == 1) * y).round(4)
    if layout == "mixed":
        frame["segment"] = rng.choice(list("abcdef"), n)
        frame["city"] = [f"city{c}" for c in rng.zipf(1.3, n) % 2000]
        frame["signup"] = (pd.Timestamp("2015-01-01")
                           + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")).astype(str)
    frame["label"] = np.where(y == 1, "yes", "no")
    frame.to_csv(path, index=False)


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and its descendants (0 once gone)."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_preprocess(repo: Path, params: Path, out: Path) -> dict:
    """Run the stage CLI in `repo` under /usr/bin/time; time, peak RSS (largest process and
    sampled tree), exit code."""
    maxrss = out.with_suffix(".maxrss")
    start = time.perf_counter()
    proc = psutil.Popen([TIME, "-f", "%M", "-o", str(maxrss), sys.executable, "-m",
                         "pipeline.stages.preprocess", "--params", str(params), "--out",
                         str(out)], cwd=repo, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    kib = int(maxrss.read_text().split()[-1])  # %M: the largest process's peak, KiB
    return {"exit": proc.returncode, "seconds": round(seconds, 1),
            "peak_rss_gib": round(kib * 1024 / GIB, 3), "tree_rss_gib": round(peak[0] / GIB, 3),
            "stderr_tail": stderr[-600:]}


def measure(repo: Path, n: int, layout: str, work: Path) -> dict:
    """Generate, preprocess, and read what was written."""
    csv = work / "raw" / f"{layout}_{n}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    if not csv.exists():
        make_csv(csv, n, layout)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "csv", "path": str(csv),
                                               "target": "label", "positive_class": "yes"}}))
    out = work / f"processed_{layout}_{n}"
    result = {"rows": n, "layout": layout, "csv_mb": round(csv.stat().st_size / 1e6, 1),
              **run_preprocess(repo, params, out)}
    if result["exit"] == 0:
        arrays = sorted(out.glob("X_*.npy"))
        result["features"] = int(np.load(arrays[0], mmap_mode="r").shape[1])
        result["arrays_gib"] = round(sum(a.stat().st_size for a in arrays) / GIB, 3)
        notes = json.loads((out / "meta.json").read_text()).get("notes", [])
        result["notes"] = [f"{n['item']}: {n['action']}" for n in notes]
        result.pop("stderr_tail")
    return result


def main() -> None:
    """Measure each --cases entry and merge the figures into --out under --label."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["20000:issue", "200000:mixed"],
                        help="ROWS:LAYOUT (layout: issue or mixed)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs")
    parser.add_argument("--label", default="after", help="results file wide_csv_LABEL.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            rows, _, layout = case.partition(":")
            results.append(measure(args.repo.resolve(), int(rows), layout or "issue",
                                   Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    write_result(f"wide_csv_{args.label}", {"cases": results, "code_commit": commit(args.repo)})


if __name__ == "__main__":
    main()
