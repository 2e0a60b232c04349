"""The daemon's health, written to a status file that `cvahash status` reads.

A station is visited rarely; when somebody looks, the status must say plainly whether
the daemon is listening. So the file carries the time it was written and the time of
the last captured audio, and the reader calls a status STALE when the file stopped
being refreshed, and NOT CAPTURING when audio stopped arriving, instead of repeating
the last good numbers (the silent failure users of station software complain about).

The file is JSON, replaced atomically (write to a temporary file, fsync, rename), so
a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CvahashError
from ..safeio import UnsafeFile, open_new_or_regular, read_capped, write_problem

STATUS_FORMAT = 1
# A status document is about 1 KiB (its gap list is bounded); a bigger file is not one.
MAX_STATUS_BYTES = 256 * 1024
# Times a status document may carry: a station clock outside these is broken.
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
_NUMBERS = ("interval_s", "lag_s", "windows_total", "windows_per_s", "store_rows",
            "pending_rows", "input_overflows", "dropped_frames", "reconnects", "alerts_total",
            "disk_free_mb", "disk_total_mb")
_TIMES = ("written_utc", "last_capture_utc", "last_audio_utc")


@dataclass
class Health:
    """Counters the daemon keeps; `snapshot()` turns them into the status document."""

    source: str = ""
    state: str = "starting"  # starting | capturing | reconnecting | stopping | stopped
    started_at: str = ""
    last_capture_utc: str | None = None  # capture time of the last audio (source's clock)
    last_capture_monotonic: float | None = None
    # Wall-clock time the last audio block arrived: what "is it capturing?" is judged by.
    # A replayed file's capture times lie in the past, a station's clock may be wrong.
    last_audio_utc: str | None = None
    windows_total: int = 0
    windows_per_s: float = 0.0
    lag_s: float = 0.0
    input_overflows: int = 0
    dropped_frames: int = 0
    reconnects: int = 0
    gaps: list = field(default_factory=list)
    alerts_total: int = 0
    store_rows: int = 0  # committed: what a search sees
    pending_rows: int = 0  # encoded, committed within [store] commit_interval_s
    retention: str = "off"  # off | on | paused (disk full or quota)
    last_error: str | None = None

    def snapshot(self, interval_s: float, disk_path: Path | None) -> dict:
        doc = asdict(self)
        doc["gaps"] = self.gaps[-20:]
        doc["format"] = STATUS_FORMAT
        doc["written_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        doc["written_monotonic"] = time.monotonic()
        doc["interval_s"] = interval_s
        doc["pid"] = os.getpid()
        if disk_path is not None:
            try:
                usage = shutil.disk_usage(disk_path)
                doc["disk_free_mb"] = round(usage.free / 1e6, 1)
                doc["disk_total_mb"] = round(usage.total / 1e6, 1)
            except OSError:
                doc["disk_free_mb"] = None
        return doc


def write_status(path: Path, doc: dict) -> None:
    """Atomically replace the status file with `doc`. Only a regular file (or nothing)
    at ``path`` is replaced, and the temporary file is never written through a symlink:
    `UnsafeFile` otherwise (a device node at the status path stays a device node)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if why := write_problem(path):
        raise UnsafeFile(f"{path}: {why}")
    tmp = path.with_name(path.name + ".tmp")
    fd = open_new_or_regular(tmp, os.O_WRONLY | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_status(path: Path) -> dict:
    """The status document at ``path``, checked: a regular file of at most
    ``MAX_STATUS_BYTES``, a JSON object whose times are ISO-8601 UTC within 1970-2200 and
    whose counters are numbers. CvahashError naming the file and the field otherwise."""
    path = Path(path)
    try:
        doc = json.loads(read_capped(path, MAX_STATUS_BYTES, what="status file"))
    except FileNotFoundError:
        raise CvahashError(f"{path}: no status file; is the daemon running with this "
                           "config?") from None
    except UnsafeFile as exc:
        raise CvahashError(f"{exc}; give the file the daemon writes ([status] path)") from None
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CvahashError(f"{path}: unreadable status file ({reason}); the daemon rewrites "
                           "it every [status] interval_s, check that it runs") from None
    problem = _status_problem(doc)
    if problem:
        raise CvahashError(f"{path}: not a cvahash status file ({problem}); the daemon "
                           "rewrites it every [status] interval_s, check that it runs")
    return doc


def _status_problem(doc) -> str | None:
    if not isinstance(doc, dict):
        return "expected a JSON object"
    for key in _TIMES:
        value = doc.get(key)
        if value is None and key != "written_utc":
            continue
        if not isinstance(value, str) or len(value) > 64:
            return f"{key} is missing or not a time" if value is None else f"{key} is not a time"
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"{key} {value[:40]!r} is not an ISO-8601 time"
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        if not _EARLIEST <= t < _LATEST:
            return f"{key} {value!r} is outside 1970-2200"
        doc[key] = t.isoformat()
    for key in _NUMBERS:
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                or abs(value) > 1e15:
            return f"{key} is not a number"
    if "interval_s" in doc and not 0 < doc["interval_s"] <= 86400:
        return f"interval_s {doc['interval_s']!r} is not within 0..86400 s"
    if not isinstance(doc.get("gaps", []), list):
        return "gaps is not a list"
    return None


def verdict(doc: dict, now: datetime | None = None) -> tuple[str, list[str]]:
    """Overall verdict and the reasons: OK, DEGRADED, NOT CAPTURING or STALE."""
    now = now or datetime.now(timezone.utc)
    reasons = []
    interval = float(doc.get("interval_s", 10))
    written = datetime.fromisoformat(doc["written_utc"])
    age = (now - written).total_seconds()
    if age > 3 * interval + 5:
        return "STALE", [f"status not refreshed for {age:.0f} s (daemon stopped or hung)"]
    if doc.get("state") in ("stopped", "stopping"):
        return "STOPPED", ["the daemon has stopped"]
    # Status files from before last_audio_utc existed only have the capture time.
    last = doc.get("last_audio_utc") or doc.get("last_capture_utc")
    if last is None:
        if doc.get("state") != "starting":
            reasons.append("no audio captured yet")
    else:
        silent = (written - datetime.fromisoformat(last)).total_seconds()
        if silent > max(3 * interval, 30):
            reasons.append(f"no audio for {silent:.0f} s (state: {doc.get('state')})")
    if reasons:
        return "NOT CAPTURING", reasons
    if doc.get("lag_s", 0) > 60:
        reasons.append(f"analysis lags {doc['lag_s']:.0f} s behind real time")
    if doc.get("retention") == "paused":
        reasons.append("audio retention paused (disk quota or free space)")
    free = doc.get("disk_free_mb")
    if free is not None and free < 200:
        reasons.append(f"only {free:.0f} MB free on disk")
    return ("DEGRADED" if reasons else "OK"), reasons


def format_status(doc: dict) -> str:
    state, reasons = verdict(doc)
    lines = [f"{state}: {doc.get('source', '?')} ({doc.get('state')})"]
    lines += [f"  ! {r}" for r in reasons]
    rows = [
        ("last capture (UTC)", doc.get("last_capture_utc") or "never"),
        ("audio last arrived (UTC)", doc.get("last_audio_utc") or "never"),
        ("lag behind real time", f"{doc.get('lag_s', 0):.1f} s"),
        ("windows", f"{doc.get('windows_total', 0)} ({doc.get('windows_per_s', 0):.2f}/s)"),
        ("store rows", f"{doc.get('store_rows', 0)} searchable"
                       + (f", {doc['pending_rows']} waiting for the next commit"
                          if doc.get("pending_rows") else "")),
        ("input overflows", doc.get("input_overflows", 0)),
        ("dropped frames", doc.get("dropped_frames", 0)),
        ("reconnects", doc.get("reconnects", 0)),
        ("gaps recorded", len(doc.get("gaps", []))),
        ("alerts", doc.get("alerts_total", 0)),
        ("audio retention", doc.get("retention")),
        ("disk free", f"{doc.get('disk_free_mb')} MB"),
        ("status written (UTC)", doc.get("written_utc")),
    ]
    if doc.get("last_error"):
        rows.append(("last error", doc["last_error"]))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
