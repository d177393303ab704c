"""Image decoding: any PIL-readable file → float32 CHW in [0, 1]; ImageFolder reading."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config import DataConfig
from pipeline.errors import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


def decode_image(source: str | Path | bytes, size: int, channels: int) -> np.ndarray:
    """Decode one encoded image to float32 (C, size, size) in [0, 1]; raise DataError if bad."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
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


def image_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert any PIL mode to grayscale/RGB, resize, and scale to float32 [0, 1] CHW."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto black so alpha never leaks into intensities.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def read_imagefolder(cfg: DataConfig) -> tuple[np.ndarray, list[str], list[str], list[dict]]:
    """Decode an ImageFolder with exactly two class subfolders; return X, labels, ids, skipped."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.path = {cfg.path!r}: directory not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != 2:
        raise DataError(f"{root}: expected exactly 2 class folders, found {len(classes)} "
                        f"({', '.join(classes) or 'none'})")
    arrays, labels, ids, skipped = [], [], [], []
    for cls in classes:
        files = sorted(p for p in (root / cls).rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{root / cls}: class folder is empty")
        for file in files:
            rel = file.relative_to(root).as_posix()
            try:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataError(f"{file}: not an image file (suffix {file.suffix!r}; "
                                    f"expected one of {sorted(IMAGE_SUFFIXES)})")
                arrays.append(decode_image(file, cfg.image_size, cfg.channels))
            except DataError as err:
                if not cfg.skip_corrupt:
                    raise DataError(f"{err} (set data.skip_corrupt: true to skip it)") from None
                log.warning("skipping %s", err)
                skipped.append({"file": rel, "reason": str(err)})
                continue
            labels.append(cls)
            ids.append(rel)
        if not any(label == cls for label in labels):
            raise DataError(f"{root / cls}: no readable image in class folder")
    return np.stack(arrays).astype(np.float32), labels, ids, skipped
