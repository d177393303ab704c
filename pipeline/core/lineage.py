"""Where a result came from: DVC output hashes, git commit, file hashes (no MLflow here)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.core.tags import Tag

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"  # `make lock` writes it


def git_info() -> dict[str, str]:
    """Commit and dirty flag of the working tree ('unknown' outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return {Tag.GIT_COMMIT: "unknown", Tag.GIT_DIRTY: "unknown"}
    return {Tag.GIT_COMMIT: commit, Tag.GIT_DIRTY: str(dirty).lower()}


def dvc_experiment_tags() -> dict[str, str]:
    """Name and baseline commit of the `dvc exp run` experiment running this stage, else {}."""
    # DVC exports both to every stage it runs for an experiment (dvc/repo/experiments/queue).
    name = os.environ.get("DVC_EXP_NAME")
    if not name:
        return {}
    return {Tag.DVC_EXP: name, Tag.DVC_EXP_BASELINE: os.environ.get("DVC_EXP_BASELINE_REV", "")}


def pipeline_run_name() -> str:
    """Name of the pipeline's MLflow run: the DVC experiment's, else repro@<short commit>."""
    # No "+dirty": `dvc repro` has rewritten dvc.lock by the time train runs, so it would be
    # on every run; the git_dirty tag keeps that fact.
    commit = git_info()[Tag.GIT_COMMIT]
    return (dvc_experiment_tags().get(Tag.DVC_EXP)
            or ("repro" if commit == "unknown" else f"repro@{commit[:7]}"))


def _file_md5(path: Path) -> str:
    with open(path, "rb") as f:  # in chunks: a data file can be larger than memory
        return hashlib.file_digest(f, "md5").hexdigest()


def _dvcignore(root: Path) -> Callable[[str], bool]:
    """Whether a path (relative to the repository root) is hidden by the root's .dvcignore."""
    import pathspec  # DVC's own matcher for .dvcignore (gitignore rules); only hashing needs it

    file = root / ".dvcignore"
    spec = pathspec.GitIgnoreSpec.from_lines(file.read_text().splitlines() if file.is_file()
                                             else [])
    return spec.match_file


def dvc_hash(path: str | Path, root: str | Path = ".") -> str:
    """DVC's md5 of a file or folder as it is on disk now (what dvc.lock records for it)."""
    # From the bytes, never read from dvc.lock: a stage run by hand on data changed since the
    # last `dvc repro` must not be tagged with the old data's hash.
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    ignored, where = _dvcignore(Path(root)), path.resolve()
    prefix = (where.relative_to(Path(root).resolve()).as_posix() + "/"
              if where.is_relative_to(Path(root).resolve()) else "")
    # DVC 3's directory object: md5 of the sorted (md5, relpath) list as sorted-key JSON.
    entries = [{"md5": _file_md5(file), "relpath": rel}
               for file in sorted(p for p in path.rglob("*") if p.is_file())
               if not ignored(prefix + (rel := file.relative_to(path).as_posix()))]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (the weights hash ties train, evaluate and register to one run)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def lineage_tags(data_dir: str, train_dir: str, weights: Path, model_config: Path
                 ) -> dict[str, str]:
    """Where a model came from: data hashes, commit, weights and effective-params hashes, and
    the checkpoint it was fine-tuned from, if any."""
    start = json.loads(Path(model_config).read_text()).get("weights_sha256")
    return {Tag.PROCESSED: dvc_hash(data_dir), Tag.AUGMENTED: dvc_hash(train_dir),
            Tag.GIT_COMMIT: git_info()[Tag.GIT_COMMIT], Tag.MODEL_SHA: file_sha256(weights),
            Tag.PARAMS_SHA: file_sha256(model_config),
            **({Tag.CHECKPOINT_SHA: start} if start else {})}


def canonical(name: str) -> str:
    """A distribution's normalised name (PEP 503): `PyYAML` → `pyyaml`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path = LOCK) -> dict[str, str]:
    """name → version of the lock's lines that apply on this platform."""
    linux = sys.platform == "linux" and platform.machine() == "x86_64"
    pins = {}
    for line in Path(path).read_text().splitlines():
        requirement, _, marker = line.partition(";")
        if requirement.strip() and not requirement.startswith("#") and (linux or not marker):
            name, version = requirement.strip().split("==")
            pins[canonical(name)] = version
    return pins


def installed() -> dict[str, str]:
    """name → version of every distribution in this environment but the project and pip."""
    found = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    return {k: v for k, v in found.items() if k not in ("pipeline", "pip")}


def lock_state(path: str | Path = LOCK) -> str:
    """The lock's sha256 when this environment is exactly it; else what differs, named."""
    if not Path(path).is_file():
        return "none"  # an installed package, outside the repository
    sha = file_sha256(path)
    want, have = read_lock(path), installed()
    differ = sorted({k for k in want.keys() | have.keys() if want.get(k) != have.get(k)})
    if not differ:
        return sha
    shown = ", ".join(f"{k} {have.get(k, 'missing')} (lock: {want.get(k, 'absent')})"
                      for k in differ[:5])
    return f"{sha} but {len(differ)} differ: {shown}"
