"""UTC time helpers shared by the layers: epoch seconds <-> aware datetimes, ISO text.

Times are UTC seconds since the Unix epoch (float) in the store and the update format,
and timezone-aware datetimes at the edges (the CLI, JSON).
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_datetime(seconds: float) -> datetime:
    """UTC epoch seconds as a timezone-aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def iso_utc(t: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix (``2024-06-12T05:30:00Z``)."""
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
