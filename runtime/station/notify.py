"""Watchlist alerts to MQTT and to the services Apprise reaches, sent later when offline.

The alerts log (``alerts.jsonl``, one JSON line per alert, written by the watchlist) is
the queue: each target keeps a cursor, the byte offset of the first line it has not
sent yet, in a small state file beside the log (``alerts.notify.json``, replaced
atomically). A background thread sends the lines past each cursor and moves it after
each one is delivered; a target that fails is retried every ``retry_s`` seconds, so
alerts raised while the station has no link wait on disk and go out, in order, when
the link returns. Capture never waits: the daemon only appends to the log.

Targets:
- MQTT (paho-mqtt): ``mqtt://[user:password@]host[:port]`` (``mqtts://`` for TLS), one
  message per alert on ``<topic>/<watch name>``, QoS 1, the alert as JSON.
- Apprise: any Apprise URL (``ntfy://``, ``mailto://``, ``tgram://``, ``json://`` ...),
  each URL its own target with its own cursor, so one service that is down does not
  make the others send twice.

Delivery is at least once: a cut between a send and the cursor update sends that alert
again. A target first seen starts at the end of the log (old alerts are not replayed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..safeio import read_capped

log = logging.getLogger(__name__)

__all__ = ["AppriseTarget", "MqttTarget", "Notifier", "targets_from_settings"]

POLL_S = 2.0  # how often the log is checked for new lines
MAX_LINE = 64 * 1024  # longer lines are not alerts the watchlist wrote: skipped
MAX_STATE = 1024 * 1024  # the cursor file holds one offset per target: a few hundred bytes


class SendFailed(Exception):
    pass


class MqttTarget:
    """Publishes each alert to ``topic/<watch>`` on one broker (connection kept open)."""

    def __init__(self, url: str, topic: str, timeout_s: float = 10.0):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"not an MQTT broker URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.topic = topic.rstrip("/")
        self.timeout_s = timeout_s
        self.name = f"mqtt:{self.host}:{self.port}/{self.topic}"
        self._client = None

    def _connect(self):
        import paho.mqtt.client as mqtt  # the web extra: only a station that uses MQTT

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"cvahash-{os.getpid()}-{id(self) & 0xffff:x}")
        if self.user:
            client.username_pw_set(self.user, self.password)
        if self.tls:
            client.tls_set()
        client.connect(self.host, self.port, keepalive=60)
        client.loop_start()
        return client

    def send(self, alert: dict) -> None:
        try:
            if self._client is None:
                self._client = self._connect()
            watch = str(alert.get("watch") or "alert").replace("/", "_")
            info = self._client.publish(f"{self.topic}/{watch}", json.dumps(alert), qos=1)
            info.wait_for_publish(timeout=self.timeout_s)
            if not info.is_published():
                raise SendFailed(f"broker did not acknowledge within {self.timeout_s:g} s")
        except ImportError:
            raise SendFailed(f"{self.name}: paho-mqtt is not installed: "
                             "pip install '.[web]' in the cvahash checkout") from None
        except (OSError, ValueError, RuntimeError, SendFailed) as exc:
            self.close()
            raise SendFailed(f"{self.name}: {exc}") from None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.loop_stop()
                self._client.disconnect()
            except Exception:  # already gone
                pass
            self._client = None


class AppriseTarget:
    """Sends each alert as a short notification through one Apprise URL."""

    def __init__(self, url: str):
        self.url = url
        digest = hashlib.sha256(url.encode()).hexdigest()[:10]
        self.name = f"apprise:{urlsplit(url).scheme}:{digest}"  # no secrets in logs

    def send(self, alert: dict) -> None:
        try:
            import apprise  # the web extra; slow to import (hundreds of plugins): when used
        except ImportError:
            raise SendFailed(f"{self.name}: Apprise is not installed: "
                             "pip install '.[web]' in the cvahash checkout") from None

        ap = apprise.Apprise()
        if not ap.add(self.url):
            raise SendFailed(f"{self.name}: Apprise does not understand this URL")
        station = alert.get("station") or "station"
        title = f"cvahash {station}: {alert.get('watch', 'alert')}"
        body = (f"\u201c{alert.get('query', '')}\u201d heard at {alert.get('capture_utc', '?')} "
                f"(distance {alert.get('distance', '?')}, radius {alert.get('radius', '?')})")
        if not ap.notify(title=title, body=body):
            raise SendFailed(f"{self.name}: not delivered")

    def close(self) -> None:
        pass


def targets_from_settings(settings) -> list:
    """The targets a [notify] section names (NotifySettings), in order."""
    out: list = []
    if settings is None:
        return out
    if settings.mqtt:
        out.append(MqttTarget(settings.mqtt, settings.mqtt_topic))
    out += [AppriseTarget(u) for u in settings.apprise]
    return out


class Notifier:
    """Sends the alerts appended to ``alerts_log`` to every target, from its own thread."""

    def __init__(self, alerts_log: str | os.PathLike, targets: list, *, retry_s: float = 60.0,
                 station: str | None = None, state_path: str | os.PathLike | None = None):
        self.alerts_log = Path(alerts_log)
        self.targets = list(targets)
        self.retry_s = retry_s
        self.station = station
        self.state_path = Path(state_path) if state_path else self.alerts_log.with_name(
            self.alerts_log.stem + ".notify.json")
        self.sent = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[str, float] = {}
        self._cursors = self._load()

    # --- state ---
    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(read_capped(self.state_path, MAX_STATE, what="notify state file"))
            cursors = {str(k): int(v) for k, v in data.get("cursors", {}).items()}
        except FileNotFoundError:
            cursors = {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A damaged or foreign file: start every target at the end of the log, so
            # nothing already in it is sent twice; the next save replaces the file.
            log.warning("notify: ignoring unreadable state file %s (%s); targets resume "
                        "from new alerts only", self.state_path, exc)
            cursors = {}
        end = self._size()
        for t in self.targets:
            cursors.setdefault(t.name, end)  # a new target starts at the end of the log
        return cursors

    def _save(self) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"cursors": self._cursors}), encoding="utf-8")
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.error("notify: cannot save cursors to %s: %s", self.state_path, exc)

    def _size(self) -> int:
        try:
            return self.alerts_log.stat().st_size
        except OSError:
            return 0

    def pending(self, target) -> int:
        """Bytes of the log this target has not sent yet."""
        return max(0, self._size() - self._cursors.get(target.name, 0))

    # --- sending ---
    def _lines_from(self, offset: int) -> list[tuple[int, bytes]]:
        """Complete lines from ``offset``: (offset after the line, line)."""
        try:
            with open(self.alerts_log, "rb") as fh:
                fh.seek(offset)
                data = fh.read(4 << 20)
        except OSError:
            return []
        out, pos = [], offset
        for line in data.split(b"\n")[:-1]:  # the last piece is an unfinished line
            pos += len(line) + 1
            out.append((pos, line))
        return out

    def send_pending(self, now: float | None = None) -> int:
        """One pass: send what each target has not sent; returns how many were sent."""
        now = time.monotonic() if now is None else now
        size = self._size()
        done = 0
        for t in self.targets:
            if self._retry_at.get(t.name, 0.0) > now:
                continue
            cursor = self._cursors.get(t.name, 0)
            if cursor > size:  # the log was replaced or cut: start over
                cursor = 0
            for end, line in self._lines_from(cursor):
                try:
                    alert = json.loads(line) if 0 < len(line) <= MAX_LINE else None
                except ValueError:
                    alert = None
                if isinstance(alert, dict):
                    if self.station and "station" not in alert:
                        alert["station"] = self.station
                    try:
                        t.send(alert)
                    except SendFailed as exc:
                        self.failures += 1
                        self._retry_at[t.name] = now + self.retry_s
                        log.warning("notify: %s (alerts wait on disk; retry in %g s)", exc,
                                    self.retry_s)
                        break
                    done += 1
                    self.sent += 1
                self._cursors[t.name] = cursor = end
                self._save()
        return done

    def _run(self) -> None:
        while True:
            try:
                self.send_pending()
            except Exception:  # never let a notifier bug end the thread quietly
                log.exception("notify: unexpected error")
            if self._stop.is_set():  # that was the last pass, after stop() woke us
                return
            self._wake.wait(POLL_S)
            self._wake.clear()

    def start(self) -> Notifier:
        if self.targets and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cvahash-notify",
                                            daemon=True)
            self._thread.start()
        return self

    def poke(self) -> None:
        """Look at the log now (after an alert was written) instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """One last pass (alerts of the last seconds go out now if the link is up), for
        at most ``timeout`` seconds; what is left waits on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for t in self.targets:
            t.close()
