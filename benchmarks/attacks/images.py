"""Images as users have them: 16-bit and float pixels, EXIF-rotated photos, huge images, and
class folders holding what operating systems, zip tools and notebooks leave there."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from attacks.common import Case, image_case

Check = Callable[[Path, subprocess.CompletedProcess], "str | None"]


def write(folder: Path, name: str, array: np.ndarray, **kw: object) -> None:
    Image.fromarray(array).save(folder / name, **kw)


def each_class(make: Callable[[Path, str], None]) -> Callable[[Path], None]:
    """A breaker that replaces every image of both classes with `make(folder, cls)`'s."""
    def breaker(root: Path) -> None:
        for cls in ("cat", "dog"):
            for old in (root / cls).iterdir():
                old.unlink()
            make(root / cls, cls)
    return breaker


def sixteen_bit(folder: Path, cls: str) -> None:
    # What a scanner or microscope writes: 0..65535, the class in the upper half of the range.
    for i in range(8):
        value = 20000 if cls == "cat" else 50000
        write(folder, f"{i}.png" if i % 2 else f"{i}.tif", np.full((12, 12), value + i, np.uint16))


def float_tiffs(folder: Path, cls: str) -> None:
    for i in range(8):
        write(folder, f"{i}.tiff", np.full((12, 12), 0.3 if cls == "cat" else 0.8, np.float32))


def rotated_photos(folder: Path, cls: str) -> None:
    # A phone photo held upright: stored landscape, dark left edge, tagged "rotate 90° CW" (6).
    ramp = np.tile(np.linspace(0, 255, 96).astype(np.uint8), (48, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    for i in range(8):
        Image.fromarray(ramp).convert("RGB").save(folder / f"IMG_{i}.JPG", exif=exif)


def meta(root: Path) -> dict:
    return json.loads((root / "out" / "meta.json").read_text())


def rows(root: Path) -> np.ndarray:
    return np.concatenate([np.load(root / "out" / f"X_{s}.npy") for s in ("train", "val", "test")])


def noted(*items: str, images: int = 16) -> Check:
    """The run kept `images` images and its meta.json notes start with each of `items`."""
    def check(root: Path, proc: subprocess.CompletedProcess) -> str | None:
        notes = [n["item"] for n in meta(root)["notes"]]
        missing = [i for i in items if not any(n.startswith(i) for n in notes)]
        kept = len(rows(root))
        return (f"notes {notes} lack {missing}" if missing
                else f"{kept} images kept, expected {images}" if kept != images else None)
    return check


def values(cat: int, dog: int, note: str) -> Check:
    """Each class decoded to its expected uint8 level (±2), and the conversion noted."""
    def check(root: Path, proc: subprocess.CompletedProcess) -> str | None:
        ids = json.loads((root / "out" / "ids.json").read_text())
        for split in ("train", "val", "test"):
            X = np.load(root / "out" / f"X_{split}.npy")
            for x, i in zip(X, ids[split], strict=True):
                want = cat if i.startswith("cat/") else dog
                if abs(float(x.mean()) - want) > 2:
                    return f"{i} decoded to mean {x.mean():.1f}, expected {want}"
        return noted(note)(root, proc)
    return check


def upright(root: Path, proc: subprocess.CompletedProcess) -> str | None:
    X = rows(root).astype(float)
    top, left = X[:, 0, :2].mean(), X[:, 0, :, :2].mean()
    bottom = X[:, 0, -2:].mean()
    return None if top < bottom and top < left - 50 else (
        f"not upright: top {top:.0f}, bottom {bottom:.0f}, left {left:.0f}")


def os_litter(root: Path) -> None:
    for cls in ("cat", "dog"):
        (root / cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
        (root / cls / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (root / cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / cls / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "$RECYCLE.BIN").mkdir()
    (root / "System Volume Information").mkdir()


def mac_zip(root: Path) -> None:
    """Zip the class folders as macOS's Archive Utility does, then unzip them in place."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(root.rglob("*.png")):
            rel = file.relative_to(root).as_posix()
            archive.write(file, rel)
            archive.writestr(f"__MACOSX/{os.path.dirname(rel)}/._{file.name}", b"\0\5\26\7")
        archive.writestr("cat/.DS_Store", b"\0\0\0\1Bud1")
    shutil.rmtree(root)
    zipfile.ZipFile(buffer).extractall(root)


def notebook_and_nested(root: Path) -> None:
    checkpoints = root / "cat" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    for i in range(3):  # stale copies of cat images, saved as dogs by mistake: never trained
        Image.new("L", (12, 12), 200).save(checkpoints / f"{i}-checkpoint.png")
    (root / "dog" / ".empty").mkdir()
    (root / "dog" / "2024" / "june").mkdir(parents=True)
    Image.new("L", (12, 12), 200).save(root / "dog" / "2024" / "june" / "extra.JPG", "JPEG")


def linked_class(root: Path) -> None:
    elsewhere = root.parent / "external_disk" / "dogs"
    shutil.move(root / "dog", elsewhere)
    (root / "dog").symlink_to(elsewhere)


def link_loop(root: Path) -> None:
    (root / "dog" / "again").symlink_to(root / "dog")


def broken_link(root: Path) -> None:
    (root / "cat" / "moved.png").symlink_to(root / "gone.png")


def huge_png(root: Path) -> None:
    # 144 megapixels: under PIL's own bomb error (179 MP), ~0.7 GB to decode before the budget.
    Image.new("L", (12000, 12000)).save(root / "dog" / "scan.png")


def big_photo_and_png(root: Path) -> None:
    # Under a budget of 10,000 pixels: an 800x600 JPEG decodes at 1/8 (7,500 px) and passes;
    # a 120x100 PNG (12,000 px) has no cheap reduced decode and is refused.
    Image.new("RGB", (800, 600), (200, 200, 200)).save(root / "dog" / "photo.jpg")


def png_over_small_budget(root: Path) -> None:
    big_photo_and_png(root)
    Image.new("L", (120, 100)).save(root / "dog" / "wide.png")


BUDGET = {"PIPELINE_MAX_IMAGE_PIXELS": "10000"}
CASES = [
    Case("image: 16-bit grayscale PNG and TIFF scaled by depth, not clipped to 255",
         image_case(each_class(sixteen_bit)), check=values(78, 195, "16-bit images: 16")),
    Case("image: float TIFF in 0-1 scaled, not almost all 0",
         image_case(each_class(float_tiffs)), check=values(76, 204, "32-bit float images: 16")),
    Case("image: EXIF-rotated phone photos (.JPG) trained upright",
         image_case(each_class(rotated_photos)), check=lambda r, p: upright(r, p) or noted(
             "EXIF-oriented images: 16")(r, p)),
    Case("image: 32-bit integer TIFF refused (no known depth)", image_case(
        lambda f: write(f / "dog", "counts.tif", np.full((12, 12), 10**6, np.int32))),
         "counts.tif: pixel mode I (values 1e+06..1e+06) has no known scale to 0-255"),
    Case("image: float TIFF outside 0-1 refused", image_case(
        lambda f: write(f / "cat", "raw.tiff", np.linspace(0, 4000, 144, dtype=np.float32)
                        .reshape(12, 12))), "raw.tiff: 32-bit float pixels (0..4000): only"),
    Case("image: 16-bit PNG holding 8-bit values refused (would be all black)", image_case(
        lambda f: write(f / "cat", "dim.png", np.full((12, 12), 180, np.uint16))),
         "dim.png: 16-bit pixels all below 256 (largest 180)"),
    Case("image: Thumbs.db, desktop.ini, .DS_Store, ._*, $RECYCLE.BIN ignored and noted",
         image_case(os_litter), check=noted("Thumbs.db: 2", "desktop.ini: 2", ".DS_Store: 2",
                                            "._* (AppleDouble): 2", "$RECYCLE.BIN: 1",
                                            "System Volume Information: 1")),
    Case("image: a zip made on a Mac, unzipped (__MACOSX beside the classes)",
         image_case(mac_zip), check=noted("__MACOSX: 1", ".DS_Store: 1")),
    Case("image: .ipynb_checkpoints, empty hidden folder, nested year folders",
         image_case(notebook_and_nested), check=noted(
             ".ipynb_checkpoints: 1", ".* (hidden): 1", "nested subfolders: 1", images=17)),
    Case("image: class folder is a symlink to another disk", image_case(linked_class),
         check=noted()),
    Case("image: folder link loop refused", image_case(link_loop),
         "dog/again: a folder link to"),
    Case("image: broken file link refused", image_case(broken_link),
         "moved.png: a link to"),
    Case("image: .heic from an iPhone refused with the fix", image_case(
        lambda f: (f / "dog" / "IMG_2.heic").write_bytes(b"\0\0\0\x18ftypheic")),
         "IMG_2.heic: not an image file (suffix '.heic'"),
    Case("image: 144-megapixel PNG refused by the pixel budget before decoding",
         image_case(huge_png), "scan.png: 12000x12000 = 144,000,000 pixels to decode, over "
                               "the budget of 67,108,864"),
    Case("image: big JPEG passes a small budget by reduce-on-decode", image_case(
        big_photo_and_png), env=BUDGET, check=noted(images=17)),
    Case("image: PNG over a small budget refused", image_case(png_over_small_budget),
         "wide.png: 120x100 = 12,000 pixels to decode, over the budget of 10,000", env=BUDGET),
    Case("image: bad PIPELINE_MAX_IMAGE_PIXELS", image_case(lambda f: None),
         "PIPELINE_MAX_IMAGE_PIXELS = '1e6': must be a whole number",
         env={"PIPELINE_MAX_IMAGE_PIXELS": "1e6"}),
]
