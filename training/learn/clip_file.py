"""A run's decoded clips in one file of fixed-size rows, read a few rows at a time.

Why: held as one array, a run's clips take 600 KB each at 16x112x112 (1.2 GB for 2,000, 6 GB
for 10,000), and every split of them was a copy. Written to a file as they are decoded and read
back by row with ``pread``, they cost a run a batch at a time: the kernel's page cache keeps
hot rows (memory it can take back), and nothing is memory-mapped, so the process' own resident
memory does not grow with the number of clips. A ClipFile stands in for the ``(N, T, H, W, 3)``
uint8 array of ``ClipArrays.frames`` where it is indexed (an int, a slice, an index array) and
shaped; ``rows(idx)`` is a subset without reading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ClipFileWriter:
    """Appends clips (``(T, H, W, 3)`` uint8 each) to a new file; :meth:`close` returns the
    ClipFile over what was written."""

    def __init__(self, path: str | os.PathLike, clip_shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.clip_shape = tuple(clip_shape)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())

    def append(self, frames: np.ndarray) -> None:
        if frames.shape != self.clip_shape or frames.dtype != np.uint8:
            raise ValueError(f"a clip of {frames.dtype}{frames.shape}, not uint8{self.clip_shape}")
        self._file.write(np.ascontiguousarray(frames).tobytes())
        self.count += 1

    def close(self) -> ClipFile:
        self._file.close()
        return ClipFile(self.path, self.clip_shape, np.arange(self.count))


class ClipFile:
    """Rows ``rows`` of a file of clips, indexed like the array they stand for."""

    dtype = np.dtype(np.uint8)

    def __init__(
        self, path: str | os.PathLike, clip_shape: tuple[int, ...], rows: np.ndarray
    ) -> None:
        self.path = Path(path)
        self.clip_shape = tuple(clip_shape)
        self._rows = np.asarray(rows, np.int64)
        self._row_bytes = int(np.prod(self.clip_shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows), *self.clip_shape)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, idx: np.ndarray | list[int]) -> ClipFile:
        """The subset ``idx`` of these rows, reading nothing."""
        return ClipFile(self.path, self.clip_shape, self._rows[np.asarray(idx, np.int64)])

    def __getitem__(self, key: int | slice | np.ndarray | list[int]) -> np.ndarray:
        """Read rows: an int gives one clip ``(T, H, W, 3)``, a slice or index array a batch."""
        if isinstance(key, int | np.integer):
            return self._read([self._rows[key]])[0]
        return self._read(self._rows[key])

    def _read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        out = np.empty((len(rows), *self.clip_shape), np.uint8)
        flat = out.reshape(len(rows), self._row_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for n, row in enumerate(rows):
                got = os.preadv(fd, [memoryview(flat[n])], int(row) * self._row_bytes)
                if got != self._row_bytes:
                    raise OSError(f"{self.path}: row {row} is short ({got} bytes)")
        finally:
            os.close(fd)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole of it, read into memory (what np.asarray and np.savez do)."""
        data = self[np.arange(len(self))]
        return data if dtype is None else data.astype(dtype)
