"""Integrity of an open code store: its journal (see ``journal``), checked on open,
rolled forward when the metadata lost commits, and used to verify code rows the first
time a process reads them.

A mixin of ``cvahash.store.code_store.CodeStore``; the offline diagnosis and rebuild
(``cvahash check`` / ``cvahash repair``) are in ``doctor``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3

from ..errors import StoreCorrupt
from .codefile import CodeFileMissing
from .format import LOCK_FILE, META_FILE
from .journal import (
    Journal,
    bad_blocks,
    block_sums,
    encode,
    journal_name,
    rows_crc,
    scan,
    segment_entry,
    write_journal,
)
from .metadata import MetadataCorrupt, Segments
from .replay import apply_record, new_database, retire, state_of, tags_crc

log = logging.getLogger(__name__)


class JournalAhead(StoreCorrupt):
    """The journal holds commits the metadata lacks and no writer is running."""


def writer_running(directory) -> bool:
    """Whether a process holds the store's writer lock."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def advice(directory) -> str:
    return (f"run `cvahash check --db {directory}` to see what is damaged and "
            f"`cvahash repair --db {directory}` to keep every good window")


class StoreIntegrity:
    # ------------------------------------------------------------------ journal
    def _open_journal(self, generation: int, info: dict) -> None:
        """Open the journal of this generation (called with the code file)."""
        path = self.directory / journal_name(generation)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._verified_rows, self._verify_pos = 0, 0
        try:
            self._journal = Journal(path, writable=self.mode == "a")
        except FileNotFoundError:
            if info.get("journal"):
                # CodeFileMissing: a reader retries with a newer snapshot (compact() may
                # have switched files under it)
                raise CodeFileMissing(f"the journal {path} is missing, so the code rows "
                                      f"cannot be verified; {advice(self.directory)}") from None
            return              # a store made before journals: upgraded on open in "a"
        self._journal.end = os.fstat(self._journal.fd).st_size

    def _reconcile_journal(self) -> None:
        """On open: the journal and the metadata must describe the same last commit.

        The journal may be one commit ahead (a writer cut between the two writes, or
        busy with them right now); a writer then rolls that commit forward after
        checking its code rows. More than one ahead means the metadata lost commits (a
        lost or rolled-back WAL): a writer rolls them all forward, a reader refuses.
        Anything else is damage and is refused with what to run.
        """
        j = self._journal
        if j is None:
            if self.mode == "a":
                self._start_journal()
            return
        last = j.last()
        if last is not None and last[2]["v"] == self._version:
            self._agrees(last[2], j.path)
            j.end = last[1]
            return
        entries = list(scan(j.read()))
        at = next((i for i in range(len(entries) - 1, -1, -1)
                   if entries[i].record is not None
                   and entries[i].record["v"] == self._version), None)
        if at is None:
            top = max((e.record["v"] for e in entries if e.record is not None), default=None)
            raise StoreCorrupt(
                f"the journal {j.path} does not hold the store's last commit (version "
                f"{self._version}; the journal ends at {top}): one of them lost data; "
                f"{advice(self.directory)}")
        self._agrees(entries[at].record, j.path)
        ahead = entries[at + 1:]
        records = [e for e in ahead if e.record is not None]
        damaged = [e for e in ahead if e.record is None]
        if damaged and damaged[-1] is not ahead[-1] or len(damaged) > 1:
            raise StoreCorrupt(f"the journal {j.path} is damaged at byte "
                               f"{damaged[0].offset}; {advice(self.directory)}")
        expect = self._version + 1
        for e in records:
            if e.record["v"] != expect:
                raise StoreCorrupt(f"the journal {j.path} skips from version {expect - 1} to "
                                   f"{e.record['v']} at byte {e.offset}; "
                                   f"{advice(self.directory)}")
            expect += 1
        if self.mode == "r":
            if not records:
                return
            if len(records) == 1 and writer_running(self.directory):
                return          # a writer between its journal and its SQLite commit
            raise JournalAhead(
                f"the metadata {self.directory / META_FILE} lacks the last "
                f"{len(records)} commit(s) its journal holds (a writer was cut mid-commit, "
                f"or the WAL was lost); the next `cvahash index` takes them, or "
                f"{advice(self.directory)}")
        # writer: roll forward what the journal holds beyond the metadata
        keep = []
        for n, e in enumerate(records):
            r = e.record
            if r["kind"] == "append" and bad_blocks(self._file.view(min(
                    self._file.rows_and_size()[0], r["first"] + r["n"])), r["first"], r["n"],
                    r.get("sums", b""), r.get("crc")):
                if n == len(records) - 1:
                    break       # the commit that was cut: its rows never fully reached disk
                raise StoreCorrupt(f"the code rows of journal version {r['v']} fail their "
                                   f"checksum; {advice(self.directory)}")
            if r["kind"] == "base":
                raise StoreCorrupt(f"the journal {j.path} holds an unapplied base record; "
                                   f"{advice(self.directory)}")
            keep.append(e)
        end = keep[-1].end if keep else entries[at].end
        if keep:
            with self._write_transaction("roll the journal forward") as conn:
                for e in keep:
                    apply_record(conn, e.record)
            (log.warning if len(keep) > 1 else log.info)(
                "code store %s: took %d commit(s) from the journal that the metadata had "
                "not recorded", self.directory, len(keep))
        j.cut_to(end)
        if keep:
            self._sync(force=True)

    def _agrees(self, record: dict, path) -> None:
        if (record["rows"], record["forgotten"]) != (self._committed, self._forgotten):
            raise StoreCorrupt(
                f"{self.directory / META_FILE} says {self._committed} rows are committed "
                f"({self._forgotten} forgotten) but its journal {path} says "
                f"{record['rows']} ({record['forgotten']}); {advice(self.directory)}")

    def _start_journal(self) -> None:
        """Give a store made before journals one (its current state as a base record)."""
        base = self._base_record(self._version)
        base["sums"] = block_sums(self._view(self._committed), 0)
        base["crc"] = rows_crc(self._view(self._committed))
        self._write_base(base)
        with self._write_transaction("record the new journal") as conn:
            conn.execute("INSERT OR REPLACE INTO store_info VALUES ('journal', 1)")
        log.info("code store %s: wrote a journal for its %d rows", self.directory,
                 self._committed)

    def _bad_rows(self, rows: int):
        """Committed rows whose bytes are gone (at or past ``rows``) or fail the check
        values of the journal: a boolean mask of length committed."""
        import numpy as np

        bad = np.zeros(self._committed, bool)
        bad[rows:] = True
        if self._journal is None:
            return bad
        codes = self._view(min(rows, self._committed))
        for e in scan(self._journal.read()):
            r = e.record
            if r is None or r["v"] > self._version:
                break
            if r["kind"] != "forget":
                first, n = (0, r["rows"]) if r["kind"] == "base" else (r["first"], r["n"])
                for s, t in bad_blocks(codes, first, n, r.get("sums", b""), r.get("crc")):
                    bad[s:t] = True
        return bad

    def _base_record(self, version: int, keep_rows: int | None = None,
                     renumber: bool = False, generation: int | None = None,
                     bad=None) -> dict:
        """The committed state as a journal base record (sums left empty). ``bad``: a
        mask of rows whose bytes are lost; every recording with such a row is retired
        whole (listed in the record's ``retired``), so that indexing it re-does it."""
        conn = self._conn
        with self._snapshot():
            t = Segments.fetch(conn)
            self._recordings.fetch(conn)
            segs = [t.segment(i, self._recordings.get(conn, int(t.rec_id[i])))
                    for i in range(len(t))]
            tags = [list(r) for r in conn.execute(
                "SELECT tag, applied_utc, first_row, n_rows FROM tags ORDER BY tag")]
        rows = self._committed
        retired: dict = {}
        if bad is not None:
            segs, tags, retired = retire(segs, tags, bad)
        if keep_rows is not None:
            from dataclasses import replace

            segs = [s if s.first_row + s.n_rows <= keep_rows
                    else replace(s, n_rows=keep_rows - s.first_row)
                    for s in segs if s.first_row < keep_rows]
            tags = [t for t in tags if t[2] is None or t[2] + t[3] <= keep_rows]
            rows = keep_rows
        if renumber:
            from dataclasses import replace

            out, row = [], 0
            for s in segs:
                out.append(replace(s, first_row=row))
                row += s.n_rows
            segs, rows = out, row
            tags = [[t[0], t[1], None, None] for t in tags]
        live = sum(s.n_rows for s in segs)
        return {"kind": "base", "v": version, "rows": rows, "forgotten": rows - live,
                "generation": self._generation if generation is None else generation,
                "max_span_s": self._max_span, "bits": self.bits,
                "fingerprint": self.fingerprint, "store_id": self.store_id,
                "segs": [segment_entry(s) for s in segs], "tags": tags, "sums": b"",
                "retired": sorted(path for path, _ in retired)}

    def _write_base(self, base: dict) -> None:
        """Replace the journal of ``base``'s generation by this one record."""
        path = self.directory / journal_name(base["generation"])
        write_journal(path, [base])
        if base["generation"] == self._generation:
            if self._journal is not None:
                self._journal.close()
            self._journal = Journal(path, writable=True)
            self._journal.end = os.fstat(self._journal.fd).st_size
            self._verified_rows, self._verify_pos = 0, 0

    def _journal_commit(self, record: dict) -> int:
        """Append a record to the journal (before the SQLite transaction); its size."""
        data = encode(record)
        self._journal.append(data)
        return len(data)

    # ------------------------------------------------------------------ verification
    def _verify_codes(self) -> None:
        """Check the check values of committed code rows this object has not checked yet."""
        j = self._journal
        if j is None or self._verified_rows >= self._committed:
            return
        codes = self._view(self._committed)
        data = j.read(self._verify_pos)
        for e in scan(data):
            r = e.record
            if r is None:
                raise StoreCorrupt(f"the journal {j.path} is damaged at byte "
                                   f"{self._verify_pos + e.offset}; {advice(self.directory)}")
            if r["v"] > self._version:
                break
            if r["kind"] != "forget":
                first, n = (0, r["rows"]) if r["kind"] == "base" else (r["first"], r["n"])
                bad = bad_blocks(codes, first, n, r.get("sums", b""), r.get("crc"))
                if bad:
                    self._raise_bad_rows(bad)
            self._verify_pos += e.end - e.offset
            self._verified_rows = r["rows"]
            if r["v"] == self._version:
                break

    def _raise_bad_rows(self, bad: list[tuple[int, int]]) -> None:
        start, end = bad[0]
        try:
            names = sorted({p for (p,) in self._conn.execute(
                "SELECT DISTINCT r.path FROM segments s JOIN recordings r ON r.id = s.recording "
                "WHERE s.first_row < ? AND s.first_row + s.n_rows > ?", (end, start))})
        except Exception:       # noqa: BLE001 - naming them is a courtesy
            names = []
        rows = sum(e - s for s, e in bad)
        raise StoreCorrupt(
            f"{rows} code rows of {self._file.path} fail their checksum (rows {start}-{end - 1}"
            f"{' and more' if len(bad) > 1 else ''}"
            f"{', recordings ' + ', '.join(names[:5]) if names else ''}); "
            f"{advice(self.directory)}")

    def _check_journal(self) -> None:
        """check(): the journal rebuilds exactly this metadata, and every code row
        matches its checksum."""
        j = self._journal
        if j is None:
            return
        entries = list(scan(j.read()))
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            for n, e in enumerate(entries):
                r = e.record
                if r is None:
                    if any(x.record is not None and x.record["v"] <= self._version
                           for x in entries[n:]) or n == 0:
                        raise StoreCorrupt(f"the journal {j.path} is damaged at byte "
                                           f"{e.offset}; {advice(self.directory)}")
                    break
                if r["v"] > self._version:
                    break
                try:
                    if n == 0:
                        if r["kind"] != "base":
                            raise MetadataCorrupt("it does not start with a base record")
                        new_database(mem, r, self.store_id, self.bits, self.fingerprint, 0.0)
                    else:
                        mem.execute("BEGIN")
                        apply_record(mem, r)
                        mem.execute("COMMIT")
                except (MetadataCorrupt, sqlite3.Error, KeyError, TypeError, ValueError) as x:
                    raise StoreCorrupt(f"the journal {j.path} cannot be replayed at byte "
                                       f"{e.offset} ({x}); {advice(self.directory)}") from None
            with self._snapshot():
                ours = state_of(self._conn)
            theirs = state_of(mem)
        finally:
            mem.close()
        for key in ours:
            if ours[key] != theirs[key]:
                what = key
                if isinstance(ours[key], list):
                    diff = [a for a, b in zip(ours[key], theirs[key], strict=False) if a != b]
                    what += f" (first difference: {diff[0] if diff else 'count'})"
                raise StoreCorrupt(f"{self.directory / META_FILE} differs from its journal "
                                   f"{j.path} in {what}; {advice(self.directory)}")
        self._verified_rows, self._verify_pos = 0, 0
        self._verify_codes()

    def _check_tags(self) -> None:
        """The tags table is whole (inside the caller's snapshot)."""
        row = self._conn.execute("SELECT value FROM store_info WHERE key = 'tags_crc'"
                                 ).fetchone()
        if row is not None and row[0] != tags_crc(self._conn):
            raise StoreCorrupt(f"the tags of {self.directory / META_FILE} (applied update "
                               f"batches) fail their checksum; {advice(self.directory)}")
