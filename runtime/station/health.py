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

STATUS_FORMAT = 1


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
    """Atomically replace the status file with `doc`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_status(path: Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CvahashError(f"{path}: no status file; is the daemon running with this "
                           "config?") from None
    except (OSError, ValueError) as exc:
        raise CvahashError(f"{path}: unreadable status file ({exc})") from exc


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
