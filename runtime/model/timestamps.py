"""When a recording started: the AudioMoth comment, the file name, or the file's mtime.

`capture_time(path)` returns an aware UTC datetime and the clock that says so
(``audiomoth``, ``filename``, ``file-mtime`` or ``unknown``); every window of the
recording gets its capture time from it.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import soundfile as sf

from ..limits import EARLIEST_UTC, LATEST_UTC

if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioInfo

__all__ = ["capture_time", "parse_audiomoth_comment", "parse_filename_time"]

# AudioMoth's comment: "Recorded at 05:30:00 12/06/2024 (UTC) by AudioMoth 24F319055F3B ...",
# with "(UTC+1)", "(UTC-5)", "(UTC+5:30)" when set to local time; some firmware adds
# milliseconds; the oldest firmware wrote no zone at all (it was UTC).
_AUDIOMOTH = re.compile(
    r"Recorded\s+at\s+(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.(?P<frac>\d{1,6}))?\s+"
    r"(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<Y>\d{4})"
    r"(?:\s*\(UTC\s*(?:(?P<sign>[+-])\s*(?P<oh>\d{1,2})(?::?(?P<om>\d{2}))?)?\s*\))?",
    re.IGNORECASE,
)
# Names like 20240612_053000, 20240612T053000, SM4_20240612_053000, 2024-06-12T05-30-00,
# optionally followed by a zone: Z, +0100, -05:00, +01.
_FILENAME = re.compile(
    r"(?<!\d)(?P<Y>\d{4})(?P<s1>-?)(?P<m>\d{2})(?P=s1)(?P<d>\d{2})[_T\- ]?"
    r"(?P<H>\d{2})(?P<s2>[-:.]?)(?P<M>\d{2})(?P=s2)(?P<S>\d{2})(?!\d)"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?(?!\d))?",
    re.IGNORECASE,
)
# AudioMoth firmware before 1.2 named files after the UTC Unix time in hex: 5D2F8F90.WAV.
_HEX_NAME = re.compile(r"^[0-9A-F]{8}$")
_PLAUSIBLE = (datetime(1990, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


def _plausible(t: datetime) -> datetime | None:
    return t if _PLAUSIBLE[0] <= t < _PLAUSIBLE[1] else None


def _offset(sign: str | None, hours: str | None, minutes: str | None) -> timedelta:
    if not sign:
        return timedelta(0)
    delta = timedelta(hours=int(hours or 0), minutes=int(minutes or 0))
    return -delta if sign == "-" else delta


def parse_audiomoth_comment(comment: str | None) -> datetime | None:
    """UTC start time from an AudioMoth comment tag, or None if it holds none."""
    if not comment:
        return None
    m = _AUDIOMOTH.search(comment)
    if not m:
        return None
    try:
        local = datetime(
            int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"]),
            int((m["frac"] or "0").ljust(6, "0")), tzinfo=timezone.utc,
        )  # fmt: skip
        offset = _offset(m["sign"], m["oh"], m["om"])
    except ValueError:
        return None
    if offset > timedelta(hours=14) or offset < timedelta(hours=-12):
        return None
    return _plausible(local - offset)


def parse_filename_time(name: str) -> datetime | None:
    """UTC start time from a recorder's file name, or None. A time without a zone
    suffix is taken as UTC (AudioMoth's default; set SM4s and others to UTC too)."""
    stem = Path(name).stem
    for m in _FILENAME.finditer(stem):
        try:
            t = datetime(
                int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"]),
                tzinfo=timezone.utc,
            )  # fmt: skip
        except ValueError:
            continue
        tz = (m["tz"] or "").upper().replace(":", "")
        if tz and tz != "Z":
            t -= _offset(tz[0], tz[1:3], tz[3:5] or None)
        if _plausible(t):
            return t
    if _HEX_NAME.match(stem):
        try:
            return _plausible(datetime.fromtimestamp(int(stem, 16), tz=timezone.utc))
        except (OverflowError, OSError, ValueError):
            return None
    return None


def capture_time(
    path: str | os.PathLike, info: AudioInfo | None = None
) -> tuple[datetime | None, str]:
    """When a recording started (aware UTC datetime) and which clock says so.

    In order of trust: the AudioMoth comment tag -> ``"audiomoth"``; a date and time in
    the file name (see `parse_filename_time`; UTC unless suffixed) -> ``"filename"``;
    the file's modification time -> ``"file-mtime"`` (beware: a recorder sets it when it
    *closes* the file, a plain copy sets it to the copy time); ``(None, "unknown")``
    when even that cannot be read. Never raises for an odd name or unreadable file.
    """
    path = Path(path)
    comment = info.comment if info is not None else None
    if comment is None:
        try:
            with sf.SoundFile(str(path)) as f:
                comment = f.copy_metadata().get("comment")
        except (RuntimeError, ValueError, TypeError, OSError):  # still has a name and mtime
            comment = None
    # A time outside 1970-2200 (a recorder with a dead clock battery, a file touched to
    # year 9999) is no capture time: the next source is tried, and the store never holds
    # a date its readers cannot show.
    t = parse_audiomoth_comment(comment)
    if _in_store_range(t):
        return t, "audiomoth"
    t = parse_filename_time(path.name)
    if _in_store_range(t):
        return t, "filename"
    try:
        t = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    except (OSError, OverflowError, ValueError):
        return None, "unknown"
    return (t, "file-mtime") if _in_store_range(t) else (None, "unknown")


def _in_store_range(t: datetime | None) -> bool:
    return t is not None and EARLIEST_UTC <= t.timestamp() < LATEST_UTC
