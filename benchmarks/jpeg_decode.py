"""JPEG decode to 64 px on one core: PIL full decode, PIL with draft (reduce-on-decode), and
torchvision.io.decode_jpeg + resize. Prints images/s for each (median of --repeats) and writes
them to benchmarks/results/jpeg_decode.json with the commit and the machine.

    python benchmarks/jpeg_decode.py --photos 512          # 2000 generated 512x384 JPEGs
    python benchmarks/jpeg_decode.py /path/to/jpegs --n 2000  # your own photos
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import write_result
from pipeline.data.images import decode_image  # the pipeline's own path (draft)


def pil_full(file: Path, size: int) -> np.ndarray:
    """Decode every pixel, then resize (the pipeline before reduce-on-decode)."""
    with Image.open(file) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img).transpose(2, 0, 1)


def tv_decode(file: Path, size: int) -> np.ndarray:
    """torchvision's libjpeg-turbo decode (no reduce-on-decode), then an antialiased resize."""
    data = torchvision.io.read_file(str(file))
    img = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
    out = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8).numpy()


def make_photos(folder: Path, n: int, width: int) -> None:
    """n seeded photo-like JPEGs (4:3, quality 90): a smooth two-colour gradient, soft discs
    and sensor noise, so the encoder sees what a camera's file holds rather than flat areas."""
    height = width * 3 // 4
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        rng = np.random.default_rng([2026, i])
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (width + height) + 0.5
        pixels = a + np.clip(t, 0, 1)[..., None] * (b - a)
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, width / 4)
            soft = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1)[..., None]
            pixels += soft * (rng.uniform(0, 255, 3).astype(np.float32) - pixels)
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 6
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    """Time each decoder over the same files; print and write images/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="JPEGs to decode (or --photos)")
    parser.add_argument("--photos", type=int, metavar="WIDTH",
                        help="decode --n generated photo-like JPEGs of this width instead")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if (args.folder is None) == (args.photos is None):
        parser.error("give a folder of JPEGs or --photos WIDTH")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp)
            make_photos(folder, args.n, args.photos)
        time_decoders(sorted(folder.rglob("*.jpg"))[: args.n], args)


def time_decoders(files: list[Path], args: argparse.Namespace) -> None:
    """Median images/s of each decoder over `files`; printed and written to results."""
    ways = {"PIL full decode + resize": lambda f: pil_full(f, args.size),
            "PIL draft + resize (pipeline)": lambda f: decode_image(f, args.size, 3),
            "torchvision decode_jpeg + resize": lambda f: tv_decode(f, args.size)}
    figures: dict = {"files": len(files), "size": args.size, "images_per_s": {},
                     "photos": f"generated, {args.photos} px wide" if args.photos else "given"}
    for name, fn in ways.items():
        rates = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            for file in files:
                fn(file)
            rates.append(len(files) / (time.perf_counter() - tick))
        print(f"{name:34s} {statistics.median(rates):7.0f} images/s on one core "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
        figures["images_per_s"][name] = {"median": statistics.median(rates), "runs": rates}
    write_result("jpeg_decode", figures)


if __name__ == "__main__":
    main()
