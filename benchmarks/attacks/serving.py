"""Serving attacks: requests to `mlflow models serve` of a tiny registered image model.

One model is trained and registered, and one server started, per process (the first case
pays ~40 s; the rest reuse both); the server stops when the process exits.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from attacks.common import REPO, Case

NAME = "imgs-dog"  # register.model_name: auto for the imgs folder, positive dog
SIZE = 8  # the tiny model's image side

# Train + register in one interpreter (the stage mains in dvc.yaml's order): ~4x faster than
# five stage processes, each importing torch and MLflow.
BUILD = r"""
import os, sys
from pathlib import Path
import numpy as np, yaml
from PIL import Image
root = Path(sys.argv[1])
os.chdir(root)
folder = root / "imgs"
rng = np.random.default_rng(0)
for c, cls in enumerate(("cat", "dog")):
    (folder / cls).mkdir(parents=True)
    for i in range(8):
        Image.fromarray((rng.integers(0, 60, (12, 12)) + 150 * c).astype(np.uint8)).save(
            folder / cls / f"{i}.png")
p = root / "params.yaml"
p.write_text(yaml.safe_dump({"seed": 0, "data": {
    "source": "imagefolder", "path": str(folder), "positive_class": "dog", "image_size": SIZE,
    "split": {"train": 0.5, "val": 0.25, "test": 0.25}}, "augment": {"copies": 1},
    "model": {"type": "mlp", "hidden_sizes": [8]}, "tune": {"enabled": False},
    "train": {"epochs": 1, "batch_size": 16, "patience": 0, "cv_folds": 0}}))
from pipeline.stages import augment, evaluate, preprocess, register, train
c = ["--params", str(p)]
preprocess.main([*c, "--out", "p"])
augment.main([*c, "--data-dir", "p", "--out", "a"])
train.main([*c, "--data-dir", "p", "--train-dir", "a", "--best-params", "m/best.json",
            "--out", "m", "--reports", "r"])
evaluate.main([*c, "--data-dir", "p", "--model-dir", "m", "--reports", "r"])
register.main([*c, "--data-dir", "p", "--train-dir", "a", "--model-dir", "m", "--metrics",
               "r/metrics.json", "--out", "registration.json"])
""".replace("SIZE", str(SIZE))


def server_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a server of the model registered under `root` runs with."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra or {})}


def register_model(root: Path) -> None:
    """Train and register the tiny image model in a store under `root` (if not there yet)."""
    if (root / "registration.json").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", BUILD, str(root)], cwd=REPO, text=True,
                          capture_output=True, env=server_env(root), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the served model failed: {proc.stderr[-2000:]}")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, extra_env: dict[str, str] | None = None,
                 wait_s: float = 180) -> tuple[subprocess.Popen, int]:
    """`mlflow models serve` the champion under `root` (one worker), once /ping answers."""
    port = free_port()
    log = open(root / f"server-{port}.log", "wb")  # noqa: SIM115  # lives as long as the server
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, env=server_env(root, extra_env), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError("server did not start: "
                                   + (root / f"server-{port}.log").read_text()[-2000:]) from None
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server and the uvicorn process it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, 15)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait()


_SHARED: dict[str, int] = {}


def shared_port() -> int:
    """The port of this process's one server (built and started on first use)."""
    if "port" not in _SHARED:
        root = Path(tempfile.mkdtemp(prefix="serving-attack-"))
        register_model(root)
        server, _SHARED["port"] = start_server(root)
        _SHARED["pid"] = server.pid

        def cleanup() -> None:
            stop_server(server)
            shutil.rmtree(root, ignore_errors=True)
        atexit.register(cleanup)
    return _SHARED["port"]


def post(port: int, body: bytes | dict, content_type: str = "application/json"
         ) -> tuple[int, str]:
    """POST to /invocations; (HTTP status, body text)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=data,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def png(array: np.ndarray) -> str:
    """An image as the base64 PNG text a JSON client sends."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def split(columns: list[str], *rows: list) -> dict:
    """A dataframe_split request body."""
    return {"dataframe_split": {"columns": columns, "data": [list(r) for r in rows]}}


def leaks(text: str) -> str | None:
    """What of the server's insides a response body shows (a traceback, a file path), if any."""
    for sign in ("Traceback", "stack_trace", 'File "/', ".py\", line", str(REPO)):
        if sign in text:
            return f"body shows {sign!r}"
    return None


def refused(body: dict | bytes | Callable[[], dict], status: int, needle: str,
            content_type: str = "application/json", max_chars: int = 2000
            ) -> Callable[[Path], tuple[bool, str]]:
    """A case: the request is answered `status` with `needle` in its message, in a body of at
    most `max_chars` (no echo of a big request), nothing leaked. `body` may be a function:
    big bodies are built only when their case runs."""
    def run(_: Path) -> tuple[bool, str]:
        got, text = post(shared_port(), body() if callable(body) else body, content_type)
        problem = (f"HTTP {got}, expected {status}" if got != status else leaks(text)
                   or (f"body of {len(text):,} chars" if len(text) > max_chars else None)
                   or (None if needle in text else f"message lacks {needle!r}"))
        return problem is None, f"HTTP {got}: {problem or 'refused'} {text[:150]}"
    return run


def answered(body: dict, check: Callable[[list[dict]], str | None]
             ) -> Callable[[Path], tuple[bool, str]]:
    """A case: the request is answered 200 and `check(predictions)` finds nothing wrong."""
    def run(_: Path) -> tuple[bool, str]:
        got, text = post(shared_port(), body)
        problem = f"HTTP {got}, expected 200" if got != 200 else check(
            json.loads(text)["predictions"])
        return problem is None, f"HTTP {got}: {problem or 'correct'} {text[:150]}"
    return run


def same_as_image(image: np.ndarray) -> Callable[[list[dict]], str | None]:
    """Check: the pixel row's prediction equals that of `image` sent as a PNG, and differs
    from a black image's (else the model cannot tell a wrong scale apart)."""
    def check(predictions: list[dict]) -> str | None:
        answers = [post(shared_port(), split(["image"], [png(a)])) for a in (image, 0 * image)]
        if any(status != 200 for status, _ in answers):
            return f"the PNGs were answered {[a[0] for a in answers]}"
        want, black = (json.loads(text)["predictions"][0]["probability"] for _, text in answers)
        got = predictions[0]["probability"]
        if abs(want - black) < 1e-6:
            return f"the model gives {want} to the image and to black: the check proves nothing"
        return None if abs(got - want) < 1e-6 else f"pixels gave {got}, the PNG gave {want}"
    return check


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, bytes."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(proc.memory_info().rss for proc in procs)


def memory_flat(side: int, requests: int, concurrency: int, margin_mb: float
                ) -> Callable[[Path], tuple[bool, str]]:
    """A case: after `requests` side×side RGB PNGs, `concurrency` at a time, the server's RSS
    is within `margin_mb` of what it was after as many small ones (benchmarks/serving_load.py
    is the full-size version)."""
    def run(_: Path) -> tuple[bool, str]:
        port, pid = shared_port(), _SHARED["pid"]
        ramp = np.linspace(0, 255, side).astype(np.uint8)
        big = png(np.stack([np.add.outer(ramp, ramp // 2)] * 3, axis=-1))
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, [port] * concurrency, [split(["image"], [png(GRAY)])] * 6))
            time.sleep(1)
            before = tree_rss(pid)
            answers = list(pool.map(post, [port] * requests, [split(["image"], [big])] * requests))
        time.sleep(2)
        growth = (tree_rss(pid) - before) / (1 << 20)
        codes = sorted({status for status, _ in answers})
        ok = codes == [200] and growth <= margin_mb
        return ok, f"HTTP {codes}: RSS {before / (1 << 20):.0f} MB -> {growth:+.0f} MB"
    return run


GRAY = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
UNIT = (GRAY / 255.0).tolist()  # the same image as 0-1 floats
BIG = 13_000  # px side: 169 MP, under Pillow's bomb limit (179 MP), over the request budget

CASES = [
    Case("NaN pixel", run=refused(
        {"dataframe_split": {"columns": ["pixels"], "data": [[[[0.5, float("nan")],
                                                               [1.0, 0.0]]]]}},
        400, "row 0: pixels hold NaN at [0, 1]")),
    Case("null pixel", run=refused(split(["pixels"], [[[0, None], [255, 3]]]), 400,
                                   "row 0: pixels hold null at [0, 1]")),
    Case("pixel -5", run=refused(split(["pixels"], [[[0, -5], [255, 3]]]), 400,
                                 "row 0: pixel value -5 at [0, 1]")),
    Case("pixel 300", run=refused(split(["pixels"], [[[0, 300], [255, 3]]]), 400,
                                  "row 0: pixel value 300 at [0, 1]")),
    Case("float pixel 1.5 among 0-255", run=refused(
        split(["pixels"], [[[0.0, 1.5], [255.0, 3.0]]]), 400, "row 0: pixel value 1.5 at [0, 1]")),
    Case("ragged pixel rows", run=refused(split(["pixels"], [[[0, 1], [1]]]), 400,
                                          "row 0: pixels are ragged")),
    Case("text pixels", run=refused(split(["pixels"], [[["a", "b"], ["c", "d"]]]), 400,
                                    "row 0: pixels hold 'a' at [0, 0]")),
    Case("both image and pixels", run=refused(
        split(["image", "pixels"], [png(GRAY), GRAY.tolist()]), 400,
        "row 0: has both 'image' and 'pixels'")),
    Case("second row bad", run=refused(
        split(["pixels"], [GRAY.tolist()], [[[0, 256]]]), 400, "row 1: pixel value 256")),
    Case("bad 1000x1000 pixels not echoed back", run=refused(
        {"inputs": {"pixels": [[[0.5] * 999 + [float("nan")]] * 1000]}}, 400,
        "row 0: pixels hold NaN at [0, 999]", max_chars=500)),
    Case("image text not base64", run=refused(split(["image"], ["not base64!"]), 400,
                                              "Failed to convert column image")),
    Case("malformed JSON", run=refused(b'{"dataframe_split": {"columns": ', 400, "valid JSON")),
    Case("CSV body to an image model", run=refused(
        b"pixels\n1\n", 400, "Failed to parse input", content_type="text/csv")),
    Case("169-megapixel PNG", run=refused(
        lambda: split(["image"], [png(np.zeros((BIG, BIG), np.uint8))]), 413,
        "169,000,000 pixels in 1 row(s)")),
    Case("10,001 rows", run=refused(split(["pixels"], *[[[[7]]]] * 10_001), 413,
                                    "10,001 rows, more than PIPELINE_MAX_REQUEST_ROWS")),
    Case("memory flat after 12 x 9-megapixel PNGs, 6 at a time",
         run=memory_flat(3000, 12, 6, margin_mb=50)),
    Case("0-1 floats = the PNG", run=answered(split(["pixels"], [UNIT]), same_as_image(GRAY))),
    Case("0-255 integers = the PNG", run=answered(
        split(["pixels"], [GRAY.tolist()]), same_as_image(GRAY))),
    Case("whole-number floats 0-255 = the PNG", run=answered(
        split(["pixels"], [GRAY.astype(float).tolist()]), same_as_image(GRAY))),
]
