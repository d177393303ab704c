"""Shared by the acceptance scripts: a fresh git + DVC copy of this repository to run in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge two params mappings."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
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


def make_repo(dest: Path, overrides: dict | None = None, commit: bool = False) -> Path:
    """Copy code, dvc.yaml and params (with overrides) into a new git + DVC repo at `dest`."""
    dest.mkdir(parents=True)
    for item in ("pipeline", "data/raw"):
        shutil.copytree(REPO / item, dest / item,
                        ignore=shutil.ignore_patterns("__pycache__", "digits", "*.csv"))
    for item in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / item, dest / item)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"]):
        run(cmd, dest)
    if commit:
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-qm", "init"], dest)
    return dest
