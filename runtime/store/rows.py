"""One part of a code store: the code rows of the current generation and their journal.

Owns the open code file (``codefile.CodeFile``) and journal (``journal.Journal``) of
one generation and how far this process has verified the rows against the journal's
check values. It knows nothing about SQLite: callers pass the committed row count and
version they read from the metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import StoreCorrupt
from .codefile import CodeFile, CodeFileMissing
from .format import META_FILE
from .identity import StoreIdentity, advice
from .journal import Journal, bad_blocks, encode, journal_name, scan, write_journal


class CodeRows:
    """The code file and journal of one generation, opened for reading or writing."""

    def __init__(self, identity: StoreIdentity, writable: bool):
        self.identity = identity
        self.directory = identity.directory
        self.writable = writable
        self._file: CodeFile | None = None
        self._journal: Journal | None = None
        self._verified_rows = 0
        self._verify_pos = 0

    # ------------------------------------------------------------------ opening
    def open(self, info: dict) -> None:
        """Switch to the files of ``info``'s generation (store_info), after checking that
        the code file's header belongs to that metadata."""
        new = CodeFile(self.directory, int(info["generation"]), self.identity.nbytes,
                       writable=self.writable)
        try:
            header = new.header()
            mismatch = [name for name, a, b in (
                ("bits", header.bits, int(info["bits"])),
                ("fingerprint", header.fingerprint, str(info["fingerprint"])),
                ("store id", header.store_id.hex(), str(info["store_id"])),
                ("generation", header.generation, int(info["generation"])))
                if a != b]
            if mismatch:
                raise StoreCorrupt(f"the code file {new.path} does not belong to the metadata "
                                   f"in {self.directory / META_FILE} (different "
                                   f"{', '.join(mismatch)}); restore the matching file from a "
                                   "backup")
        except BaseException:
            new.close()
            raise
        if self._file is not None:
            self._file.close()
        self._file = new
        self._open_journal(int(info["generation"]), info)

    def _open_journal(self, generation: int, info: dict) -> None:
        path = self.directory / journal_name(generation)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.reset_verification()
        try:
            self._journal = Journal(path, writable=self.writable)
        except FileNotFoundError:
            if info.get("journal"):
                # CodeFileMissing: a reader retries with a newer snapshot (compact() may
                # have switched files under it)
                raise CodeFileMissing(f"the journal {path} is missing, so the code rows "
                                      f"cannot be verified; {advice(self.directory)}") from None
            return              # a store made before journals: upgraded on open in "a"
        self._journal.end = os.fstat(self._journal.fd).st_size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # ------------------------------------------------------------------ code file
    @property
    def path(self) -> Path:
        return self._file.path

    def header(self):
        return self._file.header()

    def rows_and_size(self) -> tuple[int, int]:
        return self._file.rows_and_size()

    def view(self, rows: int) -> np.ndarray:
        """Read-only uint8 (rows, nbytes) view of the first ``rows`` code rows."""
        return self._file.view(rows)

    def release_pages(self) -> None:
        self._file.release_pages()

    def write_rows(self, at_row: int, rows: np.ndarray) -> None:
        self._file.write_rows(at_row, rows)

    def cut_to(self, rows: int) -> None:
        self._file.cut_to(rows)

    # ------------------------------------------------------------------ journal
    @property
    def has_journal(self) -> bool:
        return self._journal is not None

    @property
    def journal_path(self) -> Path:
        return self._journal.path

    def journal_last(self):
        """(offset, end, record) of the journal's last record, or None."""
        return self._journal.last()

    def journal_entries(self) -> list:
        return list(scan(self._journal.read()))

    def journal_append(self, record: dict) -> int:
        """Append a record to the journal (before the SQLite transaction); its size."""
        data = encode(record)
        self._journal.append(data)
        return len(data)

    def journal_advance(self, nbytes: int) -> None:
        """The metadata took the record just appended."""
        self._journal.advance(nbytes)

    def journal_taken_to(self, end: int) -> None:
        """The metadata holds the journal up to byte ``end``."""
        self._journal.end = end

    def journal_cut_to(self, end: int) -> None:
        self._journal.cut_to(end)

    def replace_journal(self, base: dict, current_generation: int) -> None:
        """Replace the journal of ``base``'s generation by this one record."""
        path = self.directory / journal_name(base["generation"])
        write_journal(path, [base])
        if base["generation"] == current_generation:
            if self._journal is not None:
                self._journal.close()
            self._journal = Journal(path, writable=True)
            self._journal.end = os.fstat(self._journal.fd).st_size
            self.reset_verification()

    # ------------------------------------------------------------------ verification
    def reset_verification(self) -> None:
        """Verify every row again at the next read."""
        self._verified_rows, self._verify_pos = 0, 0

    def unverified_bad(self, committed: int, version: int) -> list[tuple[int, int]]:
        """Check the committed rows this object has not checked yet against the journal;
        the row ranges that fail (nothing is marked verified past them)."""
        j = self._journal
        if j is None or self._verified_rows >= committed:
            return []
        codes = self.view(committed)
        data = j.read(self._verify_pos)
        for e in scan(data):
            r = e.record
            if r is None:
                raise StoreCorrupt(f"the journal {j.path} is damaged at byte "
                                   f"{self._verify_pos + e.offset}; {advice(self.directory)}")
            if r["v"] > version:
                break
            if r["kind"] != "forget":
                first, n = (0, r["rows"]) if r["kind"] == "base" else (r["first"], r["n"])
                bad = bad_blocks(codes, first, n, r.get("sums", b""), r.get("crc"))
                if bad:
                    return bad
            self._verify_pos += e.end - e.offset
            self._verified_rows = r["rows"]
            if r["v"] == version:
                break
        return []

    def bad_rows(self, rows: int, committed: int, version: int) -> np.ndarray:
        """Committed rows whose bytes are gone (at or past ``rows``) or fail the check
        values of the journal: a boolean mask of length ``committed``."""
        bad = np.zeros(committed, bool)
        bad[rows:] = True
        if self._journal is None:
            return bad
        codes = self.view(min(rows, committed))
        for e in scan(self._journal.read()):
            r = e.record
            if r is None or r["v"] > version:
                break
            if r["kind"] != "forget":
                first, n = (0, r["rows"]) if r["kind"] == "base" else (r["first"], r["n"])
                for s, t in bad_blocks(codes, first, n, r.get("sums", b""), r.get("crc")):
                    bad[s:t] = True
        return bad
