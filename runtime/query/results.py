"""What a search hands back: `SearchResult` and its hits, and their JSON form.

A hit is the store's own record (`cvahash.store.records.Hit`: the window, its recording,
the Hamming distance and the rank), from the store to the printed table and the JSON;
this module only adds the result around them and the JSON shape both `search` and the
reports use (so neither imports the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..store.records import Hit
from ..timeutil import utc_datetime

__all__ = ["Hit", "SearchResult", "hit_dict", "jsonable"]


def jsonable(value: Any) -> Any:
    """Datetimes as ISO-8601 UTC strings, paths as strings, numpy scalars as Python."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def hit_dict(hit: Hit) -> dict[str, Any]:
    """One hit as the JSON output shows it (``recording`` is the path; the recording's
    start, duration, sample rate and content hash follow the window's own fields)."""
    rec = hit.recording
    d = {
        "rank": hit.rank,
        "distance": int(hit.distance),
        "row": int(hit.row),
        "recording": rec.path,
        "start_s": float(hit.start_s),
        "end_s": float(hit.end_s),
        "capture_time": jsonable(hit.known_capture_time),
        "clock_source": hit.clock_source,
        "station": hit.station,
    }
    extra = {
        "recording_start": None if rec.start_utc is None else utc_datetime(rec.start_utc),
        "recording_duration_s": rec.duration_s,
        "sample_rate": rec.sample_rate,
        "content_hash": rec.content_hash or None,
    }
    d.update({k: jsonable(v) for k, v in extra.items() if k not in d})
    return d


@dataclass
class SearchResult:
    """A query as it was searched and its hits, best first."""

    query: str  # the text searched for, or "FILE@START" for a query by example
    mode: str  # "text" or "like"
    bits: int
    fingerprint: str
    k: int
    hits: list[Hit]
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)
    # "weighted": Hamming-nearest candidates re-ranked by the query-weighted distance;
    # "hamming": by Hamming distance, then row.
    order: str = "hamming"

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "k": self.k,
            "truncated": self.truncated,
            "notes": list(self.notes),
            "filters": {k: jsonable(v) for k, v in self.filters.items() if v is not None},
            "order": self.order,
            "hits": [hit_dict(h) for h in self.hits],
        }
