"""Store, model-file and disk faults: one clear error naming the file, the old outputs kept.

The stage-level cases (train, evaluate, register and preprocess as subprocesses, a real full
disk) live in benchmarks/attacks/faults.py; these test the pieces in-process, in seconds.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import DataError, StoreError
from pipeline.core.files import TMP_MARK, atomic_update, disk_full_error, read_json, write_json
from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE, build_model, load_model, save_model
from pipeline.tracking.sqlite_store import check_sqlite
from tests.helpers import REPO


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A saved logreg on 3 features, as the train stage writes it."""
    cfg = ModelConfig(type="logreg")
    model = build_model(cfg, [3], [0.0], [1.0])
    save_model(model, tmp_path / "models", {
        "model": {"type": "logreg"}, "input_shape": [3], "norm": {"mean": [0.0], "std": [1.0]}})
    return tmp_path / "models"


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


BREAKS = {
    "empty weights": (WEIGHTS_FILE, lambda p: p.write_bytes(b""), "not a readable safetensors"),
    "truncated header": (WEIGHTS_FILE, lambda p: truncate(p, 40), "not a readable safetensors"),
    "truncated data": (WEIGHTS_FILE, lambda p: truncate(p, p.stat().st_size - 4),
                       "not a readable safetensors"),
    "garbage weights": (WEIGHTS_FILE, lambda p: p.write_bytes(os.urandom(200)),
                        "not a readable safetensors"),
    "missing weights": (WEIGHTS_FILE, Path.unlink, "not found; run the train stage"),
    "another model's weights": (WEIGHTS_FILE, lambda p: save_model(
        build_model(ModelConfig(type="logreg"), [5], [0.0], [1.0]), p.parent, {}),
        "does not fit"),
    "corrupt config": (CONFIG_FILE, lambda p: p.write_text('{"model": '), "not valid JSON"),
    "config of another shape": (CONFIG_FILE, lambda p: p.write_text("[1]"),
                                "not a model config"),
    "missing config": (CONFIG_FILE, Path.unlink, "not found; run the train stage"),
}


@pytest.mark.parametrize("case", BREAKS)
def test_a_broken_model_file_is_one_error_naming_it(model_dir: Path, case: str) -> None:
    name, breaker, message = BREAKS[case]
    if case == "another model's weights":  # keep the first model's config
        config = (model_dir / CONFIG_FILE).read_bytes()
        breaker(model_dir / name)
        (model_dir / CONFIG_FILE).write_bytes(config)
    else:
        breaker(model_dir / name)
    with pytest.raises(DataError, match=message) as err:
        load_model(model_dir)
    assert str(model_dir / name) in str(err.value)


def test_saved_weights_are_readable_by_the_team(model_dir: Path) -> None:
    # safetensors recreated the temp file with mkstemp's 0600; teammates' DVC reads it.
    mask = os.umask(0)
    os.umask(mask)
    assert (model_dir / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o666 & ~mask
    loaded, _ = load_model(model_dir)
    assert all(isinstance(p, torch.nn.Parameter) for p in loaded.parameters())


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"), (b'{"a": [1, 2', r"not valid JSON \(Expecting"),
    (b'{"a": "\xff"}', "not UTF-8")])
def test_read_json_names_a_missing_or_corrupt_file(tmp_path: Path, content: bytes | None,
                                                   message: str) -> None:
    path = tmp_path / "best_params.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_json(path)
    assert str(err.value).startswith(f"{path}: ")


def test_atomic_update_replaces_written_entries_only_and_only_on_success(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write_json(reports / "train_history.json", [1])  # another stage's output
    write_json(reports / "plots" / "roc.json", [0])
    with atomic_update(reports) as tmp:
        write_json(tmp / "metrics.json", {"auc": 1})
        write_json(tmp / "plots" / "pr.json", [1])
    assert read_json(reports / "train_history.json") == [1]
    assert read_json(reports / "metrics.json") == {"auc": 1}
    assert sorted(p.name for p in (reports / "plots").iterdir()) == ["pr.json"]  # a dir: whole
    with pytest.raises(RuntimeError), atomic_update(reports) as tmp:
        write_json(tmp / "metrics.json", {"auc": 0})
        raise RuntimeError("upload failed")
    assert read_json(reports / "metrics.json") == {"auc": 1}
    assert not [p for p in reports.rglob(f"*{TMP_MARK}*")]


def test_disk_full_error_names_the_output_not_its_temp() -> None:
    err = OSError(errno.ENOSPC, "No space left on device")
    for temp, shown in [
            ("r/reports/.reports.tmp-h.x-1-ab/plots/.roc.json.tmp-h.x-1-cd.json",  # update
             "r/reports/plots/roc.json"),
            ("d/.processed.tmp-h-2-ef/ids.json", "d/processed/ids.json")]:  # atomic_dir
        assert str(disk_full_error(temp, err)).startswith(
            f"{shown}: cannot write: No space left on device (ENOSPC); free space")


# Writes 1 MB into an output, through each atomic helper, under a small disk or file limit.
WRITER = """
import sys
from pathlib import Path
from pipeline.core.errors import OutputError
from pipeline.core.files import atomic_dir, atomic_path, atomic_update
out = Path(sys.argv[1])
for helper, target in ((atomic_path, out / "m.bin"), (atomic_dir, out / "d"),
                       (atomic_update, out)):
    try:
        with helper(target) as tmp:
            path = tmp / "m.bin" if helper is not atomic_path else tmp
            path.write_bytes(b"x" * 1_000_000)
    except OutputError as err:
        print(err)
"""


def old_outputs(folder: Path) -> None:
    (folder / "d").mkdir(parents=True)
    (folder / "d" / "m.bin").write_bytes(b"old")
    (folder / "m.bin").write_bytes(b"old")


def check_refused(folder: Path, lines: list[str], code: str) -> None:
    # Each names its output (a write's failure carries no file name: the helper's target).
    assert [line.split(": cannot write: ")[0] for line in lines] == [
        str(folder / "m.bin"), str(folder / "d"), str(folder)]
    assert all(f"{os.strerror(getattr(errno, code))} ({code})" in line for line in lines)


def test_file_size_limit_is_one_error_and_keeps_the_old_output(tmp_path: Path) -> None:
    # RLIMIT_FSIZE needs no privileges (Python ignores SIGXFSZ, so writes fail with EFBIG).
    folder = tmp_path / "out"
    old_outputs(folder)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(folder)], cwd=REPO, text=True,
                          capture_output=True, timeout=120, preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_FSIZE, (100_000, 100_000)))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    check_refused(folder, proc.stdout.splitlines(), "EFBIG")
    assert (folder / "m.bin").read_bytes() == (folder / "d" / "m.bin").read_bytes() == b"old"
    assert sorted(p.name for p in folder.rglob("*")) == ["d", "m.bin", "m.bin"]  # no temps


def test_full_disk_is_one_error_and_keeps_the_old_output(tmp_path: Path) -> None:
    # A real ENOSPC: a 512 KB tmpfs in a private mount namespace (no root needed where user
    # namespaces are allowed, as on CI).
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (the EFBIG test covers the same path)")
    folder = tmp_path / "out"
    folder.mkdir()
    script = (f'mount -t tmpfs -o size=512k tmpfs "$1" && mkdir "$1/d" && '
              f'printf old > "$1/d/m.bin" && printf old > "$1/m.bin" && '
              f'"{sys.executable}" -c "$2" "$1" && cd "$1" && find . | sort && cat d/m.bin m.bin')
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(folder), WRITER],
                          cwd=REPO, text=True, capture_output=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    check_refused(folder, lines[:3], "ENOSPC")
    assert lines[3:] == [".", "./d", "./d/m.bin", "./m.bin", "oldold"]  # old kept, no temps


def make_store(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("create table runs (id text, payload text)")
        con.executemany("insert into runs values (?, ?)", [(str(i), "x" * 500)
                                                           for i in range(200)])
    con.close()


def test_a_missing_store_is_refused_where_a_run_continues(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    check_sqlite(f"sqlite:///{db}", db, must_exist=False)  # train on a fresh clone creates it
    for state in ("missing", "empty"):
        if state == "empty":
            db.write_bytes(b"")
        with pytest.raises(StoreError, match="is missing or empty") as err:
            check_sqlite(f"sqlite:///{db}", db, must_exist=True)
        assert "dvc repro -f --downstream train" in str(err.value)
    assert db.read_bytes() == b""  # not created or initialised by the check


@pytest.mark.parametrize(("damage", "message"), [
    ("truncated", "database disk image is malformed"), ("garbage", "file is not a database")])
def test_a_damaged_store_is_refused_before_anything_runs(tmp_path: Path, damage: str,
                                                        message: str) -> None:
    db = tmp_path / "mlflow.db"
    make_store(db)
    if damage == "truncated":  # what a copy taken mid-write or a full disk leaves
        os.truncate(db, db.stat().st_size // 2)
    else:
        db.write_bytes(b"not a database " * 100)
    with pytest.raises(StoreError, match=f"tracking store failed: {message}; restore {db}"):
        check_sqlite(f"sqlite:///{db}", db, must_exist=False)


def test_a_store_full_mid_run_is_one_line_with_the_drivers_complaint() -> None:
    from pipeline.tracking.store import store_error

    class Failure(Exception):
        # What MLflow wraps when SQLite's disk fills: SQLAlchemy's remark first.
        message = ("(raised as a result of Query-invoked autoflush; consider using a session."
                   "no_autoflush block)\n(sqlite3.OperationalError) database or disk is full\n"
                   "[SQL: INSERT INTO runs ...]")

    assert str(store_error(Failure())).endswith(
        "tracking store failed: (sqlite3.OperationalError) database or disk is full")
