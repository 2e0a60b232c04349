"""The alerts the daemon wrote (its alerts.jsonl, newest first) and which of them someone
acknowledged on the page (a JSON list of alert ids beside the log)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ...errors import CvahashError

ALERTS_SHOWN = 200


def alert_id(alert: dict) -> str:
    """A stable id for an alert line (its watch, window and capture time)."""
    key = json.dumps([alert.get("watch"), alert.get("row"), alert.get("capture_utc"),
                      alert.get("recording"), alert.get("offset_s")], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_alerts(path: Path, limit: int = ALERTS_SHOWN) -> list[dict]:
    """The newest ``limit`` alerts in the daemon's alerts.jsonl, newest first (a damaged
    line is skipped; only the file's last megabyte is read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - (1 << 20)))
            data = fh.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > (1 << 20):
        lines = lines[1:]  # the first may be cut
    out = []
    for line in reversed(lines):
        if len(out) >= limit:
            break
        try:
            alert = json.loads(line)
        except ValueError:
            continue
        if isinstance(alert, dict):
            alert["id"] = alert_id(alert)
            out.append(alert)
    return out


def read_acks(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


_acks_lock = threading.Lock()


def add_acks(path: Path, ids: list[str]) -> None:
    with _acks_lock:
        acked = read_acks(path) | set(ids)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(sorted(acked)), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise CvahashError(f"cannot record the acknowledgement in {path}: "
                               f"{exc.strerror or exc}") from None


def acks_path_for(alerts_log: Path) -> Path:
    """Where the acknowledgements of an alerts log are kept."""
    return alerts_log.with_name(alerts_log.stem + ".acked.json")


def alerts_with_acks(alerts_log: Path) -> list[dict]:
    """The newest alerts, each marked ``acked`` or not."""
    acked = read_acks(acks_path_for(alerts_log))
    return [dict(a, acked=a["id"] in acked) for a in read_alerts(alerts_log)]
