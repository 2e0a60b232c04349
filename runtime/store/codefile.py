"""One part of a code store: the open code file (descriptor, header check, mmapped rows).

The file format is in ``format``; this part only opens one generation's file, checks
that its header belongs to the metadata, maps its rows read-only, appends rows at a
given row number and cuts an uncommitted tail. It knows nothing about SQLite.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import StoreCorrupt
from .format import HEADER_SIZE, CodeHeader, HeaderError, code_file_name, write_all


class CodeFileMissing(StoreCorrupt):
    """The code file the metadata names does not exist."""


class CodeFile:
    """The code file of one generation, opened for reading or (mode "a") writing."""

    def __init__(self, directory: Path, generation: int, nbytes: int, writable: bool):
        self.path = Path(directory) / code_file_name(generation)
        self.generation = generation
        self.nbytes = nbytes
        try:
            self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise CodeFileMissing(f"the code file {self.path} is missing; the store cannot be "
                                  "read without it: restore the file from a backup, or run "
                                  f"`cvahash repair --db {directory}` to list the windows "
                                  "lost and let `cvahash index` re-do them") from None
        self._mm: mmap.mmap | None = None
        self._mm_rows = 0

    def header(self) -> CodeHeader:
        """The checked header; StoreCorrupt naming the file when it is damaged."""
        try:
            return CodeHeader.unpack(os.pread(self.fd, HEADER_SIZE, 0))
        except HeaderError as e:
            raise StoreCorrupt(f"the code file {self.path} is damaged: {e}; restore it from "
                               "a backup") from None

    def rows_and_size(self) -> tuple[int, int]:
        """Whole rows the file holds, and its size in bytes."""
        size = os.fstat(self.fd).st_size
        return max(0, size - HEADER_SIZE) // self.nbytes, size

    def view(self, rows: int) -> np.ndarray:
        """Read-only uint8 (rows, nbytes) view of the first ``rows`` code rows."""
        if rows == 0:
            return np.zeros((0, self.nbytes), np.uint8)
        if rows > self._mm_rows:
            self.drop_map()
            file_rows, _ = self.rows_and_size()
            self._mm = mmap.mmap(self.fd, HEADER_SIZE + file_rows * self.nbytes,
                                 prot=mmap.PROT_READ)
            self._mm_rows = file_rows
        return np.frombuffer(self._mm, np.uint8, rows * self.nbytes,
                             HEADER_SIZE).reshape(rows, self.nbytes)

    def write_rows(self, at_row: int, rows: np.ndarray) -> None:
        """Write ``rows`` from row ``at_row`` on and fdatasync (OSError passes up)."""
        write_all(self.fd, rows, HEADER_SIZE + at_row * self.nbytes)
        os.fdatasync(self.fd)

    def cut_to(self, rows: int) -> None:
        """Drop every byte past ``rows`` rows and make that durable."""
        os.ftruncate(self.fd, HEADER_SIZE + rows * self.nbytes)
        os.fsync(self.fd)

    def release_pages(self) -> None:
        """Let the kernel take back the mapped pages this process has read: they stay in
        the page cache, and the next read faults them back in (a long-running reader's
        resident memory then does not hold the whole code file between searches)."""
        if self._mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def drop_map(self) -> None:
        # Views handed out keep the old map alive (numpy holds a reference); we just
        # stop using it. Closing it here would fail while views exist.
        self._mm, self._mm_rows = None, 0

    def close(self) -> None:
        self.drop_map()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
