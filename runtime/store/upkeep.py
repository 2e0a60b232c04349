"""Upkeep of a code store: retention (forget, compact) and the integrity check.

A mixin of ``cvahash.store.code_store.CodeStore`` (see that module for the commit protocol).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StoreCorrupt, StoreError
from .format import (
    META_FILE,
    CodeHeader,
    code_file_name,
    fsync_dir,
    write_new_code_file,
)
from .journal import block_sums, journal_name, rows_crc, write_journal
from .metadata import MetadataCorrupt, Segments
from .records import Recording
from .replay import apply_record


class StoreUpkeep:
    # ------------------------------------------------------------------ retention
    def forget(self, recording) -> int:
        """Remove the windows of a recording (a path: every version of it; or a Recording)
        from search; return how many rows. ``compact()`` reclaims their space."""
        with self._lock:
            self._writable("forget recordings")
            self.flush()
            key = list(recording.key) if isinstance(recording, Recording) \
                else [str(recording), None]
            with self._snapshot():
                sql = "SELECT id FROM recordings WHERE path = ?" + (
                    " AND content_hash = ?" if key[1] is not None else "")
                ids = [r for (r,) in self._conn.execute(sql, [k for k in key if k is not None])]
                marks = ",".join("?" * len(ids))
                (rows,) = self._conn.execute(
                    "SELECT COALESCE(SUM(n_rows), 0) FROM segments WHERE recording IN "
                    f"({marks})", ids).fetchone()
            if not ids:
                return 0
            record = {"kind": "forget", "v": self._version + 1, "rows": self._committed,
                      "forgotten": self._forgotten + rows, "forget": [key]}
            try:
                size = self._journal_commit(record)
            except OSError as e:
                self._raise_write_error(e, self._journal.path)
            with self._write_transaction("forget a recording") as conn:
                apply_record(conn, record)
            self._journal.advance(size)
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
            self._live()
            self._verify_codes()        # never carry damaged rows into the new file
            with self._snapshot():
                t = Segments.fetch(self._conn)
            old_path = self.directory / code_file_name(self._generation)
            old_journal = self._journal.path
            gen = self._generation + 1
            header = CodeHeader(bits=self.bits, fingerprint=self.fingerprint,
                                store_id=bytes.fromhex(self.store_id), generation=gen)
            codes = self._view(self._committed)
            keep = np.concatenate([np.arange(s, s + n) for s, n in
                                   zip(t.first_row.tolist(), t.n_rows.tolist(), strict=True)] or
                                  [np.zeros(0, np.int64)])
            kept = codes[keep]
            base = self._base_record(self._version + 1, renumber=True, generation=gen)
            base["sums"] = block_sums(kept, 0)
            base["crc"] = rows_crc(kept)
            new_codes = self.directory / code_file_name(gen)
            try:
                write_new_code_file(new_codes, header, kept)
                write_journal(self.directory / journal_name(gen), [base])
            except OSError as e:
                for p in (new_codes, self.directory / journal_name(gen)):
                    Path(f"{p}.tmp").unlink(missing_ok=True)
                    p.unlink(missing_ok=True)
                self._raise_write_error(e, new_codes)
            with self._write_transaction("switch to the compacted file") as conn:
                apply_record(conn, base)
            self._sync(force=True)
            old_path.unlink(missing_ok=True)
            old_journal.unlink(missing_ok=True)
            fsync_dir(self.directory)
            return dead

    def _writable(self, what: str) -> None:
        self._live(refresh=False)
        if self.mode != "a":
            raise StoreError(f"cannot {what}: the code store {self.directory} is open "
                             "read-only (only `cvahash index`, `update apply` and the daemon "
                             "write to a store)")

    # ------------------------------------------------------------------ integrity
    def check(self) -> dict:
        """Verify the whole store (SQLite integrity, header, file length, metadata
        checksums and layout, the journal rebuilding exactly this metadata, every code
        row's checksum); return ``stats()`` or raise StoreCorrupt."""
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
                self._check_tags()
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
            self._check_journal()
            return self.stats()

