"""The journal of a store: a second, self-checking copy of every commit.

``journal-<generation>.bin`` sits beside ``codes-<generation>.bin`` and grows with it.
Each commit appends one record *before* the SQLite transaction and is fdatasync()ed
with the code rows, so the journal always holds every committed change (and at most
one more, of a commit that was cut before SQLite took it). A record::

    magic   4s   b"CVJ1"
    length  u32  of the payload
    payload      JSON (UTF-8): the change, see below; a NUL; the binary ``sums``
    crc32   u32  over magic, length and payload
    length  u32  again, so the last record is found from the end of the file

Payload kinds (every record has ``v``, the store_info ``version`` after it, and
``rows``/``forgotten``, the committed and forgotten row counts after it):

- ``base``: the whole state at one moment (a new store, a compacted file, a repaired
  store): ``bits``, ``fingerprint``, ``store_id``, ``generation``, ``max_span_s``,
  every live segment with its recording and ``first_row``, every tag, and ``sums``:
  64-bit check values of the code rows in blocks of ``BLOCK_ROWS`` rows from row 0.
- ``append``: rows ``[first, first + n)``: ``sums`` of their blocks (from ``first``),
  the segments exactly as given to ``append`` (merged on replay the same way as on
  commit), and the tag if the batch had one.
- ``forget``: recordings removed from search (``[path, content_hash or null]``).

What it buys: the committed row count is kept twice (store_info and the last
record), cross-checked at every open; every code row has a check value (per block of
16 rows, see ``block_sums``) that is
verified the first time a process reads it; and the metadata can be rebuilt from the
journal alone (``replay`` into an empty database), so a lost or rolled-back WAL or a
damaged SQLite file costs nothing, and a cut or damaged code file costs exactly the
windows whose bytes are gone (``cvahash repair``).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .format import fsync_dir, write_all
from .records import Recording, Segment

MAGIC = b"CVJ1"
_HEAD = struct.Struct("<4sI")
_TAIL = struct.Struct("<II")
OVERHEAD = _HEAD.size + _TAIL.size
BLOCK_ROWS = 16
MAX_PAYLOAD = 256 << 20


def journal_name(generation: int) -> str:
    return f"journal-{generation:06d}.bin"


def encode(record: dict) -> bytes:
    """A record as bytes: JSON, then (after a NUL) its binary ``sums`` if any."""
    sums = record.get("sums", b"")
    text = json.dumps({k: v for k, v in record.items() if k != "sums"}, separators=(",", ":"),
                      allow_nan=False, ensure_ascii=False).encode("utf-8", "surrogatepass")
    payload = text + b"\0" + bytes(sums)
    head = _HEAD.pack(MAGIC, len(payload))
    return head + payload + _TAIL.pack(zlib.crc32(payload, zlib.crc32(head)), len(payload))


_K1 = np.uint64(0x9E3779B97F4A7C15)


def _row_sums(codes: np.ndarray, first: int) -> np.ndarray:
    """A 64-bit check value per row, depending on its bytes and its row number.

    Each 8-byte word is multiplied by an odd constant, mixed with its high bits, and
    multiplied by an odd weight from its position (all invertible mod 2**64), so a
    change in any word, or a row moved to another place, changes the row's value.
    Vectorised: checking a season of codes costs a few passes over the mmap.
    """
    n, nbytes = codes.shape
    words = -(-nbytes // 8)
    if nbytes % 8 or not codes.flags.c_contiguous:
        padded = np.zeros((n, words * 8), np.uint8)
        padded[:, :nbytes] = codes
        codes = padded
    x = codes.view("<u8").astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        m = x * _K1
        m ^= m >> np.uint64(29)
        start = 2 * first * words + 1
        m *= np.arange(start, start + 2 * n * words, 2, dtype=np.uint64).reshape(n, words)
        return m.sum(axis=1, dtype=np.uint64) if words > 1 else m[:, 0]


def _block_values(codes: np.ndarray, first: int) -> np.ndarray:
    if len(codes) == 0:
        return np.zeros(0, np.uint64)
    with np.errstate(over="ignore"):
        return np.add.reduceat(_row_sums(codes, first),
                               np.arange(0, len(codes), BLOCK_ROWS), dtype=np.uint64)


def block_sums(codes: np.ndarray, first: int) -> bytes:
    """Check values of rows ``first, first+1, ...`` (``codes``, uint8 (n, nbytes)) in
    blocks of BLOCK_ROWS, as little-endian uint64s (a record's ``sums``, stored after
    its JSON)."""
    return _block_values(codes, first).astype("<u8").tobytes()


def rows_crc(codes: np.ndarray) -> int:
    """CRC32 of rows, in order (a record's ``crc``: one fast check of all its rows)."""
    return zlib.crc32(np.ascontiguousarray(codes))


def bad_blocks(codes: np.ndarray, first: int, n: int, sums,
               crc: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [start, end) of rows [first, first+n) whose block check value does
    not match ``sums`` or whose bytes are missing (``codes`` shorter than first+n).

    With the record's ``crc``, one CRC32 over all its rows decides first (the usual
    answer, "none", costs one pass at memory speed); the block values only locate
    damage."""
    if n <= 0:
        return []
    if crc is not None and len(codes) >= first + n \
            and rows_crc(codes[first:first + n]) == crc:
        return []
    sums = bytes(sums or b"")
    want = np.frombuffer(sums[:len(sums) // 8 * 8], "<u8")
    have_rows = max(0, min(n, len(codes) - first))
    nblocks = -(-n // BLOCK_ROWS)
    ok = np.zeros(nblocks, bool)
    if have_rows:
        have = _block_values(np.asarray(codes[first:first + have_rows]), first)
        m = min(len(have), len(want))
        ok[:m] = have[:m] == want[:m]
        if have_rows % BLOCK_ROWS and have_rows < n:
            ok[have_rows // BLOCK_ROWS] = False       # a block cut short
    bad = np.flatnonzero(~ok)
    if crc is not None and not len(bad):
        return [(first, first + n)]         # the blocks agree but the whole does not
    return [(first + int(i) * BLOCK_ROWS, min(first + (int(i) + 1) * BLOCK_ROWS, first + n))
            for i in bad]


@dataclass
class Entry:
    """One record found in a journal: ``record`` is None when it is damaged."""
    offset: int
    end: int
    record: dict | None
    problem: str = ""


def _decode(data, pos: int) -> tuple[dict | None, int]:
    """The record at ``pos`` and its end, or (None, 0) if none starts there intact."""
    if len(data) - pos < OVERHEAD:
        return None, 0
    magic, n = _HEAD.unpack_from(data, pos)
    if magic != MAGIC or n > MAX_PAYLOAD or pos + OVERHEAD + n > len(data):
        return None, 0
    crc, n2 = _TAIL.unpack_from(data, pos + _HEAD.size + n)
    payload = bytes(data[pos + _HEAD.size:pos + _HEAD.size + n])
    if n2 != n or crc != zlib.crc32(payload, zlib.crc32(bytes(data[pos:pos + _HEAD.size]))):
        return None, 0
    cut = payload.find(b"\0")
    try:
        record = json.loads(payload[:cut].decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeError):
        return None, 0
    if isinstance(record, dict):
        record["sums"] = payload[cut + 1:]
    if not isinstance(record, dict) or record.get("kind") not in ("base", "append", "forget") \
            or not all(isinstance(record.get(k), int) and record[k] >= 0
                       for k in ("v", "rows", "forgotten")):
        return None, 0
    return record, pos + OVERHEAD + n


def scan(data, start: int = 0) -> Iterator[Entry]:
    """Every record from ``start`` on; damaged stretches come back as one Entry with
    ``record=None`` each, and the scan resumes at the next intact record."""
    pos = start
    while pos < len(data):
        record, end = _decode(data, pos)
        if record is not None:
            yield Entry(pos, end, record)
            pos = end
            continue
        nxt = pos
        while True:
            nxt = data.find(MAGIC, nxt + 1)
            if nxt < 0 or _decode(data, nxt)[0] is not None:
                break
        end = len(data) if nxt < 0 else nxt
        problem = "cut short" if nxt < 0 and len(data) - pos < OVERHEAD + 64 else "damaged"
        yield Entry(pos, end, None, problem)
        pos = end


def read_last(fd: int) -> tuple[int, int, dict] | None:
    """(offset, end, record) of the last record, found from the end of the file; None
    when the file does not end with an intact record."""
    size = os.fstat(fd).st_size
    if size < OVERHEAD:
        return None
    _, n = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
    start = size - OVERHEAD - n
    if n > MAX_PAYLOAD or start < 0:
        return None
    data = os.pread(fd, OVERHEAD + n, start)
    record, end = _decode(data, 0)
    if record is None:
        return None
    return start, start + end, record


def read_all(fd: int, start: int = 0, end: int | None = None) -> bytes:
    size = os.fstat(fd).st_size if end is None else end
    out, pos = [], start
    while pos < size:
        chunk = os.pread(fd, min(1 << 24, size - pos), pos)
        if not chunk:
            break
        out.append(chunk)
        pos += len(chunk)
    return b"".join(out)


def segment_entry(seg) -> list:
    """A checked Segment (with first_row) as a JSON list: its recording, then its grid."""
    r = seg.recording
    return [r.path, r.content_hash, r.station, r.start_utc, r.sample_rate, r.duration_s,
            seg.first_row, seg.n_rows, seg.first_offset_s, seg.hop_s, seg.length_s,
            seg.capture_start_utc, seg.clock_source]


def entry_segment(entry: list):
    """The Segment a segment_entry() list describes (ValueError / InvalidArgument when
    malformed)."""
    if not isinstance(entry, list) or len(entry) != 13:
        raise ValueError("a segment entry has the wrong shape")
    path, content_hash, station, start, rate, duration, first, n, off0, hop, length, cap0, \
        clock = entry
    rec = Recording(path=path, station=station, start_utc=start, sample_rate=rate,
                    duration_s=duration, content_hash=content_hash)
    if not isinstance(first, int) or not isinstance(n, int) or first < 0 or n < 1:
        raise ValueError("a segment entry has bad row numbers")
    seg = Segment(recording=rec, first_offset_s=off0, length_s=length, capture_start_utc=cap0,
                  hop_s=hop, n_rows=n, clock_source=clock)
    return replace(seg.checked(n), first_row=first)


class Journal:
    """An open journal file: its committed end, appends, and atomic replacement."""

    def __init__(self, path: Path, writable: bool):
        self.path = Path(path)
        self.writable = writable
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        self.end = 0            # end of the last record the metadata has taken

    def last(self):
        return read_last(self.fd)

    def read(self, start: int = 0) -> bytes:
        return read_all(self.fd, start)

    def append(self, data: bytes) -> None:
        """Write a record after the committed end (dropping anything past it, e.g. a
        record whose commit failed) and fdatasync. ``end`` moves on ``advance``."""
        write_all(self.fd, data, self.end)
        os.ftruncate(self.fd, self.end + len(data))
        os.fdatasync(self.fd)

    def advance(self, nbytes: int) -> None:
        self.end += nbytes

    def cut_to(self, end: int) -> None:
        os.ftruncate(self.fd, end)
        os.fsync(self.fd)
        self.end = end

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_journal(path: Path, records: list[dict]) -> int:
    """Write a new journal file holding ``records`` via a temporary name (fsync, rename,
    fsync dir); return its size."""
    data = b"".join(encode(r) for r in records)
    tmp = Path(f"{path}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(data)
