"""Shared test helpers (plain functions and constants; fixtures live in conftest.py): tiny data,
params files, in-process stage runs, git + DVC repos, the team's server and a served model."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.core.config import default_mapping
from pipeline.core.typed import deep_merge as merge
from pipeline.data.dataset import Split

if TYPE_CHECKING:
    import optuna

REPO = Path(__file__).resolve().parents[1]

# Fast settings shared by every tiny run; tests override what they exercise.
TINY: dict[str, Any] = {
    "seed": 0,
    "augment": {"copies": 1},
    "model": {"type": "mlp", "hidden_sizes": [16], "conv_channels": [4, 8]},
    # Holdout validation: tiny sets would otherwise be cross-validated (train.cv_folds: auto);
    # tests/test_crossval.py turns folds on where it tests them.
    # One thread: tiny batches spend more on syncing two threads than on work.
    "train": {"epochs": 3, "batch_size": 16, "patience": 0, "cv_folds": 0, "num_threads": 1},
    "tune": {"enabled": False, "n_trials": 3},
}


def write_params(path: Path, overrides: dict) -> Path:
    """Write a params.yaml made of TINY plus overrides."""
    path.write_text(yaml.safe_dump(merge(TINY, overrides), sort_keys=False))
    return path


def _blob(rng: np.random.Generator, size: tuple[int, int], bright: bool) -> np.ndarray:
    """A class-dependent pattern so tiny models have something to learn."""
    h, w = size
    img = rng.integers(0, 60, (h, w), dtype=np.uint8)
    if bright:
        img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] += 150
    return img


def make_imagefolder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Two classes of images in every supported format, mode and several sizes."""
    rng = np.random.default_rng(seed)
    formats = [("png", "L"), ("png", "RGBA"), ("jpg", "RGB"), ("bmp", "RGB"), ("gif", "P"),
               ("tiff", "RGB"), ("png", "P"), ("jpeg", "L")]
    sizes = [(12, 12), (20, 16), (9, 14), (32, 32)]
    for c, cls in enumerate(["cat", "dog"]):
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            ext, mode = formats[i % len(formats)]
            gray = _blob(rng, sizes[i % len(sizes)], bright=bool(c))
            img = Image.fromarray(gray, mode="L")
            if mode == "RGBA":
                img = img.convert("RGBA")
            elif mode == "P":
                img = img.convert("RGB").convert("P")
            elif mode == "RGB":
                img = img.convert("RGB")
            img.save(folder / f"{cls}_{i:03d}.{ext}")
    return root


def make_csv(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Numeric + categorical columns with NaNs and string labels."""
    rng = np.random.default_rng(seed)
    y = np.array(["spam", "ham"] * (rows // 2))
    x1 = rng.normal(size=rows) + (y == "spam") * 2.0
    x2 = rng.normal(size=rows)
    x1[[3, 10]] = np.nan
    colour = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    colour[[5, 7]] = None
    frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour,
                          "flag": rng.integers(0, 2, rows).astype(bool), "label": y})
    frame.to_csv(path, index=False)
    return path



def empty_store(template: Path) -> Path:
    """Create, once, an empty MLflow SQLite store at `template` (MLflow's own schema
    migration, seconds on this machine), for store_at() to copy."""
    if not template.exists():
        from mlflow.tracking import MlflowClient

        template.parent.mkdir(parents=True, exist_ok=True)
        # cwd: MLflow puts the Default experiment's artifacts under ./mlruns (none are logged).
        with contextlib.chdir(template.parent):
            MlflowClient(f"sqlite:///{template}").search_experiments(max_results=1)
    return template


def store_at(root: Path, template: Path) -> str:
    """A real, empty MLflow SQLite store at root/mlflow.db (a copy of the migrated `template`:
    creating each store anew costs seconds); its URI. Pipeline experiments are created in
    it, with their artifacts beside it."""
    shutil.copy(template, root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


@contextlib.contextmanager
def module_store(root: Path, template: Path) -> Iterator[str]:
    """For module-scoped fixtures: a store_at(root), cwd in `root`, while the block runs."""
    with pytest.MonkeyPatch.context() as mp:
        uri = store_at(root, template)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # dvc.lock / git lookups see an empty workspace
        yield uri


def stage_paths(root: Path) -> dict[str, str]:
    """Where run_stages puts each output under `root`."""
    return {"processed": str(root / "processed"), "augmented": str(root / "augmented"),
            "models": str(root / "models"), "reports": str(root / "reports")}


def run_stages(params: Path, root: Path, upto: str = "evaluate") -> dict[str, str]:
    """Call the stage mains in order, in-process, the way dvc.yaml wires them."""
    from pipeline.stages import augment, evaluate, preprocess, train

    p = stage_paths(root)
    common = ["--params", str(params)]
    preprocess.main([*common, "--out", p["processed"]])
    augment.main([*common, "--data-dir", p["processed"], "--out", p["augmented"]])
    if upto == "augment":
        return p
    train.main([*common, "--data-dir", p["processed"], "--train-dir", p["augmented"],
                "--best-params", str(root / "models" / "best_params.json"),
                "--out", p["models"], "--reports", p["reports"]])
    if upto == "train":
        return p
    evaluate.main([*common, "--data-dir", p["processed"], "--model-dir", p["models"],
                   "--reports", p["reports"]])
    return p


def csv_checkout(root: Path, csv: str, rows: int, overrides: dict) -> Path:
    """A checkout as `git clone && dvc pull` leaves it: a CSV at `csv` (relative to root),
    params.yaml (TINY + a half/quarter/quarter CSV split + overrides), processed and augmented
    data under root/data."""
    (root / csv).parent.mkdir(parents=True, exist_ok=True)
    make_csv(root / csv, rows=rows)
    write_params(root / "params.yaml", merge({"data": {
        "source": "csv", "path": csv, "target": "label", "positive_class": "spam",
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}}}, overrides))
    with contextlib.chdir(root):  # params and data paths are relative, as in a checkout
        run_stages(Path("params.yaml"), Path("data"), upto="augment")
    return root


# This machine kind (and CI) runs PostgreSQL on loopback with trust auth: tests that need it fail,
# never skip, when it is missing.
PG_ADMIN = os.environ.get("PIPELINE_TEST_POSTGRES_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TeamServer:
    """A real `mlflow server` on PostgreSQL (started by pipeline.cli.team) and its exports."""

    url: str
    optuna: str
    prefix: str
    state: Path
    log: Path


@contextlib.contextmanager
def team_server(root: Path, auth: bool = False) -> Iterator[TeamServer]:
    """Start the team's server with uniquely named databases; stop it and drop them after."""
    from pipeline.cli.team import drop_database, start_server, stop_server

    prefix = f"t{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow-server.log"
    with pytest.MonkeyPatch.context() as mp:
        if auth:
            mp.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + uuid.uuid4().hex)
        process = None
        try:
            process, exports = start_server(PG_ADMIN, prefix, root / "state", port=free_port(),
                                            auth=auth, workers=1, log=log)
            yield TeamServer(exports["MLFLOW_TRACKING_URI"], exports["OPTUNA_STORAGE"], prefix,
                             root / "state", log)
        finally:
            if process is not None:
                stop_server(process)
            for suffix in ("mlflow", "optuna", "auth"):
                drop_database(PG_ADMIN, f"{prefix}_{suffix}")



@contextlib.contextmanager
def served_model(model_uri: str, cwd: Path, env: dict[str, str],
                 wait_s: float = 180) -> Iterator[int]:
    """`mlflow models serve -m model_uri` on a free loopback port; yield it once /ping answers."""
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode()[-3000:]) from None
                time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def invoke_images(port: int, files: list[Path]) -> list[dict]:
    """POST these image files (base64) to a served model's /invocations; its predictions."""
    body = {"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(f.read_bytes()).decode()] for f in files]}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]


def image_split(n: int, channels: int, size: int = 32, seed: int = 0) -> Split:
    """`n` random square images (a bright square marks class 1) as a dataset Split."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.float32)
    x[y == 1, :, 8:24, 8:24] = 255  # something to learn
    return Split(x, y, [str(i) for i in range(n)])


def register_args(params: Path, paths: dict[str, str], out: Path) -> list[str]:
    """The register stage's arguments for a run_stages layout, its report written to `out`."""
    return ["--params", str(params), "--data-dir", paths["processed"], "--train-dir",
            paths["augmented"], "--model-dir", paths["models"], "--metrics",
            str(Path(paths["reports"]) / "metrics.json"), "--out", str(out)]


def csv_tune_params(root: Path, rows: int = 80, **tune: object) -> Path:
    """params.yaml for tuning on a `rows`-row CSV under root (successive halving, 6 trials)."""
    path = make_csv(root / "table.csv", rows=rows)
    return write_params(root / "params.yaml", {
        "data": {"source": "csv", "path": str(path), "target": "label",
                 "positive_class": "spam", "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "train": {"epochs": 6, "batch_size": 16},
        "tune": {"enabled": True, "n_trials": 6, "pruner": "successive_halving",
                 "search_space": {"train.lr": {"low": 1e-5, "high": 0.5, "log": True},
                                  "train.batch_size": {"choices": [8, 16]}}, **tune}})


def tune_args(params: Path, root: Path, out: str = "best_params.json") -> list[str]:
    """The tune stage's arguments for a run_stages layout under root."""
    p = stage_paths(root)
    return ["--params", str(params), "--data-dir", p["processed"], "--train-dir",
            p["augmented"], "--out", str(root / out)]


def load_study(root: Path, name: str = "optuna.journal") -> optuna.Study:
    """The one study in the journal file root/name."""
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / name)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


# Small but complete: built-in digits at 8x8, a small CNN, a short study.
E2E = {
    "seed": 7,
    "data": {"image_size": 8},
    "augment": {"copies": 1},
    "model": {"type": "cnn", "conv_channels": [4, 8]},
    "train": {"epochs": 3, "patience": 0},
    "tune": {"enabled": True, "n_trials": 2},
}


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin dir first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("OPTUNA_STORAGE", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_repo(dest: Path, overrides: dict, source: Path = REPO) -> Path:
    """A fresh git + DVC repo of the tracked pipeline files, with default params + overrides."""
    dest.mkdir()
    # Tracked code only, and params from the code's defaults: whatever a user did in their
    # checkout (untracked files, an edited params.yaml, their own data and its `dvc add`ed .dvc
    # files under data/) cannot change what the tests run. The READMEs make the data folders.
    tracked = sh(source, "git", "ls-files", "pipeline", "dvc.yaml", ".gitignore", ".dvcignore",
                 "data/raw/README.md", "data/weights/README.md").stdout.split()
    for name in tracked:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, dest / name)
    defaults = json.loads(json.dumps(default_mapping()))  # tuples → lists
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(defaults, overrides), sort_keys=False))
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "config", "user.email", "ci@example.com")
    sh(dest, "git", "config", "user.name", "ci")
    sh(dest, "dvc", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "init")
    return dest
