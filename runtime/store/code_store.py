"""The code store: a season of codes and their metadata on a station's SD card.

A store is a directory::

    codes-000000.bin   128-byte header + fixed-size code rows (see store.format), mmapped
    journal-000000.bin every commit again, checksummed, with code-row check values
    meta.sqlite        metadata in SQLite (WAL): recordings, segments, tags (store.metadata)
    writer.lock        flock()ed by the one process that may write

The parts, each owning its state behind a small interface (this class only binds
them, holds the lock and checks that the store is open): ``identity.StoreIdentity``
(directory, width, fingerprint; fingerprint and code checks), ``metadb.MetadataDB``
(the SQLite connection, the committed state it last read, its caches),
``rows.CodeRows`` (the code file and journal of the current generation, row
verification), ``sync.StoreSync`` (snapshots; keeping the database and the rows in
step: roll-forward, recovery, tail), ``append.Appender`` (the commit buffer and
commits), ``scan.Reader`` (search and reads) and ``upkeep.Upkeep`` (forget, compact,
check); ``create`` makes a new store's files. ``metadata`` holds the schema and checked
reads, ``replay.apply_record`` the one function that changes the metadata.

Data model. Row r of the code file is one window of audio. Windows are described by
*segments* (records.Segment): n consecutive rows from one recording on a regular
hop, so a recording or a capture run costs one metadata row; irregular windows are
one-row segments. A commit extends the last segment when new windows continue its
grid, so a daemon appending a few windows at a time still writes one segment per run.
Every API hands out per-window metadata (records.Window / Hit). Times are UTC
epoch seconds (float); aware datetimes are accepted as input; times a store keeps
(capture and start times) must lie in 1970..2200.

Commit protocol (why a power cut at any instant is safe):
  1. the new code rows are written after the last committed row, and the commit's
     journal record (rows, block check values, segments, tag) after the journal's last
     record; both are fdatasync()ed;
  2. one SQLite transaction (synchronous=FULL) applies the same record: recordings,
     segments, tags and the new ``committed_rows`` (and store_info's check value).
The committed row count is kept twice (SQLite and the last journal record) and
cross-checked on every open. A cut before 2 leaves a journal record the metadata
lacks: the next open (a writer, or a reader when no writer runs) takes it after its
code rows pass their check values, or drops it if they never fully reached the card; the
same happens to several records when the metadata lost its WAL. Bytes past the
committed rows are an uncommitted tail that readers never look at and the next writer
truncates. A code file *shorter* than committed_rows (a card that lost data) is
recovered when opened in "a" mode (segments and tags beyond the rows the file holds
are dropped, with a logged warning); mode "r" refuses it and names ``cvahash check``
and ``cvahash repair`` (which also retires the cut recording so that ``index`` re-does
it). A damaged header, a cut SQLite file or one SQLite cannot read is refused on open
with StoreCorrupt. Every metadata row carries a check value that is verified whenever
the row is read (filters, hits, iter_segments), so a flipped byte is refused at that
moment rather than returned; code rows are verified against their journal check values the
first time a process reads them (then only new rows); ``check()`` verifies everything
at once (SQLite's integrity check, every row, the journal replayed and compared with
the metadata, every code row). Opening reads store_info, the header and the journal's
last record, so it costs the same for any size. The WAL is checkpointed at least
every minute while committing and on close.

Durability promise. ``append`` buffers in memory and commits when the buffer holds
``commit_every_windows`` windows, when the oldest buffered window is
``commit_every_s`` seconds old (checked at each append; call ``flush`` from a timer
for an idle daemon), when ``commit=True`` or ``tag=`` is given, and on ``flush`` and
``close``. Rows below ``durable_rows`` are durable: after ``flush()`` returns, or an
``append`` after which ``pending_rows == 0``, everything appended so far survives a
power cut. One append call is never split across commits.

Readers and one writer. Mode "a" takes an exclusive flock (a second writer gets
StoreError). Any number of "r" stores (other processes or threads) may read at the
same time: each search reads committed_rows and segments in one SQLite read
transaction and scans only that prefix of the code file, so it sees a consistent
prefix and never a torn row; the next search sees newer commits. A CodeStore object
is safe to share between threads (one lock per object).

Retention. ``forget(recording)`` removes a recording's windows from the metadata (its
rows stay in the file but are never searched); ``compact()`` writes a new code file
without forgotten rows (``codes-<generation+1>.bin``), switches to it in one SQLite
transaction, then deletes the old file. Row numbers change on compact.

Exactly-once batches (SD-card updates): ``append(..., tag="update-id")`` records the
tag in the same transaction as the rows; ``has_tag`` says whether it was applied and a
second append with the same tag changes nothing.

Schema upgrades are explicit: a store with an older schema is refused with a message
naming ``CodeStore.migrate(dir)``; a newer one asks for a newer cvahash. A store made
before journals gets one the first time a writer opens it (its current state as a base
record; nothing else changes).

API at a glance (types in cvahash.store.records, re-exported here)::

    CodeStore.create(dir, bits, fingerprint, **open_options) -> CodeStore   # mode "a"
    CodeStore.open(dir, "r" | "a", *, fingerprint=None, bits=None,
                   commit_every_windows=1, commit_every_s=300.0) -> CodeStore
    store.append(codes, windows, *, tag=None, fingerprint=None, commit=False) -> range
        codes uint8 (n, nbytes) packed MSB-first; windows: Segment | [Segment] | [Window]
    store.flush() -> durable_rows          store.close() / with CodeStore.open(...) as s:
    store.search(queries, k, *, since=None, until=None, station=None, recording=None,
                 fingerprint=None, threads=0) -> [[Hit, ...] per query]
    store.search_rows(...same...) -> (distances int32[nq,k'], rows int64[nq,k'])
    store.read(rows) -> (codes copy, [Window])     store.iter_segments() -> (Segment, codes)
    store.has_tag(tag)   store.has_recording(path, content_hash)   store.recordings()
    store.forget(path | Recording) -> rows         store.compact() -> rows freed
    store.stats() -> dict     store.check() -> dict or StoreCorrupt
    store.bits, .nbytes, .fingerprint, .store_id, .durable_rows, .pending_rows,
    .codes (read-only view), len(store) (searchable windows), store.require(fp, bits)

Filters: ``since``/``until`` keep windows whose *capture start* lies in [since, until);
``station`` and ``recording`` take one value or several. A time window maps to a few
contiguous row ranges through the segments; many short ranges become a boolean mask.

Resumable indexing: ``has_recording(path, content_hash)`` is true once windows of that
recording are committed; append all windows of one file in one call, so that a cut
never leaves half a file that looks done.

Errors (cvahash.errors): StoreError (cannot open/write: not a store, second writer,
read-only, disk full), StoreCorrupt (damage that was refused), FingerprintMismatch
(another bundle or width; shows both), InvalidCodes / InvalidArgument (bad input).
Messages name the store directory and file and say what to do.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument, StoreCorrupt, StoreError
from .append import Appender, as_segments
from .create import create_files, remove_strays
from .format import META_FILE
from .identity import StoreIdentity, advice, take_writer_lock
from .interface import CodeStorage
from .metadb import MetadataDB, migrate_schema, sqlite_file_problem
from .records import Hit, Recording, Segment, Window
from .rows import CodeRows
from .scan import Reader
from .sync import JournalAhead, StoreSync
from .upkeep import Upkeep

__all__ = ["CodeStore", "Hit", "Recording", "Segment", "Window"]


class CodeStore(CodeStorage):
    """Codes of one bundle fingerprint plus their metadata, in one directory.

    Open with ``CodeStore.create`` or ``CodeStore.open``; use as a context manager or
    call ``close()``. See the module docstring for the data model and promises.
    """

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, directory, bits: int, fingerprint: str, **options) -> CodeStore:
        """Make a new, empty store in ``directory`` (which must not exist or be empty)
        and open it for appending. ``options`` are those of ``open``."""
        directory = create_files(directory, bits, fingerprint)
        return cls.open(directory, "a", **options)

    @classmethod
    def open(cls, directory, mode: str = "r", *, fingerprint: str | None = None,
             bits: int | None = None, commit_every_windows: int = 1,
             commit_every_s: float = 300.0, finish_commits: bool = True) -> CodeStore:
        """Open a store for reading (``"r"``) or appending (``"a"``, one writer at a time).

        ``fingerprint`` / ``bits``: refuse (FingerprintMismatch) a store made with another
        bundle. ``commit_every_windows`` / ``commit_every_s``: append batching (mode "a").
        ``finish_commits``: when no writer is running and the journal holds commits the
        metadata lacks (a writer cut mid-commit, a lost WAL), a reader first takes them
        (as a writer would on open); False refuses instead (``cvahash check``).
        """
        if mode not in ("r", "a"):
            raise InvalidArgument(f'mode must be "r" or "a", got {mode!r}')
        if isinstance(commit_every_windows, bool) or int(commit_every_windows) < 1:
            raise InvalidArgument(f"commit_every_windows must be >= 1, got "
                                  f"{commit_every_windows!r}")
        if not float(commit_every_s) > 0:
            raise InvalidArgument(f"commit_every_s must be > 0, got {commit_every_s!r}")
        store = cls.__new__(cls)
        store.directory, store.mode = Path(directory), mode
        store.commit_every_windows = int(commit_every_windows)
        store.commit_every_s = float(commit_every_s)
        store._lock = threading.RLock()
        store._closed = False
        store._lock_fd = None
        store._db = store._rows = None
        try:
            store._open()
            store.require(fingerprint, bits)
        except OSError as e:
            store._release()
            raise StoreError(f"cannot open the code store {directory} for "
                             f"{'writing' if mode == 'a' else 'reading'}: "
                             f"{e.strerror or e} ({e.filename or directory}); check the folder's "
                             "permissions (a store on a read-only card can only be searched)"
                             ) from None
        except JournalAhead:
            store._release()
            if mode != "r" or not finish_commits:
                raise
            try:
                cls.open(directory, "a").close()
            except StoreError as e:
                raise StoreCorrupt(f"{e} (while taking the commits the journal of "
                                   f"{directory} holds beyond its metadata)") from e
            return cls.open(directory, mode, fingerprint=fingerprint, bits=bits,
                            finish_commits=False)
        except BaseException:
            store._release()
            raise
        return store

    def _open(self) -> None:
        """Check the files, take the writer lock (mode "a"), connect and build the parts."""
        d, writable = self.directory, self.mode == "a"
        if not (d / META_FILE).is_file():
            if d.is_dir() and any(d.glob("journal-*.bin")):
                raise StoreCorrupt(f"the metadata file {d / META_FILE} of the code store {d} "
                                   f"is missing; {advice(d)}")
            raise StoreError(f"{d} is not a code store (no {META_FILE}); `cvahash index "
                             "--db DIR` creates one, or check the [store] path")
        problem = sqlite_file_problem(d / META_FILE)
        if problem:
            raise StoreCorrupt(f"the metadata file {d / META_FILE} {problem}; {advice(d)}")
        if writable:
            self._lock_fd = take_writer_lock(d)
        self._db = MetadataDB(d, writable)
        info = self._db.connect()
        self._id = StoreIdentity(d, int(info["bits"]), str(info["fingerprint"]),
                                 str(info["store_id"]))
        self.bits, self.nbytes = self._id.bits, self._id.nbytes
        self.fingerprint, self.store_id = self._id.fingerprint, self._id.store_id
        if writable:
            remove_strays(d, int(info["generation"]))
        self._rows = CodeRows(self._id, writable)
        self._sync = StoreSync(self._id, self._db, self._rows, writable)
        self._appender = Appender(self._id, self._db, self._rows, self._sync,
                                  self.commit_every_windows, self.commit_every_s) \
            if writable else None
        self._reader = Reader(self._id, self._db, self._sync)
        self._upkeep = Upkeep(self._id, self._db, self._rows, self._sync, self._appender)
        self._sync.sync(force=True, opening=True)

    def _live(self, refresh: bool = True) -> None:
        if self._closed:
            raise StoreError(f"the code store {self.directory} is closed")
        if refresh:
            with self._sync.snapshot():
                pass

    def _writable(self, what: str) -> None:
        self._live(refresh=False)
        if self.mode != "a":
            raise StoreError(f"cannot {what}: the code store {self.directory} is open "
                             "read-only (only `cvahash index`, `update apply` and the daemon "
                             "write to a store)")

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        """Searchable (committed, not forgotten) windows."""
        with self._lock:
            self._live()
            return self._db.committed - self._db.forgotten

    @property
    def durable_rows(self) -> int:
        """Committed code rows (including forgotten ones not yet compacted); rows below
        this number survive a power cut."""
        with self._lock:
            self._live()
            return self._db.committed

    @property
    def pending_rows(self) -> int:
        """Rows appended but not yet committed (lost on a power cut)."""
        return self._appender.pending_rows if self._appender is not None else 0

    @property
    def codes(self) -> np.ndarray:
        """Read-only view of every committed code row (forgotten rows included)."""
        with self._lock:
            self._live()
            return self._sync.committed_codes()

    def release_pages(self) -> None:
        """Give back the memory pages of the code file that searches have read (they stay
        in the kernel's page cache; the next search maps them again). For long-running
        readers such as the web page, between searches; results do not change."""
        with self._lock:
            if self._rows is not None:
                self._rows.release_pages()

    def require(self, fingerprint: str | None = None, bits: int | None = None) -> None:
        """Raise FingerprintMismatch unless the store was made for this bundle."""
        self._id.require(fingerprint, bits)

    # ------------------------------------------------------------------ writing
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
            arr = self._id.check_codes(codes, "codes")
            segs = as_segments(windows, len(arr))
            if tag is not None:
                if not isinstance(tag, str) or not tag:
                    raise InvalidArgument(f"tag must be a non-empty string, got {tag!r}")
                if self.has_tag(tag):
                    return range(self._db.committed, self._db.committed)
            return self._appender.add(arr, segs, tag, commit)

    def flush(self) -> int:
        """Commit everything appended so far; return ``durable_rows``."""
        with self._lock:
            self._live(refresh=False)
            if self._appender is not None and self._appender.pending:
                self._appender.commit(None, None)
            return self._db.committed

    def forget(self, recording) -> int:
        """Remove the windows of a recording (a path: every version of it; or a Recording)
        from search; return how many rows. ``compact()`` reclaims their space."""
        with self._lock:
            self._writable("forget recordings")
            self.flush()
            return self._upkeep.forget(recording)

    def compact(self) -> int:
        """Rewrite the code file without forgotten rows; return how many rows it freed.

        Needs free space for the kept rows. Row numbers change; readers switch to the
        new file at their next search.
        """
        with self._lock:
            self._writable("compact")
            self.flush()
            return self._upkeep.compact()

    # ------------------------------------------------------------------ reading
    def search_rows(self, queries, k: int, *, since=None, until=None, station=None,
                    recording=None, fingerprint: str | None = None, threads: int = 0):
        """Like ``search`` but return the kernel's arrays ``(distances, rows)``."""
        with self._lock:
            self._live(refresh=False)
            with self._sync.snapshot():
                return self._reader.search_rows(queries, k, since, until, station, recording,
                                                fingerprint, threads)

    def search(self, queries, k: int, *, since=None, until=None, station=None,
               recording=None, fingerprint: str | None = None,
               threads: int = 0) -> list[list[Hit]]:
        """The k nearest windows to each query code, with their metadata.

        ``queries``: uint8 (nq, nbytes) or one (nbytes,). Filters: ``since``/``until``
        keep windows whose capture time lies in [since, until) (aware datetime or UTC
        epoch seconds); ``station``: a station name or several; ``recording``: a path, a
        Recording, or several. Returns one list of Hits per query, nearest first, ties
        by row. Only committed rows are searched.
        """
        with self._lock:
            self._live(refresh=False)
            return self._reader.search(queries, k, since, until, station, recording,
                                       fingerprint, threads)

    def search_reordered(self, queries, k: int, order, *, since=None, until=None,
                         station=None, recording=None, fingerprint: str | None = None,
                         threads: int = 0) -> list[list[Hit]]:
        """``search`` for ``k`` candidates per query, then ``order(i, codes, distances)``
        picks the hits of query i: it gets the candidates' codes (uint8 (m, nbytes), a
        copy) and Hamming distances (int (m,)), nearest first with ties by row, and
        returns the indices of the candidates to keep, in the order wanted. Only the kept
        windows' metadata is read, all in one snapshot. For re-ranking text searches
        (`cvahash.query.search.search_text`)."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.search(queries, k, since, until, station, recording,
                                       fingerprint, threads, order=order)

    def read(self, rows) -> tuple[np.ndarray, list[Window]]:
        """Codes (a copy, uint8 (m, nbytes)) and windows of the given committed rows."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.read(rows)

    def iter_segments(self) -> Iterator[tuple[Segment, np.ndarray]]:
        """Every segment in row order with a copy of its codes, from one snapshot.

        Feeding them to another store's ``append`` copies a store (the merge tool).
        """
        with self._lock:
            self._live(refresh=False)
            segs, codes = self._reader.segments_and_codes()
        for seg in segs:
            yield seg, codes[seg.first_row:seg.first_row + seg.n_rows].copy()

    def recordings(self) -> list[Recording]:
        """Every recording with committed windows."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.recordings()

    def has_tag(self, tag: str) -> bool:
        """Whether a tagged append with this tag was committed."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.has_tag(tag)

    def has_recording(self, path: str, content_hash: str = "") -> bool:
        """Whether committed windows of this recording (same path and content hash) exist."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.has_recording(path, content_hash)

    def stats(self) -> dict:
        """rows, bytes on disk, time span and stations of the committed store."""
        with self._lock:
            self._live(refresh=False)
            return self._reader.stats(self.pending_rows)

    def check(self) -> dict:
        """Verify the whole store (SQLite integrity, header, file length, metadata
        checksums and layout, the journal rebuilding exactly this metadata, every code
        row's checksum); return ``stats()`` or raise StoreCorrupt."""
        with self._lock:
            self._live(refresh=False)
            self._upkeep.check()
            return self.stats()

    # ------------------------------------------------------------------ schema
    @classmethod
    def migrate(cls, directory) -> int:
        """Upgrade a store's schema to this cvahash's version; return the old version."""
        return migrate_schema(Path(directory))

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Commit what is buffered (mode "a"), then release files and the writer lock."""
        with self._lock:
            if self._closed:
                return
            try:
                if self.mode == "a" and self._db is not None and self._db.conn is not None:
                    self.flush()
                    self._db.checkpoint()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        if self._db is not None:
            self._db.close()
        if self._rows is not None:
            self._rows.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"CodeStore({str(self.directory)!r}, mode={self.mode!r}, bits={self.bits}, "
                f"fingerprint={self.fingerprint!r})")

