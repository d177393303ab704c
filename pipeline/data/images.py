"""Image decoding: any PIL-readable file → uint8 CHW by its real bit depth, upright by its EXIF
orientation, within a pixel budget; ImageFolders decoded in parallel."""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.progress import Progress
from pipeline.data import arrays
from pipeline.data.arrays import Rows

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CHUNK = 256  # files per pool task: big enough to amortise the hand-off, small for the bar
AUTO_SIZE = (16, 64)  # data.image_size: auto stays within these sides (px)
AUTO_SAMPLE = 2000  # files whose headers auto reads at most (evenly spaced, deterministic)
# Decoded pixels one image may cost (after JPEG reduce-on-decode, so phone photos of any size
# pass): 8192 x 8192, ~200 MB as RGB. Refuses a 144-megapixel PNG before decoding it.
MAX_IMAGE_PIXELS = 8192 * 8192
EIGHT_BIT = {"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr",
             "LAB", "HSV"}  # PIL modes of 8 bits (or 1) per channel


@dataclass(frozen=True)
class Conversion:
    """What decoding did beyond resizing: the source bit depth, the EXIF orientation."""

    depth: str = ""  # "16-bit" or "32-bit float" when not 8 bits per channel
    peak: int = -1  # largest value of a 16-bit grayscale image (-1: not one)
    turned: bool = False  # rotated/flipped upright by its EXIF orientation
    frames: bool = False  # the first of several frames (animated GIF, multi-page TIFF)


def max_image_pixels() -> int:
    """Per-image decoded-pixel budget: PIPELINE_MAX_IMAGE_PIXELS, else MAX_IMAGE_PIXELS."""
    # Not a param: it refuses inputs, never changes the numbers of those it admits.
    wanted = os.environ.get("PIPELINE_MAX_IMAGE_PIXELS", "")
    if not wanted:
        return MAX_IMAGE_PIXELS
    if not wanted.isdigit() or int(wanted) < 1:
        raise ConfigError(f"PIPELINE_MAX_IMAGE_PIXELS = {wanted!r}: must be a whole number >= 1")
    return int(wanted)


@contextlib.contextmanager
def _opened(source: str | Path | bytes, size: int, mode: str | None) -> Iterator[Image.Image]:
    """The image with its header read and JPEG reduce-on-decode set, nothing decoded yet; any
    fault while it is open is a DataError naming the file."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        # Always from bytes, as serving gets them: from a file PIL memory-maps raw TIFF data
        # and then skips turning it by its orientation tag.
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                # libjpeg scales by 1/2..1/8 in the DCT, never below `size` (the resize does the
                # rest): ~2-4x faster, and a 50-megapixel photo costs what a 1-megapixel one does.
                img.draft(mode, (size, size))
            yield img
    except DataError as err:
        raise DataError(f"{name}: {err}") from None
    except UnidentifiedImageError:
        # PIL's own message shows a Python object repr for in-memory data: say it plainly.
        raise DataError(f"{name}: not a readable image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{name}: not a readable image (refused as a decompression bomb: "
                        f"{err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from None


def decoded_pixels(source: str | Path | bytes, size: int) -> int:
    """Pixels decoding `source` for `size` will allocate, from its header (JPEG: drafted)."""
    with _opened(source, size, None) as img:
        return img.size[0] * img.size[1]


def read_image(source: str | Path | bytes, size: int, channels: int
               ) -> tuple[np.ndarray, Conversion]:
    """Decode one encoded image to uint8 (C, size, size) by its real bit depth, upright by
    its EXIF orientation, within the pixel budget; a bad one is a DataError naming it."""
    budget = max_image_pixels()
    with _opened(source, size, "L" if channels == 1 else "RGB") as img:
        width, height = img.size
        if width * height > budget:
            raise DataError(f"{width}x{height} = {width * height:,} pixels to decode, over the "
                            f"budget of {budget:,} per image (PIPELINE_MAX_IMAGE_PIXELS)")
        # PIL reads 16-bit RGB(A) as 8 bits itself (the high byte, like `to_8bit`).
        wide = any(";16" in str(tile.args) for tile in img.tile)
        frames = bool(getattr(img, "is_animated", False))
        # Read before load: PIL's TIFF loader turns the image itself and drops the tag.
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        img.load()  # force the full decode so truncation is caught here, not later
        # 16-bit RGB(A) arrives as 8 bits (gray 16-bit is checked by to_8bit): colour only.
        pixels = np.asarray(img) if wide else None
        if pixels is not None and pixels.ndim == 3 and not pixels[..., :3].any():
            raise all_dark("")
        if orientation in range(2, 9):  # else exif_transpose would copy the image
            img = ImageOps.exif_transpose(img)  # (a no-op for a TIFF, turned on load)
        img, depth, peak = to_8bit(img)
        return image_to_array(img, size, channels), Conversion(
            depth or ("16-bit" if wide else ""), peak, orientation in range(2, 9), frames)


def decode_image(source: str | Path | bytes, size: int, channels: int) -> np.ndarray:
    """Decode one encoded image to uint8 (C, size, size) (see read_image): what preprocess,
    batch predict and serving all run."""
    return read_image(source, size, channels)[0]


def decode_file(file: Path, size: int, channels: int) -> tuple[np.ndarray, Conversion]:
    """read_image for a file of an ImageFolder, refusing suffixes that are not images."""
    check_suffix(file)
    return read_image(file, size, channels)


def check_suffix(file: Path) -> None:
    """Refuse a file whose suffix is not one of IMAGE_SUFFIXES, saying what to do."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{file}: not an image file (suffix {file.suffix!r}; expected one of "
                        f"{sorted(IMAGE_SUFFIXES)}): convert it or move it out of the folder")


def to_8bit(img: Image.Image) -> tuple[Image.Image, str, int]:
    """8 bits per channel by the image's real depth (as torchvision's to_dtype scales): 16-bit
    v -> v >> 8, 0-1 floats f -> floor(f * 255.999); the source depth; a 16-bit image's peak."""
    if img.mode in EIGHT_BIT:
        return img, "", -1
    values = np.asarray(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        peak = int(values.max(initial=0))
        if peak < 256:
            raise all_dark(f" (largest {peak})")
        return Image.fromarray((values >> 8).astype(np.uint8)), "16-bit", peak
    finite = values[np.isfinite(values)]
    span = f"{finite.min():g}..{finite.max():g}" if finite.size else "none finite"
    if finite.size < values.size:
        span += f", {values.size - finite.size} NaN or inf"
    if img.mode == "F":
        all_finite = finite.size == values.size and values.size > 0
        if not (all_finite and finite.min() >= 0.0 and finite.max() <= 1.0):
            raise DataError(f"32-bit float pixels ({span}): only floats within 0..1 have a "
                            "known scale to 0-255")
        return Image.fromarray(unit_to_uint8(values)), "32-bit float", -1
    # 32-bit integers (or signed 16-bit) carry no bit depth to scale by: refuse, never guess.
    raise DataError(f"pixel mode {img.mode} (values {span}) has no known scale to 0-255; save "
                    "it as an 8- or 16-bit image")


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """0-1 floats → 0-255 as floor(f × 255.999) in float32: a float TIFF and served float
    pixels give the same bytes."""
    return (values.astype(np.float32) * np.float32(256 - 1e-3)).astype(np.uint8)


def all_dark(detail: str) -> DataError:
    """The refusal of a 16-bit image whose values all fit in 8 bits."""
    # Scaled by its depth it would be all black: 8-bit data saved in a 16-bit file, or an
    # empty frame; either way the model would learn nothing from it.
    return DataError(f"16-bit pixels all below 256{detail}: scaled by their bit depth they "
                     "are all 0; save it as an 8-bit image")


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
                  ) -> tuple[list[tuple[Path, str]], np.ndarray, list[tuple[Path, Conversion]]]:
    """Worker: decode files into rows start.. of the .npy at path; the unreadable files with
    their errors, the histogram of what was written (the train statistics need it), and the
    files decoding converted."""
    path, start, files, size, channels = task
    errors, converted = [], []
    with Rows(path, writable=True) as rows, warnings.catch_warnings():
        # PIL warns above 89 megapixels before JPEG reduce-on-decode; the budget decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        buffer = rows.empty(len(files))
        for i, file in enumerate(files):
            try:
                buffer[i], conversion = decode_file(file, size, channels)
                if conversion != Conversion():
                    converted.append((file, conversion))
            except DataError as err:
                buffer[i] = 0
                errors.append((file, str(err)))
        rows.write(start, buffer)
    return errors, histogram(buffer), converted


def decode_files(jobs: dict[Path, list[Path]], size: int, channels: int
                 ) -> tuple[dict[Path, str], dict[Path, np.ndarray], dict[Path, Conversion]]:
    """Decode each job's files into the rows of a new uint8 .npy (its key), in order, with a
    process pool; return {file: error} for unreadable files (zero rows), each output's
    histogram (see `histogram`) and {file: Conversion} for the files decoding converted."""
    max_image_pixels()  # a bad PIPELINE_MAX_IMAGE_PIXELS fails here, not in every worker
    tasks = []
    for out, files in jobs.items():
        arrays.create(out, (len(files), channels, size, size), np.uint8)
        tasks += [(str(out), s, files[s:s + CHUNK], size, channels)
                  for s in range(0, len(files), CHUNK)]
    workers = min(data_workers(), len(tasks))
    progress = Progress(len(tasks), "preprocess", every=max(1, len(tasks) // 10))
    tick, done = time.perf_counter(), 0
    errors: dict[Path, str] = {}
    converted: dict[Path, Conversion] = {}
    counts = {out: np.zeros((channels, 256), np.int64) for out in jobs}
    # fork: workers need only PIL and numpy, and start in milliseconds.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(context.Pool(workers))
            results = pool.imap(_decode_chunk, tasks)  # in order, so progress is monotone
        else:
            results = map(_decode_chunk, tasks)
        for task, (failed, hist, changed) in zip(tasks, results, strict=True):
            errors.update(failed)
            converted.update(changed)
            counts[Path(task[0])] += hist
            done += len(task[2])
            progress.update(images=done, per_s=done / (time.perf_counter() - tick))
    progress.close()
    return errors, counts, converted


def conversion_notes(converted: dict[Path, Conversion], root: Path) -> list[dict[str, str]]:
    """Log and return (as meta.json notes) how many images decoding converted, and how."""
    notes = []
    for depth in sorted({c.depth for c in converted.values()} - {""}):
        files = [f for f, c in converted.items() if c.depth == depth]
        rule = "v >> 8" if depth == "16-bit" else "floor(f * 255.999)"
        peaks = [c.peak for f, c in converted.items() if c.depth == depth and c.peak >= 0]
        notes.append({"item": f"{depth} images: {len(files)} (e.g. {files[0].relative_to(root)})",
                      "action": f"scaled to 8 bits by their depth ({rule}, as torchvision's "
                                "to_dtype)", "reason": "the model reads 0-255 pixels" + (
                          f"; largest grayscale value {max(peaks)} of 65535" if peaks else "")})
        if peaks and max(peaks) < 4096:
            # 12-bit sensors store 0..4095 in 16-bit files: 16 gray levels survive the scaling.
            notes[-1]["reason"] += "; under 4096: if they are 12-bit data, rescale them first"
    for flag, action, reason in (
            ("turned", "rotated/flipped upright by their EXIF orientation", "as cameras tag "
             "them; batch predict and serving do the same"),
            ("frames", "first frame used", "a sample is one image; serving does the same")):
        files = [f for f, c in converted.items() if getattr(c, flag)]
        if files:
            kind = "EXIF-oriented" if flag == "turned" else "multi-frame (animated, multi-page)"
            notes.append({"item": f"{kind} images: {len(files)} "
                                  f"(e.g. {files[0].relative_to(root)})",
                          "action": action, "reason": reason})
    for note in notes:
        log.log(logging.WARNING if "rescale" in note["reason"] else logging.INFO,
                "%s: %s %s (%s)", root, note["item"], note["action"], note["reason"])
    return notes
