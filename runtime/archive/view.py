"""One bundle's codes in the archive searched and counted (`ArchiveView`).

Search order: distance, then insertion order (the ingest's number, then the window's
position in its update), the documented tie key: the archive answers exactly as a
station store that applied the same updates in the same order. `ArchiveView.search`
takes the station store's arguments (queries, k, since, until, station) and returns the
store's `Hit` records, so `cvahash.query.search.search_text` runs over the archive
unchanged. Every read keeps ``batch IN (SELECT batch FROM ingests)``: rows of an ingest
that has not finished are never seen.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FingerprintMismatch, InvalidArgument, InvalidCodes
from ..store.records import Hit, Recording, to_utc_seconds
from .schema import Bundle, code_words, micros, window_id, words_for

if TYPE_CHECKING:  # typing only: the archive module imports this one
    from .archive import Archive

TIE_MARGIN = 100  # windows fetched past k, so the k-th's ties are usually all in hand
LAZY_LIMIT = 100_000
BUCKETS = {"day": "toStartOfDay", "hour": "toStartOfHour"}


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
            params["since"] = micros(to_utc_seconds(since, "since"))
        if until is not None:
            clauses.append("capture < fromUnixTimestamp64Micro({until:Int64}, 'UTC')")
            params["until"] = micros(to_utc_seconds(until, "until"))
        return " AND ".join(clauses), params

    def _distance(self, words: np.ndarray, params: dict[str, Any]) -> str:
        terms = []
        for i, w in enumerate(words.tolist()):
            params[f"q{i}"] = int(w)
            terms.append(f"bitCount(bitXor(c{i}, {{q{i}:UInt64}}))")
        return " + ".join(terms)

    def search_rows(self, queries, k: int, *, since=None, until=None, station=None,
                    fingerprint: str | None = None, threads: int = 0,
                    with_codes: bool = False) -> list[list[dict[str, Any]]]:
        """Per query, the k nearest windows as dicts (distance, station, capture_us,
        recording, offset_us, length_s, clock, batch, seq; with ``with_codes`` also the
        code words c0, c1, ...), ordered by the tie key."""
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
            if with_codes:
                columns += "".join(f", c{i}" for i in range(len(row)))
            # One scan ordered by distance only, with a margin past k: when the margin
            # holds a farther window, every window tied with the k-th is in hand and the
            # tie order is applied here. Ordering all rows by the full tie key in SQL
            # would read every metadata column of every row.
            near = self.archive._rows(
                f"SELECT {columns} FROM {self.table} WHERE {where} ORDER BY distance "
                "LIMIT {wanted:UInt64}" + query_settings(lazy), params)
            if len(near) < params["wanted"] or near[-1]["distance"] > near[k - 1]["distance"]:
                near.sort(key=_tie_key)
                out.append(near[:k])
                continue
            # More windows tie with the k-th than the margin holds: ask for exactly those.
            params["limit"] = near[k - 1]["distance"]
            out.append(self.archive._rows(
                f"SELECT {columns} FROM {self.table} WHERE {where} AND {dist} <= "
                "{limit:UInt32} ORDER BY distance, batch, seq "
                "LIMIT {k:UInt64}" + query_settings(settings), params))
        return out

    def search(self, queries, k: int, *, since=None, until=None, station=None,
               recording=None, fingerprint: str | None = None,
               threads: int = 0) -> list[list[Hit]]:
        """The station store's ``search``: per query, its k nearest windows as `Hit`s
        (``row`` is the window's archive id, `window_id`)."""
        _no_recording(recording)
        found = self.search_rows(queries, k, since=since, until=until, station=station,
                                 fingerprint=fingerprint, threads=threads)
        return self._hits(found)

    def search_reordered(self, queries, k: int, order, *, since=None, until=None,
                         station=None, recording=None, fingerprint: str | None = None,
                         threads: int = 0) -> list[list[Hit]]:
        """The station store's ``search_reordered``: ``order(i, codes, distances)`` gets
        query i's k nearest windows' packed codes (read in the same scan) and distances,
        in the tie order, and picks the hits."""
        _no_recording(recording)
        found = self.search_rows(queries, k, since=since, until=until, station=station,
                                 fingerprint=fingerprint, threads=threads, with_codes=True)
        words = words_for(self.bits)
        kept = []
        for i, near in enumerate(found):
            w = np.array([[r[f"c{j}"] for j in range(words)] for r in near],
                         np.uint64).reshape(len(near), words)
            packed = w.astype(">u8").view(np.uint8).reshape(len(near), 8 * words)
            codes = np.ascontiguousarray(packed[:, :self.nbytes])
            dist = np.array([r["distance"] for r in near], np.int64)
            kept.append([near[j] for j in np.asarray(order(i, codes, dist)).tolist()])
        return self._hits(kept)

    def _hits(self, found) -> list[list[Hit]]:
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


def _no_recording(recording) -> None:
    if recording is not None:
        raise InvalidArgument("the archive searches by station and time; a recording "
                              "filter is not supported")


def _tie_key(row: dict[str, Any]):
    """The documented order: distance, then insertion order (ingest number, position in
    the update), as a station store that applied the same updates in the same order."""
    return (row["distance"], row["batch"], row["seq"])


def query_settings(items: list[str]) -> str:
    return " SETTINGS " + ", ".join(items) if items else ""
