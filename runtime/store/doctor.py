"""Diagnosis and repair of a code store directory (``cvahash check`` / ``cvahash repair``).

``diagnose(dir)`` is read-only: it opens the store for reading and runs
``CodeStore.check`` (SQLite integrity, every metadata checksum, the journal replayed
and compared with the metadata, every code row's checksum, the file lengths), and
says what is wrong and in which file.

``repair(dir)`` rebuilds the metadata from what can be proven good and keeps a backup
first (``<dir>.backup-<UTC time>``, a plain copy). Its sources, best first: the
journal (every commit, checksummed; survives a lost WAL or a damaged SQLite file),
then the SQLite metadata if it passes every check. Code rows are kept only where
their block checksum matches; a window whose bytes are gone (a cut or damaged code
file) is lost, and so that a later ``cvahash index`` re-does exactly what is missing,
every recording that lost a window is retired as a whole (its remaining windows are
removed from search too, and the file is indexed again as new). The report names
each lost window range (recording, offsets) and each retired recording.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CvahashError, StoreCorrupt, StoreError
from .code_store import CodeStore
from .format import (
    HEADER_SIZE,
    LOCK_FILE,
    META_FILE,
    CodeHeader,
    HeaderError,
    code_file_name,
    fsync_dir,
)
from .journal import (
    bad_blocks,
    block_sums,
    journal_name,
    rows_crc,
    scan,
    segment_entry,
    write_journal,
)
from .metadata import (
    MetadataCorrupt,
    RecordingCache,
    Segments,
    info_problem,
    read_info,
)
from .replay import apply_record, new_database, retire


@dataclass
class Diagnosis:
    directory: Path
    problems: list[str] = field(default_factory=list)
    stats: dict | None = None

    @property
    def clean(self) -> bool:
        return not self.problems


def diagnose(directory) -> Diagnosis:
    """Read-only check of a store directory."""
    d = Diagnosis(Path(directory))
    try:
        with CodeStore.open(directory, "r", finish_commits=False) as store:
            d.stats = store.check()
    except StoreError as e:             # StoreCorrupt included
        d.problems.append(str(e))
    return d


@dataclass
class RepairReport:
    directory: Path
    backup: Path | None = None
    source: str = ""
    windows: int = 0
    lost: list[tuple[str, float, float, int]] = field(default_factory=list)
    retired: list[tuple[str, int]] = field(default_factory=list)
    unknown_rows: int = 0
    dropped_tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost_windows(self) -> int:
        return sum(n for *_, n in self.lost) + self.unknown_rows


def _lock(d: Path) -> int:
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another process is writing to the code store {d} ({d / LOCK_FILE} "
                         "is locked); stop it (the daemon or an index run) and run "
                         "`cvahash repair` again") from None
    return fd


def _backup(d: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = d.parent / f"{d.name}.backup-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = d.parent / f"{d.name}.backup-{stamp}-{n}"
    try:
        shutil.copytree(d, target, ignore=shutil.ignore_patterns(LOCK_FILE))
        for p in target.iterdir():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(target)
    except OSError as e:
        shutil.rmtree(target, ignore_errors=True)
        raise StoreError(f"could not back up {d} to {target} ({e}); nothing was changed. "
                         "Free space (or copy the folder elsewhere yourself) and run "
                         "`cvahash repair` again") from e
    return target


def _read_sqlite(d: Path) -> dict | None:
    """The metadata if it passes every check: info, segments (as Segments), recordings
    by id, tags; None otherwise."""
    path = d / META_FILE
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        if [r[0] for r in conn.execute("PRAGMA integrity_check")] != ["ok"]:
            return None
        info = read_info(conn)
        if info_problem(info) or not all(isinstance(info.get(k), int) for k in (
                "bits", "generation", "committed_rows", "forgotten_rows", "version")):
            return None
        t = Segments.fetch(conn)
        t.validate(info["committed_rows"], info["forgotten_rows"])
        cache = RecordingCache()
        cache.fetch(conn)
        segs = [t.segment(i, cache.get(conn, int(t.rec_id[i]))) for i in range(len(t))]
        tags = [list(r) for r in conn.execute(
            "SELECT tag, applied_utc, first_row, n_rows FROM tags ORDER BY tag")]
        return {"info": info, "segs": segs, "tags": tags}
    except (sqlite3.Error, MetadataCorrupt, UnicodeError, TypeError, ValueError, KeyError,
            CvahashError):
        return None
    finally:
        conn.close()


def _state_from_db(conn) -> tuple[list, list, dict]:
    t = Segments.fetch(conn)
    cache = RecordingCache()
    cache.fetch(conn)
    segs = [t.segment(i, cache.get(conn, int(t.rec_id[i]))) for i in range(len(t))]
    tags = [list(r) for r in conn.execute(
        "SELECT tag, applied_utc, first_row, n_rows FROM tags ORDER BY tag")]
    return segs, tags, read_info(conn)


def _replay(records: list[dict], identity: dict, report: RepairReport) -> tuple[list, list,
                                                                                  dict]:
    """Segments, tags and info after replaying intact records (skipping damaged ones:
    their rows become unknown and are never searched)."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        new_database(mem, records[0], identity["store_id"], identity["bits"],
                     identity["fingerprint"], 0.0)
        extra = 0
        for r in records[1:]:
            rows = read_info(mem)["committed_rows"]
            if r["kind"] == "append" and r["first"] > rows:
                report.unknown_rows += r["first"] - rows
                extra += r["first"] - rows
            if r["kind"] == "base":
                continue
            r = dict(r, forgotten=r["forgotten"] + extra)
            try:
                mem.execute("BEGIN")
                apply_record(mem, r)
                mem.execute("COMMIT")
            except (MetadataCorrupt, sqlite3.Error, KeyError, TypeError, ValueError) as e:
                if mem.in_transaction:
                    mem.execute("ROLLBACK")
                report.notes.append(f"journal version {r.get('v')} could not be replayed "
                                    f"({e}); its rows are treated as lost")
                if r["kind"] == "append":
                    report.unknown_rows += r["n"]
                    extra += r["n"]
        return _state_from_db(mem)
    finally:
        mem.close()


def repair(directory) -> RepairReport:
    """Back up, then rebuild the store's metadata, journal and header from what is
    provably good. Raises StoreError when nothing can be rebuilt (the backup stays)."""
    d = Path(directory)
    if not d.is_dir():
        raise StoreError(f"{d} is not a folder; give the code store folder with --db")
    if not (d / META_FILE).exists() and not any(d.glob("journal-*.bin")):
        raise StoreError(f"{d} is not a code store (no {META_FILE} and no journal)")
    lock = _lock(d)
    try:
        report = RepairReport(d)
        report.backup = _backup(d)
        _rebuild(d, report)
        return report
    finally:
        os.close(lock)


def _rebuild(d: Path, report: RepairReport) -> None:
    db = _read_sqlite(d)
    journals = sorted(d.glob("journal-*.bin"))
    codes_files = sorted(d.glob("codes-*.bin"))
    if db is not None:
        generation = db["info"]["generation"]
    elif journals:
        generation = int(journals[-1].stem.split("-")[1])
    elif codes_files:
        generation = int(codes_files[-1].stem.split("-")[1])
    else:
        raise StoreError(f"{d} holds no code file and no journal: nothing to repair")
    code_path = d / code_file_name(generation)
    if not code_path.exists():
        report.notes.append(f"the code file {code_path.name} was missing: every window is "
                            "lost (restore it from a backup instead, if there is one)")
        code_path.write_bytes(b"")
    jpath = d / journal_name(generation)
    entries = list(scan(jpath.read_bytes())) if jpath.exists() else []
    records = [e.record for e in entries if e.record is not None]
    damaged = [e for e in entries if e.record is None]
    journal_ok = bool(records) and records[0]["kind"] == "base"

    raw = code_path.read_bytes()
    header = None
    try:
        header = CodeHeader.unpack(raw[:HEADER_SIZE])
    except HeaderError as e:
        report.notes.append(f"the code file's header was damaged ({e}); rewritten")
    identity = None
    if header is not None:
        identity = {"bits": header.bits, "fingerprint": header.fingerprint,
                    "store_id": header.store_id.hex()}
    elif journal_ok and all(k in records[0] for k in ("bits", "fingerprint", "store_id")):
        identity = {k: records[0][k] for k in ("bits", "fingerprint", "store_id")}
    elif db is not None:
        identity = {k: db["info"][k] for k in ("bits", "fingerprint", "store_id")}
    if identity is None:
        raise StoreCorrupt(f"neither the code file header, the journal nor the metadata of "
                           f"{d} says which bundle made it; restore from a backup")
    nbytes = (identity["bits"] + 7) // 8
    file_rows = max(0, len(raw) - HEADER_SIZE) // nbytes
    codes = np.frombuffer(raw[HEADER_SIZE:HEADER_SIZE + file_rows * nbytes],
                          np.uint8).reshape(file_rows, nbytes)

    trailing_only = not damaged or (len(damaged) == 1 and damaged[0] is entries[-1])
    db_version = db["info"]["version"] if db is not None else -1
    if journal_ok and (trailing_only or db is None or db_version < records[-1]["v"]):
        segs, tags, info = _replay(records, identity, report)
        report.source = "journal"
        if damaged and not trailing_only:
            report.notes.append(f"{len(damaged)} damaged stretch(es) of the journal were "
                                "skipped")
    elif db is not None:
        segs, tags, info = db["segs"], db["tags"], db["info"]
        report.source = "metadata"
    else:
        raise StoreCorrupt(f"neither the journal nor the metadata of {d} can be read; "
                           "restore the store from a backup or index the recordings again "
                           "into a new store")
    rows = info["committed_rows"]

    # rows whose bytes are provably bad or gone
    bad = np.zeros(max(rows, file_rows), bool)
    bad[file_rows:] = True
    for r in records:
        if r["kind"] == "forget" or r["v"] > info["version"]:
            continue
        if r["kind"] == "base" and r is not records[0] and report.source == "journal":
            continue
        first, n = (0, r["rows"]) if r["kind"] == "base" else (r["first"], r["n"])
        for s, e in bad_blocks(codes, first, n, r.get("sums", b""), r.get("crc")):
            bad[s:e] = True
    # recordings with a lost window are retired whole; so are tagged batches
    for s in segs:
        hit = np.flatnonzero(bad[s.first_row:s.first_row + s.n_rows])
        if len(hit):
            report.lost.append((s.recording.path, s.first_offset_s + hit[0] * s.hop_s,
                                s.first_offset_s + hit[-1] * s.hop_s, len(hit)))
    kept, keep_tags, retired = retire(segs, tags, bad)
    report.dropped_tags = sorted({t[0] for t in tags} - {t[0] for t in keep_tags})
    report.retired = [(path, n) for (path, _), n in sorted(retired.items())]
    committed = min(rows, file_rows)
    if kept:
        committed = max(committed, max(s.first_row + s.n_rows for s in kept))
    live = sum(s.n_rows for s in kept)
    report.windows = live
    version = max([info["version"], db_version] + [r["v"] for r in records]) + 1
    base = {"kind": "base", "v": version, "rows": committed, "forgotten": committed - live,
            "generation": generation, "max_span_s": float(info.get("max_span_s", 0.0)),
            **identity, "segs": [segment_entry(s) for s in kept], "tags": keep_tags,
            "sums": block_sums(codes[:committed], 0), "crc": rows_crc(codes[:committed])}
    _write(d, generation, code_path, header, identity, committed, nbytes, base,
           db["info"].get("created_utc", time.time()) if db is not None else time.time())


def _write(d, generation, code_path, header, identity, committed, nbytes, base,
           created) -> None:
    fd = os.open(code_path, os.O_RDWR)
    try:
        if header is None:
            os.pwrite(fd, CodeHeader(bits=identity["bits"], fingerprint=identity["fingerprint"],
                                     store_id=bytes.fromhex(identity["store_id"]),
                                     generation=generation).pack(), 0)
        os.ftruncate(fd, HEADER_SIZE + committed * nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_journal(d / journal_name(generation), [base])
    tmp = d / f"{META_FILE}.repair"
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        new_database(conn, base, identity["store_id"], identity["bits"],
                     identity["fingerprint"], created)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        (d / f"{META_FILE}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, d / META_FILE)
    for p in d.iterdir():
        if p.name.startswith(("codes-", "journal-")) and p.name not in (
                code_file_name(generation), journal_name(generation)):
            p.unlink()
        elif p.name.endswith(".tmp"):
            p.unlink()
    fsync_dir(d)
