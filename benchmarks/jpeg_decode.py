"""JPEG decode to 64 px on one core: PIL full decode, PIL with draft (reduce-on-decode), and
torchvision.io.decode_jpeg + resize. Prints images/s for each (median of --repeats) and writes
them to benchmarks/results/jpeg_decode.json with the commit and the machine.

    python benchmarks/jpeg_decode.py /tmp/large_images_cache/N20000/raw --n 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
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


def main() -> None:
    """Time each decoder over the same files; print and write images/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(args.folder.rglob("*.jpg"))[: args.n]
    ways = {"PIL full decode + resize": lambda f: pil_full(f, args.size),
            "PIL draft + resize (pipeline)": lambda f: decode_image(f, args.size, 3),
            "torchvision decode_jpeg + resize": lambda f: tv_decode(f, args.size)}
    figures: dict = {"files": len(files), "size": args.size, "images_per_s": {}}
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
