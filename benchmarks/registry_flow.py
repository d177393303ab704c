"""Acceptance walk-through of the champion/challenger gate on the default data.

Run from the repo root:  .venv/bin/python benchmarks/registry_flow.py [--set tune.n_trials=2]

In a fresh temporary copy of the repository: `dvc repro` (version 1 becomes champion), then
`dvc exp run -S train.epochs=1` (a worse model: registered as challenger only), then candidate
changes until one beats the champion by `register.min_improvement` on the gate metric (promoted).
Prints every decision and the registry's audit trail. `--set key=value` (repeatable) overrides
params.yaml in the copy before the first commit, e.g. fewer trials for a quick run.
Writes benchmarks/results/registry_flow.json (every decision, commit and machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _results import captured, write_result
from _workspace import make_repo, parse_sets, run
from mlflow.tracking import MlflowClient

from pipeline.core.tags import Tag

# Plausible improvements, tried in order until one is promoted.
# `dvc exp run -S` edits the workspace params, so each candidate restores train.epochs itself.
CANDIDATES = [["-S", "train.epochs=30", "-S", "augment.copies=4"],
              ["-S", "train.epochs=45", "-S", "augment.copies=4"]]


def show(step: str, repo: Path, seconds: float, steps: list[dict]) -> dict:
    """Print the latest registration decision and add it to `steps`."""
    report = json.loads((repo / "reports" / "registration.json").read_text())
    steps.append({"step": step, "seconds": seconds,
                  **{k: report[k] for k in ("version", "promote", "reason")}})
    verdict = "PROMOTED" if report["promote"] else "challenger only"
    print(f"{step:45s} v{report['version']}: {verdict} ({seconds:.0f} s)\n"
          f"    reason: {report['reason']}", flush=True)
    return report


def main() -> None:
    """Walk the gate through first version, worse run and better run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params.yaml override in the copy (repeatable), e.g. "
                        "tune.n_trials=2")
    args = parser.parse_args()
    with captured() as out:
        figures = measure(args)
    write_result("registry_flow", figures, out.getvalue())


def measure(args: argparse.Namespace) -> dict:
    """Walk the gate; print and return every decision and the champion."""
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="registry-flow-") as tmp:
        repo = make_repo(Path(tmp) / "repo", parse_sets(args.set), commit=True)
        start = time.perf_counter()
        run(["dvc", "repro"], repo)
        show("dvc repro (fresh clone)", repo, time.perf_counter() - start, steps)
        start = time.perf_counter()
        run(["dvc", "exp", "run", "-S", "train.epochs=1"], repo)
        show("dvc exp run -S train.epochs=1", repo, time.perf_counter() - start, steps)
        for candidate in CANDIDATES:
            start = time.perf_counter()
            run(["dvc", "exp", "run", *candidate], repo)
            report = show("dvc exp run " + " ".join(candidate[1::2]), repo,
                          time.perf_counter() - start, steps)
            if report["promote"]:
                break
        client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
        print("audit trail (registered-model tags audit.*):")
        for entry in report["audit"]:
            print(f"  v{entry['version']}: champion {entry['champion_before']} -> "
                  f"{entry['champion_after']}  {entry['metric']} challenger "
                  f"{entry['challenger_score']:.5f} vs champion {entry['champion_score']}")
        name = report["model_name"]  # register.model_name: auto resolves it from the data
        champion = client.get_model_version_by_alias(name, "champion")
        print(f"models:/{name}@champion = v{champion.version}; tags: "
              f"decision={champion.tags['decision']}, {Tag.GIT_COMMIT}="
              f"{champion.tags[Tag.GIT_COMMIT][:10]}, {Tag.RUN_ID}={champion.tags[Tag.RUN_ID]}")
    return {"sets": args.set, "steps": steps, "audit": report["audit"], "model": name,
            "champion_version": champion.version}


if __name__ == "__main__":
    main()
