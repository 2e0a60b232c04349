"""The archive behind the station's storage interface (`cvahash.store.interface`).

`ArchiveStore` is one bundle's codes in an archive, as a `CodeStorage`: the same
``search`` (hits as the store's `Hit` records, ties by insertion order), ``append`` of
codes with Segments or Windows (each call is one ingest: all of it visible at once, a
``tag`` applied at most once), ``has_tag``, ``has_recording``, ``stats``. It lets the
storage contract tests (tests/store_contract.py) run over the archive as over a station
store. Signed updates go in through `Archive.ingest`; ``append`` is for a trusted local
caller (tests, tools that already hold verified codes).

Differences from a station store: the archive has no row numbers (``append`` returns
the range of the archive's window count before and after; a hit's ``row`` is the
window's archive id), a window the archive already holds (same recording and offset) is
kept once, and ``stats()["segments"]`` counts recordings (the archive keeps no segment
table).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument
from ..store.interface import CodeStorage
from ..store.records import Segment, Window
from ..update.format import ROW_DTYPE, UpdatePackage
from .archive import Archive, ArchiveView


class ArchiveStore(CodeStorage):
    """One bundle's codes in an archive, as a code store."""

    def __init__(self, archive: Archive, view: ArchiveView, *, owns_archive: bool = False):
        self.archive = archive
        self._view = view
        self.bits = view.bits
        self.nbytes = view.nbytes
        self.fingerprint = view.fingerprint
        self._owns = owns_archive

    @classmethod
    def open(cls, target, bits: int, fingerprint: str, *, create: bool = True) -> ArchiveStore:
        """The codes of bundle ``fingerprint`` in the archive at ``target``; ``create``
        registers the bundle (``bits`` wide) when the archive does not hold it yet."""
        archive = Archive.open(target, create=create)
        try:
            archive.recover()
            if create and fingerprint not in archive.bundles():
                archive._register(fingerprint, bits)
            return cls(archive, archive.view(fingerprint, bits), owns_archive=True)
        except BaseException:
            archive.close()
            raise

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._view)

    def search(self, queries, k: int, *, since=None, until=None, station=None,
               recording=None, fingerprint: str | None = None, threads: int = 0):
        return self._view.search(queries, k, since=since, until=until, station=station,
                                 recording=recording, fingerprint=fingerprint,
                                 threads=threads)

    def search_reordered(self, queries, k: int, order, *, since=None, until=None,
                         station=None, recording=None, fingerprint: str | None = None,
                         threads: int = 0):
        return self._view.search_reordered(queries, k, order, since=since, until=until,
                                           station=station, recording=recording,
                                           fingerprint=fingerprint, threads=threads)

    def has_tag(self, tag: str) -> bool:
        return bool(self.archive._rows(
            "SELECT count() AS n FROM ingests WHERE update_id = {t:String}", {"t": tag}
        )[0]["n"])

    def has_recording(self, path: str, content_hash: str = "") -> bool:
        return bool(self.archive._rows(
            f"SELECT count() AS n FROM {self._view.table} WHERE recording IN (SELECT id FROM "
            "recordings WHERE path = {p:String} AND content_hash = {h:String}) AND batch IN "
            "(SELECT batch FROM ingests)", {"p": path, "h": content_hash})[0]["n"])

    def stats(self) -> dict[str, Any]:
        row = self.archive._rows(
            "SELECT count() AS rows, uniqExact(recording) AS recordings, "
            "min(toUnixTimestamp64Micro(capture)) AS lo, "
            "max(toUnixTimestamp64Micro(capture) + toInt64(length_s * 1e6)) AS hi "
            f"FROM {self._view.table} WHERE batch IN (SELECT batch FROM ingests)")[0]
        per = self.archive._rows(
            f"SELECT station, count() AS n FROM {self._view.table} WHERE batch IN "
            "(SELECT batch FROM ingests) GROUP BY station ORDER BY station")
        empty = not row["rows"]
        return {"rows": row["rows"], "segments": row["recordings"],
                "recordings": row["recordings"], "bits": self.bits,
                "fingerprint": self.fingerprint,
                "first_capture_utc": None if empty else row["lo"] / 1e6,
                "last_capture_end_utc": None if empty else row["hi"] / 1e6,
                "stations": {r["station"]: r["n"] for r in per}}

    # ------------------------------------------------------------------ writing
    def append(self, codes, windows, *, tag: str | None = None,
               fingerprint: str | None = None, commit: bool = False) -> range:
        """Add ``codes`` with their ``windows`` as one ingest (visible all at once)."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"codes of bundle {fingerprint} cannot go into the "
                                      f"archive's codes of bundle {self.fingerprint}")
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.nbytes:
            raise FingerprintMismatch(
                f"codes of shape {codes.shape} ({codes.dtype}), but this archive holds "
                f"{self.bits}-bit codes of bundle {self.fingerprint} ({self.nbytes} bytes "
                "each): codes of another bundle or width cannot be mixed")
        update = self._package(np.ascontiguousarray(codes), windows, tag)
        before = len(self)
        result = self.archive._ingest_one("append", update)
        return range(before, before + result.rows_added)

    def flush(self) -> int:
        return len(self)  # every append is already one committed ingest

    def close(self) -> None:
        if self._owns:
            self.archive.close()

    def _package(self, codes: np.ndarray, windows, tag: str | None) -> UpdatePackage:
        n = codes.shape[0]
        if isinstance(windows, Segment):
            windows = [windows]
        windows = list(windows)
        if windows and all(isinstance(w, Window) for w in windows):
            windows = [w.as_segment() for w in windows]
        if not all(isinstance(w, Segment) for w in windows):
            raise InvalidArgument("windows must be a Segment, Segments or Windows")
        if len(windows) == 1 and windows[0].n_rows is None:
            windows = [windows[0].checked(n)]
        else:
            windows = [w.checked(w.n_rows if w.n_rows is not None else 0) for w in windows]
        total = sum(w.n_rows for w in windows)
        if total != n:
            raise InvalidArgument(f"{n} codes but the windows describe {total}: give one "
                                  "window per code")
        recordings: dict[tuple, int] = {}
        clocks: dict[str, int] = {}
        rows = np.zeros(n, ROW_DTYPE)
        at = 0
        for seg in windows:
            rec = seg.recording
            rkey = (rec.path, rec.content_hash, rec.station)
            recordings.setdefault(rkey, len(recordings))
            j = np.arange(seg.n_rows)
            part = rows[at:at + seg.n_rows]
            part["recording"] = recordings[rkey]
            part["clock"] = clocks.setdefault(seg.clock_source, len(clocks))
            part["offset_s"] = seg.first_offset_s + j * seg.hop_s
            part["length_s"] = seg.length_s
            part["capture_utc"] = seg.capture_start_utc + j * seg.hop_s
            at += seg.n_rows
        by_key = {(s.recording.path, s.recording.content_hash, s.recording.station): s.recording
                  for s in windows}
        recs = [by_key[k] for k in recordings]
        return UpdatePackage(
            update_id=tag if tag is not None else f"append:{uuid.uuid4().hex}",
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            fingerprint=self.fingerprint, bits=self.bits, since=None, source={},
            key_id="local", codes=codes, rows=rows,
            recordings=[{"path": r.path, "station": r.station,
                         "content_hash": r.content_hash, "start_utc": r.start_utc,
                         "sample_rate": r.sample_rate, "duration_s": r.duration_s}
                        for r in recs],
            clocks=list(clocks))
