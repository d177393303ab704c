"""Image rows as clients send them (encoded bytes or raw pixels) → uint8 arrays, within a
per-request budget: the contract every served image request is held to."""

from __future__ import annotations

import base64
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.errors import ConfigError, DataError
from pipeline.data.images import (
    MAX_IMAGE_PIXELS,
    decode_image,
    decoded_pixels,
    image_to_array,
    unit_to_uint8,
)

IMAGE_COLUMNS = ("image", "pixels")
# What one request may cost when served; env settings that refuse a request, never change it.
MAX_ROWS = ("PIPELINE_MAX_REQUEST_ROWS", 10_000)
# Decoding is the cost (67 MP of RGB is 200 MB while it decodes): a request may decode as
# much as the largest single image decoding admits (both defaults); JPEGs count as drafted
# (reduce-on-decode), so a phone photo of any size counts ~1 MP.
MAX_PIXELS = ("PIPELINE_MAX_REQUEST_PIXELS", MAX_IMAGE_PIXELS)


@dataclass(frozen=True)
class Budget:
    """What one served request may cost: rows, and decoded pixels summed over its rows."""

    rows: int
    pixels: int


def request_budget() -> Budget:
    """The per-request budget from PIPELINE_MAX_REQUEST_ROWS / _PIXELS (else the defaults)."""
    values = []
    for name, default in (MAX_ROWS, MAX_PIXELS):
        text = os.environ.get(name, "").replace("_", "") or str(default)
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{name} = {os.environ[name]!r}: must be a whole number >= 1")
        values.append(int(text))
    return Budget(*values)


class BudgetError(DataError):
    """A request over its budget (HTTP 413 when served)."""


def check_rows(rows: int, budget: Budget | None) -> None:
    """Refuse a request of more rows than the budget allows."""
    if budget is not None and rows > budget.rows:
        raise BudgetError(f"model input: {rows:,} rows, more than {MAX_ROWS[0]} = "
                          f"{budget.rows:,} per request")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_) and not _missing(value)


def _at(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, index)) + "]"


def pixel_values(pixels: Any) -> np.ndarray:
    """Raw pixels → uint8 H×W or H×W×C, or a DataError naming the first value out of contract.

    Integers must be 0-255. Floats are either all within 0-1 (scaled by 255) or all whole
    numbers 0-255; NaN, inf, null, text, negatives and values over 255 are refused, never
    clipped: a guessed scale is a silently wrong answer."""
    try:
        arr = np.asarray(pixels)
        if arr.dtype == object and arr.ndim == 1:
            arr = np.stack([np.asarray(r) for r in arr])  # a column of row arrays (pandas)
    except ValueError:
        raise DataError("pixels are ragged: every row must have the same length (and every "
                        "pixel the same number of channels)") from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) \
            or 0 in arr.shape:
        raise DataError(f"pixels of shape {arr.shape}: expected H×W or H×W×C with C in 1, 3, 4")
    if arr.dtype.kind not in "uif":
        # Not plain numbers (null, text, booleans, ...): name the first value that is not one.
        number = np.frompyfunc(_is_number, 1, 1)(arr).astype(bool)
        if not number.all():
            index = tuple(int(i) for i in np.argwhere(~number)[0])
            value = arr[index].item() if isinstance(arr[index], np.generic) else arr[index]
            name = "null" if value is None else "NaN" if _missing(value) else repr(value)
            raise DataError(f"pixels hold {name} at {_at(index)}: every value must be a number")
        try:
            arr = arr.astype(np.float64)  # numbers of mixed or huge int types
        except OverflowError:
            raise DataError("pixels hold a number too large for any pixel value") from None
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            name = "NaN" if np.isnan(arr[index]) else str(arr[index])
            raise DataError(f"pixels hold {name} at {_at(index)}: every value must be finite")
        if arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = unit_to_uint8(arr)  # 0-1 floats, exactly as a float TIFF decodes
        else:
            # Not 0-1: then whole numbers 0-255, else a value names what is wrong.
            bad = (arr != np.round(arr)) | (arr < 0) | (arr > 255)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                value = arr[index]
                raise DataError(f"pixel value {value:g} at {_at(index)}: float pixels are all "
                                "within 0-1, or all whole numbers 0-255")
    bad = (arr < 0) | (arr > 255)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"pixel value {arr[index]} at {_at(index)}: integer pixels are 0-255")
    arr = arr.astype(np.uint8)
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def pixels_to_array(pixels: Any, size: int, channels: int) -> np.ndarray:
    """Raw pixels (see pixel_values) → the same CHW uint8 image decoding gives."""
    # Through PIL, exactly like a decoded file, so resizing matches training.
    return image_to_array(Image.fromarray(pixel_values(pixels)), size, channels)


def _header_pixels(data: bytes, size: int) -> int:
    """Pixels decoding `data` will allocate, from its header (nothing decoded); 0 if it is
    unreadable, for decode_image to report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's bomb warning: the budgets decide here
        try:
            return decoded_pixels(data, size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return 0


def _row_input(frame: pd.DataFrame, i: int) -> bytes | np.ndarray:
    """Row i's encoded image bytes or checked uint8 pixels."""
    image = frame["image"].iloc[i] if "image" in frame else None
    pixels = frame["pixels"].iloc[i] if "pixels" in frame else None
    has_pixels = pixels is not None and not (np.isscalar(pixels) and _missing(pixels))
    if not _missing(image):
        if has_pixels:
            raise DataError("has both 'image' and 'pixels': send one per row")
        if isinstance(image, str):
            try:
                return base64.b64decode(image, validate=True)  # JSON clients send base64 text
            except ValueError:
                raise DataError("'image' text is not base64") from None
        if not isinstance(image, bytes | bytearray | memoryview):
            raise DataError(f"'image' is a {type(image).__name__}: expected encoded image "
                            "bytes (base64 text in JSON)")
        return bytes(image)
    if not has_pixels:
        raise DataError("needs an 'image' (encoded bytes) or 'pixels' value")
    return pixel_values(pixels)


def image_rows(frame: pd.DataFrame, size: int, channels: int,
               budget: Budget | None = None) -> np.ndarray:
    """Image rows (bytes or pixels) → uint8 (N, C, size, size); the pixel budget first."""
    inputs, cost = [], 0
    for i in range(len(frame)):
        try:
            inputs.append(_row_input(frame, i))
        except DataError as err:
            raise DataError(f"model input row {i}: {err}") from None
        item = inputs[-1]
        cost += _header_pixels(item, size) if isinstance(item, bytes) else item.size
    if budget is not None and cost > budget.pixels:
        # By the headers, before anything is decoded: refusing must cost next to nothing.
        raise BudgetError(f"model input: {cost:,} pixels in {len(frame)} row(s) (image "
                          f"width × height, pixel values), more than {MAX_PIXELS[0]} = "
                          f"{budget.pixels:,} per request")
    rows = np.zeros((len(inputs), channels, size, size), dtype=np.uint8)
    for i, item in enumerate(inputs):
        try:
            rows[i] = decode_image(item, size, channels) if isinstance(item, bytes) else \
                image_to_array(Image.fromarray(item), size, channels)
        except DataError as err:
            raise DataError(f"model input row {i}: {str(err).removeprefix('<bytes>: ')}") \
                from None
        inputs[i] = b""  # free each request buffer as soon as it is decoded
    return rows  # uint8, scaled on the device like the training batches
