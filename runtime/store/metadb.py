"""One part of a code store: its open metadata database (``meta.sqlite``).

Owns the SQLite connection, the cached committed state read from ``store_info``
(version, layout, generation, committed and forgotten rows, longest segment span),
the recording cache and the cache of segment rows already checked. Schema, checked
reads and ``write_transaction`` are in ``metadata``; what a commit changes is in
``replay``. This part knows nothing about the code file or the journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from ..errors import StoreCorrupt, StoreError
from .format import META_FILE
from .identity import advice, take_writer_lock
from .metadata import (
    MIGRATIONS,
    SCHEMA_VERSION,
    MetadataCorrupt,
    RecordingCache,
    Segments,
    checked_segment_row,
    info_problem,
    read_info,
    sql_errors,
    write_transaction,
)
from .records import Recording, Segment
from .replay import tags_crc

log = logging.getLogger(__name__)

_NEEDED = ("schema_version", "store_id", "bits", "fingerprint", "generation",
           "committed_rows", "forgotten_rows", "max_span_s", "version", "layout")


def sqlite_file_problem(path: Path) -> str | None:
    """What is wrong with a SQLite file's size by its own header (a cut file whose lost
    pages SQLite would read as empty tables), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        return f"cannot be read ({e})"
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return "is not a SQLite database (damaged header)"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages and size < pages * page:
        return f"is {size} bytes, shorter than the {pages} pages of {page} bytes it holds (cut)"
    return None


def connect(path: Path, read_only: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if read_only else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    if not read_only:
        conn.execute("PRAGMA synchronous = FULL")
    return conn


class MetadataDB:
    """The metadata database of one open store and the committed state it last read."""

    def __init__(self, directory: Path, writable: bool):
        self.directory = directory
        self.path = directory / META_FILE
        self.writable = writable
        self._conn: sqlite3.Connection | None = None
        self._recordings = RecordingCache()
        self._checked_segments: dict[tuple, None] = {}
        self._checkpointed = time.monotonic()
        # the committed state (store_info) as last read
        self.version: int | None = None
        self.layout: int | None = None
        self.generation: int | None = None
        self.committed = 0
        self.forgotten = 0
        self.max_span = 0.0

    # ------------------------------------------------------------------ opening
    def connect(self) -> dict:
        """Open the database; its checked store_info."""
        with sql_errors(self.path, "open the store"):
            self._conn = connect(self.path, read_only=not self.writable)
            info = read_info(self._conn)
        self.check_info(info)
        return info

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for queries inside a snapshot or a write transaction."""
        return self._conn

    def check_info(self, info: dict) -> None:
        where = self.path
        missing = [k for k in _NEEDED if k not in info]
        if missing:
            raise StoreCorrupt(f"{where} lacks store_info keys {missing}; it is not a complete "
                               f"code store; {advice(self.directory)}")
        schema = info["schema_version"]
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise StoreError(f"{where} has schema version {schema!r}; this cvahash reads up "
                             f"to {SCHEMA_VERSION}: upgrade cvahash")
        if schema < SCHEMA_VERSION:
            if not all(v in MIGRATIONS for v in range(schema, SCHEMA_VERSION)):
                raise StoreError(f"{where} has schema version {schema}, which this cvahash "
                                 f"(schema {SCHEMA_VERSION}) cannot upgrade; index the "
                                 f"recordings again into a new store (`cvahash index "
                                 f"RECORDINGS --db NEW_DIR --bundle BUNDLE`)")
            raise StoreError(f"{where} has schema version {schema}, this cvahash uses "
                             f"{SCHEMA_VERSION}; upgrade it once with "
                             f"CodeStore.migrate({str(self.directory)!r}) (back it up first)")
        problem = info_problem(info)
        if problem:
            raise StoreCorrupt(f"{where}: {problem}; {advice(self.directory)}")
        for key in ("bits", "generation", "committed_rows", "forgotten_rows", "version",
                    "layout"):
            if not isinstance(info[key], int) or info[key] < 0:
                raise StoreCorrupt(f"{where}: store_info {key} is {info[key]!r}; "
                                   f"{advice(self.directory)}")
        span = info["max_span_s"]
        if not isinstance(span, (int, float)) or not 0 <= span < float("inf"):
            raise StoreCorrupt(f"{where}: store_info max_span_s is {span!r}")

    # ------------------------------------------------------------------ committed state
    def changed_info(self, force: bool) -> dict | None:
        """The checked store_info when it changed since it was last taken (always with
        ``force``), else None: one query when nothing changed."""
        conn = self._conn
        own = not conn.in_transaction
        with sql_errors(self.path, "read the store's state"):
            if own:
                conn.execute("BEGIN")
            try:
                if not force:
                    (version,) = conn.execute(
                        "SELECT value FROM store_info WHERE key = 'version'").fetchone()
                    if version == self.version:
                        return None
                info = read_info(conn)
                self.check_info(info)
            finally:
                if own and conn.in_transaction:
                    conn.execute("COMMIT")
        return info

    def take(self, info: dict) -> None:
        """Make ``info`` (from ``changed_info``) the committed state."""
        if info["layout"] != self.layout:
            self._recordings.clear()
            self._checked_segments.clear()
        self.committed, self.forgotten = info["committed_rows"], info["forgotten_rows"]
        self.max_span = float(info["max_span_s"])
        self.version, self.layout = info["version"], info["layout"]
        self.generation = info["generation"]

    # ------------------------------------------------------------------ transactions
    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def begin_read(self) -> None:
        with sql_errors(self.path, "read the store's state"):
            self._conn.execute("BEGIN")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def end_read(self) -> None:
        conn = self._conn
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                # ending a read transaction on a damaged file may fail too; the
                # error being raised (if any) is the one that says what happened
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")

    def errors(self, what: str):
        """SQLite failures inside the block become StoreError / StoreCorrupt."""
        return sql_errors(self.path, what)

    def write_transaction(self, what: str, note: str = ""):
        """The one way the store writes its metadata (see metadata.write_transaction)."""
        return write_transaction(self._conn, self.path, what, note)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers), so
        committed metadata does not live only in the WAL for long."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.info("code store %s: WAL checkpoint skipped (%s)", self.directory, e)
        self._checkpointed = time.monotonic()

    def checkpoint_due(self, every_s: float) -> bool:
        return time.monotonic() - self._checkpointed > every_s

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ checked reads
    def recording(self, rec_id: int) -> Recording:
        return self._recordings.get(self._conn, rec_id)

    def fetch_recordings(self, where: str = "", params=()) -> list[int]:
        return self._recordings.fetch(self._conn, where, params)

    def check_segment_row(self, row: tuple) -> None:
        """Check one segments row unless the same bytes were checked (a small cache)."""
        checked = self._checked_segments
        if row not in checked:
            if len(checked) > 4096:
                checked.clear()
            checked[checked_segment_row(row)] = None

    def segments(self, where: str = "", params=()) -> Segments:
        return Segments.fetch(self._conn, where, params)

    def live_state(self) -> tuple[list[Segment], list[list]]:
        """Every segment (with its recording) and every tag row (inside a snapshot)."""
        t = Segments.fetch(self._conn)
        self.fetch_recordings()
        segs = [t.segment(i, self.recording(int(t.rec_id[i]))) for i in range(len(t))]
        tags = [list(r) for r in self._conn.execute(
            "SELECT tag, applied_utc, first_row, n_rows FROM tags ORDER BY tag")]
        return segs, tags

    def has_tag(self, tag: str) -> bool:
        return self._conn.execute("SELECT 1 FROM tags WHERE tag = ?",
                                  (tag,)).fetchone() is not None

    def has_recording(self, path: str, content_hash: str) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM recordings WHERE path = ? AND content_hash = ?",
            (str(path), content_hash)).fetchone() is not None

    def check_tags(self) -> None:
        """The tags table is whole (inside the caller's snapshot)."""
        row = self._conn.execute("SELECT value FROM store_info WHERE key = 'tags_crc'"
                                 ).fetchone()
        if row is not None and row[0] != tags_crc(self._conn):
            raise StoreCorrupt(f"the tags of {self.path} (applied update "
                               f"batches) fail their checksum; {advice(self.directory)}")

    def paths_in_rows(self, start: int, end: int) -> list[str]:
        """Paths of the recordings with windows in rows [start, end)."""
        return sorted({p for (p,) in self._conn.execute(
            "SELECT DISTINCT r.path FROM segments s JOIN recordings r ON r.id = s.recording "
            "WHERE s.first_row < ? AND s.first_row + s.n_rows > ?", (end, start))})

    def forget_rows(self, key: list) -> tuple[list[int], int]:
        """Ids of the recordings ``key`` ([path, content_hash or None]) names and how
        many rows their segments hold (inside a snapshot)."""
        sql = "SELECT id FROM recordings WHERE path = ?" + (
            " AND content_hash = ?" if key[1] is not None else "")
        ids = [r for (r,) in self._conn.execute(sql, [k for k in key if k is not None])]
        marks = ",".join("?" * len(ids))
        (rows,) = self._conn.execute(
            "SELECT COALESCE(SUM(n_rows), 0) FROM segments WHERE recording IN "
            f"({marks})", ids).fetchone()
        return ids, rows

    def integrity_problems(self) -> list[str]:
        """SQLite's integrity check: ["ok"] or what is wrong."""
        try:
            return [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
        except Exception as e:     # noqa: BLE001 - any failure here means damage
            return [str(e)]

    def check_layout(self) -> None:
        """check(): every segment and recording row passes its check, the segments
        account for every committed row and lie inside them, the tags are whole
        (inside a snapshot)."""
        t = Segments.fetch(self._conn)
        t.validate(self.committed, self.forgotten)
        count, total, max_end, min_first, min_n = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_rows), 0), COALESCE(MAX(first_row + n_rows), 0),"
            " COALESCE(MIN(first_row), 0), COALESCE(MIN(n_rows), 1) FROM segments").fetchone()
        committed, forgotten = self.committed, self.forgotten
        if not all(isinstance(x, int) for x in (count, total, max_end, min_first, min_n)) \
                or total + forgotten != committed or max_end > committed or min_first < 0 \
                or min_n < 1:
            raise MetadataCorrupt(
                f"{count} segments hold {total} rows ending at row {max_end} and {forgotten} "
                f"rows were forgotten, but {committed} rows are committed")
        self.check_tags()
        ids = set(self.fetch_recordings())
        if not set(t.rec_id.tolist()) <= ids:
            raise MetadataCorrupt("a segment points at a recording that does not exist")


def migrate_schema(directory: Path) -> int:
    """Upgrade a store's schema to this cvahash's version (under the writer lock);
    return the old version."""
    lock_fd = take_writer_lock(directory)
    try:
        with sql_errors(directory / META_FILE, "migrate the schema"):
            conn = connect(directory / META_FILE, read_only=False)
        try:
            with write_transaction(conn, directory / META_FILE, "migrate the schema"):
                old = read_info(conn).get("schema_version")
                version = old
                while isinstance(version, int) and version < SCHEMA_VERSION:
                    if version not in MIGRATIONS:
                        raise StoreError(f"no migration from schema {version} for "
                                         f"{directory}")
                    MIGRATIONS[version](conn)
                    version += 1
                    conn.execute("UPDATE store_info SET value = ? WHERE key = "
                                 "'schema_version'", (version,))
            return old
        finally:
            conn.close()
    finally:
        os.close(lock_fd)
