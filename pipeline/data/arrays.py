"""Row-addressed .npy files: create one, write and read rows by index, never the whole array.

Why not np.memmap for this: the pages of a memory map count in the process's resident set for
as long as they stay mapped, so one pass over a 2.5 GB file shows as 2.5 GB of RSS. pread and
pwrite go through the page cache (shared, reclaimable) and leave the process's own memory flat.
The files are ordinary .npy files with np.save's exact bytes: np.load reads them as usual.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def create(path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
    """An .npy file of `shape` whose rows are written later (the header np.save would write)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del array  # only the header and the file's size are wanted


class Rows:
    """Read and write rows (first-axis entries) of an .npy file with pread/pwrite."""

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not row-addressable")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def empty(self, n: int) -> np.ndarray:
        """An uninitialised buffer for n rows."""
        return np.empty((n, *self.row_shape), dtype=self.dtype)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write consecutive rows starting at row `start`."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if data.shape[1:] != self.row_shape or start + len(data) > len(self):
            raise ValueError(f"{self.path}: rows {start}..{start + len(data)} of shape "
                             f"{data.shape[1:]} do not fit {self.shape}")
        view, at = memoryview(data).cast("B"), self.offset + start * self.row_bytes
        while view:  # pwrite may write less than asked (signals, huge buffers)
            done = os.pwrite(self.fd, view, at)
            view, at = view[done:], at + done

    def read(self, start: int, stop: int) -> np.ndarray:
        """Consecutive rows [start, stop)."""
        out = self.empty(stop - start)
        self._read_into(memoryview(out).cast("B"), self.offset + start * self.row_bytes)
        return out

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Rows at `index`, in that order (runs of consecutive indices read in one call)."""
        out = self.empty(len(index))
        flat = memoryview(out).cast("B")
        i = 0
        while i < len(index):
            j = i + 1
            while j < len(index) and index[j] == index[j - 1] + 1:
                j += 1
            self._read_into(flat[i * self.row_bytes: j * self.row_bytes],
                            self.offset + int(index[i]) * self.row_bytes)
            i = j
        return out

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows) for consecutive chunks of at most `size` rows."""
        for start in range(0, len(self), size):
            yield start, self.read(start, min(start + size, len(self)))

    def _read_into(self, view: memoryview, at: int) -> None:
        while view:
            got = os.preadv(self.fd, [view], at)
            if got == 0:
                raise EOFError(f"{self.path}: file ends before row data at byte {at}")
            view, at = view[got:], at + got
