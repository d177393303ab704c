"""Batches for the loop: a split preloaded on the device, or streamed from its .npy file.

Both yield the same batches for the same order, so a model trained either way has the same
bytes; which one is used is a memory decision (PIPELINE_PRELOAD_MB), never a result one.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline.core.errors import ConfigError
from pipeline.data.arrays import Rows
from pipeline.data.dataset import Split

PRELOAD_ENV = "PIPELINE_PRELOAD_MB"
# On the CPU a streamed epoch reads from the page cache at close to preloaded speed (measured in
# benchmarks/large_images.py), so the default keeps the process small; on a GPU preloading
# keeps the data resident next to the model, so it may take half of the free device memory.
CPU_PRELOAD_MB = 1024
PREFETCH = 4  # batches read ahead by the background thread


def preload_budget(device: torch.device) -> int:
    """Bytes a split may take to be preloaded on `device`."""
    wanted = os.environ.get(PRELOAD_ENV, "")
    if wanted:
        try:
            return int(float(wanted) * 2 ** 20)
        except ValueError:
            raise ConfigError(f"{PRELOAD_ENV} = {wanted!r}: must be a number of MiB") from None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_PRELOAD_MB * 2 ** 20


def whole_file(X: np.ndarray) -> bool:
    """True for an array np.load mapped from a whole .npy file (not a slice or view of one)."""
    return isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.filename is not None


def preload(path: str, device: torch.device) -> torch.Tensor:
    """A whole .npy file as a tensor on `device`, read (not copied from a memory map: mapped
    pages would stay in this process's RSS) and, for a GPU, sent in ~64 MB pieces so the host
    never holds the whole split."""
    with Rows(path) as rows:
        if device.type == "cpu":
            return torch.from_numpy(rows.read(0, len(rows)))
        out = torch.from_numpy(rows.empty(0)).new_empty((len(rows), *rows.row_shape),
                                                        device=device)
        for start, chunk in rows.chunks(max(1, 2 ** 26 // rows.row_bytes)):
            out[start:start + len(chunk)] = torch.from_numpy(chunk).to(device)
        return out


def batch_bounds(n: int, batch_size: int, training: bool = False) -> list[tuple[int, int]]:
    """(start, stop) of each batch over `n` rows; for training, a last batch of one sample
    joins the batch before it (BatchNorm in training mode fails on one sample, and a step
    on one sample is mostly noise): no sample is dropped and the order stays the same."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if training and batch_size > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def as_inputs(xb: torch.Tensor) -> torch.Tensor:
    """A stored batch as model input: uint8 images scaled to [0, 1] float32, channels-last."""
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255.0)  # the same float32 division as numpy's x / 255.0
    if xb.dim() == 4:
        # NHWC is ~1.3x faster for small convs/pooling on CPU (oneDNN) and fine on CUDA.
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb


class Feed:
    """Features and labels of one split, preloaded on the device or streamed from disk."""

    def __init__(self, X: np.ndarray, y: np.ndarray | None, device: torch.device,
                 budget: int | None = None) -> None:
        self.device, self.n = device, len(X)
        self.row_size = int(np.prod(X.shape[1:], dtype=np.int64))  # values per sample
        self.y = None if y is None else torch.from_numpy(np.array(y, np.float32)).to(device)
        budget = preload_budget(device) if budget is None else budget
        self.rows: Rows | None = None
        self.X: torch.Tensor | None = None
        if not whole_file(X):
            self.X = torch.from_numpy(np.array(X)).to(device)
        elif X.nbytes > budget:
            self.rows = Rows(X.filename)
        else:
            self.X = preload(X.filename, device)

    @classmethod
    def of(cls, split: Split, device: torch.device, budget: int | None = None) -> Feed:
        """A feed for a split's features and labels."""
        return cls(split.X, split.y, device, budget)

    @property
    def streamed(self) -> bool:
        """True when batches are read from the file, not from memory."""
        return self.rows is not None

    def close(self) -> None:
        """Release the file (streamed feeds)."""
        if self.rows is not None:
            self.rows.close()

    def batches(self, batch_size: int, order: torch.Tensor | None = None, *,
                training: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(stored features, labels) per batch, in `order` (a CPU permutation) or file order;
        `training` never yields a last batch of one sample (see batch_bounds)."""
        bounds = batch_bounds(self.n, batch_size, training)
        if self.rows is None:
            assert self.X is not None
            index = None if order is None else order.to(self.device)
            for i, j in bounds:
                if index is None:
                    xb = self.X[i:j]
                    yb = None if self.y is None else self.y[i:j]
                else:
                    idx = index[i:j]
                    xb, yb = self.X[idx], None if self.y is None else self.y[idx]
                yield xb, yb
            return
        yield from self._streamed(bounds, None if order is None else order.numpy())

    def _streamed(self, bounds: list[tuple[int, int]], order: np.ndarray | None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Read batches in a background thread (file reads release the GIL) PREFETCH ahead."""
        rows = self.rows
        assert rows is not None
        pin = self.device.type == "cuda"

        def read(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            if order is None:
                index = np.arange(start, stop)
                xb = torch.from_numpy(rows.read(start, stop))
            else:
                index = order[start:stop]
                xb = torch.from_numpy(rows.gather(index))
            return (xb.pin_memory() if pin else xb), torch.from_numpy(index)

        todo = iter(bounds)
        pool = ThreadPoolExecutor(1, thread_name_prefix="feed-prefetch")
        try:
            pending = collections.deque(pool.submit(read, *b)
                                        for b in itertools.islice(todo, PREFETCH))
            while pending:
                xb, index = pending.popleft().result()  # a read error is raised here
                if (bound := next(todo, None)) is not None:
                    pending.append(pool.submit(read, *bound))
                yb = None if self.y is None else self.y[index.to(self.device)]
                yield xb.to(self.device, non_blocking=pin), yb
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
