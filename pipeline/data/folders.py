"""ImageFolder listing: which files under a folder are data, their labels, what was ignored."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)
# What operating systems and tools leave in folders (compared lower-case): Windows thumbnail
# caches and folder settings, macOS zip/resource forks and Finder icons, Synology and NAS
# thumbnails, recycle bins, ext4's lost+found. Every name starting with "." (.DS_Store, the
# AppleDouble `._*` files, .ipynb_checkpoints, .git) is hidden and ignored the same way.
METADATA_NAMES = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r",
                  "__macosx", "@eadir", "#recycle", "$recycle.bin", "system volume information",
                  "lost+found"}
BESIDE = "files beside the class folders"


def metadata_kind(name: str) -> str:
    """How to report a file or folder that is not data ("" when it is data)."""
    if name.startswith("._"):
        return "._* (AppleDouble)"
    if name.startswith("."):
        return name if name.lower() in (".ds_store", ".ipynb_checkpoints") else ".* (hidden)"
    return name if name.lower() in METADATA_NAMES else ""


class FolderScan:
    """Walks folders for data files; remembers the metadata skipped, for one summary."""

    def __init__(self, root: Path) -> None:
        self.root = root  # ids and messages are relative to it
        self.ignored: dict[str, list[str]] = defaultdict(list)
        self.seen: dict[str, Path] = {}  # real path → the folder read there

    def ignore(self, kind: str, path: Path, is_dir: bool) -> None:
        """Record one skipped entry (a folder is one entry: its contents are not read)."""
        self.ignored[kind].append(path.relative_to(self.root).as_posix() + "/" * is_dir)

    def files(self, folder: Path) -> list[Path]:
        """Data files under `folder` at any depth, sorted; follows folder links."""
        found: list[Path] = []
        pending = [folder]
        while pending:
            current = pending.pop()
            real = os.path.realpath(current)
            if real in self.seen:
                # A link loop, or two links to one folder: its images would be read twice
                # and could land in train and test at once.
                raise DataError(f"{current}: a folder link to {real}, which is already read "
                                f"as {self.seen[real]}; remove one of the two")
            self.seen[real] = current
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as err:
                raise DataError(f"{current}: cannot read folder ({err.strerror})") from None
            for entry in entries:
                path = Path(entry.path)
                kind = metadata_kind(entry.name)
                if kind:
                    self.ignore(kind, path, entry.is_dir())
                elif entry.is_dir():  # follows links
                    pending.append(path)
                elif entry.is_file():
                    found.append(path)
                elif entry.is_symlink():
                    raise DataError(f"{path}: a link to {os.readlink(path)}, which does not "
                                    "exist")
                else:
                    raise DataError(f"{path}: not a regular file or folder")
        return sorted(found)

    def notes(self) -> list[dict[str, str]]:
        """Log one summary line of what was ignored; return it as meta.json notes."""
        if not self.ignored:
            return []
        kinds = sorted(self.ignored.items())
        total = sum(len(rels) for _, rels in kinds)
        log.warning("%s: ignored %d files/folders that are not data: %s",
                    self.root, total,
                    "; ".join(f"{kind} x{len(rels)} (e.g. {rels[0]})" for kind, rels in kinds))
        reasons = {BESIDE: "only files inside a class folder have a label"}
        return [{"item": f"{kind}: {len(rels)} (e.g. {rels[0]})", "action": "ignored",
                 "reason": reasons.get(kind, "left by an operating system or tool, or hidden; "
                                             "not an image of the class")}
                for kind, rels in kinds]


def list_imagefolder(cfg: DataConfig) -> tuple[list[Path], list[str], list[str],
                                               list[dict[str, str]]]:
    """Files of an ImageFolder with exactly two class subfolders: paths, labels, ids, and
    notes on what was ignored or read from nested subfolders (also logged)."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.path = {cfg.path!r}: directory not found")
    scan = FolderScan(root)
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        kind = metadata_kind(entry.name) or ("" if entry.is_dir() else BESIDE)
        if kind:
            scan.ignore(kind, Path(entry.path), entry.is_dir())
        else:
            classes.append(entry.name)
    if len(classes) != 2:
        raise DataError(f"{root}: expected exactly 2 class folders, found {len(classes)} "
                        f"({', '.join(classes) or 'none'})")
    files, labels = [], []
    for cls in classes:
        found = scan.files(root / cls)
        if not found:
            raise DataError(f"{root / cls}: class folder is empty")
        files += found
        labels += [cls] * len(found)
    ids = [f.relative_to(root).as_posix() for f in files]
    notes = scan.notes()
    nested = [i for i in ids if i.count("/") > 1]
    if nested:
        log.info("%s: %d images are in nested subfolders of the class folders (e.g. %s); each "
                 "is labelled by its top-level class folder", root, len(nested), nested[0])
        notes.append({"item": f"nested subfolders: {len(nested)} images (e.g. {nested[0]})",
                      "action": "labelled by their top-level class folder",
                      "reason": "class folders are read recursively"})
    return files, labels, ids, notes
