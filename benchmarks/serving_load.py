"""Serving memory under load (issue 20): does `mlflow models serve` return to its size?

Trains and registers a tiny image model (benchmarks/attacks/serving.py), serves it with one
uvicorn worker, then sends --requests requests, --concurrency at a time: large images the
per-request budget allows (--side px, RGB PNG), and every --big-every-th one a --big-side px
image (144 MP by default: under Pillow's bomb limit, over the budget). A thread samples the
RSS of the server's whole process tree (psutil) every 0.1 s. "Flat" means the RSS after the
load is within --margin-mb of the RSS after warm-up (a few small requests).

    .venv/bin/python benchmarks/serving_load.py                      # label "after"
    .venv/bin/python benchmarks/serving_load.py --store DIR --label before   # a model
        registered earlier (its shipped code is what is served)
    .venv/bin/python benchmarks/serving_load.py --env MALLOC_ARENA_MAX=2 --label arenas2

Figures are printed and written to benchmarks/results/serving_load_<label>.json with the
commit and the machine (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from _results import write_result
from attacks.serving import post, register_model, split, start_server, stop_server

MB = 1 << 20


def gradient_png(side: int) -> str:
    """A side×side RGB gradient as base64 PNG (compresses well: the body stays small)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[..., 0] = ramp[None, :]
    rgb[..., 1] = ramp[:, None]
    rgb[..., 2] = 128
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, bytes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


class Sampler(threading.Thread):
    """Samples tree_rss(pid) every `every` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(tree_rss(self.pid))
            time.sleep(self.every)


def settle(pid: int, seconds: float) -> int:
    """RSS after `seconds` of no requests."""
    time.sleep(seconds)
    return tree_rss(pid)


def main() -> None:
    """Serve, warm up, load, and report RSS before/during/after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--side", type=int, default=6000, help="allowed image side (36 MP)")
    parser.add_argument("--big-side", type=int, default=12000, help="over-budget side (144 MP)")
    parser.add_argument("--big-every", type=int, default=5)
    parser.add_argument("--margin-mb", type=float, default=100.0)
    parser.add_argument("--store", type=Path, help="reuse a model registered under this root")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--label", default="after", help="results file serving_load_LABEL.json")
    args = parser.parse_args()

    root = args.store or Path(tempfile.mkdtemp(prefix="serving-load-"))
    register_model(root)
    small, allowed, big = gradient_png(64), gradient_png(args.side), gradient_png(args.big_side)
    server, port = start_server(root, dict(kv.split("=", 1) for kv in args.env))
    try:
        ready = tree_rss(server.pid)
        for _ in range(args.concurrency):
            post(port, split(["image"], [small]))
        warm = settle(server.pid, 2)
        sampler = Sampler(server.pid)
        sampler.start()
        bodies = [split(["image"], [big if (i + 1) % args.big_every == 0 else allowed])
                  for i in range(args.requests)]

        def send(body: dict) -> tuple[int, float]:
            tick = time.perf_counter()
            status, _ = post(port, body)
            return status, time.perf_counter() - tick

        tick = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(send, bodies))
        wall = time.perf_counter() - tick
        sampler.stopped.set()
        sampler.join()
        after = settle(server.pid, 3)
        idle = settle(server.pid, 10)
    finally:
        stop_server(server)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [s for status, s in results if status == 200]
    figures = {
        "requests": args.requests, "concurrency": args.concurrency,
        "allowed_image": f"{args.side}x{args.side} RGB PNG",
        "big_image": f"{args.big_side}x{args.big_side} RGB PNG, every {args.big_every}th",
        "server_env": args.env, "statuses": statuses, "wall_s": round(wall, 1),
        "latency_200_median_s": round(statistics.median(ok), 2) if ok else None,
        "rss_ready_mb": round(ready / MB), "rss_warm_mb": round(warm / MB),
        "rss_peak_mb": round(max(sampler.samples, default=0) / MB),
        "rss_after_3s_mb": round(after / MB), "rss_after_13s_mb": round(idle / MB),
        "growth_mb": round((idle - warm) / MB), "flat": (idle - warm) / MB <= args.margin_mb,
        "margin_mb": args.margin_mb,
    }
    print(json.dumps({args.label: figures}, indent=2))
    write_result(f"serving_load_{args.label}", figures)


if __name__ == "__main__":
    main()
