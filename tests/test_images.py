"""Decoding by real bit depth and EXIF orientation, the pixel budget, one decode everywhere,
and which files of a class folder are data."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import DataConfig, SplitConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.dataset import load_splits
from pipeline.data.images import decode_image, decoded_pixels
from pipeline.data.sources import preprocess

HALF = SplitConfig(train=0.5, val=0.25, test=0.25)
RAMP16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1031).astype(np.uint16)  # 0..64953


@pytest.fixture(autouse=True)
def one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATA_WORKERS", "1")  # tiny sets: a pool costs more than it saves


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png48(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def oriented(fmt: str, orientation: int, size: tuple[int, int] = (24, 12)) -> bytes:
    """A left-dark, right-bright image tagged with an EXIF orientation."""
    ramp = np.tile(np.linspace(0, 1, size[0]), (size[1], 1))
    if fmt == "TIFF":  # 16-bit, the tag in the TIFF's own IFD (PIL turns it on load)
        return encode(Image.fromarray((ramp * 65535).astype(np.uint16)), fmt,
                      tiffinfo={0x0112: orientation})
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray((ramp * 255).astype(np.uint8)).convert("RGB"), fmt, exif=exif)


def odd_images() -> dict[str, bytes]:
    """One file of every kind that 8-bit decoding got wrong or that converts specially."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (10, 10), dtype=np.uint8)
    return {
        "g16.png": encode(Image.fromarray(RAMP16), "PNG"),
        "g16.tif": encode(Image.fromarray(RAMP16), "TIFF"),
        "rgb48.png": png48(np.stack([RAMP16, RAMP16[::-1], RAMP16.T], -1)),
        "float.tiff": encode(Image.fromarray(RAMP16.astype(np.float32) / 65535), "TIFF"),
        "rotated.jpg": oriented("JPEG", 6, (64, 32)),
        "rotated.png": oriented("PNG", 8),
        "rotated16.tif": oriented("TIFF", 6),
        "palette.gif": encode(Image.fromarray(gray).convert("RGB").convert("P"), "GIF"),
        "alpha.png": encode(Image.fromarray(gray).convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(Image.new("CMYK", (12, 9), (10, 200, 30, 40)), "JPEG"),
        "one_bit.png": encode(Image.fromarray(gray > 128), "PNG"),
        "UPPER.JPG": encode(Image.fromarray(gray).convert("RGB"), "JPEG"),
        "animated.gif": encode(Image.fromarray(gray), "GIF", save_all=True,
                               append_images=[Image.fromarray(255 - gray)]),
        "pages.tif": encode(Image.fromarray(RAMP16), "TIFF", save_all=True,
                            append_images=[Image.fromarray(RAMP16[::-1].copy())]),
    }


# --- bit depth --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["g16.png", "g16.tif"])
def test_16_bit_grayscale_scales_by_its_depth_not_clipped(name: str) -> None:
    out = decode_image(odd_images()[name], 8, 1)[0]
    assert np.array_equal(out, (RAMP16 >> 8).astype(np.uint8))  # torchvision's to_dtype


def test_48_bit_rgb_and_0_1_float_scale_like_torchvision() -> None:
    rgb = decode_image(odd_images()["rgb48.png"], 8, 3)
    assert np.array_equal(rgb[0], (RAMP16 >> 8).astype(np.uint8))
    floats = RAMP16.astype(np.float32) / 65535
    out = decode_image(odd_images()["float.tiff"], 8, 1)[0]
    assert np.array_equal(out, (floats * np.float32(255.999)).astype(np.uint8))
    assert out.max() == 253 and out.min() == 0  # not "almost all 0"


@pytest.mark.parametrize(("array", "needle"), [
    (np.full((4, 4), 10**6, np.int32), r"pixel mode I \(values 1e\+06\.\.1e\+06\) has no known"),
    (np.linspace(-1, 2, 16, dtype=np.float32).reshape(4, 4), r"float pixels \(-1\.\.2\): only"),
    (np.full((4, 4), np.nan, np.float32), r"float pixels \(none finite, 16 NaN or inf\)"),
    (np.full((4, 4), 200, np.uint16), r"16-bit pixels all below 256 \(largest 200\)"),
])
def test_pixels_without_a_known_scale_are_refused(array: np.ndarray, needle: str) -> None:
    with pytest.raises(DataError, match=r"^<bytes>: .*" + needle):
        decode_image(encode(Image.fromarray(array), "TIFF"), 4, 1)


def test_48_bit_rgb_holding_8_bit_values_is_refused_not_black() -> None:
    with pytest.raises(DataError, match=r"^<bytes>: 16-bit pixels all below 256: scaled"):
        decode_image(png48(np.full((4, 4, 3), 200, np.uint16)), 4, 3)
    with pytest.raises(DataError, match=r"^<bytes>: not a readable image \(unknown"):
        decoded_pixels(b"junk", 8)  # what serving sums for a request's budget


def test_multi_frame_images_decode_their_first_frame() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (10, 10), dtype=np.uint8)  # odd_images'
    first = decode_image(encode(Image.fromarray(gray), "GIF"), 10, 1)
    assert np.array_equal(decode_image(odd_images()["animated.gif"], 10, 1), first)
    assert np.array_equal(decode_image(odd_images()["pages.tif"], 8, 1)[0], RAMP16 >> 8)


# --- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "orientation", "dark"), [
    ("JPEG", 6, "top"), ("PNG", 8, "bottom"), ("JPEG", 3, "right"), ("PNG", 1, "left"),
    ("TIFF", 6, "top"), ("TIFF", 8, "bottom"), ("TIFF", 2, "right")])
def test_exif_orientation_is_applied(fmt: str, orientation: int, dark: str) -> None:
    # 256x128 with size 16: the JPEG is reduce-on-decoded (1/8) before it is turned; the TIFF
    # is 16-bit (turned, then scaled).
    out = decode_image(oriented(fmt, orientation, (256, 128)), 16, 1)[0].astype(int)
    sides = {"top": out[:4].mean(), "bottom": out[-4:].mean(),
             "left": out[:, :4].mean(), "right": out[:, -4:].mean()}
    assert min(sides, key=sides.get) == dark


# --- pixel budget -----------------------------------------------------------------------------


def test_pixel_budget_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_MAX_IMAGE_PIXELS", "3000")
    photo = encode(Image.new("RGB", (400, 400)), "JPEG")
    png = encode(Image.new("L", (60, 60)), "PNG")
    assert decoded_pixels(photo, 8) == 50 * 50  # 1/8 reduce-on-decode, as decoding does
    assert decoded_pixels(png, 8) == 3600
    assert decode_image(photo, 8, 3).shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"^<bytes>: 60x60 = 3,600 pixels to decode, over the "
                                        r"budget of 3,000 per image \(PIPELINE_MAX_IMAGE_PIXELS"):
        decode_image(png, 8, 1)
    monkeypatch.setenv("PIPELINE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="PIPELINE_MAX_IMAGE_PIXELS = 'lots'"):
        decode_image(png, 8, 1)


# --- one decode everywhere --------------------------------------------------------------------


def odd_folder(root: Path) -> Path:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for name, data in odd_images().items():
            (root / cls / name).write_bytes(data)
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_preprocess_batch_predict_and_serving_decode_alike(tmp_path: Path,
                                                           channels: int) -> None:
    from pipeline.registry.batch import collect_images, image_frame
    from pipeline.registry.features import frame_to_features

    root = odd_folder(tmp_path / "imgs")
    cfg = DataConfig(source="imagefolder", path=str(root), positive_class="dog", image_size=12,
                     channels=channels, split=HALF)
    preprocess(cfg, 0, tmp_path / "out")
    splits, meta = load_splits(tmp_path / "out")
    items = {n["item"].split(":")[0]: n for n in meta.notes}
    assert items.keys() == {"16-bit images", "32-bit float images", "EXIF-oriented images",
                            "multi-frame (animated, multi-page) images"}
    assert items["16-bit images"]["item"].startswith("16-bit images: 10 ")  # PNG, TIFFs, RGB
    assert items["multi-frame (animated, multi-page) images"]["item"].startswith(
        "multi-frame (animated, multi-page) images: 4 ")
    assert items["EXIF-oriented images"]["item"].startswith("EXIF-oriented images: 6 ")
    assert "largest grayscale value 65535" in items["16-bit images"]["reason"]
    assert len(collect_images([root])) == 2 * len(odd_images())
    for split in splits.values():
        files = [root / i for i in split.ids]
        frame, ids, _ = image_frame(files, 12, channels, skip_bad=False)
        assert ids == [str(f) for f in files]
        assert np.array_equal(frame_to_features(frame, meta), split.X)  # batch predict
        served = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode()
                                         for f in files]})
        assert np.array_equal(frame_to_features(served, meta), split.X)  # JSON clients


# --- class folders ----------------------------------------------------------------------------


def tiny(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (6, 6), value).save(path)


def image_cfg(root: Path) -> DataConfig:
    return DataConfig(source="imagefolder", path=str(root), positive_class="dog", image_size=6,
                      split=HALF)


def test_os_and_tool_metadata_is_ignored_and_reported(tmp_path: Path, caplog) -> None:
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        for i in range(4):
            tiny(root / cls / f"{i}.png", 40 if cls == "cat" else 200)
    tiny(root / "dog" / "2019" / "deep" / "old.PNG")  # nested: read, labelled dog
    tiny(root / "__MACOSX" / "dog" / "._0.png")  # a Mac zip's resource forks
    (root / "cat" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    tiny(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")  # a duplicate, not data
    tiny(root / "cat" / "@eaDir" / "0.png" / "SYNOFILE_THUMB_S.jpg")
    (root / "dog" / ".hidden").mkdir()  # empty hidden folder
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store"):
        (root / "dog" / name).write_bytes(b"\0\1metadata")
    (root / "README.txt").write_text("cats vs dogs")  # beside the classes: no label
    with caplog.at_level("INFO"):
        splits, meta = load_splits(_prep(root, tmp_path))
    ids = sorted(i for s in splits.values() for i in s.ids)
    assert ids == sorted([f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)]
                         + ["dog/2019/deep/old.PNG"])
    ignored = {n["item"].split(":")[0] for n in meta.notes if n["action"] == "ignored"}
    assert ignored == {"__MACOSX", "._* (AppleDouble)", ".ipynb_checkpoints", "@eaDir",
                       ".* (hidden)", "Thumbs.db", "desktop.ini", ".DS_Store",
                       "files beside the class folders"}
    assert any(n["item"].startswith("nested subfolders: 1 images") for n in meta.notes)
    summary = [r.message for r in caplog.records if "ignored" in r.message]
    assert len(summary) == 1 and "ignored 9 files/folders that are not data" in summary[0]


def _prep(root: Path, tmp_path: Path) -> Path:
    preprocess(image_cfg(root), 0, tmp_path / "out")
    return tmp_path / "out"


def test_symlinked_class_folder_is_read_and_a_loop_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "big_disk" / "dogs"
    for i in range(4):
        tiny(tmp_path / "imgs" / "cat" / f"{i}.png", 40)
        tiny(elsewhere / f"{i}.png", 200)
    (tmp_path / "imgs" / "dog").symlink_to(elsewhere)
    splits, _ = load_splits(_prep(tmp_path / "imgs", tmp_path))
    assert sum(i.startswith("dog/") for s in splits.values() for i in s.ids) == 4
    (elsewhere / "again").symlink_to(elsewhere)
    with pytest.raises(DataError, match=r"dog/again: a folder link to .*dogs, which is "
                                        r"already read"):
        preprocess(image_cfg(tmp_path / "imgs"), 0, tmp_path / "out2")
    (elsewhere / "again").unlink()
    (elsewhere / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"gone\.png: a link to .*nowhere\.png, which does not"):
        preprocess(image_cfg(tmp_path / "imgs"), 0, tmp_path / "out2")


def test_non_images_in_class_folders_are_refused_with_the_fix(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        for i in range(4):
            tiny(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "dog" / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(DataError, match=r"IMG_1\.HEIC: not an image file \(suffix '\.HEIC'.*"
                                        r"convert it or move it out of the folder"):
        preprocess(image_cfg(tmp_path / "imgs"), 0, tmp_path / "out")
    meta = preprocess(replace(image_cfg(tmp_path / "imgs"), skip_corrupt=True), 0,
                      tmp_path / "out")
    assert [s["file"] for s in meta.skipped] == ["dog/IMG_1.HEIC"]


def test_batch_predict_folders_ignore_metadata_and_refuse_non_images(tmp_path: Path) -> None:
    from pipeline.registry.batch import collect_images

    tiny(tmp_path / "new" / "a.jpg")
    tiny(tmp_path / "new" / "__MACOSX" / "._a.jpg")
    (tmp_path / "new" / "Thumbs.db").write_bytes(b"\0")
    assert collect_images([tmp_path / "new"]) == [tmp_path / "new" / "a.jpg"]
    (tmp_path / "new" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file .*--skip-bad"):
        collect_images([tmp_path / "new"])
    assert collect_images([tmp_path / "new"], skip_bad=True) == [tmp_path / "new" / "a.jpg"]


def test_a_16_bit_gray_image_with_a_dark_border_is_not_refused() -> None:
    pixels = np.full((10, 10), 30000, np.uint16)
    pixels[:, :3] = 0  # a microscopy frame's dark left edge
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    row = decode_image(buffer.getvalue(), 10, 1)[0, 0]
    assert list(row[:3]) == [0, 0, 0] and row[5] == 30000 >> 8


def test_served_float_pixels_match_a_float_tiff_byte_for_byte() -> None:
    from pipeline.data.model_inputs import pixels_to_array

    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    assert np.array_equal(decode_image(buffer.getvalue(), 8, 1),
                          pixels_to_array(values.astype(np.float64).tolist(), 8, 1))
