"""Experiment report: two revisions' pipeline outputs, read through DVC, compared for a review.

`python -m pipeline.report [--base REV] [--rev REV_OR_EXP] [--out DIR]` writes DIR/report.md
(figures copied beside it, for `cml comment create --publish`), DIR/report.html (images inline,
so it opens offline) and DIR/report.json (the same comparison, for scripts).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from dvc.api import DVCFileSystem
from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.scm import NoSCM, resolve_rev
from dvc_data.index import DataIndexError
from fsspec import AbstractFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_dir
from pipeline.report.compare import (
    BEST_PARAMS,
    LOCK,
    METRICS,
    PARAMS,
    REGISTRATION,
    TRAIN_METRICS,
    WORKSPACE,
    Side,
    build_report,
)
from pipeline.report.render import FIGURE_DIRS, Report, render_html, render_markdown, table_json
from pipeline.report.runs import tracking_uri

# Read through DVC: git-tracked files from the commit, DVC-cached ones from the local cache.
FILES = (LOCK, PARAMS, METRICS, TRAIN_METRICS, BEST_PARAMS, REGISTRATION)
FIGURES = layout.in_reports(layout.FIGURES)
# Not a DVC output and git-ignored (see README "Experiment report"): a view, rewritten each time.
DEFAULT_OUT = "reports/compare"
# What a report folder holds: an --out holding anything else is not ours to replace.
OUR_FILES = frozenset({"report.md", "report.html", "report.json", "figures"})


def open_repo(root: str) -> Repo:
    """The DVC repository at `root`; it must also be a Git repository (revisions are commits)."""
    try:
        repo = Repo(root)
    except DvcException as err:
        raise PipelineError(f"--repo {root}: {err}") from None
    if isinstance(repo.scm, NoSCM):
        repo.close()
        raise PipelineError(f"--repo {root}: not a Git repository; revisions need Git")
    return repo


def resolve(repo: Repo, rev: str, option: str) -> str:
    """The commit SHA `rev` names: a branch, tag, SHA, `HEAD~1` or a `dvc exp` name."""
    try:
        # DVC's own resolution: git revisions first, then experiment refs (refs/exps/...).
        return resolve_rev(repo.scm, rev)
    except DvcException as err:
        raise PipelineError(f"{option} {rev}: {err}; give a Git revision or a name that "
                            "`dvc exp list` shows") from None


def produced(side: Side, path: str) -> bool:
    """Whether the side's dvc.lock records `path`, or a folder holding it, as a stage output."""
    outs = {entry["path"] for stage in (side.get(LOCK).get("stages") or {}).values()
            for entry in stage.get("outs") or []}
    return any(path == out or path.startswith(f"{out}/") for out in outs)


def why_missing(path: str, side: Side, listed: bool) -> str:
    """Why `path` cannot be read at `side` (`listed`: its file system lists it); how to fix."""
    if side.label == WORKSPACE:
        return (f"{path}: in dvc.lock but not in the workspace (`dvc checkout` restores it from "
                "the cache, `dvc pull` from the remote)" if produced(side, path)
                else f"{path}: not in the workspace")
    if not listed:
        return f"{path}: not at {side.label}"
    if not produced(side, path):  # dvc.yaml declares it; no stage wrote it at that commit
        return f"{path}: declared in dvc.yaml but not produced at {side.label}"
    return (f"{path}: in dvc.lock at {side.label} but not in the local DVC cache (`dvc fetch "
            "-a` fetches every branch's outputs, `dvc exp pull origin NAME` an experiment's)")


def read_file(fs: AbstractFileSystem, path: str, side: Side) -> None:
    """Parse `path` (JSON or YAML) into side.data, or say in side.missing why not."""
    listed = fs.exists(path)
    try:
        text = fs.read_bytes(path).decode("utf-8", errors="replace")
    except (FileNotFoundError, DataIndexError):
        side.missing.append(why_missing(path, side, listed))
        return
    try:
        parsed = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        side.missing.append(f"{path}: cannot be parsed ({err.__class__.__name__}); corrupt?")
        return
    if isinstance(parsed, dict):
        side.data[path] = parsed
    else:
        side.missing.append(f"{path}: holds a {type(parsed).__name__}, not a mapping")


def read_figures(fs: AbstractFileSystem, side: Side) -> None:
    """The PNG figures in reports/figures at `side`, by file name."""
    listed = fs.isdir(FIGURES)
    try:
        names = sorted(p for p in fs.ls(FIGURES, detail=False) if p.endswith(".png"))
        for path in names:
            side.figures[posixpath.basename(path)] = fs.read_bytes(path)
    except (FileNotFoundError, DataIndexError):
        side.missing.append(why_missing(FIGURES, side, listed))
        return
    if not side.figures:
        side.missing.append(why_missing(FIGURES, side, listed) if not produced(side, FIGURES)
                            else f"{FIGURES}: no PNG figures at {side.label}")


def read_side(repo: Repo, rev: str | None, option: str) -> Side:
    """Read every file the report needs at `rev` (None: the workspace, compared as it is)."""
    if rev is None:
        side = Side(WORKSPACE, resolve(repo, "HEAD", option),
                    repo.scm.is_dirty(untracked_files=False))
        # The files on disk: DVC's own view of the workspace reads outputs from the cache.
        fs: AbstractFileSystem = DirFileSystem(repo.root_dir, LocalFileSystem())
    else:
        side = Side(rev, resolve(repo, rev, option))
        # The SHA, not the name: an experiment name was resolved once, by DVC's rules.
        fs = DVCFileSystem(repo=repo.root_dir, rev=side.commit)
    for path in FILES:  # dvc.lock first: it says why an output is missing
        read_file(fs, path, side)
    read_figures(fs, side)
    return side


def write_report(report: Report, out: Path) -> None:
    """Replace `out` with the report folder in one rename; refuse a folder that is not one."""
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - OUR_FILES):
        raise PipelineError(f"--out {out}: exists and holds files a report does not write; "
                            "choose a new or an old report folder")
    with atomic_dir(out) as tmp:
        for name, *images in report.figures:
            for folder, data in zip(FIGURE_DIRS, images, strict=True):
                if data is not None:
                    (tmp / folder).mkdir(parents=True, exist_ok=True)
                    (tmp / folder / name).write_bytes(data)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(table_json(report), indent=2,
                                                    default=str) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--base, --rev, --out and --repo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD",
                        help="revision compared against (default: %(default)s)")
    parser.add_argument("--rev", default=None,
                        help="revision or `dvc exp` name to report (default: the workspace)")
    parser.add_argument("--out", default=None,
                        help=f"report folder (default: {DEFAULT_OUT} under --repo)")
    parser.add_argument("--repo", default=".", help="DVC repository root (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: read both sides, compare, write the report; a bad input exits 2."""
    args = parse_args(argv)
    try:
        repo = open_repo(args.repo)
        with repo:
            base = read_side(repo, args.base, "--base")
            new = read_side(repo, args.rev, "--rev")
        # The default belongs to the repository reported on, wherever the command runs.
        out = Path(args.out) if args.out is not None else Path(args.repo) / DEFAULT_OUT
        write_report(build_report(base, new, tracking_uri()), out)
    except PipelineError as err:
        fail(str(err))
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (the pipeline's code for bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
