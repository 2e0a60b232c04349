"""The records a code store holds and hands back: recordings, segments, windows, hits.

Times are UTC seconds since the Unix epoch (float) everywhere; inputs may also be
timezone-aware ``datetime`` objects. A *segment* describes ``n_rows`` consecutive
code rows cut from one recording at a regular hop::

    offset_s(j)    = first_offset_s + j * hop_s          j = 0 .. n_rows-1
    capture_utc(j) = capture_start_utc + j * hop_s

so a whole recording (or one capture run of the daemon) costs one metadata row
however many windows it has. Irregular windows are segments of one row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from ..errors import InvalidArgument
from ..limits import CLOCK_SOURCE_RE, KNOWN_CLOCK_SOURCES
from ..timeutil import utc_datetime

# Windows whose times sit on a segment's grid within this many seconds extend it.
# Reconstructed offsets and capture times may differ from the given ones by as much.
GRID_TOLERANCE_S = 1e-5


def to_utc_seconds(value, what: str) -> float:
    """A timezone-aware datetime or UTC epoch seconds, as float seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument(
                f"{what} is a naive datetime ({value.isoformat()}); pass a timezone-aware "
                "datetime (e.g. datetime(..., tzinfo=timezone.utc)) or UTC epoch seconds")
        return value.timestamp()
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"{what} must be a timezone-aware datetime or UTC epoch seconds, got {value!r}"
        ) from None
    if not math.isfinite(seconds):
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    return seconds


# Times a store accepts for what it keeps (capture and start times): 1970-01-01 up to
# 2200-01-01 UTC. Anything outside is a broken clock or a hostile input, and would make
# every later `info` or `search` fail to show it.
MIN_STORED_UTC = 0.0
MAX_STORED_UTC = 7258118400.0


def stored_time(value, what: str) -> float:
    """to_utc_seconds, refusing times outside 1970..2200 (what a store may keep)."""
    seconds = to_utc_seconds(value, what)
    if not MIN_STORED_UTC <= seconds < MAX_STORED_UTC:
        raise InvalidArgument(f"{what} is {seconds!r}, outside 1970-01-01..2200-01-01 UTC; "
                              "check the clock or the file's time")
    return seconds


def _finite(value, what: str, minimum: float | None = None, above: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    if minimum is not None and (x <= minimum if above else x < minimum):
        raise InvalidArgument(f"{what} must be {'>' if above else '>='} {minimum}, got {value!r}")
    return x


def check_clock_source(value) -> str:
    if not isinstance(value, str) or not CLOCK_SOURCE_RE.match(value):
        raise InvalidArgument(
            f"clock_source must be a short lowercase word such as "
            f"{', '.join(KNOWN_CLOCK_SOURCES)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Recording:
    """One audio file (or one live capture run). Identified by ``(path, content_hash)``.

    ``path`` is how the station names the audio (a file path, or e.g. ``capture:<start>``
    for live capture); ``content_hash`` lets re-indexing skip files already stored
    (``CodeStore.has_recording``) and tell a rewritten file from the old one.
    """
    path: str
    station: str = ""
    start_utc: float | None = None
    sample_rate: int | None = None
    duration_s: float | None = None
    content_hash: str = ""

    def checked(self) -> Recording:
        if not isinstance(self.path, str) or not self.path:
            raise InvalidArgument(f"Recording.path must be a non-empty string, got {self.path!r}")
        if not isinstance(self.station, str):
            raise InvalidArgument(f"Recording.station must be a string, got {self.station!r}")
        if not isinstance(self.content_hash, str):
            raise InvalidArgument(
                f"Recording.content_hash must be a string, got {self.content_hash!r}")
        start = None if self.start_utc is None else stored_time(
            self.start_utc, f"Recording.start_utc of {self.path!r}")
        rate = None
        if self.sample_rate is not None:
            if isinstance(self.sample_rate, bool) or int(self.sample_rate) != self.sample_rate \
                    or self.sample_rate <= 0:
                raise InvalidArgument(
                    f"Recording.sample_rate of {self.path!r} must be a positive integer, "
                    f"got {self.sample_rate!r}")
            rate = int(self.sample_rate)
        duration = None if self.duration_s is None else _finite(
            self.duration_s, f"Recording.duration_s of {self.path!r}", 0.0)
        return replace(self, start_utc=start, sample_rate=rate, duration_s=duration)

    @property
    def key(self) -> tuple[str, str]:
        return (self.path, self.content_hash)


@dataclass(frozen=True)
class Segment:
    """``n_rows`` windows of one recording on a regular grid (see the module docstring).

    In ``CodeStore.append`` ``n_rows`` may be None for a single segment covering every
    code of the call. ``hop_s`` must be > 0 when ``n_rows`` > 1. ``first_row`` is set on
    segments the store hands back and ignored on input.
    """
    recording: Recording
    first_offset_s: float
    length_s: float
    capture_start_utc: float
    hop_s: float = 0.0
    n_rows: int | None = None
    clock_source: str = "unknown"
    first_row: int | None = None

    def checked(self, n_rows: int, recording: Recording | None = None) -> Segment:
        """A validated copy with floats and n_rows normalised (``recording``: already
        checked, to skip checking it again)."""
        if not isinstance(self.recording, Recording):
            raise InvalidArgument(
                f"Segment.recording must be a cvahash.store.records.Recording, got "
                f"{self.recording!r}")
        where = f"segment of {self.recording.path!r}"
        if isinstance(n_rows, bool) or int(n_rows) != n_rows or n_rows < 1:
            raise InvalidArgument(f"{where}: n_rows must be a positive integer, got {n_rows!r}")
        hop = _finite(self.hop_s, f"{where}: hop_s", 0.0)
        if n_rows > 1 and hop <= 0:
            raise InvalidArgument(f"{where}: hop_s must be > 0 for {n_rows} windows, got {hop}")
        start = stored_time(self.capture_start_utc, f"{where}: capture_start_utc")
        if n_rows > 1:
            stored_time(start + (n_rows - 1) * hop, f"{where}: the last window's capture time")
        return Segment(
            recording=recording if recording is not None else self.recording.checked(),
            first_offset_s=_finite(self.first_offset_s, f"{where}: first_offset_s"),
            length_s=_finite(self.length_s, f"{where}: length_s", 0.0, above=True),
            capture_start_utc=start,
            hop_s=hop if n_rows > 1 else 0.0,
            n_rows=int(n_rows),
            clock_source=check_clock_source(self.clock_source),
        )

    def window(self, j: int) -> Window:
        """The j-th window of this segment (0-based)."""
        return Window(
            recording=self.recording,
            offset_s=self.first_offset_s + j * self.hop_s,
            length_s=self.length_s,
            capture_utc=self.capture_start_utc + j * self.hop_s,
            clock_source=self.clock_source,
            row=None if self.first_row is None else self.first_row + j,
        )


@dataclass(frozen=True, kw_only=True)
class Window:
    """One code row's metadata: which recording, where in it, when it was captured.

    ``row`` is the code row (set by the store, ignored on input).
    """
    recording: Recording
    offset_s: float
    length_s: float
    capture_utc: float
    clock_source: str = "unknown"
    row: int | None = None

    @property
    def capture_time(self) -> datetime:
        """``capture_utc`` as a timezone-aware UTC datetime."""
        return utc_datetime(self.capture_utc)

    def as_segment(self) -> Segment:
        return Segment(recording=self.recording, first_offset_s=self.offset_s,
                       length_s=self.length_s, capture_start_utc=self.capture_utc,
                       hop_s=0.0, n_rows=1, clock_source=self.clock_source)


@dataclass(frozen=True, kw_only=True)
class Hit(Window):
    """A search result: a window, its Hamming distance to the query and its rank.

    The one hit type from the store to the printed table and the JSON: the store hands
    them back nearest first (``rank`` 1, 2, ...), the query layer and the reports read
    the same objects.
    """
    distance: int
    rank: int = 0

    @property
    def path(self) -> str:
        """The recording's path as given at index time."""
        return self.recording.path

    @property
    def start_s(self) -> float:
        """Seconds into the recording where the window starts."""
        return self.offset_s

    @property
    def end_s(self) -> float:
        return self.offset_s + self.length_s

    @property
    def station(self) -> str | None:
        return self.recording.station or None

    @property
    def known_capture_time(self) -> datetime | None:
        """The capture time, or None when no clock was known (clock source "unknown")."""
        return None if self.clock_source == "unknown" else self.capture_time


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= GRID_TOLERANCE_S


def try_extend(a: Segment, b: Segment) -> Segment | None:
    """``a`` followed by ``b`` as one segment, or None when they do not share a grid.

    Both are checked segments. The grid is always reconstructed from ``a``'s start, so
    rounding does not accumulate along a long run of appends.
    """
    if (a.recording.key != b.recording.key or a.clock_source != b.clock_source
            or not _close(a.length_s, b.length_s)):
        return None
    if a.n_rows == 1:
        hop = b.first_offset_s - a.first_offset_s
        if hop <= GRID_TOLERANCE_S:
            return None
    else:
        hop = a.hop_s
    # b's own grid must stay within the tolerance of a's over all of b's rows.
    if b.n_rows > 1 and abs(hop - b.hop_s) * b.n_rows > GRID_TOLERANCE_S:
        return None
    n = a.n_rows
    if not (_close(a.first_offset_s + n * hop, b.first_offset_s)
            and _close(a.capture_start_utc + n * hop, b.capture_start_utc)):
        return None
    return replace(a, hop_s=hop, n_rows=n + b.n_rows)
