"""The code file of a store: a 128-byte header followed by fixed-size code rows.

Header (little-endian, CRC32 over the first 124 bytes)::

    magic      8s   b"CVAHCODE"
    version    u16  CODE_FORMAT_VERSION
    header     u16  128 (rows start here)
    bits       u16  code width in bits (1..65535)
    nbytes     u16  ceil(bits / 8), bytes per row
    store_id   16s  uuid of the store (also in SQLite: a file from another store is refused)
    generation u32  bumped by compact(), which writes a new file
    fp_len     u16  length of the fingerprint
    fingerprint 80s bundle fingerprint (ASCII), zero padded
    reserved   6x
    crc32      u32

Rows are packed MSB-first (numpy.packbits), contiguous uint8. The file only grows
by appends; the committed row count lives in SQLite, bytes past it are an
uncommitted tail.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from ..limits import LOCK_FILE, META_FILE  # noqa: F401 - the store's file names, once

MAGIC = b"CVAHCODE"
CODE_FORMAT_VERSION = 1
HEADER_SIZE = 128
MAX_FINGERPRINT = 80
_HEADER = struct.Struct("<8sHHHH16sIH80s6x")
assert _HEADER.size + 4 == HEADER_SIZE


class HeaderError(Exception):
    """The header could not be read or does not hold together; the message says why."""


@dataclass(frozen=True)
class CodeHeader:
    bits: int
    fingerprint: str
    store_id: bytes
    generation: int
    version: int = CODE_FORMAT_VERSION

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    def pack(self) -> bytes:
        fp = self.fingerprint.encode("ascii")
        body = _HEADER.pack(MAGIC, self.version, HEADER_SIZE, self.bits, self.nbytes,
                            self.store_id, self.generation, len(fp), fp)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> CodeHeader:
        if len(data) < HEADER_SIZE:
            raise HeaderError(f"the file is {len(data)} bytes, shorter than its "
                              f"{HEADER_SIZE}-byte header")
        body, (crc,) = data[:HEADER_SIZE - 4], struct.unpack("<I", data[HEADER_SIZE - 4:
                                                                        HEADER_SIZE])
        magic, version, header, bits, nbytes, store_id, generation, fp_len, fp = \
            _HEADER.unpack(body)
        if magic != MAGIC:
            raise HeaderError(f"it does not start with {MAGIC!r} (found {magic!r})")
        if zlib.crc32(body) != crc:
            raise HeaderError("its header checksum does not match (damaged header)")
        if version != CODE_FORMAT_VERSION:
            raise HeaderError(f"it has code format version {version}; this cvahash reads "
                              f"version {CODE_FORMAT_VERSION}")
        if header != HEADER_SIZE or bits < 1 or nbytes != (bits + 7) // 8 \
                or fp_len > MAX_FINGERPRINT:
            raise HeaderError("its header fields are inconsistent")
        try:
            fingerprint = fp[:fp_len].decode("ascii")
        except UnicodeDecodeError:
            raise HeaderError("its fingerprint is not ASCII") from None
        return cls(bits=bits, fingerprint=fingerprint, store_id=store_id,
                   generation=generation, version=version)


def code_file_name(generation: int) -> str:
    return f"codes-{generation:06d}.bin"


def fsync_dir(path) -> None:
    """Make a file's creation or rename in ``path`` durable (POSIX needs the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_code_file(path, header: CodeHeader, rows=None, chunk_rows: int = 1 << 20) -> None:
    """Write header (+ rows) to ``path`` via a temporary name, fsync, rename, fsync dir."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, header.pack())
        if rows is not None:
            for start in range(0, len(rows), chunk_rows):
                write_all(fd, memoryview(rows[start:start + chunk_rows]).cast("B"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_all(fd: int, data, offset: int | None = None) -> None:
    """os.write/pwrite until every byte is written (short writes happen on full disks)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        if offset is None:
            n = os.write(fd, view[done:])
        else:
            n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError("write returned 0 bytes")
        done += n
