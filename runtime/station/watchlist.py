"""Standing text queries: alerts when a newly captured window is close to one.

Each watch has a text query and a Hamming radius (in bits). Its code is computed once
when the daemon starts; every batch of new window codes is then checked with
cvahash.kernel.hamming.within. A match becomes one JSON line appended to the alerts log and,
if configured, runs a command (without a shell; the alert is passed in the
environment variable CVAHASH_ALERT as JSON). A cooldown per watch keeps one long
chorus from producing an alert every few seconds.

Besides the config's [[watchlist]], the web page's Alerts page keeps its own standing
queries in ``watchlist.json`` beside the alerts log (`web_watchlist_path`); the daemon
re-reads that file when it changes (`Watchlist.follow`), so a watch added from a phone
alerts from the next batch of windows on, without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CvahashError, InvalidArgument
from ..kernel import hamming
from ..limits import MAX_CODE_BITS as MAX_WATCH_BITS
from ..safeio import UnsafeFile, open_new_or_regular, read_capped

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
    from_web: bool = False  # from the web page's watchlist.json, not the config


class Watchlist:
    def __init__(self, watches: list[Watch], alerts_log: Path):
        self.watches = watches
        self.alerts_log = Path(alerts_log)
        self.alerts_log.parent.mkdir(parents=True, exist_ok=True)
        self.total = 0
        self._children: list[subprocess.Popen] = []
        self._web_path: Path | None = None
        self._web_key = None
        self._encode = None

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
        self.reload()
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

    def follow(self, path: Path, encode_text) -> None:
        """Also watch the entries of the web page's watchlist file ``path``, re-read
        whenever it changes (checked before every batch)."""
        self._web_path = Path(path)
        self._encode = encode_text
        self.reload()

    def reload(self) -> None:
        """Re-read the web watchlist file if its size or mtime changed; a bad file is
        logged and the watches it gave before are kept."""
        if self._web_path is None:
            return
        try:
            st = self._web_path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        except OSError as exc:
            log.error("watchlist %s: cannot read it: %s", self._web_path, exc)
            return
        if key == self._web_key:
            return
        self._web_key = key
        try:
            entries = read_web_watches(self._web_path)
        except InvalidArgument as exc:
            log.error("%s; keeping the web watches read before", exc)
            return
        own = [w for w in self.watches if not w.from_web]
        taken = {w.name for w in own}
        keep = []
        for e in entries:
            if e["name"] in taken:
                log.error("watchlist %s: %r is also a [[watchlist]] name in the config; "
                          "ignored", self._web_path, e["name"])
                continue
            taken.add(e["name"])
            keep.append(e)
        before = {w.name: w for w in self.watches if w.from_web}
        new: list[Watch] = []
        if keep:
            try:
                codes = self._encode([e["query"] for e in keep])
            except CvahashError as exc:
                log.error("watchlist %s: cannot encode its queries (%s); keeping the web "
                          "watches read before", self._web_path, exc)
                return
            bits = codes.shape[1] * 8
            for e, code in zip(keep, codes, strict=True):
                if e["radius"] > bits:
                    log.error("watchlist %s: %r radius %d is wider than the bundle's %d "
                              "bits; ignored", self._web_path, e["name"], e["radius"], bits)
                    continue
                w = Watch(e["name"], e["query"], e["radius"], code, from_web=True)
                old = before.get(w.name)
                if old is not None and old.query == w.query:
                    w.last_alert_capture_s = old.last_alert_capture_s  # keep the cooldown
                new.append(w)
        self.watches = own + new
        log.info("watchlist: %d standing queries (%d from %s)", len(self.watches), len(new),
                 self._web_path)

    def _emit(self, w: Watch, alert: dict) -> None:
        self.total += 1
        line = json.dumps(alert, default=str)
        # Appended only to a regular file (never through a symlink, never onto a device);
        # a log that cannot be written costs the line, not the station.
        try:
            fd = open_new_or_regular(self.alerts_log, os.O_WRONLY | os.O_APPEND, 0o644)
            with os.fdopen(fd, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, UnsafeFile) as exc:
            log.error("cannot append the alert to %s: %s", self.alerts_log, exc)
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


# --- the web page's watchlist file ---------------------------------------------------------

WEB_WATCHLIST_NAME = "watchlist.json"
MAX_WEB_WATCHES = 100
MAX_WEB_WATCHLIST_BYTES = 1 << 20  # far above MAX_WEB_WATCHES entries of bounded text
MAX_WATCH_NAME_CHARS = 64
MAX_WATCH_QUERY_CHARS = 1000  # as a search query (cvahash.query.search.MAX_QUERY_CHARS)


def web_watchlist_path(alerts_log: Path) -> Path:
    """The web page's watchlist file: ``watchlist.json`` beside the alerts log."""
    return Path(alerts_log).with_name(WEB_WATCHLIST_NAME)


def check_watch(name, query, radius, *, bits: int, taken=()) -> dict:
    """One web watch, validated as `cvahash config check` validates [[watchlist]]
    entries (and the radius against the bundle's ``bits``); InvalidArgument if bad."""
    query = query.strip() if isinstance(query, str) else query
    if not isinstance(query, str) or not query:
        raise InvalidArgument("type the sound to watch for (e.g. 'owl hooting')")
    if len(query) > MAX_WATCH_QUERY_CHARS:
        raise InvalidArgument(f"the watch text is {len(query)} characters long; describe the "
                              f"sound in a sentence (at most {MAX_WATCH_QUERY_CHARS})")
    name = name.strip() if isinstance(name, str) else name
    if not name:
        name = " ".join(query.split())[:MAX_WATCH_NAME_CHARS]
    if not isinstance(name, str) or len(name) > MAX_WATCH_NAME_CHARS \
            or not name.isprintable():
        raise InvalidArgument(f"the watch name must be printable text of at most "
                              f"{MAX_WATCH_NAME_CHARS} characters")
    if name in set(taken):
        raise InvalidArgument(f"a watch named {name!r} exists already: pick another name "
                              "or remove that one first")
    try:
        radius = int(str(radius).strip()) if not isinstance(radius, int) else radius
    except ValueError:
        raise InvalidArgument(f"radius: expected an integer from 0 to {bits} (the bundle's "
                              f"code width), got {str(radius)[:20]!r}") from None
    if isinstance(radius, bool) or not 0 <= radius <= bits:
        raise InvalidArgument(f"radius: expected an integer from 0 to {bits} (the bundle's "
                              f"code width), got {radius}")
    return {"name": name, "query": query, "radius": radius}


def read_web_watches(path: Path) -> list[dict]:
    """The entries of a web watchlist file ([] when it does not exist)."""
    path = Path(path)
    try:
        data = json.loads(read_capped(path, MAX_WEB_WATCHLIST_BYTES, what="watchlist file")
                          .decode("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnsafeFile, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(f"watchlist {path}: not a readable watchlist file ({exc}); "
                              "delete it and add the watches again on the Alerts page") from None
    entries = data.get("watches") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_WEB_WATCHES:
        raise InvalidArgument(f"watchlist {path}: expected {{\"watches\": [...]}} with at most "
                              f"{MAX_WEB_WATCHES} entries; delete it and add the watches again "
                              "on the Alerts page")
    out, names = [], []
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise InvalidArgument(f"watchlist {path}: entry {i} is not an object")
        try:
            entry = check_watch(e.get("name"), e.get("query"), e.get("radius"),
                                bits=MAX_WATCH_BITS, taken=names)
        except InvalidArgument as exc:
            raise InvalidArgument(f"watchlist {path}: entry {i}: {exc}") from None
        names.append(entry["name"])
        out.append(entry)
    return out


def write_web_watches(path: Path, entries: list[dict]) -> None:
    """Replace the web watchlist file atomically (the daemon never reads half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"watches": entries}, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
