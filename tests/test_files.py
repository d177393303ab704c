"""Atomic writes: what a killed writer leaves is removed by the next run and unseen by DVC."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from pipeline.core.files import atomic_dir, atomic_path
from tests.helpers import REPO


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def test_next_write_removes_a_killed_writers_temp_files(tmp_path: Path) -> None:
    host, dead = platform.node(), dead_pid()
    target = tmp_path / "raw" / "digits"
    stale = tmp_path / "raw" / f".digits.tmp-{host}-{dead}-abc"
    (stale / "odd").mkdir(parents=True)
    (stale / "odd" / "0001.png").write_bytes(b"half a png")
    live = tmp_path / "raw" / f".digits.tmp-{host}-{os.getpid()}-mine"  # a running writer
    remote = tmp_path / "raw" / f".digits.tmp-elsewhere-{dead}-abc"  # another host's: unknown
    live.mkdir()
    remote.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    assert not stale.exists() and live.exists() and remote.exists()
    stale_file = tmp_path / f".metrics.json.tmp-{host}-{dead}-x.json"
    stale_file.write_text("{")
    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}")
    assert not stale_file.exists() and (tmp_path / "metrics.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "raw"]


def test_dvc_ignores_temp_names() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    name = f"data/raw/.digits.tmp-{platform.node()}-123-abc/odd/1.png"
    proc = subprocess.run(["dvc", "check-ignore", name, "data/raw/digits/odd/1.png"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert proc.stdout.split() == [name]
