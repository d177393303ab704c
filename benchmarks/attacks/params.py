"""Params faults, credentials in connection strings, and the one-sample training batch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from attacks.common import REPO, SPLIT, Case, images, params, preprocess, validate

DUPLICATE = "seed: 42\ntrain:\n  lr: 0.003\n  batch_size: 64\n  lr: 0.03\n"
SECRET = "hunter2"


def tune_worker(body: str) -> Callable[[Path], list[str]]:
    """The remote tuning worker on these params (it validates before touching any service)."""
    def setup(root: Path) -> list[str]:
        return ["-m", "pipeline.cli.tune_worker", "--params", str(params(root, body))]
    return setup


def team(database: str) -> Callable[[Path], list[str]]:
    """The team server's launcher on an admin database URL (nothing listens on port 1)."""
    def setup(root: Path) -> list[str]:
        return ["-m", "pipeline.cli.team", "--database", database, "--state-dir", str(root / "s")]
    return setup


def no_secret(root: Path, proc: subprocess.CompletedProcess) -> str | None:
    """Exit 2 with one error line that names the masked URL, and the password nowhere."""
    if SECRET in proc.stdout + proc.stderr:
        return f"the password is printed: {proc.stderr.strip().splitlines()[-1:]}"
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    return None if len(lines) == 1 and "***" in lines[0] else f"error lines: {lines}"


def valid(root: Path, proc: subprocess.CompletedProcess) -> str | None:
    return None if (root / "out").is_file() else "validate wrote no output"


def one_left_over(model: str, size: int) -> Callable[[Path], list[str]]:
    """16 images, 8 of them train; batch size 7 leaves one sample for the last batch."""
    def setup(root: Path) -> list[str]:
        folder = images(root)
        body = {"data": {"source": "imagefolder", "path": str(folder), "positive_class": "dog",
                         "image_size": size, "split": SPLIT},
                "augment": {"enabled": False}, "model": {"type": model},
                "train": {"epochs": 1, "batch_size": 7, "cv_folds": 0, "num_threads": 1},
                "tune": {"enabled": False}}
        p = params(root, body)
        for stage, extra in (("preprocess", ["--out", str(root / "p")]),
                             ("augment", ["--data-dir", str(root / "p"),
                                          "--out", str(root / "a")])):
            subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", "--params",
                            str(p), *extra], check=True, capture_output=True, cwd=REPO)
        return ["-m", "pipeline.stages.train", "--params", str(p), "--data-dir",
                str(root / "p"), "--train-dir", str(root / "a"), "--best-params",
                str(root / "none.json"), "--out", str(root / "out"), "--reports",
                str(root / "reports")]
    return setup


def trained(root: Path, proc: subprocess.CompletedProcess) -> str | None:
    counts = json.loads((root / "a" / "meta.json").read_text())["counts"]["train"]
    if sum(counts.values()) % 7 != 1:  # else the case would not test the edge
        return f"training split {counts} leaves no single sample for batch size 7"
    return None if (root / "out" / "model.safetensors").is_file() else "no model written"


CASES = [
    Case("params: lr given twice (validate)", validate(DUPLICATE),
         "key 'train.lr' appears twice (lines 3 and 5)"),
    Case("params: lr given twice (preprocess)", lambda root: preprocess(root, DUPLICATE),
         "key 'train.lr' appears twice (lines 3 and 5)"),
    Case("params: lr given twice (tune_worker)", tune_worker(DUPLICATE),
         "key 'train.lr' appears twice (lines 3 and 5)"),
    Case("params: duplicate key deep in the search space",
         validate("tune:\n  search_space:\n    train.lr: {low: 0.001, high: 0.1}\n"
                  "    train.lr: {low: 0.01, high: 0.2}\n"),
         "key 'tune.search_space.train.lr' appears twice (lines 3 and 4)"),
    Case("params: seed 2**32", validate("seed: 4294967296\n"),
         "seed = 4294967296: must be in [0, 4294967295]"),
    Case("params: seed 2**32 (tune_worker, same check)", tune_worker("seed: 4294967296\n"),
         "seed = 4294967296: must be in [0, 4294967295]"),
    Case("params: seed 2**32 - 1 is fine", validate("seed: 4294967295\n"), check=valid),
    Case("params: epochs beyond 64 bits", validate("train: {epochs: 9223372036854775808}\n"),
         "train.epochs = 9223372036854775808: does not fit a 64-bit integer"),
    Case("params: 5000 threads", validate("train: {num_threads: 5000}\n"),
         "train.num_threads = 5000: must be in [1, 1024]"),
    Case("params: data outside DVC (tune_worker, same check)",
         tune_worker("data: {path: /tmp/elsewhere}\n"), "data.path = '/tmp/elsewhere'"),
    Case("params: batch size 1 with BatchNorm",
         validate("train: {batch_size: 1}\ntune: {enabled: false}\n"),
         "train.batch_size = 1: model.type 'cnn' trains BatchNorm"),
    Case("params: search space allows batch size 1",
         validate("tune: {search_space: {train.batch_size: {low: 1, high: 64, log: true}}}\n"),
         "tune.search_space.train.batch_size = 1"),
    Case("params: list choices Optuna cannot store",
         validate("tune: {search_space: {model.hidden_sizes: {choices: [[8], [16, 8]]}}}\n"),
         "Optuna tunes only plain values"),
    Case("secrets: ?user=&password= in OPTUNA_STORAGE", tune_worker("seed: 1\n"),
         env={"OPTUNA_STORAGE": f"postgresql://127.0.0.1:1/db?user=u&password={SECRET}"},
         check=no_secret, exit_code=2),
    Case("secrets: ?PWD= any case (team server)",
         team(f"postgresql://u@127.0.0.1:1/db?PWD={SECRET}&sslmode=disable"),
         check=no_secret, exit_code=2),
    Case("secrets: user:password@ with an @ in the password (team server)",
         team(f"postgresql://u:x@{SECRET}@127.0.0.1:1/db"), check=no_secret, exit_code=2),
    Case("secrets: libpq sslpassword= (team server)",
         team(f"postgresql://u@127.0.0.1:1/db?sslpassword={SECRET}"), check=no_secret,
         exit_code=2),
    Case("training: resnet18, last batch of one", one_left_over("resnet18", 32),
         check=trained),
]
