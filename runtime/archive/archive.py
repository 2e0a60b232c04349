"""The network archive: every station's codes in ClickHouse, searched and counted together.

Schema (see docs/archive.md for the reasons and the cluster DDL). One code table per
bundle fingerprint, so codes of two bundles are never compared::

    codes_<16 hex of sha256(fingerprint)>
        station   LowCardinality(String)
        capture   DateTime64(6, 'UTC')  CODEC(Delta, LZ4)       window's capture start
        recording UInt64                CODEC(LZ4)              id of (station, path, hash)
        offset_us Int64                 CODEC(Delta, LZ4)       start into the recording
        length_s  Float64               CODEC(LZ4)
        clock     LowCardinality(String)
        batch     UInt32                CODEC(T64, LZ4)         the ingest that brought it
        seq       UInt32                CODEC(Delta, LZ4)       its position in that update
        c0 .. cW  UInt64                CODEC(NONE)             the code, 64 bits a column
    ENGINE MergeTree PARTITION BY toYYYYMM(capture)
    ORDER BY (station, capture, recording, offset_us)

plus ``bundles`` (fingerprint -> bits, table), ``recordings`` (id -> path, station,
content hash, start, rate, duration), ``ingests`` (the ledger: one row per update
ingested, written last) and ``starts`` / ``aborts`` (ingests begun / cleaned up).

A window is identified by (fingerprint, recording, offset). Ingest is idempotent and
all-or-nothing for readers: the update is verified completely (signature first) before
anything is written; windows the archive already holds are dropped before insert
(checked against the ledger-visible rows of the same recordings); the rows carry the
update's batch number and become visible only when the update's ledger row is written,
because every read keeps ``batch IN (SELECT batch FROM ingests)``. A process killed
mid-ingest leaves rows of a batch that has a ``starts`` row and no ledger row: the next
ingest deletes them first, so a rerun gives exactly the rows of a clean ingest.

Search order: distance, then insertion order (the ingest's number, then the window's
position in its update), the documented tie key: the archive answers exactly as a
station store that applied the same updates in the same order. `ArchiveView.search`
takes the station store's arguments (queries, k, since, until, station) and returns the
store's `Hit` records, so `cvahash.query.search.search_text` runs over the archive
unchanged; `cvahash.archive.storage.ArchiveStore` is the archive behind the storage
interface (`cvahash.store.interface.CodeStorage`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument, InvalidCodes
from ..store.records import Hit, Recording, to_utc_seconds
from ..update.format import load_public_key, read_update
from .engine import ArchiveError, Engine, open_engine

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KEEP_VERIFIED_BYTES = 512 * 1024 * 1024
TIE_MARGIN = 100  # windows fetched past k, so the k-th's ties are usually all in hand
LAZY_LIMIT = 100_000
CODE_CODEC = "NONE"  # measured in bench/archive_bench.py: LZ4/ZSTD save nothing on codes
BUCKETS = {"day": "toStartOfDay", "hour": "toStartOfHour"}
_ROW_ID_MASK = (1 << 53) - 1  # window ids stay exact in JSON readers (JavaScript numbers)

_BASE_DDL = [
    """CREATE TABLE IF NOT EXISTS archive_info (key String, value String)
       ENGINE = ReplacingMergeTree ORDER BY key""",
    """CREATE TABLE IF NOT EXISTS bundles (fingerprint String, bits UInt16, code_table String,
       added DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY fingerprint""",
    """CREATE TABLE IF NOT EXISTS recordings (id UInt64, station String, path String,
       content_hash String, start_utc Nullable(Float64), sample_rate Nullable(UInt32),
       duration_s Nullable(Float64)) ENGINE = ReplacingMergeTree ORDER BY id""",
    """CREATE TABLE IF NOT EXISTS starts (batch UInt32, update_id String,
       started DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY batch""",
    """CREATE TABLE IF NOT EXISTS aborts (batch UInt32) ENGINE = MergeTree ORDER BY batch""",
    """CREATE TABLE IF NOT EXISTS ingests (batch UInt32, update_id String, fingerprint String,
       bits UInt16, file String, key_id String, created String, stations Array(String),
       rows_in_file UInt64, rows_added UInt64, first_capture Nullable(Float64),
       last_capture Nullable(Float64), ingested DateTime64(3, 'UTC'))
       ENGINE = MergeTree ORDER BY batch""",
]


def code_table(fingerprint: str) -> str:
    """The code table of a bundle: a name made of hex digits only (never user text)."""
    return "codes_" + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def code_table_ddl(table: str, bits: int, codec: str = CODE_CODEC, engine: str = "MergeTree",
                   partition: bool = True) -> str:
    words = ",\n    ".join(f"c{i} UInt64 CODEC({codec})" for i in range(words_for(bits)))
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n"
            "    station LowCardinality(String),\n"
            "    capture DateTime64(6, 'UTC') CODEC(Delta, LZ4),\n"
            "    recording UInt64 CODEC(LZ4),\n"
            "    offset_us Int64 CODEC(Delta, LZ4),\n"
            "    length_s Float64 CODEC(LZ4),\n"
            "    clock LowCardinality(String),\n"
            "    batch UInt32 CODEC(T64, LZ4),\n"
            "    seq UInt32 CODEC(Delta, LZ4),\n"
            f"    {words}\n) ENGINE = {engine}\n"
            + ("PARTITION BY toYYYYMM(capture)\n" if partition else "")
            + "ORDER BY (station, capture, recording, offset_us)")


def words_for(bits: int) -> int:
    return (int(bits) + 63) // 64


def code_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed uint8 codes (n, ceil(bits/8)) as uint64 words (n, ceil(bits/64)): big-endian
    8-byte groups, zero-padded. Hamming distance is the sum of popcount(xor) per word."""
    nbytes = (bits + 7) // 8
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise InvalidCodes("codes must be a numpy uint8 array of packed bits")
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise InvalidCodes(f"codes are {codes.shape[-1]} bytes wide, this archive's codes of "
                           f"{bits} bits are {nbytes}; both must come from the same model")
    width = words_for(bits) * 8
    if width != nbytes:
        padded = np.zeros((codes.shape[0], width), np.uint8)
        padded[:, :nbytes] = codes
        codes = padded
    return np.ascontiguousarray(codes).view(">u8").astype(np.uint64)


def recording_id(station: str, path: str, content_hash: str) -> int:
    digest = hashlib.blake2b(f"{station}\0{path}\0{content_hash}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def window_id(recording: int, offset_us: int) -> int:
    """A stable id of one archived window (the ``row`` of a hit), below 2**53."""
    digest = hashlib.blake2b(f"{recording}:{offset_us}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _ROW_ID_MASK


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class IngestResult:
    file: str
    update_id: str
    fingerprint: str
    bits: int
    rows_in_file: int
    rows_added: int          # windows new to the archive (0 when already ingested)
    already_ingested: bool
    stations: tuple[str, ...]


@dataclass(frozen=True)
class Bundle:
    fingerprint: str
    bits: int
    table: str


class Archive:
    """An archive on an `Engine`; ``Archive.open(target)`` for a folder or a URL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.target = engine.target
        for ddl in _BASE_DDL:
            engine.command(ddl)

    @classmethod
    def open(cls, target, *, create: bool = True) -> Archive:
        engine = open_engine(target, create=create)
        try:
            return cls(engine)
        except BaseException:
            engine.close()
            raise

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ small queries
    def _rows(self, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
        return self.engine.query(sql, params).to_pylist()

    def bundles(self) -> dict[str, Bundle]:
        rows = self._rows("SELECT fingerprint, any(bits) AS bits, any(code_table) AS t "
                          "FROM bundles GROUP BY fingerprint ORDER BY fingerprint")
        return {r["fingerprint"]: Bundle(r["fingerprint"], r["bits"], r["t"]) for r in rows}

    def _committed(self) -> set[int]:
        return {r["batch"] for r in self._rows("SELECT DISTINCT batch FROM ingests")}

    def view(self, fingerprint: str, bits: int | None = None) -> ArchiveView:
        """The archive's codes of one bundle, searchable like a station store. Raises
        FingerprintMismatch (naming what the archive holds) for an unknown bundle."""
        bundles = self.bundles()
        found = bundles.get(fingerprint)
        if found is None or (bits is not None and found.bits != bits):
            held = ", ".join(f"{b.fingerprint} ({b.bits} bits)" for b in bundles.values())
            raise FingerprintMismatch(
                f"the archive {self.target} holds no codes of bundle {fingerprint}"
                + (f" ({bits} bits)" if bits else "") + f"; it holds: {held or 'nothing yet'}. "
                "Pass --bundle with the bundle the stations indexed with: codes of different "
                "bundles cannot be compared")
        return ArchiveView(self, found)

    # ------------------------------------------------------------------ ingest
    def recover(self) -> int:
        """Delete the rows of ingests that were started and never finished (a killed
        process). Readers never saw them. Returns how many batches were cleaned."""
        stale = [r["batch"] for r in self._rows(
            "SELECT DISTINCT batch FROM starts WHERE batch NOT IN (SELECT batch FROM ingests) "
            "AND batch NOT IN (SELECT batch FROM aborts)")]
        if not stale:
            return 0
        for bundle in self.bundles().values():
            self.engine.command(
                f"ALTER TABLE {bundle.table} DELETE WHERE batch IN {{b:Array(UInt32)}} "
                "SETTINGS mutations_sync = 2", {"b": stale})
        self.engine.insert("aborts", _arrow({"batch": np.array(stale, np.uint32)}))
        log.warning("archive %s: removed the rows of %d interrupted ingest(s)", self.target,
                    len(stale))
        return len(stale)

    def ingest(self, files: list[str | Path], trusted: list[str | Path], *,
               new_bundle: bool = False) -> list[IngestResult]:
        """Verify every update file against the ``trusted`` KEY.pub files, then add them
        one by one. Refusals (UpdateRejected, FingerprintMismatch) happen before the
        archive is written; ``new_bundle`` lets an update of a bundle the archive does not
        hold yet start a new code table (the first bundle needs no flag)."""
        if not trusted:
            raise InvalidArgument("no trusted key given: pass the signer's KEY.pub with --trust")
        keys = [load_public_key(p) for p in trusted]
        # Every file is verified before anything is written. Verified updates are kept
        # in memory up to KEEP_VERIFIED_BYTES; beyond that they are read (and verified)
        # again when their turn comes, so a season of cards needs no season of memory.
        updates: list[tuple[str, Any]] = []
        kept = 0
        planned = {fp: b.bits for fp, b in self.bundles().items()}
        for f in files:
            update = read_update(f, keys)
            name = str(f)
            bits = planned.get(update.fingerprint)
            if bits is not None and bits != update.bits:
                raise FingerprintMismatch(
                    f"{name}: codes of bundle {update.fingerprint} with {update.bits} bits, "
                    f"but the archive holds that bundle's codes at {bits} bits; the "
                    "update is damaged or from a changed bundle: re-export the bundle")
            if bits is None and planned and not new_bundle:
                raise FingerprintMismatch(
                    f"{name}: made with bundle {update.fingerprint}, which this archive does "
                    f"not hold (it holds {', '.join(planned)}); if the stations moved to a "
                    "new bundle, pass --new-bundle to keep its codes in a table of their own")
            planned[update.fingerprint] = update.bits
            size = update.codes.nbytes + update.rows.nbytes
            if kept + size <= KEEP_VERIFIED_BYTES:
                kept += size
                updates.append((name, update))
            else:
                updates.append((name, (update.update_id, update.fingerprint, update.bits)))
        self.recover()
        results = []
        for (name, update), f in zip(updates, files, strict=True):
            if isinstance(update, tuple):  # read again; it must be the file verified above
                again = read_update(f, keys)
                if (again.update_id, again.fingerprint, again.bits) != update:
                    raise ArchiveError(f"{name} changed while it was being ingested; "
                                       "copy it again and rerun the ingest")
                update = again
            results.append(self._ingest_one(name, update))
        return results

    def _register(self, fingerprint: str, bits: int) -> Bundle:
        table = code_table(fingerprint)
        self.engine.command(code_table_ddl(table, bits))
        if fingerprint not in self.bundles():
            self.engine.insert("bundles", _arrow({
                "fingerprint": [fingerprint], "bits": np.array([bits], np.uint16),
                "code_table": [table], "added": [_now()]}))
        return Bundle(fingerprint, bits, table)

    def _ingest_one(self, name: str, update) -> IngestResult:
        stations = tuple(sorted({r["station"] for r in update.recordings}))

        def result(added: int, already: bool) -> IngestResult:
            return IngestResult(name, update.update_id, update.fingerprint, update.bits,
                                update.count, added, already, stations)

        if self._rows("SELECT count() AS n FROM ingests WHERE update_id = {u:String}",
                      {"u": update.update_id})[0]["n"]:
            return result(0, True)
        bundle = self._register(update.fingerprint, update.bits)
        # Ingests are numbered 1, 2, ...: a small number compresses to nothing per row,
        # so the visibility filter every read applies stays cheap.
        batch = int(self._rows("SELECT max(batch) AS b FROM starts")[0]["b"] or 0) + 1
        self.engine.insert("starts", _arrow({"batch": np.array([batch], np.uint32),
                                             "update_id": [update.update_id],
                                             "started": [_now()]}))
        if self._rows("SELECT count() AS n FROM starts WHERE batch = {b:UInt32}",
                      {"b": batch})[0]["n"] != 1:
            raise ArchiveError(f"another ingest into {self.target} started at the same time; "
                               "run one `cvahash archive ingest` at a time, then rerun this one")
        columns = _columns(update, batch)
        keep = self._new_windows(bundle, columns)
        recs = _recordings_table(update)
        if len(recs["id"]):
            self.engine.insert("recordings", _arrow(recs))
        added = int(keep.sum()) if keep is not None else update.count
        if added:
            rows = {k: (v if keep is None or k.endswith("_names") else v[keep])
                    for k, v in columns.items()}
            self._insert_rows(bundle, rows)
        capture = update.rows["capture_utc"]
        self.engine.insert("ingests", _arrow({
            "batch": np.array([batch], np.uint32), "update_id": [update.update_id],
            "fingerprint": [update.fingerprint], "bits": np.array([update.bits], np.uint16),
            "file": [Path(name).name], "key_id": [update.key_id], "created": [update.created],
            "stations": [list(stations)],
            "rows_in_file": np.array([update.count], np.uint64),
            "rows_added": np.array([added], np.uint64),
            "first_capture": [float(capture.min()) if len(capture) else None],
            "last_capture": [float(capture.max()) if len(capture) else None],
            "ingested": [_now()]}))  # the commit: from here on readers see the rows
        return result(added, False)

    def _insert_rows(self, bundle: Bundle, rows: dict[str, np.ndarray]) -> None:
        # An update may span years (a station's whole history, a clock reset to 1970):
        # one partition per month, more than ClickHouse's default 100 per insert.
        self.engine.insert(bundle.table, _code_rows_arrow(rows, bundle.bits),
                           settings={"max_partitions_per_insert_block": 0})

    def _new_windows(self, bundle: Bundle, columns) -> np.ndarray | None:
        """A mask of the update's windows the archive does not hold yet (also dropping
        repeats inside the update), or None when every window is new."""
        import pandas as pd  # optional: the [archive] extra (chDB's)

        ids = np.unique(columns["recording"])
        existing = self.engine.query(
            f"SELECT recording, offset_us FROM {bundle.table} WHERE recording IN "
            "{r:Array(UInt64)} AND station IN {s:Array(String)} AND batch IN "
            "(SELECT batch FROM ingests)",
            {"r": [int(i) for i in ids], "s": columns["station_names"]})
        new = pd.DataFrame({"r": columns["recording"], "o": columns["offset_us"]})
        repeats = new.duplicated().to_numpy().copy()
        if existing.num_rows:
            old = pd.MultiIndex.from_arrays([existing.column("recording").to_numpy(),
                                             existing.column("offset_us").to_numpy()])
            held = pd.MultiIndex.from_arrays([new["r"].to_numpy(), new["o"].to_numpy()]).isin(old)
            repeats |= np.asarray(held)
        return ~repeats if repeats.any() else None

    # ------------------------------------------------------------------ reading
    def info(self) -> dict[str, Any]:
        """Stations, windows, time span, bundles and ingest history (JSON-ready)."""
        bundles = []
        stations: dict[str, int] = {}
        first = last = None
        total = 0
        for b in self.bundles().values():
            per = self._rows(
                f"SELECT station, count() AS n, min(toUnixTimestamp64Micro(capture)) AS lo, "
                f"max(toUnixTimestamp64Micro(capture)) AS hi FROM {b.table} "
                "WHERE batch IN (SELECT batch FROM ingests) GROUP BY station ORDER BY station")
            n = sum(r["n"] for r in per)
            total += n
            for r in per:
                stations[r["station"]] = stations.get(r["station"], 0) + r["n"]
                first = r["lo"] if first is None else min(first, r["lo"])
                last = r["hi"] if last is None else max(last, r["hi"])
            bundles.append({"fingerprint": b.fingerprint, "bits": b.bits, "windows": n,
                            "table": b.table})
        history = self._rows(
            "SELECT update_id, file, fingerprint, key_id, created, stations, rows_in_file, "
            "rows_added, toString(ingested) AS ingested FROM ingests ORDER BY ingested, batch")
        return {
            "archive": self.target,
            "engine": self.engine.kind,
            "windows": total,
            "stations": dict(sorted(stations.items())),
            "first_capture": _iso(first),
            "last_capture": _iso(last),
            "bundles": bundles,
            "ingests": history,
            "bytes": self.bytes_on_disk(),
        }

    def bytes_on_disk(self, table: str | None = None) -> int:
        where = "AND table = {t:String}" if table else ""
        rows = self._rows("SELECT sum(bytes_on_disk) AS b FROM system.parts WHERE active "
                          f"AND database = currentDatabase() {where}",
                          {"t": table} if table else None)
        return int(rows[0]["b"] or 0)


def _iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1e6, timezone.utc).isoformat().replace("+00:00", "Z")


class ArchiveView:
    """One bundle's codes in the archive, with the station store's search signature."""

    def __init__(self, archive: Archive, bundle: Bundle):
        self.archive = archive
        self.fingerprint = bundle.fingerprint
        self.bits = bundle.bits
        self.nbytes = (bundle.bits + 7) // 8
        self.table = bundle.table

    def __len__(self) -> int:
        """Searchable windows of this bundle (whole ingests only), as ``len(store)``."""
        return int(self.archive._rows(
            f"SELECT count() AS n FROM {self.table} WHERE batch IN "
            "(SELECT batch FROM ingests)")[0]["n"])

    def _where(self, since, until, station) -> tuple[str, dict[str, Any]]:
        clauses = ["batch IN (SELECT batch FROM ingests)"]
        params: dict[str, Any] = {}
        if station is not None:
            names = [station] if isinstance(station, str) else list(station)
            if not all(isinstance(s, str) for s in names):
                raise InvalidArgument(f"station must be a name or a list of names, got {station!r}")
            clauses.append("station IN {stations:Array(String)}")
            params["stations"] = names
        if since is not None:
            clauses.append("capture >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')")
            params["since"] = _micros(to_utc_seconds(since, "since"))
        if until is not None:
            clauses.append("capture < fromUnixTimestamp64Micro({until:Int64}, 'UTC')")
            params["until"] = _micros(to_utc_seconds(until, "until"))
        return " AND ".join(clauses), params

    def _distance(self, words: np.ndarray, params: dict[str, Any]) -> str:
        terms = []
        for i, w in enumerate(words.tolist()):
            params[f"q{i}"] = int(w)
            terms.append(f"bitCount(bitXor(c{i}, {{q{i}:UInt64}}))")
        return " + ".join(terms)

    def search_rows(self, queries, k: int, *, since=None, until=None, station=None,
                    fingerprint: str | None = None,
                    threads: int = 0) -> list[list[dict[str, Any]]]:
        """Per query, the k nearest windows as dicts (distance, station, capture_us,
        recording, offset_us, length_s, clock, batch, seq), ordered by the tie key."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"queries of bundle {fingerprint}, archive codes of "
                                      f"bundle {self.fingerprint}: they cannot be compared")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k must be a positive integer, got {k!r}")
        q = np.asarray(queries)
        if q.dtype != np.uint8:
            raise InvalidCodes(f"query codes must be uint8 packed bits, got {q.dtype}")
        words = code_words(q, self.bits)
        where, base = self._where(since, until, station)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise InvalidArgument(f"threads must be 0 (the engine's default) or more, got "
                                  f"{threads!r}")
        settings = [f"max_threads = {threads}"] if threads else []
        # Read the metadata columns only for the rows that make the answer (ClickHouse's
        # lazy materialization; chDB 4.4 has it, an older server just reads more).
        lazy = settings + ([f"query_plan_max_limit_for_lazy_materialization = {LAZY_LIMIT}"]
                           if self.archive.engine.kind == "chdb" else [])
        extra = max(int(k), TIE_MARGIN)
        out = []
        for row in words:
            params = dict(base, k=int(k), wanted=int(k) + extra)
            dist = self._distance(row, params)
            columns = (f"{dist} AS distance, station, toUnixTimestamp64Micro(capture) AS "
                       "capture_us, recording, offset_us, length_s, clock, batch, seq")
            # One scan ordered by distance only, with a margin past k: when the margin
            # holds a farther window, every window tied with the k-th is in hand and the
            # tie order is applied here. Ordering all rows by the full tie key in SQL
            # would read every metadata column of every row.
            near = self.archive._rows(
                f"SELECT {columns} FROM {self.table} WHERE {where} ORDER BY distance "
                "LIMIT {wanted:UInt64}" + _settings(lazy), params)
            if len(near) < params["wanted"] or near[-1]["distance"] > near[k - 1]["distance"]:
                near.sort(key=_tie_key)
                out.append(near[:k])
                continue
            # More windows tie with the k-th than the margin holds: ask for exactly those.
            params["limit"] = near[k - 1]["distance"]
            out.append(self.archive._rows(
                f"SELECT {columns} FROM {self.table} WHERE {where} AND {dist} <= "
                "{limit:UInt32} ORDER BY distance, batch, seq "
                "LIMIT {k:UInt64}" + _settings(settings), params))
        return out

    def search(self, queries, k: int, *, since=None, until=None, station=None,
               recording=None, fingerprint: str | None = None,
               threads: int = 0) -> list[list[Hit]]:
        """The station store's ``search``: per query, its k nearest windows as `Hit`s
        (``row`` is the window's archive id, `window_id`)."""
        if recording is not None:
            raise InvalidArgument("the archive searches by station and time; a recording "
                                  "filter is not supported")
        found = self.search_rows(queries, k, since=since, until=until, station=station,
                                 fingerprint=fingerprint, threads=threads)
        recs = self.recordings({r["recording"] for hits in found for r in hits})
        return [[Hit(recording=recs[r["recording"]], offset_s=r["offset_us"] / 1e6,
                     length_s=r["length_s"], capture_utc=r["capture_us"] / 1e6,
                     clock_source=r["clock"], row=window_id(r["recording"], r["offset_us"]),
                     distance=int(r["distance"])) for r in hits] for hits in found]

    def recordings(self, ids) -> dict[int, Recording]:
        ids = sorted(int(i) for i in ids)
        if not ids:
            return {}
        rows = self.archive._rows(
            "SELECT id, station, path, content_hash, start_utc, sample_rate, duration_s "
            "FROM recordings WHERE id IN {ids:Array(UInt64)} LIMIT 1 BY id", {"ids": ids})
        return {r["id"]: Recording(path=r["path"], station=r["station"],
                                   start_utc=r["start_utc"], sample_rate=r["sample_rate"],
                                   duration_s=r["duration_s"],
                                   content_hash=r["content_hash"]) for r in rows}

    def activity(self, query_code, *, by: str = "day", radius: int | None = None,
                 top: int | None = None, since=None, until=None,
                 station=None) -> list[tuple[str, datetime, int]]:
        """Counts per (station, day or hour) of the windows near ``query_code``: those
        within ``radius`` bits, or the ``top`` nearest overall (tie key as search).
        Computed in SQL; returns (station, bucket start UTC, count) sorted."""
        if by not in BUCKETS:
            raise InvalidArgument(f"--by {by!r}: choose day or hour")
        if (radius is None) == (top is None):
            raise InvalidArgument("give exactly one of --radius R or --top K")
        words = code_words(np.asarray(query_code, np.uint8), self.bits)
        if words.shape[0] != 1:
            raise InvalidCodes("activity takes one query code")
        where, params = self._where(since, until, station)
        dist = self._distance(words[0], params)
        bucket = f"{BUCKETS[by]}(capture)"
        if radius is not None:
            if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
                raise InvalidArgument(f"--radius {radius!r}: a whole number of bits >= 0")
            params["radius"] = int(radius)
            inner = f"SELECT station, capture FROM {self.table} WHERE {where} AND " \
                    f"{dist} <= {{radius:UInt32}}"
        else:
            if isinstance(top, bool) or not isinstance(top, int) or top < 1:
                raise InvalidArgument(f"--top {top!r}: a whole number >= 1")
            params["top"] = int(top)
            inner = (f"SELECT station, capture FROM {self.table} WHERE {where} ORDER BY "
                     f"{dist}, batch, seq LIMIT {{top:UInt64}}")
        rows = self.archive._rows(
            f"SELECT station, toUnixTimestamp({bucket}) AS t, count() AS n FROM ({inner}) "
            "GROUP BY station, t ORDER BY station, t", params)
        return [(r["station"], datetime.fromtimestamp(r["t"], timezone.utc), int(r["n"]))
                for r in rows]


def _tie_key(row: dict[str, Any]):
    """The documented order: distance, then insertion order (ingest number, position in
    the update), as a station store that applied the same updates in the same order."""
    return (row["distance"], row["batch"], row["seq"])


def _settings(items: list[str]) -> str:
    return " SETTINGS " + ", ".join(items) if items else ""


def _micros(seconds: float) -> int:
    return int(round(seconds * 1e6))


# ---------------------------------------------------------------------------------------
# Update -> columns


def _columns(update, batch: int) -> dict[str, Any]:
    recs = update.recordings
    rec_ids = np.array([recording_id(r["station"], r["path"], r["content_hash"]) for r in recs],
                       np.uint64)
    names = sorted({r["station"] for r in recs})
    station_of = np.array([names.index(r["station"]) for r in recs] if len(names) < 64 else
                          [{n: i for i, n in enumerate(names)}[r["station"]] for r in recs],
                          np.int32)
    idx = update.rows["recording"]
    capture = update.rows["capture_utc"]
    offset = update.rows["offset_s"]
    return {
        "station_idx": station_of[idx] if len(recs) else np.zeros(0, np.int32),
        "station_names": names,
        "capture_us": np.rint(capture * 1e6).astype(np.int64),
        "recording": rec_ids[idx] if len(recs) else np.zeros(0, np.uint64),
        "offset_us": np.rint(offset * 1e6).astype(np.int64),
        "length_s": update.rows["length_s"].astype(np.float64),
        "clock_idx": update.rows["clock"], "clock_names": list(update.clocks),
        "batch": np.full(update.count, batch, np.uint32),
        "seq": np.arange(update.count, dtype=np.uint32),
        "words": code_words(update.codes, update.bits),
    }


def _code_rows_arrow(rows: dict[str, Any], bits: int):
    import pyarrow as pa  # optional: the [archive] extra (chDB's)

    def dictionary(indices, names):
        names = list(names)
        return pa.DictionaryArray.from_arrays(pa.array(np.asarray(indices, np.int32)),
                                              pa.array(names, pa.string()))

    data = {
        "station": dictionary(rows["station_idx"], rows["station_names"]),
        "capture": pa.array(rows["capture_us"], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "recording": pa.array(rows["recording"], pa.uint64()),
        "offset_us": pa.array(rows["offset_us"], pa.int64()),
        "length_s": pa.array(rows["length_s"], pa.float64()),
        "clock": dictionary(rows["clock_idx"], rows["clock_names"]),
        "batch": pa.array(rows["batch"], pa.uint32()),
        "seq": pa.array(rows["seq"], pa.uint32()),
    }
    words = rows["words"]
    for i in range(words_for(bits)):
        data[f"c{i}"] = pa.array(np.ascontiguousarray(words[:, i]), pa.uint64())
    return pa.table(data)


def _recordings_table(update) -> dict[str, Any]:
    recs = update.recordings
    return {
        "id": np.array([recording_id(r["station"], r["path"], r["content_hash"]) for r in recs],
                       np.uint64),
        "station": [r["station"] for r in recs],
        "path": [r["path"] for r in recs],
        "content_hash": [r["content_hash"] for r in recs],
        "start_utc": [None if r["start_utc"] is None else float(r["start_utc"]) for r in recs],
        "sample_rate": [r["sample_rate"] for r in recs],
        "duration_s": [None if r["duration_s"] is None else float(r["duration_s"])
                       for r in recs],
    }


def _arrow(columns: dict[str, Any]):
    import pyarrow as pa  # optional: the [archive] extra (chDB's)

    out = {}
    for name, value in columns.items():
        if name in ("added", "started", "ingested"):
            out[name] = pa.array(value, pa.timestamp("ms", "UTC"))
        elif name == "sample_rate":
            out[name] = pa.array(value, pa.uint32())
        elif name == "stations":
            out[name] = pa.array(value, pa.list_(pa.string()))
        else:
            out[name] = pa.array(value)
    return pa.table(out)


__all__ = ["Archive", "ArchiveError", "ArchiveView", "IngestResult", "code_table",
           "code_table_ddl", "code_words", "recording_id", "window_id"]
