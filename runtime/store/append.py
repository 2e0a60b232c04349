"""One part of a code store: appending (input checks, the commit buffer, the commit).

``Appender`` owns the windows appended but not yet committed and runs the commit
protocol described in ``code_store``: rows to the code file and the record to the
journal (both fdatasync()ed), then the same record to SQLite in one transaction.
Only the writer (mode "a") has one; the caller holds the store's lock.
"""

from __future__ import annotations

import errno
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument, StoreError
from .identity import StoreIdentity
from .journal import block_sums, rows_crc, segment_entry
from .metadb import MetadataDB
from .records import Recording, Segment, Window
from .replay import apply_record
from .rows import CodeRows
from .sync import StoreSync

# Copy the WAL into the database at least this often while committing.
CHECKPOINT_EVERY_S = 60.0


def as_segments(windows, n: int) -> list[Segment]:
    """``append``'s windows (a Segment, a Window, or a list of them) as checked
    Segments describing exactly ``n`` rows."""
    if isinstance(windows, (Segment, Window)):
        windows = [windows]
    windows = list(windows)
    if not all(isinstance(w, (Segment, Window)) for w in windows):
        raise InvalidArgument("windows must be a Segment, a Window, or a list of them")
    segs, checked = [], {}
    for w in windows:
        if isinstance(w, Window):
            # check each distinct Recording once, not once per window
            rec = checked.get(id(w.recording))
            if rec is None:
                rec = checked[id(w.recording)] = (
                    w.recording.checked() if isinstance(w.recording, Recording)
                    else w.recording)
            segs.append(replace(w, recording=rec).as_segment().checked(1, rec))
        else:
            rows = w.n_rows if w.n_rows is not None else (n if len(windows) == 1 else None)
            if rows is None:
                raise InvalidArgument("every Segment in a list needs n_rows")
            segs.append(w.checked(rows))
    total = sum(s.n_rows for s in segs)
    if total != n:
        raise InvalidArgument(f"the windows describe {total} rows but {n} codes were given")
    return segs


class Appender:
    """The writer's commit buffer and commits."""

    def __init__(self, identity: StoreIdentity, db: MetadataDB, rows: CodeRows,
                 sync: StoreSync, every_windows: int, every_s: float):
        self.identity = identity
        self.db = db
        self.rows = rows
        self.sync = sync
        self.every_windows = every_windows
        self.every_s = every_s
        self._codes: list[np.ndarray] = []
        self._segs: list[Segment] = []
        self._rows = 0
        self._since: float | None = None

    @property
    def pending_rows(self) -> int:
        """Rows appended but not yet committed (lost on a power cut)."""
        return self._rows

    @property
    def pending(self) -> bool:
        return bool(self._rows or self._segs)

    def add(self, arr: np.ndarray, segs: list[Segment], tag: str | None,
            commit: bool) -> range:
        """Buffer checked codes and segments; commit when the promise says so. A tagged
        batch that fails to commit is taken back out of the buffer."""
        first = self.db.committed + self._rows
        before = (list(self._segs), len(self._codes), self._rows, self._since)
        row = first
        for seg in segs:
            # kept as given; the commit joins segments that continue one grid
            self._segs.append(replace(seg, first_row=row))
            row += seg.n_rows
        if len(arr):
            self._codes.append(np.array(arr, dtype=np.uint8, order="C", copy=True))
        self._rows += len(arr)
        if self._since is None:
            self._since = time.monotonic()
        if (tag is not None or commit or self._rows >= self.every_windows
                or time.monotonic() - self._since >= self.every_s):
            try:
                self.commit(tag, first)
            except StoreError:
                if tag is not None:
                    # a tagged batch is all or nothing: take it back out of the
                    # buffer, so a later flush cannot store its rows without the tag
                    segs_before, n_codes, self._rows, self._since = before
                    self._segs = segs_before
                    del self._codes[n_codes:]
                raise
        return range(first, first + len(arr))

    def commit(self, tag: str | None, tag_first: int | None) -> None:
        """Rows to the code file, the change to the journal (both fdatasync()ed), then
        the same change to SQLite in one transaction (see the code_store docstring)."""
        db, n = self.db, self._rows
        rows = (np.concatenate(self._codes) if len(self._codes) > 1
                else self._codes[0] if self._codes
                else np.zeros((0, self.identity.nbytes), np.uint8))
        first = db.committed
        record = {"kind": "append", "v": db.version + 1, "rows": first + n,
                  "forgotten": db.forgotten, "first": first, "n": n,
                  "sums": block_sums(rows, first), "crc": rows_crc(rows),
                  "segs": [segment_entry(g) for g in self._segs],
                  "tag": None if tag is None else [tag, time.time(), tag_first]}
        try:
            if n:
                self.rows.write_rows(first, rows)
            size = self.rows.journal_append(record)
        except OSError as e:
            self.write_error(e, self.rows.path)
        with db.write_transaction("commit appended rows",
                                  f"; {n} appended windows are kept in memory and written at "
                                  "the next commit") as conn:
            apply_record(conn, record)
        self.rows.journal_advance(size)
        self._codes, self._segs = [], []
        self._rows, self._since = 0, None
        self.sync.sync(force=True)
        if db.checkpoint_due(CHECKPOINT_EVERY_S):
            db.checkpoint()

    def write_error(self, e: OSError, path: Path):
        """Raise the StoreError a failed write of ``path`` means to the user."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"the disk holding {path} is full: {self._rows} appended "
                             "windows are not stored yet (kept in memory and written at the "
                             "next commit). Free space on it, e.g. lower the daemon's "
                             "retention quota or move old recordings off the card") from e
        raise StoreError(f"could not write {path}: {e.strerror or e}; the appended windows "
                         "are kept in memory and written at the next commit") from e
