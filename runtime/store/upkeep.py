"""One part of a code store: upkeep (retention: forget, compact; the integrity check).

``Upkeep`` writes through the same journal-then-SQLite protocol as appending (see
``code_store``); the caller holds the store's lock and has flushed the commit buffer.
The offline diagnosis and rebuild (``cvahash check`` / ``cvahash repair``) are in
``doctor``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ..errors import StoreCorrupt
from .append import Appender
from .format import CodeHeader, code_file_name, fsync_dir, write_new_code_file
from .identity import StoreIdentity, advice
from .journal import block_sums, journal_name, rows_crc, write_journal
from .metadata import MetadataCorrupt
from .metadb import MetadataDB
from .records import Recording
from .replay import apply_record, new_database, state_of
from .rows import CodeRows
from .sync import StoreSync


class Upkeep:
    """Retention and the whole-store check of one open store."""

    def __init__(self, identity: StoreIdentity, db: MetadataDB, rows: CodeRows,
                 sync: StoreSync, appender: Appender | None):
        self.identity = identity
        self.directory = identity.directory
        self.db = db
        self.rows = rows
        self.sync = sync
        self.appender = appender

    # ------------------------------------------------------------------ retention
    def forget(self, recording) -> int:
        db = self.db
        key = list(recording.key) if isinstance(recording, Recording) \
            else [str(recording), None]
        with self.sync.snapshot():
            ids, rows = db.forget_rows(key)
        if not ids:
            return 0
        record = {"kind": "forget", "v": db.version + 1, "rows": db.committed,
                  "forgotten": db.forgotten + rows, "forget": [key]}
        try:
            size = self.rows.journal_append(record)
        except OSError as e:
            self.appender.write_error(e, self.rows.journal_path)
        with db.write_transaction("forget a recording") as conn:
            apply_record(conn, record)
        self.rows.journal_advance(size)
        self.sync.sync(force=True)
        return rows

    def compact(self) -> int:
        db, ident = self.db, self.identity
        dead = db.forgotten
        if dead == 0:
            return 0
        with self.sync.snapshot():
            pass
        codes = self.sync.committed_codes()     # never carry damaged rows into the new file
        with self.sync.snapshot():
            t = db.segments()
        old_path = self.directory / code_file_name(db.generation)
        old_journal = self.rows.journal_path
        gen = db.generation + 1
        header = CodeHeader(bits=ident.bits, fingerprint=ident.fingerprint,
                            store_id=bytes.fromhex(ident.store_id), generation=gen)
        keep = np.concatenate([np.arange(s, s + n) for s, n in
                               zip(t.first_row.tolist(), t.n_rows.tolist(), strict=True)] or
                              [np.zeros(0, np.int64)])
        kept = codes[keep]
        base = self.sync.base_record(db.version + 1, renumber=True, generation=gen)
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
            self.appender.write_error(e, new_codes)
        with db.write_transaction("switch to the compacted file") as conn:
            apply_record(conn, base)
        self.sync.sync(force=True)
        old_path.unlink(missing_ok=True)
        old_journal.unlink(missing_ok=True)
        fsync_dir(self.directory)
        return dead

    # ------------------------------------------------------------------ integrity
    def check(self) -> None:
        """Verify the whole store (see ``CodeStore.check``); StoreCorrupt when damaged."""
        db = self.db
        result = db.integrity_problems()
        if result != ["ok"]:
            raise StoreCorrupt(f"{db.path} fails SQLite's integrity "
                               f"check: {'; '.join(result[:5])}")
        self.sync.sync(force=True)
        with self.sync.snapshot():
            db.check_layout()
        path = self.rows.path
        self.rows.header()
        rows, _ = self.rows.rows_and_size()
        if rows < db.committed:
            raise StoreCorrupt(f"the code file {path} holds {rows} rows, "
                               f"{db.committed} committed")
        self._check_journal()

    def _check_journal(self) -> None:
        """The journal rebuilds exactly this metadata, and every code row matches its
        checksum."""
        if not self.rows.has_journal:
            return
        db, ident = self.db, self.identity
        jpath = self.rows.journal_path
        entries = self.rows.journal_entries()
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            for n, e in enumerate(entries):
                r = e.record
                if r is None:
                    if any(x.record is not None and x.record["v"] <= db.version
                           for x in entries[n:]) or n == 0:
                        raise StoreCorrupt(f"the journal {jpath} is damaged at byte "
                                           f"{e.offset}; {advice(self.directory)}")
                    break
                if r["v"] > db.version:
                    break
                try:
                    if n == 0:
                        if r["kind"] != "base":
                            raise MetadataCorrupt("it does not start with a base record")
                        new_database(mem, r, ident.store_id, ident.bits, ident.fingerprint,
                                     0.0)
                    else:
                        mem.execute("BEGIN")
                        apply_record(mem, r)
                        mem.execute("COMMIT")
                except (MetadataCorrupt, sqlite3.Error, KeyError, TypeError, ValueError) as x:
                    raise StoreCorrupt(f"the journal {jpath} cannot be replayed at byte "
                                       f"{e.offset} ({x}); {advice(self.directory)}") from None
            with self.sync.snapshot():
                ours = state_of(db.conn)
            theirs = state_of(mem)
        finally:
            mem.close()
        for key in ours:
            if ours[key] != theirs[key]:
                what = key
                if isinstance(ours[key], list):
                    diff = [a for a, b in zip(ours[key], theirs[key], strict=False) if a != b]
                    what += f" (first difference: {diff[0] if diff else 'count'})"
                raise StoreCorrupt(f"{db.path} differs from its journal "
                                   f"{jpath} in {what}; {advice(self.directory)}")
        self.rows.reset_verification()
        self.sync.verify_codes()
