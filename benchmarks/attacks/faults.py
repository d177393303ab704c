"""Store, model-file and disk faults: one line, exit 2, the old outputs and the store untouched.

Every case copies one tiny CSV workspace (preprocess → augment → train → evaluate, built once
per process), breaks one thing and runs the next stage as DVC would. A full disk is real: a
size-limited tmpfs over the workspace (or one folder of it) in a private mount namespace
(`unshare -Urm`, no root needed), so its store keeps the path its runs were recorded under.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from attacks.common import REPO, SPLIT, Case, csv_file, error_lines, params, python

OUTPUTS = ("data", "models", "reports")
_built: list[Path] = []


def workspace() -> Path:
    """A tiny CSV pipeline run up to evaluate, with its SQLite store; built once per process."""
    if _built:
        return _built[0]
    ws = Path(tempfile.mkdtemp(prefix="attack-faults-")) / "ws"
    atexit.register(shutil.rmtree, ws.parent, True)
    path = csv_file(ws)
    params(ws, {"data": {"source": "csv", "path": str(path), "target": "label",
                         "positive_class": "spam", "split": SPLIT},
                "model": {"type": "logreg"}, "train": {"epochs": 1, "cv_folds": 0},
                "tune": {"enabled": False}})
    for name in ("preprocess", "augment", "train", "evaluate"):
        proc = python(ws, stage(ws, name), store(ws))
        if proc.returncode != 0:
            raise RuntimeError(f"building the fault workspace: {name} failed:\n{proc.stderr}")
    _built.append(ws)
    return ws


def store(ws: Path) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow.db"}


def stage(ws: Path, name: str) -> list[str]:
    """`python -m pipeline.stages.NAME ...` with dvc.yaml's paths under `ws`."""
    paths = {"preprocess": {"out": "data/processed"},
             "augment": {"data-dir": "data/processed", "out": "data/augmented"},
             "train": {"data-dir": "data/processed", "train-dir": "data/augmented",
                       "best-params": "models/best_params.json", "out": "models",
                       "reports": "reports"},
             "evaluate": {"data-dir": "data/processed", "model-dir": "models",
                          "reports": "reports"},
             "register": {"data-dir": "data/processed", "train-dir": "data/augmented",
                          "model-dir": "models", "metrics": "reports/metrics.json",
                          "out": "reports/registration.json"}}[name]
    return ["-m", f"pipeline.stages.{name}", "--params", str(ws / "params.yaml"),
            *[arg for key, value in paths.items() for arg in (f"--{key}", str(ws / value))]]


def snapshot(ws: Path) -> dict[str, str]:
    """Hash of every output file (temp files too), and the store's finished runs and versions."""
    state = {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
             for top in OUTPUTS for p in sorted((ws / top).rglob("*")) if p.is_file()}
    db = ws / "mlflow.db"
    state["store"] = "absent"
    if db.is_file() and db.stat().st_size:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                # A FAILED run is honest history; a FINISHED one or a version is an output.
                state["store"] = " ".join(str(con.execute(query).fetchone()[0]) for query in (
                    "select count(*) from runs where status = 'FINISHED'",
                    "select count(*) from model_versions"))
            con.close()
        except sqlite3.DatabaseError:
            state["store"] = hashlib.sha256(db.read_bytes()).hexdigest()  # damaged: bytes
    return state


def verdict(rc: int, stderr: str, needle: str, before: dict, after: dict) -> tuple[bool, str]:
    """One `error:` line holding `needle`, exit 2, no traceback, nothing changed or left."""
    lines = error_lines(stderr)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    temps = [k for k in after if ".tmp-" in k]
    ok = (rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in stderr
          and not changed and not temps)
    shown = lines[-1] if lines else (stderr.strip().splitlines() or ["(no stderr)"])[-1]
    extra = f" changed: {changed}" if changed else ""
    return ok, f"exit {rc}: {shown[:150]}{extra}"


def fault(name: str, stage_name: str, breaker: Callable[[Path], None], needle: str) -> Case:
    """Copy the workspace, break it, run the stage: refused, nothing written."""
    def run(root: Path) -> tuple[bool, str]:
        ws = root / "ws"
        shutil.copytree(workspace(), ws)
        breaker(ws)
        before = snapshot(ws)
        proc = python(root, stage(ws, stage_name), store(ws))
        return verdict(proc.returncode, proc.stderr, needle, before, snapshot(ws))
    return Case(name, run=run)


# In the namespace: the workspace on a roomy tmpfs at its own path (its store's runs name it),
# then FOLDER on one holding only what it holds now plus SLACK bytes; run; snapshot after.
DISK = r"""set -e
ws=$1 src=$2 folder=$3 slack=$4 out=$5; shift 5
mount -t tmpfs -o size=256m tmpfs "$ws" && cp -a "$src/." "$ws/"
if [ "$folder" != . ]; then
  mount -t tmpfs -o size=256m tmpfs "$ws/$folder" && cp -a "$src/$folder/." "$ws/$folder/"
fi
used=$(df --output=used -B1 "$ws/$folder" | tail -1)
mount -o remount,size=$((used + slack)) "$ws/$folder"
set +e
"$@" 2> "$out/stderr"; echo $? > "$out/rc"
"$PY" -c "import json, sys; sys.path[:0] = sys.argv[2:]
from attacks.faults import snapshot; from pathlib import Path
print(json.dumps(snapshot(Path(sys.argv[1]))))" "$ws" "$BENCH" > "$out/after"
"""


def namespaces() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs of its own."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-Urm", "true"], capture_output=True).returncode == 0


def disk_full(name: str, stage_name: str, folder: str, needle: str, slack: int = 0) -> Case:
    """Run the stage with FOLDER of the workspace (`.`: all of it) full."""
    def run(root: Path) -> tuple[bool, str]:
        import json

        if not namespaces():
            return True, "skipped: no user namespaces (unshare -Urm) on this machine"
        ws, src = workspace(), root / "src"
        shutil.copytree(ws, src)
        before = snapshot(ws)
        env = {**os.environ, **store(ws), "PY": sys.executable,
               "BENCH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(["unshare", "-Urm", "bash", "-c", DISK, "disk", str(ws), str(src),
                               folder, str(slack), str(root), sys.executable,
                               *stage(ws, stage_name)], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=300)
        if proc.returncode != 0 or not (root / "after").is_file():
            return False, f"harness failed: {proc.stderr.strip()[-300:]}"
        after = json.loads((root / "after").read_text())
        return verdict(int((root / "rc").read_text()), (root / "stderr").read_text(), needle,
                       before, after)
    return Case(name, run=run)


def write(path: str, data: bytes) -> Callable[[Path], None]:
    return lambda ws: (ws / path).write_bytes(data)


def cut(path: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    return lambda ws: os.truncate(ws / path, keep((ws / path).stat().st_size))


def remove(path: str) -> Callable[[Path], None]:
    return lambda ws: (ws / path).unlink()


WEIGHTS, CONFIG = "models/model.safetensors", "models/model_config.json"
UNREADABLE = "model.safetensors: not a readable safetensors file"
FULL = "cannot write: No space left on device (ENOSPC)"

CASES = [
    fault("weights: empty model.safetensors", "evaluate", write(WEIGHTS, b""), UNREADABLE),
    fault("weights: truncated model.safetensors", "evaluate", cut(WEIGHTS, lambda n: n - 8),
          UNREADABLE),
    fault("weights: garbage model.safetensors", "evaluate", write(WEIGHTS, os.urandom(300)),
          UNREADABLE),
    fault("weights: missing model.safetensors", "evaluate", remove(WEIGHTS),
          "model.safetensors: not found"),
    fault("weights: truncated, then register (no version added)", "register",
          cut(WEIGHTS, lambda n: n // 2), UNREADABLE),
    fault("config: corrupt model_config.json", "evaluate", cut(CONFIG, lambda n: n // 2),
          "model_config.json: not valid JSON"),
    fault("config: missing model_config.json", "evaluate", remove(CONFIG),
          "model_config.json: not found"),
    fault("data: corrupt meta.json", "evaluate", cut("data/processed/meta.json", lambda n: 40),
          "meta.json: not valid JSON"),
    fault("params: corrupt best_params.json", "train",
          write("models/best_params.json", b'{"params": {"train.lr": 0.'),
          "best_params.json: not valid JSON"),
    fault("store: mlflow.db deleted between train and evaluate", "evaluate",
          remove("mlflow.db"), "mlflow.db is missing or empty"),
    fault("store: mlflow.db deleted before register", "register", remove("mlflow.db"),
          "mlflow.db is missing or empty"),
    fault("store: truncated mlflow.db (checked before reports/)", "evaluate",
          cut("mlflow.db", lambda n: n // 2), "database disk image is malformed"),
    disk_full("disk full: preprocess", "preprocess", "data", FULL),
    disk_full("disk full: train writing models/", "train", "models", FULL),
    disk_full("disk full: train, the store's disk", "train", ".",
              "database or disk is full"),
    disk_full("disk full: evaluate writing reports/", "evaluate", "reports", FULL),
    disk_full("disk full: evaluate, the artifact store", "evaluate", "mlartifacts", FULL),
]
