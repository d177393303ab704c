"""Shared by the acceptance scripts: a fresh git + DVC copy of this repository to run in."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.core.config import default_mapping
from pipeline.core.typed import deep_merge as merge

REPO = Path(__file__).resolve().parents[1]


def parse_sets(items: list[str] | None) -> dict:
    """`--set section.key=value` strings (values read as YAML) as a nested params mapping."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def clean_env() -> dict[str, str]:
    """This interpreter's bin dir first on PATH; the default (local, in-repo) stores."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        env.pop(key, None)
    return env


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command in the copy; fail loudly with its output tail."""
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def default_params() -> dict:
    """The code's defaults as a params.yaml mapping (what the committed params.yaml states)."""
    # Never the checkout's params.yaml: `dvc exp run -S` writes each experiment into it.
    return json.loads(json.dumps(default_mapping()))  # tuples → lists


def make_repo(dest: Path, overrides: dict | None = None, commit: bool = False) -> Path:
    """Copy code, dvc.yaml and params (with overrides) into a new git + DVC repo at `dest`."""
    dest.mkdir(parents=True)
    # Tracked code only: a user's data under data/ (and the .dvc files `dvc add` wrote for it),
    # stray files and outputs of their runs stay out. The READMEs make the data folders.
    tracked = run(["git", "ls-files", "pipeline", "dvc.yaml", ".gitignore", ".dvcignore",
                   "data/raw/README.md", "data/weights/README.md"], REPO).split()
    for name in tracked:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)
    params = merge(default_params(), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"]):
        run(cmd, dest)
    if commit:
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-qm", "init"], dest)
    return dest


def commit(repo: Path = REPO) -> str:
    """The checkout's commit, marked dirty when its working tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout
    return git("rev-parse", "--short", "HEAD").strip() + (
        "+dirty" if git("status", "--porcelain").strip() else "")


def comparison_parser(doc: str, datasets: list[str]) -> argparse.ArgumentParser:
    """The command line of the pipeline-vs-baselines scripts (peers.py, tables.py)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=datasets, default=datasets)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params override for every run (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    return parser
