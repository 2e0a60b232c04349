"""One part of a code store: who it is (directory, width, fingerprint, store id) and
the checks that follow from that alone: a bundle fingerprint or width that is not the
store's, and code arrays of the wrong type or width. Immutable once the store is open.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FingerprintMismatch, InvalidCodes, StoreError
from .format import LOCK_FILE


def advice(directory) -> str:
    """What to run about damage to the store in ``directory`` (ends every such message)."""
    return (f"run `cvahash check --db {directory}` to see what is damaged and "
            f"`cvahash repair --db {directory}` to keep every good window")


@dataclass(frozen=True)
class StoreIdentity:
    directory: Path
    bits: int
    fingerprint: str
    store_id: str

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    def require(self, fingerprint: str | None = None, bits: int | None = None) -> None:
        """Raise FingerprintMismatch unless the store was made for this bundle."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"the code store {self.directory} holds codes of bundle fingerprint "
                f"{self.fingerprint!r} ({self.bits} bits), not {fingerprint!r}; use a store "
                "made with this bundle or re-index with it into a new store")
        if bits is not None and bits != self.bits:
            raise FingerprintMismatch(
                f"the code store {self.directory} holds {self.bits}-bit codes (fingerprint "
                f"{self.fingerprint!r}), not {bits}-bit ones")

    def check_codes(self, codes, what: str) -> np.ndarray:
        """``codes`` as a uint8 (n, nbytes) array of this store's width, or an error."""
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise InvalidCodes(f"{what} must be packed uint8 codes (numpy.packbits), got "
                               f"dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.nbytes:
            raise FingerprintMismatch(
                f"{what} have shape {arr.shape}: {arr.shape[-1] if arr.ndim else 0} bytes per "
                f"code, but the code store {self.directory} holds {self.bits}-bit codes "
                f"({self.nbytes} bytes, fingerprint {self.fingerprint!r})")
        if self.bits % 8 and len(arr) and (arr[:, -1] & ((1 << (8 - self.bits % 8)) - 1)).any():
            raise FingerprintMismatch(
                f"{what} set bits past bit {self.bits}: they are wider than the "
                f"{self.bits}-bit codes of the store {self.directory}")
        return arr


def take_writer_lock(directory: Path) -> int:
    """flock the store's writer lock (the one writer); its descriptor, or StoreError."""
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"another process (pid {holder}) is writing to the code store "
                         f"{directory} ({path} is locked); stop it or open the store "
                         'with mode="r"') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def writer_running(directory) -> bool:
    """Whether a process holds the store's writer lock."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
