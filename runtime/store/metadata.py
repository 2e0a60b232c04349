"""The SQLite side of a code store: schema, migrations, checked reads of segments.

Tables (schema version 1)::

    store_info(key, value)            schema_version, store_id, bits, fingerprint,
                                      generation, committed_rows, forgotten_rows,
                                      max_span_s, version, layout, created_utc,
                                      journal (1: the store keeps a journal),
                                      tags_crc, info_crc (check values, below)
    recordings(id, path, content_hash, station, start_utc, sample_rate, duration_s, crc)
    segments(first_row, n_rows, recording, first_offset_s, hop_s, length_s,
             capture_start_utc, clock_source, crc)
    tags(tag, applied_utc, first_row, n_rows)

``committed_rows`` is the truth about the code file: rows below it are durable and
described by segments (or forgotten), bytes past it are an uncommitted tail.
``version`` is bumped by every commit so readers notice changes with one query;
``layout`` is bumped when rows are removed or renumbered (forget, compact, recovery),
which clears readers' recording cache. ``max_span_s`` bounds (last - first capture
time) of any segment, so a time filter reads only the segments the capture-time index
puts near the interval. Nothing is loaded whole on open: queries fetch the segments
a filter or a hit needs. Each recording row carries a CRC32 and each segment row a
63-bit check value of its fields, verified whenever a row is read, so a flipped byte
in the database is refused instead of returning wrong metadata. ``info_crc`` covers
every other store_info value (refreshed by ``write_transaction``, checked on every read
of the store's state), ``tags_crc`` every tags row (checked when a tag is not found).
Stores made before these keys existed are read without them.
"""

from __future__ import annotations

import math
import sqlite3
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import StoreCorrupt, StoreError
from .records import Recording, Segment

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE store_info (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE recordings (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    station TEXT NOT NULL,
    start_utc REAL,
    sample_rate INTEGER,
    duration_s REAL,
    crc INTEGER NOT NULL,
    UNIQUE (path, content_hash)
);
CREATE TABLE segments (
    first_row INTEGER PRIMARY KEY,
    n_rows INTEGER NOT NULL,
    recording INTEGER NOT NULL REFERENCES recordings(id),
    first_offset_s REAL NOT NULL,
    hop_s REAL NOT NULL,
    length_s REAL NOT NULL,
    capture_start_utc REAL NOT NULL,
    clock_source TEXT NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX segments_by_recording ON segments (recording);
CREATE INDEX segments_by_time ON segments (capture_start_utc);
CREATE TABLE tags (
    tag TEXT PRIMARY KEY,
    applied_utc REAL NOT NULL,
    first_row INTEGER,
    n_rows INTEGER
) WITHOUT ROWID;
"""

# from_version -> function(conn) that upgrades the schema by one version inside the
# caller's transaction. Run only by CodeStore.migrate(), never implicitly on open.
MIGRATIONS: dict[int, object] = {}

SEG_COLUMNS = ("first_row, n_rows, recording, first_offset_s, hop_s, length_s, "
                "capture_start_utc, clock_source, crc")
_REC_COLUMNS = "id, path, content_hash, station, start_utc, sample_rate, duration_s, crc"


def recording_fields(rec: Recording) -> tuple:
    """A recording's columns in table order (after id)."""
    return (rec.path, rec.content_hash, rec.station, rec.start_utc, rec.sample_rate,
            rec.duration_s)


def recording_crc(rec_id, path, content_hash, station, start_utc, sample_rate,
                  duration_s) -> int:
    """CRC32 of a recordings row; any type or value change alters it."""
    text = (f"{rec_id!r}\x1f{path!r}\x1f{content_hash!r}\x1f{station!r}\x1f{start_utc!r}"
            f"\x1f{sample_rate!r}\x1f{duration_s!r}")
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


_MUL = np.uint64(0x9E3779B97F4A7C15)


def segment_hashes(first_row, n_rows, rec_id, first_offset_s, hop_s, length_s,
                   capture_start_utc, clock_source) -> np.ndarray:
    """63-bit check values of segment rows, vectorised (arrays or scalars in, int64 out)
    so that verifying a season of segments on open costs a few numpy passes."""
    ints = [np.atleast_1d(np.asarray(x, np.int64)).view(np.uint64)
            for x in (first_row, n_rows, rec_id)]
    # + 0.0 folds -0.0 into 0.0: SQLite may hand back an integral REAL without its sign
    floats = [(np.atleast_1d(np.asarray(x, np.float64)) + 0.0).view(np.uint64)
              for x in (first_offset_s, hop_s, length_s, capture_start_utc)]
    clocks = [clock_source] if isinstance(clock_source, str) else list(clock_source)
    crcs = {c: zlib.crc32(c.encode("utf-8", "surrogatepass")) for c in set(clocks)}
    clock = np.fromiter((crcs[c] for c in clocks), np.uint64, len(clocks))
    h = np.full(len(clock), 0x243F6A8885A308D3, np.uint64)
    with np.errstate(over="ignore"):
        for v in (*ints, *floats, clock):
            h = (h ^ v) * _MUL
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(1)).astype(np.int64)


_M64 = (1 << 64) - 1
_PACK_D = struct.Struct("<d")
_UNPACK_Q = struct.Struct("<Q")


def segment_crc(first_row, n_rows, rec_id, first_offset_s, hop_s, length_s,
                capture_start_utc, clock_source) -> int:
    """The check value of one segment row: segment_hashes in plain Python, which for a
    single row is many times faster than numpy (a search checks each hit's segment)."""
    vals = [int(first_row) & _M64, int(n_rows) & _M64, int(rec_id) & _M64]
    for x in (first_offset_s, hop_s, length_s, capture_start_utc):
        if isinstance(x, (str, bytes)):
            raise TypeError("a float column holds text")
        vals.append(_UNPACK_Q.unpack(_PACK_D.pack(float(x) + 0.0))[0])
    vals.append(zlib.crc32(clock_source.encode("utf-8", "surrogatepass")))
    h = 0x243F6A8885A308D3
    for v in vals:
        h = ((h ^ v) * 0x9E3779B97F4A7C15) & _M64
        h ^= h >> 31
    return h >> 1


def checked_segment_row(row: tuple) -> tuple:
    """One segments row (as selected by SEG_COLUMNS) after checking its check value."""
    try:
        ok = (all(isinstance(x, int) for x in row[:3]) and isinstance(row[7], str)
              and segment_crc(*row[:8]) == row[8])
    except (TypeError, ValueError, OverflowError, UnicodeError):
        ok = False
    if not ok:
        raise MetadataCorrupt(f"the segment at row {row[0]!r} fails its checksum")
    return row


class MetadataCorrupt(Exception):
    """The metadata does not hold together; the message says what is wrong."""


_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_READONLY",
              "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM", "SQLITE_NOMEM",
              "SQLITE_INTERRUPT", "SQLITE_PROTOCOL")


def db_failure(e: Exception, db_path, what: str, note: str = "") -> StoreError:
    """The StoreError a failed SQLite operation on ``db_path`` turns into.

    Damage (SQLITE_CORRUPT, NOTADB, undecodable text, failed checksums) is StoreCorrupt;
    a busy, read-only or full database is a plain StoreError.
    """
    name = getattr(e, "sqlite_errorname", None) or ""
    if not name and isinstance(e, sqlite3.OperationalError):
        # Python 3.10 has no sqlite_errorname: go by SQLite's message
        text = str(e).lower()
        for words, code in (("locked", "SQLITE_LOCKED"), ("busy", "SQLITE_BUSY"),
                            ("full", "SQLITE_FULL"), ("readonly", "SQLITE_READONLY"),
                            ("unable to open", "SQLITE_CANTOPEN"), ("i/o", "SQLITE_IOERR")):
            if words in text:
                name = code
                break
    # Busy, locked, full, read-only, unopenable or I/O errors may pass; anything else a
    # database we wrote gives back (malformed pages, undecodable text, a schema without
    # our columns, failed checksums) is damage.
    if not name.startswith(_TRANSIENT):
        store = Path(db_path).parent
        return StoreCorrupt(f"the metadata database {db_path} is damaged ({e}) while trying "
                            f"to {what}{note}; run `cvahash check --db {store}` to see what "
                            f"is damaged and `cvahash repair --db {store}` to keep every good "
                            "window")
    if name == "SQLITE_FULL":
        return StoreError(f"the disk holding {db_path} is full while trying to {what}; free "
                          f"space on it{note}")
    return StoreError(f"could not {what} in {db_path}: {e}{note}")


@contextmanager
def sql_errors(db_path, what: str, note: str = ""):
    """Turn SQLite failures inside the block into StoreError / StoreCorrupt."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError, MetadataCorrupt) as e:
        raise db_failure(e, db_path, what, note) from e


def info_crc(info: dict) -> int:
    """CRC32 over every store_info value except info_crc itself (type-sensitive)."""
    items = sorted((k, v) for k, v in info.items() if k != "info_crc")
    return zlib.crc32(repr(items).encode("utf-8", "surrogatepass"))


def seal_info(conn: sqlite3.Connection) -> None:
    """Refresh store_info's info_crc (the last step of every write transaction)."""
    conn.execute("INSERT OR REPLACE INTO store_info VALUES ('info_crc', ?)",
                 (info_crc(read_info(conn)),))


def info_problem(info: dict) -> str | None:
    """Why store_info fails its check value, or None (stores made before it: None)."""
    crc = info.get("info_crc")
    if crc is None:
        return None
    if crc != info_crc(info):
        return ("its store_info values (committed row count, version, ...) fail their "
                "checksum")
    return None


@contextmanager
def write_transaction(conn: sqlite3.Connection, db_path, what: str, note: str = ""):
    """One SQLite write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any
    exception) that ends by refreshing store_info's check value; SQLite failures become
    StoreError / StoreCorrupt naming ``what``."""
    with sql_errors(db_path, what, note):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            seal_info(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def read_info(conn: sqlite3.Connection) -> dict:
    return dict(conn.execute("SELECT key, value FROM store_info").fetchall())


class RecordingCache:
    """Recordings by id, read from SQLite on demand, checked, and kept.

    Nothing is loaded on open: a season of one-minute files is a few hundred thousand
    recordings, and a search only ever shows a handful. Cleared when rows are removed
    (SQLite may reuse the id of a deleted last row).
    """

    def __init__(self):
        self._cache: dict[int, Recording] = {}

    def clear(self) -> None:
        self._cache.clear()

    def get(self, conn: sqlite3.Connection, rec_id: int) -> Recording:
        rec = self._cache.get(rec_id)
        if rec is None:
            self.fetch(conn, "WHERE id = ?", (rec_id,))
            rec = self._cache.get(rec_id)
            if rec is None:
                raise MetadataCorrupt(f"a segment points at recording {rec_id}, which does "
                                      "not exist")
        return rec

    def fetch(self, conn: sqlite3.Connection, where: str = "", params=()) -> list[int]:
        """Read, check and cache the recordings ``where`` selects; return their ids."""
        ids = []
        for row in conn.execute(f"SELECT {_REC_COLUMNS} FROM recordings {where}",
                                params).fetchall():
            rec_id, fields, crc = row[0], row[1:7], row[7]
            try:
                ok = (recording_crc(rec_id, *fields) == crc and isinstance(fields[0], str)
                      and isinstance(fields[1], str) and isinstance(fields[2], str))
            except (TypeError, ValueError, UnicodeError):
                ok = False
            if not ok:
                raise MetadataCorrupt(f"recording {rec_id!r} ({fields[0]!r}) fails its checksum")
            path, content_hash, station, start, rate, duration = fields
            self._cache[rec_id] = Recording(path=path, station=station, start_utc=start,
                                            sample_rate=rate, duration_s=duration,
                                            content_hash=content_hash)
            ids.append(rec_id)
        return ids


class Segments:
    """A set of segment rows as numpy columns, checked against their check values."""

    def __init__(self, rows: list[tuple]):
        cols = list(zip(*rows, strict=False)) if rows else [()] * 9
        try:
            new = [np.asarray(cols[i], dtype) for i, dtype in enumerate(
                (np.int64, np.int64, np.int64, np.float64, np.float64, np.float64, np.float64))]
            if not all(isinstance(c, str) for c in cols[7]):
                raise TypeError("clock_source is not text")
            bad = np.flatnonzero(segment_hashes(*new, cols[7])
                                 != np.asarray(cols[8], np.int64))
        except (TypeError, ValueError, OverflowError):
            raise MetadataCorrupt("a segment row holds values of the wrong type") from None
        if len(bad):
            raise MetadataCorrupt(f"the segment at row {rows[bad[0]][0]!r} fails its checksum")
        (self.first_row, self.n_rows, self.rec_id, self.first_offset, self.hop, self.length,
         self.capture_start) = new
        self.clock: list[str] = list(cols[7])

    @classmethod
    def fetch(cls, conn: sqlite3.Connection, where: str = "", params=(),
              order: str = "ORDER BY first_row") -> Segments:
        return cls(conn.execute(f"SELECT {SEG_COLUMNS} FROM segments {where} {order}",
                                params).fetchall())

    def __len__(self) -> int:
        return len(self.first_row)

    @property
    def live_rows(self) -> int:
        return int(self.n_rows.sum())

    def validate(self, committed_rows: int, forgotten_rows: int) -> None:
        """All segments of a store: sorted, disjoint, inside the committed rows, and with
        the forgotten rows accounting for every committed row."""
        if len(self):
            ends = self.first_row + self.n_rows
            if (self.n_rows < 1).any() or self.first_row[0] < 0:
                raise MetadataCorrupt("a segment has no rows or a negative first row")
            if (self.first_row[1:] < ends[:-1]).any():
                raise MetadataCorrupt("segments overlap")
            if ends[-1] > committed_rows:
                raise MetadataCorrupt(f"segments describe {int(ends[-1])} rows but only "
                                      f"{committed_rows} are committed")
            if ((self.n_rows > 1) & ~(self.hop > 0)).any():
                raise MetadataCorrupt("a segment of several rows has no positive hop")
        if self.live_rows + forgotten_rows != committed_rows:
            raise MetadataCorrupt(f"segments hold {self.live_rows} rows and {forgotten_rows} "
                                  f"were forgotten, but {committed_rows} are committed")

    def segment(self, i: int, recording: Recording) -> Segment:
        return Segment(recording=recording, first_offset_s=float(self.first_offset[i]),
                       length_s=float(self.length[i]),
                       capture_start_utc=float(self.capture_start[i]),
                       hop_s=float(self.hop[i]), n_rows=int(self.n_rows[i]),
                       clock_source=self.clock[i], first_row=int(self.first_row[i]))

    def row_ranges(self, since: float | None = None, until: float | None = None) -> np.ndarray:
        """Merged, sorted [start, end) row ranges of these segments' windows whose capture
        time lies in [since, until). int64 (r, 2)."""
        first, n = self.first_row, self.n_rows
        lo, hi = np.zeros_like(n), n.copy()
        if since is not None or until is not None:
            cap0, hop = self.capture_start, self.hop
            last = cap0 + (n - 1) * hop
            # only segments cut by a bound need arithmetic; the rest are wholly in or out
            if since is not None:
                hi[last < since] = 0
                for i in np.flatnonzero((cap0 < since) & (last >= since)).tolist():
                    lo[i] = first_at_or_after(cap0[i], hop[i], n[i], since)
            if until is not None:
                hi[cap0 >= until] = 0
                for i in np.flatnonzero((last >= until) & (cap0 < until)).tolist():
                    hi[i] = min(hi[i], first_at_or_after(cap0[i], hop[i], n[i], until))
        keep = hi > lo
        starts, ends = first[keep] + lo[keep], first[keep] + hi[keep]
        if len(starts) == 0:
            return np.zeros((0, 2), np.int64)
        # merge ranges that touch (consecutive segments of one run)
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        out = np.empty((len(breaks) + 1, 2), np.int64)
        out[:, 0] = starts[np.concatenate([[0], breaks])]
        out[:, 1] = ends[np.concatenate([breaks - 1, [len(ends) - 1]])]
        return out


def first_at_or_after(cap0: float, hop: float, n: int, t: float) -> int:
    """Smallest j in [0, n] with cap0 + j*hop >= t, computed exactly as windows' capture
    times are (cap0 + j*hop), so a filter and the hits it returns always agree."""
    cap0, hop, n = float(cap0), float(hop), int(n)
    if not hop > 0:
        return 0 if cap0 >= t else n
    j = min(max(math.ceil((t - cap0) / hop), 0), n)
    while j > 0 and cap0 + (j - 1) * hop >= t:     # undo the division's rounding
        j -= 1
    while j < n and cap0 + j * hop < t:
        j += 1
    return j
