"""Hostile-user attack on the stage CLIs: each bad input exits 2 with one line, writes nothing.

Each case builds its own bad input in a temp folder, runs one stage (or the predict CLI) as a
subprocess exactly as DVC would, and checks: exit code 2, stderr is a single `error: ...` line
(no traceback), the line names the offending file/column/key, and the stage's output is absent.
SIGKILL and resume cases live in the test suite (tests/test_tune.py, tests/test_files.py,
tests/test_registry.py); serving cases in
tests/test_registry.py::test_mlflow_models_serve_matches_cli.

    python benchmarks/attack.py            # prints one table row per case; exit 1 if any fails
"""

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

REPO = Path(__file__).resolve().parents[1]
SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}


@dataclass
class Case:
    """One attack: how to break the input, which command to run, what the message must name."""

    name: str
    setup: Callable[[Path], list[str]]  # writes the bad input; returns the command's arguments
    needle: str
    output: str = "out"  # must not exist afterwards
    env: dict[str, str] | None = None


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
        return ["-m", "pipeline.predict", "--model", "models:/none@champion", "--input",
                str(root / "in.csv"), "--output", str(root / "out")]
    return setup


def bomb(folder: Path) -> None:
    # 14000 x 14000 pixels, a few hundred KB: PIL refuses it as a decompression bomb.
    Image.new("1", (14000, 14000)).save(folder / "dog" / "bomb.png")


CASES = [
    Case("params: unknown top-level key", validate("sede: 1\n"), "sede: unknown key"),
    Case("params: typo'd section", validate("trian: {lr: 0.1}\n"), "trian: unknown key"),
    Case("params: empty file", validate("# nothing\n"), "params file is empty"),
    Case("params: lr .inf", validate("train: {lr: .inf}\n"), "train.lr = inf: must be a finite"),
    Case("params: search range outside key range",
         validate({"tune": {"search_space": {"model.dropout": {"low": 0.1, "high": 2}}}}),
         "tune.search_space.model.dropout.high"),
    Case("params: renamed key", validate({"model": {"channels": [8]}}), "renamed to"),
    Case("params: empty experiment", validate({"mlflow": {"experiment": ""}}),
         "mlflow.experiment = ''"),
    Case("params: data.path outside data/raw", validate({"data": {"path": "/tmp/x"}}),
         "data.path = '/tmp/x': not inside"),
    Case("csv: duplicate target header",
         csv_case(lambda t: t.replace("label\n", "label,label\n", 1).replace("m\n", "m,m\n")),
         "column 'label' appears more than once"),
    Case("csv: inf value", csv_case(lambda t: set_cells(t, 0, "inf", range(1))),
         "column 'x1' row 0 holds inf"),
    Case("csv: 1e999", csv_case(lambda t: set_cells(t, 1, "1e999", range(1, 2))),
         "column 'x2' row 1 holds inf"),
    Case("csv: values overflow std", csv_case(lambda t: set_cells(t, 1, "1e300")),
         "too large to standardise"),
    Case("csv: all-missing column", csv_case(lambda t: set_cells(t, 1, "")),
         "column 'x2' has no values"),
    Case("csv: not UTF-8", csv_case(lambda t: t.replace("red", "r\xe9d")), "not UTF-8 text"),
    Case("csv: unclosed quote", csv_case(lambda t: t.replace("red", '"red', 1)),
         "cannot parse CSV"),
    Case("image: truncated PNG", image_case(lambda f: (f / "dog" / "0.png").write_bytes(
        (f / "dog" / "1.png").read_bytes()[:30])), "0.png: not a readable image"),
    Case("image: text file", image_case(lambda f: (f / "cat" / "x.png").write_text("hello")),
         "x.png: not a readable image (unknown or unsupported format)"),
    Case("image: decompression bomb", image_case(bomb), "refused as a decompression bomb"),
    Case("store: corrupt mlflow.db", garbage_store, "tracking store failed", env={
        "MLFLOW_TRACKING_URI": "sqlite:///{root}/mlflow.db"}),
    Case("store: SQLite folder missing", train_with_store, "does not exist", env={
        "MLFLOW_TRACKING_URI": "sqlite:///{root}/nowhere/mlflow.db"}),
    Case("predict: missing CSV", predict_csv(None), "in.csv: no such file or folder"),
]


def run(case: Case) -> tuple[bool, str]:
    """Run one case in a fresh folder; return (passed, what happened)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = case.setup(root)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/ok.db",
               **{k: v.format(root=root) for k, v in (case.env or {}).items()}}
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        message = lines[-1] if lines else proc.stderr.strip().splitlines()[-1:]
        ok = (proc.returncode == 2 and len(lines) == 1 and case.needle in lines[0]
              and "Traceback" not in proc.stderr and not (root / case.output).exists())
        shutil.rmtree(root / "out", ignore_errors=True)
        return ok, f"exit {proc.returncode}: {str(message)[:150]}"


def main() -> None:
    """Print | case | pass | exit code and message | for every case."""
    print("| case | result | exit code: message |\n|---|---|---|")
    failed = 0
    for case in CASES:
        ok, what = run(case)
        failed += not ok
        print(f"| {case.name} | {'ok' if ok else 'FAIL'} | {what.replace('|', '/')} |",
              flush=True)
    print(f"\n{len(CASES) - failed}/{len(CASES)} cases hold")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
