"""Image sets larger than memory (issue 11): time, images/s, peak RSS and disk per stage vs N.

Generates N two-class RGB JPEGs of 64-128 px (deterministic: class a = noisy stripes of random
period, class b = noisy discs; random colours, so only texture and shape tell them apart), then
runs preprocess → augment → train (1 epoch, no tuning, 64 px RGB) as separate processes in a
throw-away workspace per N, the way dvc.yaml wires them. Peak RSS is the largest single process
(`/usr/bin/time -v`, else `getrusage` in a wrapper) and, since a parallel stage's memory is the
sum of its workers, the sampled peak of the whole process tree's RSS.

    .venv/bin/python benchmarks/large_images.py                        # 20k, 50k, 100k
    .venv/bin/python benchmarks/large_images.py --sizes 300 --stages preprocess   # smoke
    PIPELINE_DATA_WORKERS=1 .venv/bin/python benchmarks/large_images.py --json out.json

Generated sets are cached under --cache/N<n> (reused when complete). Figures go to
benchmarks/results/large_images.json (with commit and machine; see benchmarks/_results.py).
Exit status 0 whether or not a target is met; a failing stage stops the run with its output tail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml
from _results import write_result
from _workspace import default_params, merge, parse_sets
from PIL import Image

STAGES = {  # the args dvc.yaml gives each stage
    "preprocess": ["--params", "params.yaml", "--out", "data/processed"],
    "augment": ["--params", "params.yaml", "--data-dir", "data/processed",
                "--out", "data/augmented"],
    "train": ["--params", "params.yaml", "--data-dir", "data/processed",
              "--train-dir", "data/augmented", "--best-params", "models/best_params.json",
              "--out", "models", "--reports", "reports"],
}
SEED = 0
VERSION = 2  # bump when make_image changes, so cached sets are regenerated
TIME = Path("/usr/bin/time")


def make_image(index: int) -> tuple[str, np.ndarray]:
    """Class and pixels of image `index`: a pure function of the index, so any order is fine."""
    rng = np.random.default_rng([SEED, index])
    h, w = rng.integers(64, 129, size=2)
    # Open grids and float32 noise: the generator, not the JPEG encode, is the slow part.
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    label = "ab"[index % 2]
    if label == "a":  # soft stripes, slightly tilted so a row average alone is not enough
        period, tilt = rng.uniform(4, 20), rng.uniform(-0.3, 0.3)
        mask = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + tilt * xx) / period + rng.uniform(0, 7))
    else:  # a few discs of random size: blobs, no periodic texture
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(2, 9)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 30)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    mask = mask.astype(np.float32)[..., None]
    fg, bg = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    pixels = bg + mask * (fg - bg)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(5, 30)
    return label, np.clip(pixels, 0, 255).astype(np.uint8)


def _write_image(job: tuple[Path, int]) -> None:
    root, index = job
    label, pixels = make_image(index)
    Image.fromarray(pixels).save(root / label / f"{index:06d}.jpg", quality=90)


def generate(n: int, cache: Path) -> tuple[Path, float]:
    """ImageFolder of n images under cache/raw (reused if complete); its path and images/s."""
    raw, marker, stamp = cache / "raw", cache / "complete.json", {"n": n, "seed": SEED,
                                                                  "version": VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return raw, 0.0
    shutil.rmtree(raw, ignore_errors=True)
    for label in "ab":
        (raw / label).mkdir(parents=True)
    start = time.perf_counter()
    # fork: workers inherit the imports; chunks keep per-task overhead below the JPEG encode.
    with get_context("fork").Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_write_image, ((raw, i) for i in range(n)), chunksize=256):
            pass
    rate = n / (time.perf_counter() - start)
    marker.write_text(json.dumps(stamp))  # last: a killed run regenerates
    return raw, rate


def tree_rss(root: int) -> int:
    """Bytes of RSS summed over `root` and its descendants (one pass over /proc)."""
    parent, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited between listing and reading
                continue
            parent[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21])
    tree, frontier = {root}, [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(pid, 0) for pid in tree) * os.sysconf("SC_PAGE_SIZE")


def run_stage(name: str, ws: Path) -> dict[str, float]:
    """Run one stage in `ws`; wall seconds, max single-process RSS and peak tree RSS (GiB)."""
    cmd = [sys.executable, "-m", f"pipeline.stages.{name}", *STAGES[name]]
    report = ws / f".rusage_{name}"
    if TIME.exists():
        cmd = [str(TIME), "-v", "-o", str(report), *cmd]
    else:  # getrusage(CHILDREN) is a max over all children ever: measure in a fresh wrapper
        cmd = [sys.executable, "-c", "import resource, subprocess, sys; "
               "subprocess.run(sys.argv[2:], check=True); open(sys.argv[1], 'w').write("
               "f'Maximum resident set size (kbytes): "
               "{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')", str(report), *cmd]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow.db"}
    env.pop("OPTUNA_STORAGE", None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{name} failed in {ws} (--keep keeps it):\n{output[-3000:]}")
    maxrss = next(int(line.rsplit(":", 1)[1]) for line in report.read_text().splitlines()
                  if "Maximum resident set size" in line)
    return {"seconds": seconds, "rss_gib": maxrss / 2**20, "tree_rss_gib": peak[0] / 2**30}


def rows(folder: Path, split: str = "train") -> int:
    """Rows of a stage output's split (from y_<split>.npy's header, not its data)."""
    return int(np.load(folder / f"y_{split}.npy", mmap_mode="r").shape[0])


def du(path: Path) -> int:
    """Bytes on disk as `du -sb` counts them."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def bench(n: int, args: argparse.Namespace) -> dict:
    """Generate (or reuse) n images, run the chosen stages in a new workspace, collect figures."""
    raw, gen_rate = generate(n, Path(args.cache) / f"N{n}")
    print(f"  N={n:,} generated at {gen_rate:,.0f} images/s" if gen_rate else
          f"  N={n:,} reused from {raw}", flush=True)
    # Read the raw set once so every preprocess starts from the page cache: a cold read off
    # this disk measured at ~1/4 of the warm rate, which would compare disks, not code.
    tick = time.perf_counter()
    for file in raw.rglob("*.jpg"):
        file.read_bytes()
    print(f"  N={n:,} raw set read into the page cache in {time.perf_counter() - tick:.1f} s",
          flush=True)
    ws = Path(tempfile.mkdtemp(prefix=f"large_images_N{n}_", dir=args.workdir))
    overrides = {"data": {"source": "imagefolder", "path": str(raw), "positive_class": "b",
                          "image_size": 64, "channels": 3},
                 "tune": {"enabled": False}, "train": {"epochs": 1}, "augment": {"copies": 2}}
    params = merge(merge(default_params(), overrides), parse_sets(args.set))
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = {"n": n, "generate_images_per_s": gen_rate, "raw_bytes": du(raw), "workspace": str(ws)}
    try:
        for name in args.stages:
            fig = out[name] = run_stage(name, ws)
            print(f"  N={n} {name}: {fig['seconds']:.1f} s", flush=True)
        data = ws / "data"
        if "preprocess" in out:
            out["preprocess"]["images_per_s"] = n / out["preprocess"]["seconds"]
        if "augment" in out:  # the copies it made, not the originals it carries along
            made = rows(data / "processed") * params["augment"]["copies"]
            out["augment"]["images_per_s"] = made / out["augment"]["seconds"]
        if "train" in out:  # epoch time from MLflow: stage time also counts loading and logging
            with sqlite3.connect(ws / "mlflow.db") as db:
                epochs = [v for (v,) in db.execute(
                    "SELECT value FROM metrics WHERE key = 'epoch_seconds'")]
            out["train"]["samples_per_s"] = rows(data / "augmented") * len(epochs) / sum(epochs)
        out["data_bytes"] = du(data) if data.exists() else 0
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    return out


def table(results: list[dict], stages: list[str]) -> str:
    """Markdown table, one row per N, plus the linearity line."""
    unit = {"train": "samples/s"}  # per training sample seen; the others per image written
    head = ["N", *(f"{s} s" for s in stages), *(f"{s} {unit.get(s, 'img/s')}" for s in stages),
            *(f"{s} RSS GiB (proc/tree)" for s in stages), "data/ GiB", "raw GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rate = [r[s].get("images_per_s", r[s].get("samples_per_s", 0)) for s in stages]
        cells = [f"{r['n']:,}", *(f"{r[s]['seconds']:.1f}" for s in stages),
                 *(f"{x:,.0f}" for x in rate),
                 *(f"{r[s]['rss_gib']:.2f} / {r[s]['tree_rss_gib']:.2f}" for s in stages),
                 f"{r['data_bytes'] / 2**30:.2f}", f"{r['raw_bytes'] / 2**30:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(results) > 1:  # 1.0 = linear; the target is ≤ 1.2
        small, large = results[0], results[-1]
        scale = large["n"] / small["n"]
        ratios = [f"{s} {large[s]['seconds'] / (small[s]['seconds'] * scale):.2f}"
                  for s in stages]
        lines.append(f"\nlinearity (time at N={large['n']:,} / linear from N={small['n']:,}): "
                     + ", ".join(ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, run every size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,50000,100000", help="comma-separated N")
    parser.add_argument("--cache", default="/tmp/large_images_cache",
                        help="generated sets, one N<n>/ each (default: %(default)s)")
    parser.add_argument("--workdir", default=None, help="where workspaces go (default: $TMPDIR)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="subset, in order (default: %(default)s)")
    parser.add_argument("--set", action="append", help="params override KEY=VALUE (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages ({args.stages}): unknown {sorted(unknown)}; "
                         f"pick from {list(STAGES)}")
    args.stages = [s for s in STAGES if s in args.stages.split(",")]
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"load average before: {os.getloadavg()}; stages: {', '.join(args.stages)}")
    results = []
    for n in sizes:
        results.append(bench(n, args))
    print(f"load average after: {os.getloadavg()}\n\n{table(results, args.stages)}")
    write_result("large_images", {"stages": args.stages, "sets": args.set, "runs": results},
                 table(results, args.stages))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
