"""The network archive: every station's codes in ClickHouse, searched and counted together.

The tables (one code table per bundle fingerprint, so codes of two bundles are never
compared; ``bundles``, ``recordings``, the ``ingests`` ledger, ``starts`` / ``aborts``) are
described in `cvahash.archive.schema`; docs/archive.md gives the reasons and the cluster
DDL.

A window is identified by (fingerprint, recording, offset). Ingest is idempotent and
all-or-nothing for readers: the update is verified completely (signature first) before
anything is written; windows the archive already holds are dropped before insert
(checked against the ledger-visible rows of the same recordings); the rows carry the
update's batch number and become visible only when the update's ledger row is written,
because every read keeps ``batch IN (SELECT batch FROM ingests)``. A process killed
mid-ingest leaves rows of a batch that has a ``starts`` row and no ledger row: the next
ingest deletes them first, so a rerun gives exactly the rows of a clean ingest.

Searching and counting one bundle's codes (`ArchiveView`, answering exactly as a station
store that applied the same updates in the same order) live in `cvahash.archive.view`;
`cvahash.archive.storage.ArchiveStore` is the archive behind the storage interface
(`cvahash.store.interface.CodeStorage`); update rows become columns in
`cvahash.archive.rows`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument
from ..update.format import load_public_key, read_update
from .engine import ArchiveError, Engine, open_engine
from .rows import arrow_table, code_rows_arrow, recordings_columns, update_columns
from .schema import (
    BASE_DDL,
    Bundle,
    code_table,
    code_table_ddl,
    code_words,
    iso_micros,
    recording_id,
    window_id,
)
from .view import ArchiveView

log = logging.getLogger(__name__)

KEEP_VERIFIED_BYTES = 512 * 1024 * 1024


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


class Archive:
    """An archive on an `Engine`; ``Archive.open(target)`` for a folder or a URL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.target = engine.target
        for ddl in BASE_DDL:
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
        self.engine.insert("aborts", arrow_table({"batch": np.array(stale, np.uint32)}))
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
            self.engine.insert("bundles", arrow_table({
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
        self.engine.insert("starts", arrow_table({"batch": np.array([batch], np.uint32),
                                             "update_id": [update.update_id],
                                             "started": [_now()]}))
        if self._rows("SELECT count() AS n FROM starts WHERE batch = {b:UInt32}",
                      {"b": batch})[0]["n"] != 1:
            raise ArchiveError(f"another ingest into {self.target} started at the same time; "
                               "run one `cvahash archive ingest` at a time, then rerun this one")
        columns = update_columns(update, batch)
        keep = self._new_windows(bundle, columns)
        recs = recordings_columns(update)
        if len(recs["id"]):
            self.engine.insert("recordings", arrow_table(recs))
        added = int(keep.sum()) if keep is not None else update.count
        if added:
            rows = {k: (v if keep is None or k.endswith("_names") else v[keep])
                    for k, v in columns.items()}
            self._insert_rows(bundle, rows)
        capture = update.rows["capture_utc"]
        self.engine.insert("ingests", arrow_table({
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
        self.engine.insert(bundle.table, code_rows_arrow(rows, bundle.bits),
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
            "first_capture": iso_micros(first),
            "last_capture": iso_micros(last),
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


__all__ = ["Archive", "ArchiveError", "ArchiveView", "Bundle", "IngestResult", "code_table",
           "code_table_ddl", "code_words", "recording_id", "window_id"]
