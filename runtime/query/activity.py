"""Activity: how often a sound was heard over time, per hour or per day, by station.

`count_activity(store, bundle, text, by="hour", top=K | radius=R)` runs the same text
search as ``cvahash search`` (`cvahash.query.search.search_text`) and counts its hits by
capture time and station:

- ``top=K``: the K best windows, as ``cvahash search -k K`` ranks them, however far
  (the threshold is a rank);
- ``radius=R``: every window whose code is at most R bits from the query's (at most
  `RADIUS_LIMIT` windows are looked at; a note says when more may lie within R).

Hits whose capture time is unknown are counted apart (``unknown_time``). The result
(`Activity`) becomes JSON (`to_dict`), CSV (`to_csv`: bucket start, station, count) and
a bar chart (`write_png`, needs matplotlib: ``pip install '.[plots]'`` in the cvahash
checkout). The command
``cvahash activity`` and the station web page both use this module.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import CvahashError, InvalidArgument
from .results import jsonable
from .search import search_text

__all__ = ["BY", "RADIUS_LIMIT", "Activity", "count_activity"]

BY = ("hour", "day")
# A radius search looks at no more than this many nearest windows; counts are then
# lower bounds (a note says so). 100k hits already fill any chart a phone can show.
RADIUS_LIMIT = 100_000
DEFAULT_TOP = 100
# Empty buckets between the first and last hit are filled in (so the chart has a time
# axis) unless there would be more than this many.
MAX_FILLED_BUCKETS = 5000


def bucket_start(t: datetime, by: str) -> datetime:
    """The start (UTC) of the hour or day that contains ``t``."""
    t = t.astimezone(timezone.utc)
    if by == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(minute=0, second=0, microsecond=0)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Activity:
    """Hit counts per (bucket start, station) for one query and threshold."""

    query: str
    by: str
    threshold: str  # "top" or "radius"
    value: int  # K or R
    bits: int
    fingerprint: str
    buckets: list[str]  # ISO UTC starts, oldest first (empty ones included)
    stations: list[str]  # "(none)" for windows without a station
    counts: dict[tuple[str, str], int]
    total: int
    unknown_time: int = 0
    notes: list[str] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)

    def count(self, bucket: str, station: str) -> int:
        return self.counts.get((bucket, station), 0)

    def series(self) -> list[dict[str, Any]]:
        """One entry per bucket: its start, total and count per station."""
        return [{"start": b, "total": sum(self.count(b, s) for s in self.stations),
                 "stations": {s: self.count(b, s) for s in self.stations}}
                for b in self.buckets]

    def threshold_text(self) -> str:
        if self.threshold == "top":
            return f"top {self.value} nearest windows"
        return f"windows within {self.value} of {self.bits} bits"

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query, "by": self.by, "threshold": self.threshold,
            "value": self.value, "bits": self.bits, "fingerprint": self.fingerprint,
            "total": self.total, "unknown_time": self.unknown_time,
            "notes": list(self.notes),
            "filters": {k: jsonable(v) for k, v in self.filters.items() if v is not None},
            "stations": list(self.stations), "buckets": self.series(),
        }

    def to_csv(self) -> str:
        """``bucket_start_utc,station,count``: one line per bucket and station (zeros too)."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["bucket_start_utc", "station", "count"])
        for b in self.buckets:
            for s in self.stations:
                w.writerow([b, s, self.count(b, s)])
        if self.unknown_time:
            w.writerow(["unknown", "(all)", self.unknown_time])
        return out.getvalue()

    def write_png(self, path: str | os.PathLike) -> Path:
        """A stacked bar chart (one colour per station) with the threshold in the title."""
        try:
            import matplotlib  # optional: the [plots] extra
        except ModuleNotFoundError:
            raise CvahashError("--png needs matplotlib: pip install '.[plots]' in the cvahash "
                               "checkout (or leave out --png and use --csv)") from None
        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # optional: [plots]

        fig = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        starts = [datetime.fromisoformat(b.replace("Z", "+00:00")) for b in self.buckets]
        width = timedelta(hours=1 if self.by == "hour" else 24) * 0.85
        bottom = [0] * len(starts)
        for s in self.stations:
            heights = [self.count(b, s) for b in self.buckets]
            ax.bar(starts, heights, width=width, bottom=bottom, align="edge", label=s)
            bottom = [a + b for a, b in zip(bottom, heights, strict=True)]
        from matplotlib.ticker import MaxNLocator  # optional: [plots]

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"hits per {self.by}")
        ax.set_xlabel("capture time (UTC)")
        ax.set_title(f"\u201c{self.query}\u201d: {self.threshold_text()}", fontsize=10)
        if len(self.stations) > 1:
            ax.legend(title="station", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.autofmt_xdate()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
        return path


def count_activity(store, bundle, text: str, *, by: str = "hour", top: int | None = None,
                   radius: int | None = None, threads: int = 0, **filters) -> Activity:
    """Count the hits of ``text`` per ``by`` ("hour" or "day") and station.

    Give ``top`` (K nearest windows) or ``radius`` (bits); neither means top
    `DEFAULT_TOP`. Filters (``since``, ``until``, ``station``) as for search.
    """
    if by not in BY:
        raise InvalidArgument(f"--by {by!r}: use hour or day")
    if top is not None and radius is not None:
        raise InvalidArgument("give --top K or --radius R, not both")
    if radius is not None:
        whole = isinstance(radius, int) and not isinstance(radius, bool)
        if not whole or not 0 <= radius <= bundle.bits:
            raise InvalidArgument(f"--radius {radius!r}: must be a whole number from 0 to "
                                  f"{bundle.bits} (the bundle's code width)")
        k = max(1, min(len(store), RADIUS_LIMIT))
    else:
        k = DEFAULT_TOP if top is None else top
    # top=K: the K windows `search -k K` shows (re-ranked); radius=R: a set in bits, the
    # same whatever the order, so the plain Hamming search is enough.
    result = search_text(store, bundle, text, k, threads=threads, rerank=radius is None,
                         **filters)
    hits = result.hits
    notes = list(result.notes)
    if radius is not None:
        within = [h for h in hits if h.distance <= radius]
        if len(hits) == k and k == RADIUS_LIMIT and len(within) == len(hits):
            notes.append(f"more than {RADIUS_LIMIT} windows may lie within radius {radius}: "
                         "only the nearest were counted; use a smaller --radius")
        hits = within
    counts: Counter = Counter()
    unknown = 0
    stations = set()
    for h in hits:
        station = h.station or "(none)"
        stations.add(station)
        when = h.known_capture_time
        if when is None:
            unknown += 1
            continue
        counts[(_iso(bucket_start(when, by)), station)] += 1
    if unknown:
        notes.append(f"{unknown} hits have no known capture time and are not in the chart")
    return Activity(
        query=result.query, by=by, threshold="radius" if radius is not None else "top",
        value=radius if radius is not None else k, bits=result.bits,
        fingerprint=result.fingerprint, buckets=_buckets(counts, by),
        stations=sorted(stations), counts=dict(counts), total=len(hits),
        unknown_time=unknown, notes=notes, filters=dict(result.filters))


def _buckets(counts: Counter, by: str) -> list[str]:
    seen = sorted({b for b, _ in counts})
    if len(seen) < 2:
        return seen
    step = timedelta(hours=1 if by == "hour" else 24)
    first = datetime.fromisoformat(seen[0].replace("Z", "+00:00"))
    last = datetime.fromisoformat(seen[-1].replace("Z", "+00:00"))
    if (last - first) / step + 1 > MAX_FILLED_BUCKETS:
        return seen
    out, t = [], first
    while t <= last:
        out.append(_iso(t))
        t += step
    return out
