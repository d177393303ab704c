"""Full-size quality check: `dvc repro` with default params on each bundled dataset.

Run from the repo root:  .venv/bin/python benchmarks/quality.py [--only NAME] [--set KEY=VALUE]

Each configuration runs in a fresh temporary copy of the repository (git + DVC initialised), so
nothing here touches your workspace, MLflow store or Optuna journal. Prints test metrics, the
quality bar from the training issue, and the wall time of the whole `dvc repro`. `--set` overrides
params.yaml on top of each configuration (e.g. `--set tune.n_trials=2` for a quick smoke run; the
quality bar is meant for the defaults). Writes benchmarks/results/quality.json (figures, commit
and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _results import write_result
from _workspace import make_repo, merge, parse_sets, run

# Only what differs from params.yaml: the data source, and an MLP for the table.
CONFIGS = {
    "digits": ({}, 0.985),
    "breast_cancer": ({"data": {"source": "breast_cancer", "path": "data/raw/breast_cancer.csv",
                                "positive_class": "malignant"},
                       "model": {"type": "mlp"}}, 0.97),
    "breast_cancer_logreg": ({"data": {"source": "breast_cancer",
                                       "path": "data/raw/breast_cancer.csv",
                                       "positive_class": "malignant"},
                              "model": {"type": "logreg"}}, 0.97),
}


def repro(name: str, overrides: dict, root: Path) -> tuple[dict, float]:
    """Copy the repo, apply overrides, `dvc repro`; return test metrics and wall seconds."""
    dest = make_repo(root / name, overrides)
    start = time.perf_counter()
    run(["dvc", "repro"], dest)
    seconds = time.perf_counter() - start
    return json.loads((dest / "reports" / "metrics.json").read_text()), seconds


def main() -> None:
    """Run each configuration and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params.yaml override for every configuration (repeatable)")
    args = parser.parse_args()
    extra = parse_sets(args.set)
    print(f"load average before: {os.getloadavg()}")
    figures: dict = {"sets": extra, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        for name in args.only or CONFIGS:
            overrides, bar = CONFIGS[name]
            metrics, seconds = repro(name, merge(overrides, extra), Path(tmp))
            verdict = "MET" if metrics["accuracy"] >= bar else "MISSED"
            print(f"{name:22s} accuracy {metrics['accuracy']:.4f} (bar {bar}: {verdict})  "
                  f"roc_auc {metrics['roc_auc']:.4f}  f1 {metrics['f1']:.4f}  "
                  f"n_test {metrics['n']}  dvc repro {seconds:.0f} s", flush=True)
            figures["configs"][name] = {"metrics": metrics, "bar": bar, "met": verdict == "MET",
                                        "dvc_repro_s": seconds}
    print(f"load average after: {os.getloadavg()}")
    write_result("quality", figures)


if __name__ == "__main__":
    main()
