"""Standing queries edited from the Alerts page (and `/api/watchlist`).

A logged-in user adds a watch (text, radius in bits, optional name) or removes one; the
watches go to ``watchlist.json`` beside the alerts log, the file the daemon re-reads when
it changes (`cvahash.station.watchlist.Watchlist.follow`). The config's [[watchlist]]
entries are shown but edited only in the config file. Every change is a POST that carries
the session's CSRF token (the app's `protect`); input is validated as `cvahash config
check` validates [[watchlist]] entries, with the radius checked against the bundle's code
width.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ...errors import CvahashError, InvalidArgument
from ...limits import MAX_CODE_BITS
from ..watchlist import (
    MAX_WEB_WATCHES,
    check_watch,
    read_web_watches,
    web_watchlist_path,
    write_web_watches,
)


class WatchEditor:
    """Reads and edits the web watchlist file of one server (one writer: a lock)."""

    def __init__(self, settings, alerts_log: Path, library):
        self.settings = settings
        self.path = web_watchlist_path(alerts_log)
        self.library = library
        self._lock = threading.Lock()

    def config_watches(self) -> list[dict]:
        """The config's [[watchlist]] entries (read-only here), [] without --config."""
        if self.settings.config_path is None:
            return []
        from ..config import load_config

        try:
            cfg = load_config(self.settings.config_path)
        except CvahashError:
            return []
        return [{"name": w.name, "query": w.query, "radius": w.radius}
                for w in cfg.watchlist]

    def bits(self) -> int:
        """The bundle's code width (the widest allowed radius)."""
        try:
            _, bundle = self.library.get()
        except CvahashError:
            return MAX_CODE_BITS
        return bundle.bits

    def listing(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": str(self.path), "config": self.config_watches(),
                               "web": [], "error": None, "bits": self.bits()}
        try:
            doc["web"] = read_web_watches(self.path)
        except InvalidArgument as exc:
            doc["error"] = str(exc)
        return doc

    def add(self, name, query, radius) -> dict:
        bits = self.bits()
        with self._lock:
            web = read_web_watches(self.path)
            if len(web) >= MAX_WEB_WATCHES:
                raise InvalidArgument(f"the page keeps at most {MAX_WEB_WATCHES} watches: "
                                      "remove one first")
            taken = [w["name"] for w in web] + [w["name"] for w in self.config_watches()]
            entry = check_watch(name, query, radius, bits=bits, taken=taken)
            try:
                write_web_watches(self.path, [*web, entry])
            except OSError as exc:
                raise InvalidArgument(f"cannot write {self.path}: {exc.strerror}; the server "
                                      "needs write access to the alerts log's folder") from None
            return entry

    def remove(self, name) -> None:
        with self._lock:
            web = read_web_watches(self.path)
            keep = [w for w in web if w["name"] != name]
            if len(keep) == len(web):
                if any(w["name"] == name for w in self.config_watches()):
                    raise InvalidArgument(f"{name!r} is a [[watchlist]] entry of the config: "
                                          f"remove it in {self.settings.config_path} and "
                                          "restart the daemon")
                raise InvalidArgument(f"no watch named {str(name)[:80]!r}")
            try:
                write_web_watches(self.path, keep)
            except OSError as exc:
                raise InvalidArgument(f"cannot write {self.path}: {exc.strerror}") from None


def watch_routes(editor: WatchEditor, *, protect, api) -> list[Route]:
    """The routes: POST /watchlist/add, /watchlist/remove (form, back to /alerts) and
    their /api/ twins (JSON answer), GET /api/watchlist."""

    async def listing(request: Request) -> Response:
        return api(request, await run_in_threadpool(editor.listing))

    async def add(request: Request) -> Response:
        form = await request.form()
        entry = await run_in_threadpool(editor.add, form.get("name"), form.get("q"),
                                        form.get("radius"))
        if request.url.path.startswith("/api/"):
            return api(request, {"added": entry})
        return RedirectResponse("/alerts#watchlist", status_code=303)

    async def remove(request: Request) -> Response:
        form = await request.form()
        name = form.get("name")
        if not name:
            raise InvalidArgument("no watch to remove: send name=NAME")
        await run_in_threadpool(editor.remove, str(name))
        if request.url.path.startswith("/api/"):
            return api(request, {"removed": str(name)})
        return RedirectResponse("/alerts#watchlist", status_code=303)

    return [
        Route("/api/watchlist", protect(listing)),
        Route("/watchlist/add", protect(add), methods=["POST"]),
        Route("/api/watchlist/add", protect(add), methods=["POST"]),
        Route("/watchlist/remove", protect(remove), methods=["POST"]),
        Route("/api/watchlist/remove", protect(remove), methods=["POST"]),
    ]
