"""Upkeep of a code store: retention (forget, compact) and the integrity check.

A mixin of ``cvahash.store.code_store.CodeStore`` (see that module for the commit protocol).
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreCorrupt, StoreError
from .format import (
    META_FILE,
    CodeHeader,
    code_file_name,
    fsync_dir,
    write_new_code_file,
)
from .metadata import MetadataCorrupt, Segments, segment_hashes
from .records import Recording


class StoreUpkeep:
    # ------------------------------------------------------------------ retention
    def forget(self, recording) -> int:
        """Remove the windows of a recording (a path: every version of it; or a Recording)
        from search; return how many rows. ``compact()`` reclaims their space."""
        with self._lock:
            self._writable("forget recordings")
            self.flush()
            with self._write_transaction("forget a recording") as conn:
                if isinstance(recording, Recording):
                    ids = [r for (r,) in conn.execute(
                        "SELECT id FROM recordings WHERE path = ? AND content_hash = ?",
                        recording.key)]
                else:
                    ids = [r for (r,) in conn.execute(
                        "SELECT id FROM recordings WHERE path = ?", (str(recording),))]
                if not ids:
                    return 0
                marks = ",".join("?" * len(ids))
                (rows,) = conn.execute(
                    "SELECT COALESCE(SUM(n_rows), 0) FROM segments WHERE recording IN "
                    f"({marks})", ids).fetchone()
                conn.execute(f"DELETE FROM segments WHERE recording IN ({marks})", ids)
                conn.execute(f"DELETE FROM recordings WHERE id IN ({marks})", ids)
                self._bump(conn, self._committed, layout=True,
                           forgotten=self._forgotten + rows)
            self._sync(force=True)
            return rows

    def compact(self) -> int:
        """Rewrite the code file without forgotten rows; return how many rows it freed.

        Needs free space for the kept rows. Row numbers change; readers switch to the
        new file at their next search.
        """
        with self._lock:
            self._writable("compact")
            self.flush()
            dead = self._forgotten
            if dead == 0:
                return 0
            with self._snapshot():
                t = Segments.fetch(self._conn)
            old_path = self.directory / code_file_name(self._generation)
            gen = self._generation + 1
            header = CodeHeader(bits=self.bits, fingerprint=self.fingerprint,
                                store_id=bytes.fromhex(self.store_id), generation=gen)
            codes = self._view(self._committed)
            keep = np.concatenate([np.arange(s, s + n) for s, n in
                                   zip(t.first_row.tolist(), t.n_rows.tolist(), strict=False)] or
                                  [np.zeros(0, np.int64)])
            try:
                write_new_code_file(self.directory / code_file_name(gen), header, codes[keep])
            except OSError as e:
                (self.directory / (code_file_name(gen) + ".tmp")).unlink(missing_ok=True)
                self._raise_write_error(e, self.directory / code_file_name(gen))
            with self._write_transaction("switch to the compacted file") as conn:
                new_first = np.cumsum(t.n_rows) - t.n_rows
                crcs = segment_hashes(new_first, t.n_rows, t.rec_id, t.first_offset, t.hop,
                                      t.length, t.capture_start, t.clock)
                # ascending order: a row's new number is never one still in use
                conn.executemany(
                    "UPDATE segments SET first_row = ?, crc = ? WHERE first_row = ?",
                    zip(new_first.tolist(), crcs.tolist(), t.first_row.tolist(), strict=False))
                conn.execute("UPDATE tags SET first_row = NULL, n_rows = NULL")
                self._bump(conn, len(keep), layout=True, generation=gen, forgotten=0)
            self._sync(force=True)
            old_path.unlink(missing_ok=True)
            fsync_dir(self.directory)
            return dead

    def _writable(self, what: str) -> None:
        self._live(refresh=False)
        if self.mode != "a":
            raise StoreError(f'cannot {what}: the code store {self.directory} is open '
                             'read-only; open it with mode="a"')

    # ------------------------------------------------------------------ integrity
    def check(self) -> dict:
        """Verify the whole store (SQLite integrity, header, file length, metadata
        checksums and layout); return ``stats()`` or raise StoreCorrupt."""
        with self._lock:
            self._live(refresh=False)
            try:
                result = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
            except Exception as e:     # noqa: BLE001 - any failure here means damage
                result = [str(e)]
            if result != ["ok"]:
                raise StoreCorrupt(f"{self.directory / META_FILE} fails SQLite's integrity "
                                   f"check: {'; '.join(result[:5])}")
            self._sync(force=True)
            with self._snapshot():
                t = Segments.fetch(self._conn)
                t.validate(self._committed, self._forgotten)
                self._check_segment_totals(self._conn, {"committed_rows": self._committed,
                                                        "forgotten_rows": self._forgotten})
                ids = set(self._recordings.fetch(self._conn))
                if not set(t.rec_id.tolist()) <= ids:
                    raise MetadataCorrupt("a segment points at a recording that does not "
                                          "exist")
            path = self._file.path
            self._file.header()
            rows, _ = self._file_rows()
            if rows < self._committed:
                raise StoreCorrupt(f"the code file {path} holds {rows} rows, "
                                   f"{self._committed} committed")
            return self.stats()

