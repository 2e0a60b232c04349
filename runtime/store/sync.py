"""One part of a code store: keeping the metadata and the code rows in step.

``StoreSync`` binds the metadata database (``metadb.MetadataDB``) and the code rows
with their journal (``rows.CodeRows``): read snapshots, bringing the cached committed
state up to date (switching files after a compact), and, on open, checking that the
journal and the metadata describe the same last commit, rolling forward commits the
metadata lacks, dropping an uncommitted tail and recovering from a cut code file. It
also verifies code rows before they are handed out. See ``code_store`` for the
commit protocol these rely on.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace

from ..errors import StoreCorrupt
from .codefile import CodeFileMissing
from .format import HEADER_SIZE, code_file_name
from .identity import StoreIdentity, advice, writer_running
from .journal import bad_blocks, block_sums, rows_crc, segment_entry
from .metadb import MetadataDB
from .replay import apply_record, retire
from .rows import CodeRows

log = logging.getLogger(__name__)


class JournalAhead(StoreCorrupt):
    """The journal holds commits the metadata lacks and no writer is running."""


class StoreSync:
    """The committed state of one open store, kept the same in its parts."""

    def __init__(self, identity: StoreIdentity, db: MetadataDB, rows: CodeRows,
                 writable: bool):
        self.identity = identity
        self.directory = identity.directory
        self.db = db
        self.rows = rows
        self.writable = writable

    # ------------------------------------------------------------------ snapshots
    @contextmanager
    def snapshot(self):
        """One SQLite read transaction around a call: the committed state, the filters
        and the hit lookups all see the same commit, whatever the writer does meanwhile."""
        db = self.db
        if db.in_transaction:
            yield
            return
        for attempt in range(4):
            db.begin_read()
            try:
                self.sync()
                break
            except CodeFileMissing:
                # compact() switched files and deleted the one our snapshot names:
                # take a newer snapshot
                db.rollback()
                if self.writable or attempt == 3:
                    raise
                time.sleep(0.01)
            except BaseException:
                db.rollback()
                raise
        try:
            with db.errors("read the store's metadata"):
                yield
        finally:
            db.end_read()

    def sync(self, force: bool = False, opening: bool = False) -> None:
        """Bring the cached committed state up to date with SQLite (cheap when unchanged).

        The writer holds the lock, so only its own writes change the store: it syncs
        after them (force) and skips the version query otherwise.
        """
        if self.writable and not force:
            return
        info = self.db.changed_info(force)
        if info is None:
            return
        if info["generation"] != self.db.generation:
            self.rows.open(info)
        self.db.take(info)
        if opening:
            self._reconcile_journal()
        self._check_file_length(opening)

    # ------------------------------------------------------------------ verification
    def verify_codes(self) -> None:
        """Check the check values of committed code rows this object has not checked yet."""
        bad = self.rows.unverified_bad(self.db.committed, self.db.version)
        if not bad:
            return
        start, end = bad[0]
        try:
            names = self.db.paths_in_rows(start, end)
        except Exception:       # noqa: BLE001 - naming them is a courtesy
            names = []
        rows = sum(e - s for s, e in bad)
        raise StoreCorrupt(
            f"{rows} code rows of {self.rows.path} fail their checksum (rows {start}-{end - 1}"
            f"{' and more' if len(bad) > 1 else ''}"
            f"{', recordings ' + ', '.join(names[:5]) if names else ''}); "
            f"{advice(self.directory)}")

    def committed_codes(self):
        """The committed code rows, verified (a read-only view)."""
        self.verify_codes()
        return self.rows.view(self.db.committed)

    # ------------------------------------------------------------------ opening
    def _check_file_length(self, opening: bool) -> None:
        rows, size = self.rows.rows_and_size()
        committed, nbytes = self.db.committed, self.identity.nbytes
        path = self.directory / code_file_name(self.db.generation)
        if rows < committed:
            if not self.writable:
                raise StoreCorrupt(
                    f"the code file {path} holds {rows} rows but {committed} were "
                    f"committed (the card lost data); {advice(self.directory)}")
            self._recover_to(rows)
        elif opening and self.writable and size != HEADER_SIZE + committed * nbytes:
            # an append cut before its commit: those rows were never acknowledged
            log.info("code store %s: dropping %d bytes of uncommitted tail", self.directory,
                     size - HEADER_SIZE - committed * nbytes)
            self.rows.cut_to(committed)

    def _recover_to(self, rows: int) -> None:
        """Keep the ``rows`` rows the code file still holds (mode "a"): a base record of
        what remains goes to the journal first, then the same change to the metadata."""
        db = self.db
        lost = db.committed - rows
        bad = self.rows.bad_rows(rows, db.committed, db.version)
        base = self.base_record(db.version + 1, keep_rows=rows, bad=bad)
        self.rows.reset_verification()
        base["sums"] = block_sums(self.rows.view(rows), 0)
        base["crc"] = rows_crc(self.rows.view(rows))
        self.rows.replace_journal(base, db.generation)
        with db.write_transaction("drop the lost rows' metadata") as conn:
            apply_record(conn, base)
        log.warning("code store %s: the code file lost its last %d rows (power cut or card "
                    "fault); their metadata was dropped and the recordings they belonged to "
                    "retired (%s), so that indexing them again re-does them; %d rows remain",
                    self.directory, lost, ", ".join(base["retired"]) or "none", rows)
        self.rows.cut_to(rows)
        self.sync(force=True)

    def _reconcile_journal(self) -> None:
        """On open: the journal and the metadata must describe the same last commit.

        The journal may be one commit ahead (a writer cut between the two writes, or
        busy with them right now); a writer then rolls that commit forward after
        checking its code rows. More than one ahead means the metadata lost commits (a
        lost or rolled-back WAL): a writer rolls them all forward, a reader refuses.
        Anything else is damage and is refused with what to run.
        """
        db, rows = self.db, self.rows
        if not rows.has_journal:
            if self.writable:
                self._start_journal()
            return
        jpath = rows.journal_path
        last = rows.journal_last()
        if last is not None and last[2]["v"] == db.version:
            self._agrees(last[2], jpath)
            rows.journal_taken_to(last[1])
            return
        entries = rows.journal_entries()
        at = next((i for i in range(len(entries) - 1, -1, -1)
                   if entries[i].record is not None
                   and entries[i].record["v"] == db.version), None)
        if at is None:
            top = max((e.record["v"] for e in entries if e.record is not None), default=None)
            raise StoreCorrupt(
                f"the journal {jpath} does not hold the store's last commit (version "
                f"{db.version}; the journal ends at {top}): one of them lost data; "
                f"{advice(self.directory)}")
        self._agrees(entries[at].record, jpath)
        ahead = entries[at + 1:]
        records = [e for e in ahead if e.record is not None]
        damaged = [e for e in ahead if e.record is None]
        if damaged and damaged[-1] is not ahead[-1] or len(damaged) > 1:
            raise StoreCorrupt(f"the journal {jpath} is damaged at byte "
                               f"{damaged[0].offset}; {advice(self.directory)}")
        expect = db.version + 1
        for e in records:
            if e.record["v"] != expect:
                raise StoreCorrupt(f"the journal {jpath} skips from version {expect - 1} to "
                                   f"{e.record['v']} at byte {e.offset}; "
                                   f"{advice(self.directory)}")
            expect += 1
        if not self.writable:
            if not records:
                return
            if len(records) == 1 and writer_running(self.directory):
                return          # a writer between its journal and its SQLite commit
            raise JournalAhead(
                f"the metadata {db.path} lacks the last "
                f"{len(records)} commit(s) its journal holds (a writer was cut mid-commit, "
                f"or the WAL was lost); the next `cvahash index` takes them, or "
                f"{advice(self.directory)}")
        # writer: roll forward what the journal holds beyond the metadata
        keep = []
        for n, e in enumerate(records):
            r = e.record
            if r["kind"] == "append" and bad_blocks(rows.view(min(
                    rows.rows_and_size()[0], r["first"] + r["n"])), r["first"], r["n"],
                    r.get("sums", b""), r.get("crc")):
                if n == len(records) - 1:
                    break       # the commit that was cut: its rows never fully reached disk
                raise StoreCorrupt(f"the code rows of journal version {r['v']} fail their "
                                   f"checksum; {advice(self.directory)}")
            if r["kind"] == "base":
                raise StoreCorrupt(f"the journal {jpath} holds an unapplied base record; "
                                   f"{advice(self.directory)}")
            keep.append(e)
        end = keep[-1].end if keep else entries[at].end
        if keep:
            with db.write_transaction("roll the journal forward") as conn:
                for e in keep:
                    apply_record(conn, e.record)
            (log.warning if len(keep) > 1 else log.info)(
                "code store %s: took %d commit(s) from the journal that the metadata had "
                "not recorded", self.directory, len(keep))
        rows.journal_cut_to(end)
        if keep:
            self.sync(force=True)

    def _agrees(self, record: dict, path) -> None:
        db = self.db
        if (record["rows"], record["forgotten"]) != (db.committed, db.forgotten):
            raise StoreCorrupt(
                f"{db.path} says {db.committed} rows are committed "
                f"({db.forgotten} forgotten) but its journal {path} says "
                f"{record['rows']} ({record['forgotten']}); {advice(self.directory)}")

    def _start_journal(self) -> None:
        """Give a store made before journals one (its current state as a base record)."""
        db = self.db
        base = self.base_record(db.version)
        base["sums"] = block_sums(self.rows.view(db.committed), 0)
        base["crc"] = rows_crc(self.rows.view(db.committed))
        self.rows.replace_journal(base, db.generation)
        with db.write_transaction("record the new journal") as conn:
            conn.execute("INSERT OR REPLACE INTO store_info VALUES ('journal', 1)")
        log.info("code store %s: wrote a journal for its %d rows", self.directory,
                 db.committed)

    # ------------------------------------------------------------------ base records
    def base_record(self, version: int, keep_rows: int | None = None,
                    renumber: bool = False, generation: int | None = None,
                    bad=None) -> dict:
        """The committed state as a journal base record (sums left empty). ``bad``: a
        mask of rows whose bytes are lost; every recording with such a row is retired
        whole (listed in the record's ``retired``), so that indexing it re-does it."""
        db, ident = self.db, self.identity
        with self.snapshot():
            segs, tags = db.live_state()
        rows = db.committed
        retired: dict = {}
        if bad is not None:
            segs, tags, retired = retire(segs, tags, bad)
        if keep_rows is not None:
            segs = [s if s.first_row + s.n_rows <= keep_rows
                    else replace(s, n_rows=keep_rows - s.first_row)
                    for s in segs if s.first_row < keep_rows]
            tags = [t for t in tags if t[2] is None or t[2] + t[3] <= keep_rows]
            rows = keep_rows
        if renumber:
            out, row = [], 0
            for s in segs:
                out.append(replace(s, first_row=row))
                row += s.n_rows
            segs, rows = out, row
            tags = [[t[0], t[1], None, None] for t in tags]
        live = sum(s.n_rows for s in segs)
        return {"kind": "base", "v": version, "rows": rows, "forgotten": rows - live,
                "generation": db.generation if generation is None else generation,
                "max_span_s": db.max_span, "bits": ident.bits,
                "fingerprint": ident.fingerprint, "store_id": ident.store_id,
                "segs": [segment_entry(s) for s in segs], "tags": tags, "sums": b"",
                "retired": sorted(path for path, _ in retired)}
