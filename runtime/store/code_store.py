"""The code store: a season of codes and their metadata on a station's SD card.

A store is a directory::

    codes-000000.bin   128-byte header + fixed-size code rows (see store.format), mmapped
    journal-000000.bin every commit again, checksummed, with code-row check values
    meta.sqlite        metadata in SQLite (WAL): recordings, segments, tags (store.metadata)
    writer.lock        flock()ed by the one process that may write

The parts: ``codefile.CodeFile`` (the open code file), ``journal.Journal``,
``metadata`` (schema, checked reads, ``write_transaction``), ``replay.apply_record``
(the one function that changes the metadata, for commits and for rebuilds); this class
binds them, and its methods are grouped in ``append`` (writing), ``scan`` (reading),
``upkeep`` (retention, check) and ``integrity`` (journal checks on open and on read).

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

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument, StoreCorrupt, StoreError
from .append import StoreAppending
from .codefile import CodeFile, CodeFileMissing
from .format import (
    HEADER_SIZE,
    LOCK_FILE,
    MAX_FINGERPRINT,
    META_FILE,
    CodeHeader,
    code_file_name,
    fsync_dir,
    write_new_code_file,
)
from .integrity import JournalAhead, StoreIntegrity, advice
from .interface import CodeStorage
from .journal import block_sums, journal_name, rows_crc, write_journal
from .metadata import (
    MIGRATIONS,
    SCHEMA_VERSION,
    MetadataCorrupt,
    RecordingCache,
    info_problem,
    read_info,
    sql_errors,
    write_transaction,
)
from .records import Hit, Recording, Segment, Window
from .replay import apply_record, new_database
from .scan import StoreReading
from .upkeep import StoreUpkeep

__all__ = ["CodeStore", "Hit", "Recording", "Segment", "Window"]

log = logging.getLogger(__name__)



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


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if read_only else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    if not read_only:
        conn.execute("PRAGMA synchronous = FULL")
    return conn


class CodeStore(StoreAppending, StoreReading, StoreUpkeep, StoreIntegrity, CodeStorage):
    """Codes of one bundle fingerprint plus their metadata, in one directory.

    Open with ``CodeStore.create`` or ``CodeStore.open``; use as a context manager or
    call ``close()``. See the module docstring for the data model and promises.
    """

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, directory, bits: int, fingerprint: str, **options) -> CodeStore:
        """Make a new, empty store in ``directory`` (which must not exist or be empty)
        and open it for appending. ``options`` are those of ``open``."""
        directory = Path(directory)
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
                or not 1 <= bits <= 65535:
            raise InvalidArgument(f"bits must be an integer in 1..65535, got {bits!r}")
        if not isinstance(fingerprint, str) or not fingerprint or not fingerprint.isascii() \
                or len(fingerprint) > MAX_FINGERPRINT:
            raise InvalidArgument(f"fingerprint must be a non-empty ASCII string of at most "
                                  f"{MAX_FINGERPRINT} characters, got {fingerprint!r}")
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StoreError(f"cannot create a code store in {directory}: it already exists "
                             "and is not an empty directory; choose another --db folder")
        # Build it under a temporary name beside it and rename: a cut during create
        # leaves either nothing or a complete store, never a half-made one. The parent
        # is taken lexically ("a/x/../b" is "a/b"), so the temporary folder is always
        # where the rename puts the store.
        directory = Path(os.path.abspath(directory))
        parent = directory.parent
        tmp = parent / f".{directory.name}.creating-{uuid.uuid4().hex[:8]}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            cls._build(tmp, int(bits), fingerprint)
            if directory.exists():
                directory.rmdir()
            os.rename(tmp, directory)
            fsync_dir(parent)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if directory.is_dir() and (directory / META_FILE).exists():
                raise StoreError(f"another process created the code store {directory} at the "
                                 "same time; run the command again to add to it") from None
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"the disk holding {parent} is full: cannot create the code "
                                 f"store {directory}; free space and try again") from None
            raise StoreError(f"cannot create the code store {directory}: {e.strerror or e} "
                             f"({e.filename or parent}); check the --db path and its "
                             "permissions") from None
        return cls.open(directory, "a", **options)

    @staticmethod
    def _build(tmp: Path, bits: int, fingerprint: str) -> None:
        """The files of a new, empty store in the folder ``tmp``."""
        store_id = uuid.uuid4()
        header = CodeHeader(bits=bits, fingerprint=fingerprint, store_id=store_id.bytes,
                            generation=0)
        write_new_code_file(tmp / code_file_name(0), header)
        base = {"kind": "base", "v": 0, "rows": 0, "forgotten": 0, "generation": 0,
                "max_span_s": 0.0, "bits": bits, "fingerprint": fingerprint,
                "store_id": store_id.hex, "segs": [], "tags": [], "sums": b""}
        write_journal(tmp / journal_name(0), [base])
        conn = sqlite3.connect(tmp / META_FILE, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            new_database(conn, base, store_id.hex, bits, fingerprint, time.time())
        except sqlite3.Error as e:
            raise OSError(errno.ENOSPC if "full" in str(e) else errno.EIO, str(e),
                          str(tmp / META_FILE)) from e
        finally:
            conn.close()
        (tmp / LOCK_FILE).touch()
        fsync_dir(tmp)

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
        store._init(Path(directory), mode, int(commit_every_windows), float(commit_every_s))
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

    def _init(self, directory: Path, mode: str, every_windows: int, every_s: float) -> None:
        self.directory = directory
        self.mode = mode
        self.commit_every_windows = every_windows
        self.commit_every_s = every_s
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._file: CodeFile | None = None
        self._journal = None
        self._verified_rows = 0
        self._verify_pos = 0
        self._checkpointed = time.monotonic()
        self._recordings = RecordingCache()
        self._checked_segments: dict[tuple, None] = {}
        self._pending_codes: list[np.ndarray] = []
        self._pending_segs: list[Segment] = []
        self._pending_rows = 0
        self._pending_since: float | None = None
        self._version = None
        self._layout = None
        self._generation = None
        self._committed = 0
        self._forgotten = 0
        self._max_span = 0.0
        self._closed = False

    def _open(self) -> None:
        d = self.directory
        if not (d / META_FILE).is_file():
            if d.is_dir() and any(d.glob("journal-*.bin")):
                raise StoreCorrupt(f"the metadata file {d / META_FILE} of the code store {d} "
                                   f"is missing; {advice(d)}")
            raise StoreError(f"{d} is not a code store (no {META_FILE}); `cvahash index "
                             "--db DIR` creates one, or check the [store] path")
        problem = sqlite_file_problem(d / META_FILE)
        if problem:
            raise StoreCorrupt(f"the metadata file {d / META_FILE} {problem}; {advice(d)}")
        if self.mode == "a":
            self._take_writer_lock()
        with sql_errors(d / META_FILE, "open the store"):
            self._conn = _connect(d / META_FILE, read_only=self.mode == "r")
            info = read_info(self._conn)
        self._check_info(info)
        self.bits = int(info["bits"])
        self.nbytes = (self.bits + 7) // 8
        self.fingerprint = str(info["fingerprint"])
        self.store_id = str(info["store_id"])
        if self.mode == "a":
            self._remove_strays(int(info["generation"]))
        self._sync(force=True, opening=True)

    def _take_writer_lock(self) -> None:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"another process (pid {holder}) is writing to the code store "
                             f"{self.directory} ({path} is locked); stop it or open the store "
                             'with mode="r"') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_info(self, info: dict) -> None:
        where = self.directory / META_FILE
        needed = ("schema_version", "store_id", "bits", "fingerprint", "generation",
                  "committed_rows", "forgotten_rows", "max_span_s", "version", "layout")
        missing = [k for k in needed if k not in info]
        if missing:
            raise StoreCorrupt(f"{where} lacks store_info keys {missing}; it is not a complete "
                               f"code store; {advice(self.directory)}")
        schema = info["schema_version"]
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise StoreError(f"{where} has schema version {schema!r}; this cvahash reads up "
                             f"to {SCHEMA_VERSION}: upgrade cvahash")
        if schema < SCHEMA_VERSION:
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

    def _remove_strays(self, generation: int) -> None:
        """Delete code files a cut left behind (an interrupted compact or create)."""
        current = code_file_name(generation)
        keep = {current, journal_name(generation)}
        for p in self.directory.iterdir():
            if p.name.startswith(("codes-", "journal-")) and p.name not in keep:
                log.warning("code store %s: removing %s left by an interrupted compact",
                            self.directory, p.name)
                p.unlink()

    # ------------------------------------------------------------------ state
    @contextmanager
    def _snapshot(self):
        """One SQLite read transaction around a call: the committed state, the filters
        and the hit lookups all see the same commit, whatever the writer does meanwhile."""
        conn = self._conn
        if conn.in_transaction:
            yield
            return
        for attempt in range(4):
            with sql_errors(self.directory / META_FILE, "read the store's state"):
                conn.execute("BEGIN")
            try:
                self._sync()
                break
            except CodeFileMissing:
                # compact() switched files and deleted the one our snapshot names:
                # take a newer snapshot
                conn.execute("ROLLBACK")
                if self.mode == "a" or attempt == 3:
                    raise
                time.sleep(0.01)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        try:
            with sql_errors(self.directory / META_FILE, "read the store's metadata"):
                yield
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    # ending a read transaction on a damaged file may fail too; the
                    # error being raised (if any) is the one that says what happened
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")

    def _sync(self, force: bool = False, opening: bool = False) -> None:
        """Bring the cached committed state up to date with SQLite (cheap when unchanged).

        The writer holds the lock, so only its own writes change the store: it syncs
        after them (force) and skips the version query otherwise.
        """
        if self.mode == "a" and not force:
            return
        conn = self._conn
        own = not conn.in_transaction
        with sql_errors(self.directory / META_FILE, "read the store's state"):
            if own:
                conn.execute("BEGIN")
            try:
                if not force:
                    (version,) = conn.execute(
                        "SELECT value FROM store_info WHERE key = 'version'").fetchone()
                    if version == self._version:
                        return
                info = read_info(conn)
                self._check_info(info)
            finally:
                if own and conn.in_transaction:
                    conn.execute("COMMIT")
        if info["layout"] != self._layout:
            self._recordings.clear()
            self._checked_segments.clear()
        if info["generation"] != self._generation:
            self._open_code_file(info)
        self._committed, self._forgotten = info["committed_rows"], info["forgotten_rows"]
        self._max_span = float(info["max_span_s"])
        self._version, self._layout = info["version"], info["layout"]
        self._generation = info["generation"]
        if opening:
            self._reconcile_journal()
        self._check_file_length(opening)

    def _check_segment_totals(self, conn, info: dict) -> None:
        """check(): the segments account for every committed row (a segment row that
        vanished from a damaged database shows up here) and lie inside them."""
        count, total, max_end, min_first, min_n = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_rows), 0), COALESCE(MAX(first_row + n_rows), 0),"
            " COALESCE(MIN(first_row), 0), COALESCE(MIN(n_rows), 1) FROM segments").fetchone()
        committed, forgotten = info["committed_rows"], info["forgotten_rows"]
        if not all(isinstance(x, int) for x in (count, total, max_end, min_first, min_n)) \
                or total + forgotten != committed or max_end > committed or min_first < 0 \
                or min_n < 1:
            raise MetadataCorrupt(
                f"{count} segments hold {total} rows ending at row {max_end} and {forgotten} "
                f"rows were forgotten, but {committed} rows are committed")

    def _open_code_file(self, info: dict) -> None:
        new = CodeFile(self.directory, int(info["generation"]), self.nbytes,
                       writable=self.mode == "a")
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

    def _file_rows(self) -> tuple[int, int]:
        return self._file.rows_and_size()

    def _check_file_length(self, opening: bool) -> None:
        rows, size = self._file_rows()
        path = self.directory / code_file_name(self._generation)
        if rows < self._committed:
            if self.mode == "r":
                raise StoreCorrupt(
                    f"the code file {path} holds {rows} rows but {self._committed} were "
                    f"committed (the card lost data); {advice(self.directory)}")
            self._recover_to(rows)
        elif opening and self.mode == "a" and size != HEADER_SIZE + self._committed * self.nbytes:
            # an append cut before its commit: those rows were never acknowledged
            log.info("code store %s: dropping %d bytes of uncommitted tail", self.directory,
                     size - HEADER_SIZE - self._committed * self.nbytes)
            self._file.cut_to(self._committed)

    def _recover_to(self, rows: int) -> None:
        """Keep the ``rows`` rows the code file still holds (mode "a"): a base record of
        what remains goes to the journal first, then the same change to the metadata."""
        lost = self._committed - rows
        bad = self._bad_rows(rows)
        base = self._base_record(self._version + 1, keep_rows=rows, bad=bad)
        self._verified_rows = 0
        base["sums"] = block_sums(self._view(rows), 0)
        base["crc"] = rows_crc(self._view(rows))
        self._write_base(base)
        with self._write_transaction("drop the lost rows' metadata") as conn:
            apply_record(conn, base)
        log.warning("code store %s: the code file lost its last %d rows (power cut or card "
                    "fault); their metadata was dropped and the recordings they belonged to "
                    "retired (%s), so that indexing them again re-does them; %d rows remain",
                    self.directory, lost, ", ".join(base["retired"]) or "none", rows)
        self._file.cut_to(rows)
        self._sync(force=True)

    def _write_transaction(self, what: str, note: str = ""):
        """The one way the store writes its metadata (see metadata.write_transaction)."""
        return write_transaction(self._conn, self.directory / META_FILE, what, note)

    def _view(self, rows: int) -> np.ndarray:
        """Read-only uint8 (rows, nbytes) view of the first ``rows`` code rows."""
        return self._file.view(rows)

    def _live(self, refresh: bool = True) -> None:
        if self._closed:
            raise StoreError(f"the code store {self.directory} is closed")
        if refresh:
            with self._snapshot():
                pass

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        """Searchable (committed, not forgotten) windows."""
        with self._lock:
            self._live()
            return self._committed - self._forgotten

    @property
    def durable_rows(self) -> int:
        """Committed code rows (including forgotten ones not yet compacted); rows below
        this number survive a power cut."""
        with self._lock:
            self._live()
            return self._committed

    @property
    def pending_rows(self) -> int:
        """Rows appended but not yet committed (lost on a power cut)."""
        return self._pending_rows

    @property
    def codes(self) -> np.ndarray:
        """Read-only view of every committed code row (forgotten rows included)."""
        with self._lock:
            self._live()
            self._verify_codes()
            return self._view(self._committed)

    def require(self, fingerprint: str | None = None, bits: int | None = None) -> None:
        """Raise FingerprintMismatch unless the store was made for this bundle."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"the code store {self.directory} holds codes of bundle fingerprint "
                f"{self.fingerprint!r} ({self.bits} bits), not {fingerprint!r}; use a store "
                "made with this bundle or re-index with it into a new store")
        if bits is not None and bits != self.bits:
            raise FingerprintMismatch(
                f"the code store {self.directory} holds {self.bits}-bit codes (fingerprint "
                f"{self.fingerprint!r}), not {bits}-bit ones")

    @classmethod
    def migrate(cls, directory) -> int:
        """Upgrade a store's schema to this cvahash's version; return the old version."""
        directory = Path(directory)
        store = cls.__new__(cls)
        store._init(directory, "a", 1, 1.0)
        try:
            store._take_writer_lock()
            with sql_errors(directory / META_FILE, "migrate the schema"):
                conn = _connect(directory / META_FILE, read_only=False)
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
            store._release()


    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Commit what is buffered (mode "a"), then release files and the writer lock."""
        with self._lock:
            if self._closed:
                return
            try:
                if self.mode == "a" and self._conn is not None:
                    self.flush()
                    self._checkpoint()
            finally:
                self._release()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers), so
        committed metadata does not live only in the WAL for long."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.info("code store %s: WAL checkpoint skipped (%s)", self.directory, e)
        self._checkpointed = time.monotonic()

    def _release(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
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
