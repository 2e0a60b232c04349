"""Reading a code store: search with filters, per-window metadata, segments, stats.

A mixin of ``cvahash.store.code_store.CodeStore`` (see that module for the data model). Every
public call runs inside one SQLite read transaction (``_snapshot``), so the committed
row count, the filter's segments and the hits' metadata come from the same commit.
Segments are read by query, never all at once, except by ``iter_segments`` and ``check``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import InvalidArgument
from .format import META_FILE, code_file_name
from .metadata import MetadataCorrupt, Segments, checked_segment_row
from .records import Hit, Recording, Segment, Window, to_utc_seconds

_SEG_COLUMNS_S = ("s.first_row, s.n_rows, s.recording, s.first_offset_s, s.hop_s, "
                  "s.length_s, s.capture_start_utc, s.clock_source, s.crc")


def _as_set(value, kinds) -> list:
    return [value] if isinstance(value, kinds) else list(value)


class StoreReading:
    # ------------------------------------------------------------------ filters
    def _allowed(self, since, until, station, recording):
        """The kernel's ``allowed`` for these filters and how many rows are eligible.

        The filters become one query on segments (a time window uses the capture-time
        index, widened by the longest segment); their rows become merged [start, end)
        ranges: a time window inside a run is one range. Many short ranges turn into a
        boolean mask. Unfiltered with nothing forgotten: None (the kernel's fastest path).
        """
        n = self._committed
        since = None if since is None else to_utc_seconds(since, "since")
        until = None if until is None else to_utc_seconds(until, "until")
        if since is None and until is None and station is None and recording is None \
                and self._forgotten == 0:
            return None, n
        where, params = ["first_row + n_rows <= ?"], [n]
        if station is not None:
            names = [str(x) for x in _as_set(station, str)]
            where.append("recording IN (SELECT id FROM recordings WHERE station IN "
                         f"({','.join('?' * len(names))}))")
            params += names
        if recording is not None:
            items = _as_set(recording, (str, Recording))
            paths = [str(x) for x in items if not isinstance(x, Recording)]
            keys = [x.key for x in items if isinstance(x, Recording)]
            alts = []
            if paths:
                alts.append(f"path IN ({','.join('?' * len(paths))})")
                params += paths
            for path, content_hash in keys:
                alts.append("(path = ? AND content_hash = ?)")
                params += [path, content_hash]
            where.append("recording IN (SELECT id FROM recordings WHERE "
                         f"{' OR '.join(alts) or '0'})")
        if until is not None:
            where.append("capture_start_utc < ?")
            params.append(until)
        if since is not None:
            where.append("capture_start_utc >= ?")
            params.append(since - self._max_span)
        segs = Segments.fetch(self._conn, "WHERE " + " AND ".join(where), params)
        ranges = segs.row_ranges(since, until)
        eligible = int((ranges[:, 1] - ranges[:, 0]).sum())
        if len(ranges) > max(64, n // 256):
            mask = np.zeros(n, bool)
            for s, e in ranges.tolist():
                mask[s:e] = True
            return mask, eligible
        return ranges, eligible

    # ------------------------------------------------------------------ search
    def search_rows(self, queries, k: int, *, since=None, until=None, station=None,
                    recording=None, fingerprint: str | None = None, threads: int = 0):
        """Like ``search`` but return the kernel's arrays ``(distances, rows)``."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                return self._search_rows(queries, k, since, until, station, recording,
                                         fingerprint, threads)

    def _search_rows(self, queries, k, since, until, station, recording, fingerprint,
                     threads):
        from ..kernel import hamming

        self.require(fingerprint)
        q = self._check_codes(queries, "query codes")
        allowed, eligible = self._allowed(since, until, station, recording)
        self._verify_codes()
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
            self._live(refresh=False)
            with self._snapshot():
                dist, rows = self._search_rows(queries, k, since, until, station, recording,
                                               fingerprint, threads)
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

    # ------------------------------------------------------------------ metadata
    def _window_fields(self, rows: list[int]) -> list[tuple]:
        """(recording, offset_s, length_s, capture_utc, clock_source, row) of each row:
        one SQL statement finds every row's segment (inside the caller's snapshot)."""
        conn, out = self._conn, []
        found = {}
        wanted = sorted({r for r in rows if 0 <= r < self._committed})
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            values = ",".join(["(?)"] * len(chunk))
            for hit in conn.execute(
                    f"WITH q(r) AS (VALUES {values}) SELECT q.r, {_SEG_COLUMNS_S} FROM q "
                    "JOIN segments s ON s.first_row = (SELECT first_row FROM segments "
                    "WHERE first_row <= q.r ORDER BY first_row DESC LIMIT 1)", chunk):
                found[hit[0]] = hit[1:]
        segs: dict[int, tuple] = {}
        for r in rows:
            row = found.get(r)
            if row is None or r >= row[0] + row[1]:
                if self._forgotten == 0 and 0 <= r < self._committed:
                    # nothing was forgotten, so every committed row has a segment
                    raise MetadataCorrupt(f"row {r} has no segment though no recording "
                                          "was forgotten (a segment row is lost)")
                raise InvalidArgument(
                    f"row {r} of the code store {self.directory} holds no window "
                    f"(forgotten, or beyond its {self._committed} rows)")
            seg = segs.get(row[0])
            if seg is None:
                # rows already checked (same bytes) skip the check; the cache is small
                checked = self._checked_segments
                if row not in checked:
                    if len(checked) > 4096:
                        checked.clear()
                    checked[checked_segment_row(row)] = None
                first, _, rec_id, off0, hop, length, cap0, clock, _ = row
                seg = segs[first] = (first, float(off0), float(hop), float(length),
                                     float(cap0), clock, self._recordings.get(conn, rec_id))
            first, off0, hop, length, cap0, clock, rec = seg
            j = r - first
            out.append((rec, off0 + j * hop, length, cap0 + j * hop, clock, r))
        return out

    def _windows(self, rows) -> list[Window]:
        return [Window(recording=rec, offset_s=off, length_s=length, capture_utc=cap,
                       clock_source=clock, row=row)
                for rec, off, length, cap, clock, row in self._window_fields(
                    np.asarray(rows, np.int64).ravel().tolist())]

    def read(self, rows) -> tuple[np.ndarray, list[Window]]:
        """Codes (a copy, uint8 (m, nbytes)) and windows of the given committed rows."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                rows = np.atleast_1d(np.asarray(rows, np.int64))
                windows = self._windows(rows)
                self._verify_codes()
                return self._view(self._committed)[rows].copy(), windows

    def iter_segments(self) -> Iterator[tuple[Segment, np.ndarray]]:
        """Every segment in row order with a copy of its codes, from one snapshot.

        Feeding them to another store's ``append`` copies a store (the merge tool).
        """
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                t = Segments.fetch(self._conn)
                self._recordings.fetch(self._conn)
                segs = [t.segment(i, self._recordings.get(self._conn, int(t.rec_id[i])))
                        for i in range(len(t))]
                self._verify_codes()
                codes = self._view(self._committed)
        for seg in segs:
            yield seg, codes[seg.first_row:seg.first_row + seg.n_rows].copy()

    def recordings(self) -> list[Recording]:
        """Every recording with committed windows."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                ids = self._recordings.fetch(self._conn, "ORDER BY id")
                return [self._recordings.get(self._conn, i) for i in ids]

    def stats(self) -> dict:
        """rows, bytes on disk, time span and stations of the committed store."""
        with self._lock:
            self._live(refresh=False)
            with self._snapshot():
                conn = self._conn
                segments, first, last = conn.execute(
                    "SELECT COUNT(*), MIN(capture_start_utc), "
                    "MAX(capture_start_utc + (n_rows - 1) * hop_s + length_s) "
                    "FROM segments").fetchone()
                (recordings,) = conn.execute("SELECT COUNT(*) FROM recordings").fetchone()
                stations = dict(conn.execute(
                    "SELECT r.station, SUM(s.n_rows) FROM segments s JOIN recordings r "
                    "ON r.id = s.recording GROUP BY r.station ORDER BY r.station").fetchall())
                files = [self.directory / code_file_name(self._generation)] + [
                    self.directory / (META_FILE + s) for s in ("", "-wal", "-shm")]
                sizes = {p.name: p.stat().st_size for p in files if p.exists()}
                code_bytes = sizes.get(code_file_name(self._generation), 0)
                return {
                    "rows": self._committed - self._forgotten, "file_rows": self._committed,
                    "forgotten_rows": self._forgotten, "pending_rows": self._pending_rows,
                    "segments": segments, "recordings": recordings, "bits": self.bits,
                    "fingerprint": self.fingerprint, "code_bytes": code_bytes,
                    "metadata_bytes": sum(sizes.values()) - code_bytes,
                    "first_capture_utc": first, "last_capture_end_utc": last,
                    "stations": stations,
                }
