"""Tuning faults: an Optuna journal torn by kill -9 or a full disk, a file that is no journal,
and Ctrl-C during a trial (one line, exit 130, no trial left RUNNING)."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from attacks.common import REPO, SPLIT, Case, csv_file, error_lines, params

SPACE = {"train.lr": {"low": 0.001, "high": 0.1, "log": True}}


def tune_stage(root: Path, epochs: int = 1, n_trials: int = 2) -> list[str]:
    """The tune stage's argv on a tiny CSV, prepared once per process (journal: root/optuna.log)."""
    data = prepared()
    shutil.copytree(data / "p", root / "p")
    shutil.copytree(data / "a", root / "a")
    p = params(root, tune_params(data, epochs, n_trials))
    return ["-m", "pipeline.stages.tune", "--params", str(p), "--data-dir", str(root / "p"),
            "--train-dir", str(root / "a"), "--out", str(root / "out")]


def tune_params(data: Path, epochs: int = 1, n_trials: int = 2) -> dict:
    return {"data": {"source": "csv", "path": str(data / "data" / "raw" / "t.csv"),
                     "target": "label", "positive_class": "spam", "split": SPLIT},
            "model": {"type": "logreg"},
            "train": {"epochs": epochs, "cv_folds": 0, "patience": 0},
            "tune": {"enabled": True, "n_trials": n_trials, "pruner": "none",
                     "search_space": SPACE}}


@functools.cache
def prepared() -> Path:
    """Preprocessed and augmented tiny CSV data, shared by this module's cases (they copy it)."""
    root = Path(tempfile.mkdtemp(prefix="attack-tuning-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    csv_file(root)
    p = params(root, tune_params(root))
    for stage, extra in (("preprocess", ["--out", str(root / "p")]),
                         ("augment", ["--data-dir", str(root / "p"), "--out", str(root / "a")])):
        subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", "--params", str(p),
                        *extra], check=True, capture_output=True, cwd=REPO)
    return root


def journal(root: Path, edit: Callable[[bytes], bytes]) -> Path:
    """A journal of another finished study (the repair is file-wide), then `edit`ed."""
    path = root / "optuna.log"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="other", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    path.write_bytes(edit(path.read_bytes()))
    return path


def torn(edit: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        journal(root, edit)
        return tune_stage(root)
    return setup


def resumed(root: Path, proc: subprocess.CompletedProcess) -> str | None:
    """The torn tail was cut with a warning naming the bytes; the study ran; the file is clean."""
    data = (root / "optuna.log").read_bytes()
    if "dropped its torn last record, bytes" not in proc.stderr:
        return "no warning naming the dropped bytes"
    try:
        [json.loads(line) for line in data.splitlines()]
    except ValueError:
        return "the journal still holds a torn line"
    return None if (root / "out").exists() and data.endswith(b"\n") else "no best params"


def middle(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([*lines[:2], lines[2][:30] + b"\n", *lines[3:]])


def ctrl_c(root: Path) -> tuple[bool, str]:
    """SIGINT (what Ctrl-C sends) once a long trial runs: one line, exit 130, none RUNNING."""
    argv = tune_stage(root, epochs=5000, n_trials=3)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/ok.db", "OPTUNA_STORAGE": str(root / "j")}
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "j")))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        studies = optuna.get_all_study_summaries(storage)
        trials = optuna.load_study(study_name=studies[0].study_name, storage=storage).trials \
            if studies else []
        if trials and trials[-1].state.name == "RUNNING" and "pid" in trials[-1].user_attrs:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = error_lines(err)
    states = [t.state.name for t in optuna.load_study(
        study_name=optuna.get_all_study_summaries(storage)[0].study_name,
        storage=storage).trials]
    ok = (proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err
          and "RUNNING" not in states and not (root / "out").exists())
    return ok, f"exit {proc.returncode}: {(lines or err.splitlines()[-1:] or [''])[0][:150]} " \
               f"states {states}"


CASES = [
    Case("journal: partial last line (kill -9 mid-write)",
         torn(lambda d: d + b'{"op_code":4,"worker_id":"f00'), check=resumed),
    Case("journal: truncated mid-line", torn(lambda d: d[:-25]), check=resumed),
    Case("journal: unparseable last line (appended onto a torn one)",
         torn(lambda d: d + b'{"op_code":4,"wo{"op_code":4,"worker_id":"x"}\n'), check=resumed),
    Case("journal: zeros at the end (crashed disk)", torn(lambda d: d + b"\0" * 512),
         check=resumed),
    Case("journal: bad record before the end", torn(middle), "truncate -s "),
    Case("journal: OPTUNA_STORAGE is not a journal", tune_stage, "not an Optuna journal",
         env={"OPTUNA_STORAGE": "{root}/params.yaml"}),
    Case("tune: Ctrl-C inside a trial", run=ctrl_c),
]
