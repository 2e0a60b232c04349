"""One part of a code store: reading (search with filters, per-window metadata,
segments, recordings, stats).

Every call of ``Reader`` runs inside one SQLite read transaction (``StoreSync.snapshot``),
so the committed row count, the filter's segments and the hits' metadata come from the
same commit. Segments are read by query, never all at once, except by
``iter_segments`` and ``check``. The caller holds the store's lock.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..kernel import hamming
from .format import META_FILE, code_file_name
from .identity import StoreIdentity
from .metadata import MetadataCorrupt
from .metadb import MetadataDB
from .records import Hit, Recording, Segment, Window, to_utc_seconds
from .sync import StoreSync

_SEG_COLUMNS_S = ("s.first_row, s.n_rows, s.recording, s.first_offset_s, s.hop_s, "
                  "s.length_s, s.capture_start_utc, s.clock_source, s.crc")


def _as_set(value, kinds) -> list:
    return [value] if isinstance(value, kinds) else list(value)


class Reader:
    """Searches and reads of one open store."""

    def __init__(self, identity: StoreIdentity, db: MetadataDB, sync: StoreSync):
        self.identity = identity
        self.directory = identity.directory
        self.db = db
        self.sync = sync

    # ------------------------------------------------------------------ filters
    def _allowed(self, since, until, station, recording):
        """The kernel's ``allowed`` for these filters and how many rows are eligible.

        The filters become one query on segments (a time window uses the capture-time
        index, widened by the longest segment); their rows become merged [start, end)
        ranges: a time window inside a run is one range. Many short ranges turn into a
        boolean mask. Unfiltered with nothing forgotten: None (the kernel's fastest path).
        """
        n = self.db.committed
        since = None if since is None else to_utc_seconds(since, "since")
        until = None if until is None else to_utc_seconds(until, "until")
        if since is None and until is None and station is None and recording is None \
                and self.db.forgotten == 0:
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
            params.append(since - self.db.max_span)
        segs = self.db.segments("WHERE " + " AND ".join(where), params)
        ranges = segs.row_ranges(since, until)
        eligible = int((ranges[:, 1] - ranges[:, 0]).sum())
        if len(ranges) > max(64, n // 256):
            mask = np.zeros(n, bool)
            for s, e in ranges.tolist():
                mask[s:e] = True
            return mask, eligible
        return ranges, eligible

    # ------------------------------------------------------------------ search
    def search_rows(self, queries, k: int, since, until, station, recording, fingerprint,
                    threads):
        """The kernel's arrays ``(distances, rows)`` (inside a snapshot)."""
        self.identity.require(fingerprint)
        q = self.identity.check_codes(queries, "query codes")
        allowed, eligible = self._allowed(since, until, station, recording)
        codes = self.sync.committed_codes()
        if eligible == 0 or len(codes) == 0:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise InvalidArgument(f"k must be a positive integer, got {k!r}")
            return (np.zeros((len(q), 0), np.int32), np.zeros((len(q), 0), np.int64))
        return hamming.knn(q, codes, k, threads=threads, allowed=allowed)

    def search(self, queries, k: int, since, until, station, recording, fingerprint,
               threads, order=None) -> list[list[Hit]]:
        """Hits per query, from one snapshot. With ``order``, see `CodeStore.search_reordered`:
        the hits of query i are the candidates ``order(i, codes, distances)`` picks."""
        with self.sync.snapshot():
            dist, rows = self.search_rows(queries, k, since, until, station, recording,
                                          fingerprint, threads)
            if order is not None:
                committed = self.sync.committed_codes()
                picked = [np.asarray(order(i, np.array(committed[r]), d), np.int64)
                          for i, (r, d) in enumerate(zip(rows, dist, strict=True))]
                dist = [d[p] for d, p in zip(dist, picked, strict=True)]
                rows = [r[p] for r, p in zip(rows, picked, strict=True)]
            fields = self._window_fields([r for qr in rows for r in qr.tolist()])
        out, i = [], 0
        for qd in dist:
            hits = []
            for d in qd.tolist():
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
        db, out = self.db, []
        committed = db.committed
        found = {}
        wanted = sorted({r for r in rows if 0 <= r < committed})
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            values = ",".join(["(?)"] * len(chunk))
            for hit in db.conn.execute(
                    f"WITH q(r) AS (VALUES {values}) SELECT q.r, {_SEG_COLUMNS_S} FROM q "
                    "JOIN segments s ON s.first_row = (SELECT first_row FROM segments "
                    "WHERE first_row <= q.r ORDER BY first_row DESC LIMIT 1)", chunk):
                found[hit[0]] = hit[1:]
        segs: dict[int, tuple] = {}
        for r in rows:
            row = found.get(r)
            if row is None or r >= row[0] + row[1]:
                if db.forgotten == 0 and 0 <= r < committed:
                    # nothing was forgotten, so every committed row has a segment
                    raise MetadataCorrupt(f"row {r} has no segment though no recording "
                                          "was forgotten (a segment row is lost)")
                raise InvalidArgument(
                    f"row {r} of the code store {self.directory} holds no window "
                    f"(forgotten, or beyond its {committed} rows)")
            seg = segs.get(row[0])
            if seg is None:
                # rows already checked (same bytes) skip the check; the cache is small
                db.check_segment_row(row)
                first, _, rec_id, off0, hop, length, cap0, clock, _ = row
                seg = segs[first] = (first, float(off0), float(hop), float(length),
                                     float(cap0), clock, db.recording(rec_id))
            first, off0, hop, length, cap0, clock, rec = seg
            j = r - first
            out.append((rec, off0 + j * hop, length, cap0 + j * hop, clock, r))
        return out

    def read(self, rows) -> tuple[np.ndarray, list[Window]]:
        with self.sync.snapshot():
            rows = np.atleast_1d(np.asarray(rows, np.int64))
            windows = [Window(recording=rec, offset_s=off, length_s=length, capture_utc=cap,
                              clock_source=clock, row=row)
                       for rec, off, length, cap, clock, row in self._window_fields(
                           rows.ravel().tolist())]
            return self.sync.committed_codes()[rows].copy(), windows

    def segments_and_codes(self) -> tuple[list[Segment], np.ndarray]:
        """Every segment in row order and the committed codes, from one snapshot."""
        with self.sync.snapshot():
            segs, _ = self.db.live_state()
            return segs, self.sync.committed_codes()

    def recordings(self) -> list[Recording]:
        with self.sync.snapshot():
            ids = self.db.fetch_recordings("ORDER BY id")
            return [self.db.recording(i) for i in ids]

    def has_tag(self, tag: str) -> bool:
        with self.sync.snapshot():
            found = self.db.has_tag(tag)
            if not found:
                self.db.check_tags()
            return found

    def has_recording(self, path: str, content_hash: str) -> bool:
        with self.sync.snapshot():
            return self.db.has_recording(path, content_hash)

    def stats(self, pending_rows: int) -> dict:
        with self.sync.snapshot():
            db = self.db
            conn = db.conn
            segments, first, last = conn.execute(
                "SELECT COUNT(*), MIN(capture_start_utc), "
                "MAX(capture_start_utc + (n_rows - 1) * hop_s + length_s) "
                "FROM segments").fetchone()
            (recordings,) = conn.execute("SELECT COUNT(*) FROM recordings").fetchone()
            stations = dict(conn.execute(
                "SELECT r.station, SUM(s.n_rows) FROM segments s JOIN recordings r "
                "ON r.id = s.recording GROUP BY r.station ORDER BY r.station").fetchall())
            files = [self.directory / code_file_name(db.generation)] + [
                self.directory / (META_FILE + s) for s in ("", "-wal", "-shm")]
            sizes = {p.name: p.stat().st_size for p in files if p.exists()}
            code_bytes = sizes.get(code_file_name(db.generation), 0)
            return {
                "rows": db.committed - db.forgotten, "file_rows": db.committed,
                "forgotten_rows": db.forgotten, "pending_rows": pending_rows,
                "segments": segments, "recordings": recordings, "bits": self.identity.bits,
                "fingerprint": self.identity.fingerprint, "code_bytes": code_bytes,
                "metadata_bytes": sum(sizes.values()) - code_bytes,
                "first_capture_utc": first, "last_capture_end_utc": last,
                "stations": stations,
            }
