"""Reading a code store: search with filters, per-window metadata, segments, stats.

A mixin of ``cvahash.store.CodeStore`` (see that module for the data model); it
only reads the committed state the store keeps (``_segments``, ``_committed``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np

from .errors import InvalidArgument
from .store_format import code_file_name
from .store_types import Hit, Recording, Segment, Window, to_utc_seconds

META_FILE = "meta.sqlite"


class StoreReading:
    # ------------------------------------------------------------------ reading
    def _allowed(self, since, until, station, recording):
        """The kernel's ``allowed`` for these filters and whether any row is eligible.

        Row ranges come from segments (a time window inside a run is one contiguous
        range); when the ranges would be many and short a boolean mask is cheaper.
        Unfiltered with no forgotten rows: None (the kernel's fastest path).
        """
        t = self._segments
        n = self._committed
        since = None if since is None else to_utc_seconds(since, "since")
        until = None if until is None else to_utc_seconds(until, "until")
        seg_mask = None
        if station is not None or recording is not None:
            ok = np.ones(len(t), bool)
            if station is not None:
                stations = {station} if isinstance(station, str) else set(station)
                ids = [i for i, r in t.recordings.raw.items() if r[2] in stations]
                ok &= np.isin(t.rec_id, np.asarray(ids, np.int64))
            if recording is not None:
                wanted = ({recording} if isinstance(recording, (str, Recording))
                          else set(recording))
                paths = {w.path if isinstance(w, Recording) else str(w) for w in wanted}
                keys = {w.key for w in wanted if isinstance(w, Recording)}
                ids = [i for i, r in t.recordings.raw.items()
                       if ((r[0], r[1]) in keys if keys else r[0] in paths)]
                ok &= np.isin(t.rec_id, np.asarray(ids, np.int64))
            seg_mask = ok
        elif since is None and until is None and t.live_rows == n:
            return None, n
        ranges = t.row_ranges(seg_mask, since, until)
        eligible = int((ranges[:, 1] - ranges[:, 0]).sum())
        if len(ranges) > max(64, n // 256):
            mask = np.zeros(n, bool)
            for s, e in ranges:
                mask[s:e] = True
            return mask, eligible
        return ranges, eligible

    def search_rows(self, queries, k: int, *, since=None, until=None, station=None,
                    recording=None, fingerprint: str | None = None, threads: int = 0):
        """Like ``search`` but return the kernel's arrays ``(distances, rows)``."""
        from . import hamming

        with self._lock:
            self._live()
            self.require(fingerprint)
            q = self._check_codes(queries, "query codes")
            allowed, eligible = self._allowed(since, until, station, recording)
            codes = self._view(self._committed)
        if eligible == 0 or len(codes) == 0:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise InvalidArgument(f"k must be a positive integer, got {k!r}")
            return (np.zeros((len(q), 0), np.int32), np.zeros((len(q), 0), np.int64))
        return hamming.knn(q, codes, k, threads=threads, allowed=allowed)

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
            dist, rows = self.search_rows(queries, k, since=since, until=until,
                                          station=station, recording=recording,
                                          fingerprint=fingerprint, threads=threads)
            fields = self._window_fields(rows.ravel().tolist())
        out, i = [], 0
        for qd in dist.tolist():
            hits = []
            for d in qd:
                rec, off, length, cap, clock, row = fields[i]
                hits.append(Hit(recording=rec, offset_s=off, length_s=length, capture_utc=cap,
                                clock_source=clock, row=row, distance=d))
                i += 1
            out.append(hits)
        return out

    def _window_fields(self, rows: list[int]) -> list[tuple]:
        """(recording, offset_s, length_s, capture_utc, clock_source, row) of each row.

        Plain Python (bisect) on purpose: for the few rows of a search result it is
        several times faster than a chain of small numpy operations.
        """
        t = self._segments
        cols = t.columns()
        first, n_rows = cols["first_row"], cols["n_rows"]
        out = []
        for r in rows:
            i = bisect.bisect_right(first, r) - 1
            if i < 0 or r >= first[i] + n_rows[i]:
                raise InvalidArgument(
                    f"row {r} of the code store {self.directory} holds no window "
                    f"(forgotten, or beyond its {self._committed} rows)")
            j = r - first[i]
            hop = cols["hop"][i]
            out.append((t.recordings[cols["rec_id"][i]], cols["first_offset"][i] + j * hop,
                        cols["length"][i], cols["capture_start"][i] + j * hop, t.clock[i], r))
        return out

    def _windows(self, rows) -> list[Window]:
        return [Window(recording=rec, offset_s=off, length_s=length, capture_utc=cap,
                       clock_source=clock, row=row)
                for rec, off, length, cap, clock, row in self._window_fields(
                    np.asarray(rows, np.int64).ravel().tolist())]

    def read(self, rows) -> tuple[np.ndarray, list[Window]]:
        """Codes (a copy, uint8 (m, nbytes)) and windows of the given committed rows."""
        with self._lock:
            self._live()
            rows = np.atleast_1d(np.asarray(rows, np.int64))
            windows = self._windows(rows)
            return self._view(self._committed)[rows].copy(), windows

    def iter_segments(self) -> Iterator[tuple[Segment, np.ndarray]]:
        """Every segment in row order with a copy of its codes, from one snapshot.

        Feeding them to another store's ``append`` copies a store (the merge tool).
        """
        with self._lock:
            self._live()
            t = self._segments
            segs = [t.segment(i) for i in range(len(t))]
            codes = self._view(self._committed)
        for seg in segs:
            yield seg, codes[seg.first_row:seg.first_row + seg.n_rows].copy()

    def recordings(self) -> list[Recording]:
        """Every recording with committed windows."""
        with self._lock:
            self._live()
            return list(self._segments.recordings.values())

    def stats(self) -> dict:
        """rows, bytes on disk, time span and stations of the committed store."""
        with self._lock:
            self._live()
            t = self._segments
            files = [self.directory / code_file_name(self._generation)] + [
                self.directory / (META_FILE + s) for s in ("", "-wal", "-shm")]
            sizes = {p.name: p.stat().st_size for p in files if p.exists()}
            stations: dict[str, int] = {}
            for rid, n in zip(t.rec_id.tolist(), t.n_rows.tolist()):
                name = t.recordings.raw[rid][2]
                stations[name] = stations.get(name, 0) + n
            if len(t):
                last = t.capture_start + (t.n_rows - 1) * t.hop
                span = (float(t.capture_start.min()), float((last + t.length).max()))
            else:
                span = (None, None)
            code_bytes = sizes.get(code_file_name(self._generation), 0)
            return {
                "rows": t.live_rows, "file_rows": self._committed,
                "forgotten_rows": self._committed - t.live_rows,
                "pending_rows": self._pending_rows, "segments": len(t),
                "recordings": len(t.recordings), "bits": self.bits,
                "fingerprint": self.fingerprint, "code_bytes": code_bytes,
                "metadata_bytes": sum(sizes.values()) - code_bytes,
                "first_capture_utc": span[0], "last_capture_end_utc": span[1],
                "stations": stations,
            }

