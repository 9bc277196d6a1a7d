"""Compact on-disk arrays: uint8 images at native resolution in .npy files, written by streaming.

Each split ``train``, ``val`` and ``test`` is ``<split>_images.npy`` (N, H, W, 3) uint8 and
``<split>_labels.npy`` (N,) uint8 in a folder. Readers memory-map them; writers append chunk by chunk,
so peak memory stays flat however many images there are.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from core.pipeline import missing_input


class NpyWriter:
    """Write an .npy file of known length chunk by chunk (header first, then raw rows)."""

    def __init__(self, path: Path, count: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.count, self.row_shape, self.dtype = path, count, row_shape, np.dtype(dtype)
        self.written = 0
        self._file = path.open("wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (count, *row_shape),
        }
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, rows: np.ndarray) -> None:
        """Append rows of shape ``(k, *row_shape)``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: row shape {rows.shape[1:]}, expected {self.row_shape}")
        if self.written + len(rows) > self.count:
            raise ValueError(f"{self.path.name}: more than the declared {self.count} rows")
        self._file.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        """Close the file, checking that every declared row was written."""
        self._file.close()
        if self.written != self.count:
            raise ValueError(f"{self.path.name}: wrote {self.written} of {self.count} rows")

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def images_path(folder: Path, split: str) -> Path:
    """Path of a split's image array."""
    return folder / f"{split}_images.npy"


def labels_path(folder: Path, split: str) -> Path:
    """Path of a split's label array."""
    return folder / f"{split}_labels.npy"


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split: ``(images uint8 (N, H, W, 3), labels uint8 (N,))``.

    Raises:
        MissingInputError: when an array is not there, naming the stage that writes it (a stage run alone).
    """
    for path in (images_path(folder, split), labels_path(folder, split)):
        if not path.is_file():
            raise missing_input(path)
    return (
        np.load(images_path(folder, split), mmap_mode="r"),
        np.load(labels_path(folder, split), mmap_mode="r"),
    )
