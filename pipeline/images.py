"""Image decoding: any PIL-readable file → uint8 CHW; ImageFolders decoded in parallel."""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline import arrays
from pipeline.arrays import Rows
from pipeline.config import DataConfig
from pipeline.errors import ConfigError, DataError
from pipeline.progress import Progress

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
CHUNK = 256  # files per pool task: big enough to amortise the hand-off, small for the bar
AUTO_SIZE = (16, 64)  # data.image_size: auto stays within these sides (px)
AUTO_SAMPLE = 2000  # files whose headers auto reads at most (evenly spaced, deterministic)


def decode_image(source: str | Path | bytes, size: int, channels: int) -> np.ndarray:
    """Decode one encoded image to uint8 (C, size, size); raise DataError if it is bad."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.format == "JPEG":
                # Reduce-on-decode: libjpeg scales by 1/2..1/8 in the DCT, never below `size`
                # (the resize below does the rest); ~2-4x faster on photos larger than `size`.
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()  # force the full decode so truncation is caught here, not later
            return image_to_array(img, size, channels)
    except UnidentifiedImageError:
        # PIL's own message shows a Python object repr for in-memory data: say it plainly.
        raise DataError(f"{name}: not a readable image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: not a readable image (refused as a decompression bomb: "
                        f"{err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from None


def decode_file(file: Path, size: int, channels: int) -> np.ndarray:
    """decode_image for a file of an ImageFolder, refusing suffixes that are not images."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{file}: not an image file (suffix {file.suffix!r}; "
                        f"expected one of {sorted(IMAGE_SUFFIXES)})")
    return decode_image(file, size, channels)


def image_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert any PIL mode to grayscale/RGB, resize, and return uint8 CHW (0..255)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto black so alpha never leaks into intensities.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[None].copy() if channels == 1 else array.transpose(2, 0, 1).copy()


def list_imagefolder(cfg: DataConfig) -> tuple[list[Path], list[str], list[str]]:
    """Files of an ImageFolder with exactly two class subfolders: paths, labels, ids."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.path = {cfg.path!r}: directory not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != 2:
        raise DataError(f"{root}: expected exactly 2 class folders, found {len(classes)} "
                        f"({', '.join(classes) or 'none'})")
    files, labels = [], []
    for cls in classes:
        found = sorted(p for p in (root / cls).rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if not found:
            raise DataError(f"{root / cls}: class folder is empty")
        files += found
        labels += [cls] * len(found)
    return files, labels, [f.relative_to(root).as_posix() for f in files]


def auto_size(files: list[Path]) -> int:
    """data.image_size: auto for these files: the median shorter side, within AUTO_SIZE."""
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]  # what decode_file takes
    step = -(-len(images) // AUTO_SAMPLE) or 1  # ceil: at most AUTO_SAMPLE headers
    sides = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd headers; decoding reports real faults
        for file in images[::step]:
            # Only the header is read; a file that cannot be opened is the decoder's to report.
            with contextlib.suppress(OSError, SyntaxError, ValueError,
                                     Image.DecompressionBombError), Image.open(file) as img:
                sides.append(min(img.size))
    low, high = AUTO_SIZE
    return min(max(statistics.median_low(sides), low), high) if sides else low


def data_workers() -> int:
    """Decoding processes: PIPELINE_DATA_WORKERS, else every core this process may use."""
    # Not a param: the bytes written do not depend on it, so changing it must not rerun DVC.
    wanted = os.environ.get("PIPELINE_DATA_WORKERS", "")
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ConfigError(f"PIPELINE_DATA_WORKERS = {wanted!r}: must be a whole number >= 1")
        return int(wanted)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def histogram(rows: np.ndarray) -> np.ndarray:
    """Per-channel counts of each uint8 value in (N, C, H, W) rows: (C, 256) int64."""
    return np.stack([np.bincount(rows[:, c].ravel(), minlength=256)
                     for c in range(rows.shape[1])]).astype(np.int64)


def _decode_chunk(task: tuple[str, int, list[Path], int, int]
                  ) -> tuple[list[tuple[Path, str]], np.ndarray]:
    """Worker: decode files into rows start.. of the .npy at path; the unreadable files with
    their errors, and the histogram of what was written (the train statistics need it)."""
    path, start, files, size, channels = task
    errors = []
    with Rows(path, writable=True) as rows:
        buffer = rows.empty(len(files))
        for i, file in enumerate(files):
            try:
                buffer[i] = decode_file(file, size, channels)
            except DataError as err:
                buffer[i] = 0
                errors.append((file, str(err)))
        rows.write(start, buffer)
    return errors, histogram(buffer)


def decode_files(jobs: dict[Path, list[Path]], size: int, channels: int
                 ) -> tuple[dict[Path, str], dict[Path, np.ndarray]]:
    """Decode each job's files into the rows of a new uint8 .npy (its key), in order, with a
    process pool; return {file: error} for unreadable files (zero rows) and each output's
    histogram (see `histogram`)."""
    tasks = []
    for out, files in jobs.items():
        arrays.create(out, (len(files), channels, size, size), np.uint8)
        tasks += [(str(out), s, files[s:s + CHUNK], size, channels)
                  for s in range(0, len(files), CHUNK)]
    workers = min(data_workers(), len(tasks))
    progress = Progress(len(tasks), "preprocess", every=max(1, len(tasks) // 10))
    tick, done = time.perf_counter(), 0
    errors: dict[Path, str] = {}
    counts = {out: np.zeros((channels, 256), np.int64) for out in jobs}
    # fork: workers need only PIL and numpy, and start in milliseconds.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(context.Pool(workers))
            results = pool.imap(_decode_chunk, tasks)  # in order, so progress is monotone
        else:
            results = map(_decode_chunk, tasks)
        for task, (failed, hist) in zip(tasks, results, strict=True):
            errors.update(failed)
            counts[Path(task[0])] += hist
            done += len(task[2])
            progress.update(images=done, per_s=done / (time.perf_counter() - tick))
    progress.close()
    return errors, counts
