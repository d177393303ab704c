"""The attack framework: a Case, how one runs, and the small bad inputs cases build on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}


@dataclass
class Case:
    """One attack: how to break the input, which command to run, what must come out.

    A refusal case (the default) passes when the command exits 2 with exactly one
    `error: ...` line on stderr that contains `needle`, no traceback, and `output` absent.
    A case with `check` expects a correct result instead: exit `exit_code` (0 by default),
    no traceback, and `check(root, proc)` returning None (else what is wrong).
    A case with `run` does everything itself (several commands, signals, servers) and
    returns (passed, what happened)."""

    name: str
    setup: Callable[[Path], list[str]] | None = None  # writes the input; returns argv
    needle: str = ""
    output: str = "out"  # must not exist afterwards (refusal cases)
    env: dict[str, str] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None
    exit_code: int | None = None
    run: Callable[[Path], tuple[bool, str]] | None = None


def csv_file(root: Path, edit: Callable[[str], str] = lambda t: t) -> Path:
    """A small valid CSV (numeric, categorical, labels), then `edit` applied to its text."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=40), "x2": rng.normal(size=40),
                          "colour": rng.choice(["red", "blue"], 40),
                          "label": ["spam", "ham"] * 20})
    path = root / "data" / "raw" / "t.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(edit(frame.to_csv(index=False)).encode("latin-1"))
    return path


def set_cells(text: str, column: int, value: str, rows: range | None = None) -> str:
    """CSV text with `column` set to `value` in the given data rows (all rows by default)."""
    lines = text.split("\n")
    for i in rows if rows is not None else range(len(lines) - 2):
        cells = lines[i + 1].split(",")
        cells[column] = value
        lines[i + 1] = ",".join(cells)
    return "\n".join(lines)


def images(root: Path) -> Path:
    """A tiny two-class ImageFolder."""
    folder = root / "data" / "raw" / "imgs"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (12, 12), 40 if cls == "cat" else 200).save(folder / cls / f"{i}.png")
    return folder


def params(root: Path, body: dict | str) -> Path:
    path = root / "params.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def preprocess(root: Path, body: dict | str) -> list[str]:
    return ["-m", "pipeline.stages.preprocess", "--params", str(params(root, body)),
            "--out", str(root / "out")]


def csv_case(edit: Callable[[str], str]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        path = csv_file(root, edit)
        return preprocess(root, {"data": {"source": "csv", "path": str(path), "target": "label",
                                          "positive_class": "spam", "split": SPLIT}})
    return setup


def image_case(breaker: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        folder = images(root)
        breaker(folder)
        return preprocess(root, {"data": {"source": "imagefolder", "path": str(folder),
                                          "positive_class": "dog", "image_size": 8,
                                          "split": SPLIT}})
    return setup


def validate(body: dict | str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        return ["-m", "pipeline.stages.validate", "--params", str(params(root, body)),
                "--dvc-yaml", str(REPO / "dvc.yaml"), "--out", str(root / "out")]
    return setup


def train_with_store(root: Path) -> list[str]:
    """Preprocess + augment a tiny CSV, then train against whatever store the case set."""
    path = csv_file(root)
    p = params(root, {"data": {"source": "csv", "path": str(path), "target": "label",
                               "positive_class": "spam", "split": SPLIT},
                      "model": {"type": "logreg"}, "train": {"epochs": 1}})
    for stage, extra in (("preprocess", ["--out", str(root / "p")]),
                         ("augment", ["--data-dir", str(root / "p"), "--out", str(root / "a")])):
        subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", "--params", str(p),
                        *extra], check=True, capture_output=True, cwd=REPO)
    return ["-m", "pipeline.stages.train", "--params", str(p), "--data-dir", str(root / "p"),
            "--train-dir", str(root / "a"), "--best-params", str(root / "none.json"),
            "--out", str(root / "out"), "--reports", str(root / "reports")]


def garbage_store(root: Path) -> list[str]:
    (root / "mlflow.db").write_text("not a database " * 20)
    return train_with_store(root)


def predict_csv(content: bytes | None) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        if content is not None:
            (root / "in.csv").write_bytes(content)
        return ["-m", "pipeline.cli.predict", "--model", "models:/none@champion", "--input",
                str(root / "in.csv"), "--output", str(root / "out")]
    return setup


def bomb(folder: Path) -> None:
    # 14000 x 14000 pixels, a few hundred KB: PIL refuses it as a decompression bomb.
    Image.new("1", (14000, 14000)).save(folder / "dog" / "bomb.png")


def python(root: Path, args: list[str], env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python ARGS` from the repository root against a store under `root`."""
    full = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/ok.db",
            "OPTUNA_STORAGE": str(root / "optuna.log"),
            **{k: v.format(root=root) for k, v in (env or {}).items()}}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=full, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a CLI printed."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def run_case(case: Case) -> tuple[bool, str]:
    """Run one case in a fresh folder; return (passed, what happened)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if case.run is not None:
            return case.run(root)
        assert case.setup is not None, case.name
        proc = python(root, case.setup(root), case.env)
        lines = error_lines(proc.stderr)
        tail = proc.stderr.strip().splitlines()[-1:]
        if case.check is not None:
            want = 0 if case.exit_code is None else case.exit_code
            problem = (f"exit {proc.returncode}, expected {want}" if proc.returncode != want
                       else "traceback on stderr" if "Traceback" in proc.stderr
                       else case.check(root, proc))
            return problem is None, f"exit {proc.returncode}: {problem or 'correct'} {tail}"
        message = lines[-1] if lines else tail
        ok = (proc.returncode == (2 if case.exit_code is None else case.exit_code)
              and len(lines) == 1 and case.needle in lines[0]
              and "Traceback" not in proc.stderr and not (root / case.output).exists())
        shutil.rmtree(root / "out", ignore_errors=True)
        return ok, f"exit {proc.returncode}: {str(message)[:150]}"
