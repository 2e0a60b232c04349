"""Standing text queries: alerts when a newly captured window is close to one.

Each watch has a text query and a Hamming radius (in bits). Its code is computed once
when the daemon starts; every batch of new window codes is then checked with
cvahash.kernel.hamming.within. A match becomes one JSON line appended to the alerts log and,
if configured, runs a command (without a shell; the alert is passed in the
environment variable CVAHASH_ALERT as JSON). A cooldown per watch keeps one long
chorus from producing an alert every few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..kernel import hamming

log = logging.getLogger(__name__)


@dataclass
class Watch:
    name: str
    query: str
    radius: int
    code: np.ndarray  # packed uint8 [nbytes]
    command: tuple[str, ...] | None = None  # argv, run without a shell
    cooldown_s: float = 60.0
    last_alert_capture_s: float | None = None  # capture time (POSIX s) of the last alert


class Watchlist:
    def __init__(self, watches: list[Watch], alerts_log: Path):
        self.watches = watches
        self.alerts_log = Path(alerts_log)
        self.alerts_log.parent.mkdir(parents=True, exist_ok=True)
        self.total = 0
        self._children: list[subprocess.Popen] = []

    @classmethod
    def from_entries(cls, entries, encode_text, alerts_log: Path) -> Watchlist:
        """Build from config entries (objects with name, query, radius, command, cooldown_s)
        and a function that turns a list of texts into packed codes."""
        entries = list(entries)
        if not entries:
            return cls([], alerts_log)
        codes = encode_text([e.query for e in entries])
        watches = [Watch(e.name, e.query, int(e.radius), codes[i],
                         getattr(e, "command", None) or None,
                         float(getattr(e, "cooldown_s", 60.0)))
                   for i, e in enumerate(entries)]
        return cls(watches, alerts_log)

    def check(self, codes: np.ndarray, windows: list[dict]) -> list[dict]:
        """Alerts for a batch of new windows (codes[i] belongs to windows[i]).

        Each window dict carries at least ``capture_s`` (POSIX seconds of its start) and
        whatever identifies it (recording, offset_s, capture_utc, row); those fields are
        copied into the alert.
        """
        self._reap()
        alerts = []
        if not self.watches or len(codes) == 0:
            return alerts
        for w in self.watches:
            dist, ids = hamming.within(w.code, codes, w.radius)
            found = zip(dist.tolist(), ids.tolist(), strict=True)
            for d, i in sorted(found, key=lambda t: windows[t[1]]["capture_s"]):
                win = windows[i]
                if (w.last_alert_capture_s is not None
                        and win["capture_s"] - w.last_alert_capture_s < w.cooldown_s):
                    continue
                w.last_alert_capture_s = win["capture_s"]
                alert = {"watch": w.name, "query": w.query, "distance": int(d),
                         "radius": w.radius, **win}
                alerts.append(alert)
                self._emit(w, alert)
        return alerts

    def _emit(self, w: Watch, alert: dict) -> None:
        self.total += 1
        line = json.dumps(alert, default=str)
        with open(self.alerts_log, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.warning("ALERT %s: %r at %s (distance %d)", w.name, w.query,
                    alert.get("capture_utc"), alert["distance"])
        if w.command:
            try:
                env = dict(os.environ, CVAHASH_ALERT=line)
                self._children.append(subprocess.Popen(
                    list(w.command), env=env, stdin=subprocess.DEVNULL))
            except OSError as exc:
                log.error("watch %s: cannot run %r: %s", w.name, w.command, exc)

    def _reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]

    def close(self, timeout: float = 2.0) -> None:
        for c in self._children:
            try:
                c.wait(timeout)
            except subprocess.TimeoutExpired:
                c.kill()
        self._children = []
