"""Lineage hashes are DVC's hashes of the data actually on disk, never dvc.lock's say-so."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.core.lineage import dvc_hash
from tests.helpers import REPO


def dvc(cwd: Path, *args: str) -> None:
    """Run DVC from the test interpreter's environment."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", *args], cwd=cwd, env=env, check=True, capture_output=True)


def test_folder_hash_is_the_one_dvc_computes_and_follows_the_bytes(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    # The repository's patterns plus one of the user's own: both must be honoured.
    (tmp_path / ".dvcignore").write_text((REPO / ".dvcignore").read_text() + "*.bak\n")
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    (data / "X_train.npy").write_bytes(b"\x93NUMPY" + bytes(range(200)))
    (data / "nested" / "ids.json").write_text('{"train": ["a"]}')
    (data / ".X_val.npy.tmp-123").write_bytes(b"a killed writer's leftover")
    (data / "nested" / "notes.bak").write_text("a user's scratch file")
    dvc(tmp_path, "add", "-q", "data")
    recorded = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    assert dvc_hash(data, root=tmp_path) == recorded
    # A stage run by hand on data changed since: the tag follows the bytes it reads.
    (data / "nested" / "ids.json").write_text('{"train": ["b"]}')
    assert dvc_hash(data, root=tmp_path) != recorded
    single = data / "X_train.npy"
    assert dvc_hash(single) == hashlib.md5(single.read_bytes()).hexdigest()
