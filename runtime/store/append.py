"""Appending to a code store: input checks, segment merging, the commit protocol.

A mixin of ``cvahash.store.code_store.CodeStore``; the protocol and the durability promise are
described in that module's docstring. Only the writer (mode "a") runs these.
"""

from __future__ import annotations

import errno
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument, InvalidCodes, StoreError
from .journal import block_sums, rows_crc, segment_entry
from .records import Recording, Segment, Window
from .replay import apply_record

# Copy the WAL into the database at least this often while committing.
CHECKPOINT_EVERY_S = 60.0


class StoreAppending:
    # ------------------------------------------------------------------ appending
    def _check_codes(self, codes, what: str) -> np.ndarray:
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

    def _as_segments(self, windows, n: int) -> list[Segment]:
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

    def append(self, codes, windows, *, tag: str | None = None, fingerprint: str | None = None,
               commit: bool = False) -> range:
        """Add code rows and their windows; return the rows they got.

        ``codes``: uint8 (n, nbytes). ``windows``: a Segment (n_rows may be None), a list
        of Segments whose n_rows sum to n, or a list of n Windows. ``tag``: apply this
        batch at most once (if ``has_tag(tag)``, nothing is appended and an empty range
        is returned); a tagged append commits at once. ``commit=True`` commits now.
        See the module docstring for when rows become durable.
        """
        with self._lock:
            self._writable("append")
            self.require(fingerprint)
            arr = self._check_codes(codes, "codes")
            segs = self._as_segments(windows, len(arr))
            if tag is not None:
                if not isinstance(tag, str) or not tag:
                    raise InvalidArgument(f"tag must be a non-empty string, got {tag!r}")
                if self.has_tag(tag):
                    return range(self._committed, self._committed)
            first = self._committed + self._pending_rows
            before = (list(self._pending_segs), len(self._pending_codes), self._pending_rows,
                      self._pending_since)
            row = first
            for seg in segs:
                # kept as given; the commit joins segments that continue one grid
                self._pending_segs.append(replace(seg, first_row=row))
                row += seg.n_rows
            if len(arr):
                self._pending_codes.append(np.array(arr, dtype=np.uint8, order="C", copy=True))
            self._pending_rows += len(arr)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            if (tag is not None or commit or self._pending_rows >= self.commit_every_windows
                    or time.monotonic() - self._pending_since >= self.commit_every_s):
                try:
                    self._commit(tag, first)
                except StoreError:
                    if tag is not None:
                        # a tagged batch is all or nothing: take it back out of the
                        # buffer, so a later flush cannot store its rows without the tag
                        segs_before, n_codes, self._pending_rows, self._pending_since = before
                        self._pending_segs = segs_before
                        del self._pending_codes[n_codes:]
                    raise
            return range(first, first + len(arr))

    def flush(self) -> int:
        """Commit everything appended so far; return ``durable_rows``."""
        with self._lock:
            self._live(refresh=False)
            if self.mode == "a" and (self._pending_rows or self._pending_segs):
                self._commit(None, None)
            return self._committed

    def _commit(self, tag: str | None, tag_first: int | None) -> None:
        """Rows to the code file, the change to the journal (both fdatasync()ed), then
        the same change to SQLite in one transaction (see the code_store docstring)."""
        n = self._pending_rows
        rows = (np.concatenate(self._pending_codes) if len(self._pending_codes) > 1
                else self._pending_codes[0] if self._pending_codes
                else np.zeros((0, self.nbytes), np.uint8))
        first = self._committed
        record = {"kind": "append", "v": self._version + 1, "rows": first + n,
                  "forgotten": self._forgotten, "first": first, "n": n,
                  "sums": block_sums(rows, first), "crc": rows_crc(rows),
                  "segs": [segment_entry(g) for g in self._pending_segs],
                  "tag": None if tag is None else [tag, time.time(), tag_first]}
        try:
            if n:
                self._file.write_rows(first, rows)
            size = self._journal_commit(record)
        except OSError as e:
            self._raise_write_error(e, self._file.path)
        with self._write_transaction("commit appended rows",
                                     f"; {n} appended windows are kept in memory and written at "
                                     "the next commit"
                                     ) as conn:
            apply_record(conn, record)
        self._journal.advance(size)
        self._pending_codes, self._pending_segs = [], []
        self._pending_rows, self._pending_since = 0, None
        self._sync(force=True)
        if time.monotonic() - self._checkpointed > CHECKPOINT_EVERY_S:
            self._checkpoint()

    def _raise_write_error(self, e: OSError, path: Path):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"the disk holding {path} is full: {self._pending_rows} appended "
                             "windows are not stored yet (kept in memory and written at the "
                             "next commit). Free space on it, e.g. lower the daemon's "
                             "retention quota or move old recordings off the card") from e
        raise StoreError(f"could not write {path}: {e.strerror or e}; the appended windows "
                         "are kept in memory and written at the next commit") from e

    def has_tag(self, tag: str) -> bool:
        """Whether a tagged append with this tag was committed."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                found = self._conn.execute("SELECT 1 FROM tags WHERE tag = ?",
                                           (tag,)).fetchone() is not None
                if not found:
                    self._check_tags()
                return found

    def has_recording(self, path: str, content_hash: str = "") -> bool:
        """Whether committed windows of this recording (same path and content hash) exist."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                return self._conn.execute(
                    "SELECT 1 FROM recordings WHERE path = ? AND content_hash = ?",
                    (str(path), content_hash)).fetchone() is not None
