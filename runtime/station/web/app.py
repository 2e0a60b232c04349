"""The web application: pages, the JSON API, audio and spectrograms by row id, login.

Routes (every page has a JSON twin under ``/api/``; the search JSON is exactly what
``cvahash search --json`` prints, built by the same functions):

    GET  /search?q=TEXT&k=&since=&until=&station=     GET /api/search?...
    GET  /like?row=N&k=&since=&until=&station=         GET /api/like?...   (more like this)
    GET  /activity?q=TEXT&by=hour|day&top=K|radius=R   GET /api/activity?...
    GET  /activity.csv?...                             (the counts as CSV)
    GET  /alerts                                       GET /api/alerts
    POST /alerts/ack      (CSRF)
    GET  /station                                      GET /api/status, GET /api/info
    GET  /audio/ROW.wav?context=S                      GET /spectrogram/ROW.png (as the CLI)
    GET  /strip/ROW.png    (the bare log-mel the search page shows inside each hit)
    GET  /login   POST /login (CSRF, rate-limited)     POST /logout (CSRF)

The store is opened read-only (a snapshot reader: the server never takes the writer lock,
the daemon keeps capturing); audio is cut from the recording a store row names, never
from a path in the request, and only when the file lies inside the allowed audio folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import soundfile as sf
import soxr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ...errors import (
    AudioError,
    BundleError,
    CvahashError,
    FingerprintMismatch,
    InvalidArgument,
    StoreError,
)
from ...library.library import Library, store_info
from ...model.calibration import Calibration
from ...query.activity import count_activity
from ...query.report import _read_span, display_paths, format_span, to_doc
from ...query.search import parse_when, search_like, search_text
from ..health import read_status, verdict
from . import auth
from .charts import activity_svg, legend, spectrogram_ticks
from .pictures import figure_png, strip_png
from .watches import WatchEditor, watch_routes

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_K = 200
DEFAULT_K = 10
# Longer input than this is not a query but a paste gone wrong (or an attack): refused
# outright. Between the search module's limit and this, the CLI's truncation note applies.
MAX_QUERY_INPUT = 10_000
MAX_CONTEXT_S = 10.0
SPECTROGRAM_CACHE = 128  # pictures kept in memory (about 100 kB each)
ALERTS_SHOWN = 200
MAX_BODY_BYTES = 64 * 1024  # a login or an acknowledgement is a few hundred bytes


@dataclass
class WebSettings:
    """What the server serves and how. Paths are absolute or relative to the cwd."""

    db: Path
    bundle: Path | None = None
    alerts_log: Path | None = None
    status_path: Path | None = None
    password_file: Path | None = None
    audio_roots: tuple[Path, ...] = ()
    threads: int = 1
    config_path: Path | None = None  # for messages ("edit [web] in ...")
    title: str = "cvahash station"
    searches_at_once: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))


class BadRequest(Exception):
    """Bad input in a request: 400 with this message."""


class NotFound(Exception):
    """Nothing at this id: 404 with this message."""


# --- the store and bundle, opened once and reopened after a failure ----------------------


class SharedLibrary:
    """The store (read-only) with its bundle (`cvahash.library.library.Library`), shared
    by every request; a failure to open is kept for the page and retried at most every
    few seconds, so the page recovers once the daemon has made the store."""

    RETRY_S = 5.0

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pair = None
        self._error: CvahashError | None = None
        self._tried = 0.0

    def get(self):
        with self._lock:
            if self._pair is not None:
                return self._pair
            if self._error and time.monotonic() - self._tried < self.RETRY_S:
                raise type(self._error)(str(self._error))
            self._tried = time.monotonic()
            try:
                # The audio graph is checked and loaded only when "more like this" needs it.
                lib = Library.open(self.settings.db, self.settings.bundle, mode="r",
                                   threads=self.settings.threads, graphs=("text",))
                lib.bundle.save_memory = True  # text graph without pre-packed weights
                self._pair = (lib.store, lib.bundle)
            except CvahashError as exc:
                self._error = exc
                raise
            self._error = None
            return self._pair

    def close(self) -> None:
        with self._lock:
            if self._pair is not None:
                self._pair[0].close()
                self._pair = None


# --- reading requests --------------------------------------------------------------------


def _param(request: Request, name: str, default: str | None = None) -> str | None:
    value = request.query_params.get(name)
    if value is None or value.strip() == "":
        return default
    return value


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = _param(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw[:40]!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={value} is out of range: use {lo} to {hi}")
    return value


def _query_text(request: Request, required: bool = True) -> str | None:
    q = _param(request, "q")
    if q is None:
        if required:
            raise BadRequest("type what you want to hear in the search box (q=TEXT)")
        return None
    if len(q) > MAX_QUERY_INPUT:
        raise BadRequest(f"the query is {len(q)} characters long; describe the sound in a "
                         f"sentence (at most {MAX_QUERY_INPUT} characters)")
    return q


def _filters(request: Request) -> dict[str, Any]:
    since, until = _param(request, "since"), _param(request, "until")
    try:
        f = {"since": parse_when(since) if since else None,
             "until": parse_when(until, end_of_day=True) if until else None}
    except (InvalidArgument, ValueError, OverflowError) as exc:
        raise BadRequest(str(exc)) from None
    if f["since"] and f["until"] and f["since"] >= f["until"]:
        raise BadRequest(f"since={since} is not before until={until}")
    station = _param(request, "station")
    if station is not None and len(station) > 200:
        raise BadRequest("the station name is too long")
    f["station"] = station
    return f


def _row(value: str) -> int:
    try:
        row = int(value)
    except ValueError:
        raise NotFound(f"{value[:40]!r} is not a window id") from None
    if not 0 <= row < 2**62:
        raise NotFound(f"no window {row} in the store")
    return row


# --- the application ---------------------------------------------------------------------


def create_app(settings: WebSettings) -> Starlette:
    password = auth.read_password_file(settings.password_file)
    sessions = auth.SessionCodec(password)
    limiter = auth.LoginLimiter()
    library = SharedLibrary(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    busy = asyncio.Semaphore(settings.searches_at_once)
    # Heavy work on its own few threads: each thread that computes a spectrogram keeps
    # about 20 MB of front-end scratch arrays, so a pool of forty would keep 800 MB.
    heavy = ThreadPoolExecutor(settings.searches_at_once, thread_name_prefix="cvahash-web")
    pictures: OrderedDict[tuple, bytes] = OrderedDict()
    pictures_lock = threading.Lock()
    alerts_log = settings.alerts_log or Path(settings.db).parent / "alerts.jsonl"
    acks_path = alerts_log.with_name(alerts_log.stem + ".acked.json")
    watch_editor = WatchEditor(settings, alerts_log, library)

    # --- sessions and responses ---
    def session_of(request: Request) -> dict | None:
        return sessions.loads(request.cookies.get(auth.SESSION_COOKIE))

    def logged_in(request: Request) -> bool:
        if password is None:
            return True
        s = session_of(request)
        return bool(s and s.get("user"))

    def with_session(request: Request, response: Response, session: dict | None = None):
        session = session or request.state.session
        response.set_cookie(auth.SESSION_COOKIE, sessions.dumps(session),
                            max_age=auth.SESSION_MAX_AGE_S, httponly=True, samesite="strict",
                            path="/")
        return response

    def page(request: Request, name: str, context: dict, status: int = 200) -> Response:
        ctx = {"request": request, "title": settings.title, "csrf": request.state.session["csrf"],
               "login_enabled": password is not None,
               "user": password is not None and bool(request.state.session.get("user")),
               **context}
        resp = templates.TemplateResponse(request, name, ctx, status_code=status)
        return with_session(request, resp)

    def api(request: Request, data: Any, status: int = 200) -> Response:
        return JSONResponse(data, status_code=status)

    def error(request: Request, status: int, message: str, fix: str | None = None) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, **({"fix": fix} if fix else {})},
                                status_code=status)
        if request.url.path.endswith((".wav", ".png", ".csv")):
            return PlainTextResponse(message + "\n", status_code=status)
        return page(request, "error.html", {"status": status, "message": message, "fix": fix},
                    status)

    async def guarded(request: Request, handler) -> Response:
        """Login check, then the handler, with every expected failure as a message."""
        if not logged_in(request):
            if (request.url.path.startswith("/api/") or request.method != "GET"
                    or request.url.path.endswith((".wav", ".png", ".csv"))):
                return error(request, 401, "log in first (POST /login with the password)")
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)
        try:
            return await handler(request)
        except BadRequest as exc:
            return error(request, 400, str(exc))
        except NotFound as exc:
            return error(request, 404, str(exc))
        except InvalidArgument as exc:
            return error(request, 400, str(exc))
        except AudioError as exc:  # the window's recording is damaged or unreadable
            return error(request, 404, str(exc))
        except CvahashError as exc:
            return error(request, 503, str(exc), _fix_for(exc, settings))

    async def searching(fn, *args, **kwargs):
        """Run CPU-heavy work (searches, pictures, audio) at most `searches_at_once` at a
        time: twenty phones queue instead of growing the server's memory twenty-fold."""
        async with busy:
            return await asyncio.get_running_loop().run_in_executor(
                heavy, functools.partial(fn, *args, **kwargs))

    # --- search ---
    def do_search(q, k, filters):
        store, bundle = library.get()
        return search_text(store, bundle, q, k, threads=settings.threads, **filters)

    def do_like(row, k, filters):
        store, bundle = library.get()
        window = _window(store, row)
        path = window.recording.path
        if not os.path.exists(path):
            raise NotFound(f"window {row}: its recording {path} no longer exists (deleted by "
                           "audio retention or moved), so it cannot be searched by example")
        _check_audio_path(path, settings)
        return search_like(store, bundle, path, window.offset_s, k, threads=settings.threads,
                           **filters)

    def search_args(request):
        return (_int_param(request, "k", DEFAULT_K, 1, MAX_K), _filters(request))

    def ticks() -> dict:
        try:
            return spectrogram_ticks(library.get()[1].frontend_params)
        except CvahashError:
            return {"freq": [], "time": []}

    async def search_page(request: Request) -> Response:
        q = _query_text(request, required=False)
        k, filters = search_args(request)
        result = None
        if q is not None:
            result = await searching(do_search, q, k, filters)
        ctx = _search_context(request, q, k, filters, result)
        ctx["ticks"] = ticks() if result is not None else {}
        return page(request, "search.html", ctx)

    async def search_api(request: Request) -> Response:
        q = _query_text(request)
        k, filters = search_args(request)
        result = await searching(do_search, q, k, filters)
        # the same document as `cvahash search --json`, calibration column included
        return api(request, to_doc(result, Calibration.from_manifest(library.get()[1].manifest)))

    async def like_page(request: Request) -> Response:
        row = _row(_param(request, "row") or "")
        k, filters = search_args(request)
        result = await searching(do_like, row, k, filters)
        ctx = _search_context(request, None, k, filters, result)
        ctx["like_row"] = row
        ctx["ticks"] = ticks()
        return page(request, "search.html", ctx)

    async def like_api(request: Request) -> Response:
        raw = _param(request, "row")
        if raw is None:
            raise BadRequest("give the window to search by example: row=N (a hit's row)")
        k, filters = search_args(request)
        return api(request, (await searching(do_like, _row(raw), k, filters)).to_dict())

    # --- activity ---
    def do_activity(q, by, top, radius, filters):
        store, bundle = library.get()
        return count_activity(store, bundle, q, by=by, top=top, radius=radius,
                              threads=settings.threads, **filters)

    def activity_args(request):
        by = _param(request, "by", "hour")
        if by not in ("hour", "day"):
            raise BadRequest(f"by={by[:20]!r}: use hour or day")
        top = _int_param(request, "top", None, 1, 10_000)
        radius = _int_param(request, "radius", None, 0, 256)
        if top is not None and radius is not None:
            raise BadRequest("give top=K or radius=R, not both")
        return by, top, radius, _filters(request)

    async def activity_page(request: Request) -> Response:
        q = _query_text(request, required=False)
        by, top, radius, filters = activity_args(request)
        act = None
        if q is not None:
            act = await searching(do_activity, q, by, top, radius, filters)
        ctx = {"q": q or "", "by": by, "top": top, "radius": radius, "act": act,
               "filters": _filter_values(request), "page_name": "activity",
               "chart": activity_svg(act) if act and act.total else None,
               "legend": legend(act) if act else [],
               "csv_url": "/activity.csv?" + str(request.query_params) if act else None}
        return page(request, "activity.html", ctx)

    async def activity_api(request: Request) -> Response:
        q = _query_text(request)
        act = await searching(do_activity, q, *activity_args(request))
        return api(request, act.to_dict())

    async def activity_csv(request: Request) -> Response:
        q = _query_text(request)
        act = await searching(do_activity, q, *activity_args(request))
        return Response(act.to_csv(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="activity-{act.by}.csv"'})

    # --- audio and pictures, by row ---
    def cut_audio(row: int, context_s: float) -> bytes:
        store, _ = library.get()
        window = _window(store, row)
        path = _playable(window, row, settings)
        frames, info, _ = _read_span(path, window.offset_s - context_s,
                                     window.offset_s + window.length_s + context_s)
        buf = io.BytesIO()
        sf.write(buf, frames, info.sample_rate, subtype="PCM_16", format="WAV")
        return buf.getvalue()

    def draw_spectrogram(row: int, full: bool) -> bytes:
        """The strip (``full`` False) or the CLI's figure of a window, cached."""
        store, bundle = library.get()
        key = (store.store_id, store.fingerprint, row, full)
        with pictures_lock:
            if key in pictures:
                pictures.move_to_end(key)
                return pictures[key]
        window = _window(store, row)
        path = _playable(window, row, settings)
        params = bundle.frontend_params
        frames, info, _ = _read_span(path, window.offset_s, window.offset_s + window.length_s)
        mono = frames.mean(axis=1, dtype=np.float32)
        if not np.isfinite(mono).all():
            raise NotFound(f"window {row}: the audio holds NaN or infinite samples")
        if info.sample_rate != params.sample_rate:
            mono = soxr.resample(mono, info.sample_rate, params.sample_rate, quality="HQ")
        if full:
            when = window.capture_time if window.clock_source != "unknown" else None
            station = window.recording.station or "-"
            data = figure_png(
                mono, params, start_s=window.offset_s, capture_time=when,
                title=f"window {row}, station {station}",
                subtitle=(f"captured {when:%Y-%m-%d %H:%M:%S} UTC (clock: {window.clock_source})"
                          if when else "capture time unknown")
                + f"; {os.path.basename(path)} {window.offset_s:.1f}-"
                  f"{window.offset_s + window.length_s:.1f} s")
        else:
            data = strip_png(mono, params)
        with pictures_lock:
            pictures[key] = data
            while len(pictures) > SPECTROGRAM_CACHE:
                pictures.popitem(last=False)
        return data

    async def audio(request: Request) -> Response:
        row = _row(request.path_params["row"])
        raw = _param(request, "context", "1")
        try:
            context_s = float(raw)
        except ValueError:
            raise BadRequest(f"context={raw[:20]!r} is not a number of seconds") from None
        if not 0 <= context_s <= MAX_CONTEXT_S:
            raise BadRequest(f"context={raw}: use 0 to {MAX_CONTEXT_S:g} seconds")
        data = await searching(cut_audio, row, context_s)
        return Response(data, media_type="audio/wav",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def spectrogram(request: Request) -> Response:
        row = _row(request.path_params["row"])
        data = await searching(draw_spectrogram, row, True)
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def strip(request: Request) -> Response:
        row = _row(request.path_params["row"])
        data = await searching(draw_spectrogram, row, False)
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    # --- alerts ---
    def read_alerts() -> list[dict]:
        acked = _read_acks(acks_path)
        return [dict(a, acked=a["id"] in acked) for a in _read_alerts(alerts_log)]

    async def alerts_page(request: Request) -> Response:
        alerts = await run_in_threadpool(read_alerts)
        watches = await run_in_threadpool(watch_editor.listing)
        return page(request, "alerts.html", {"alerts": alerts, "alerts_log": alerts_log,
                                             "page_name": "alerts", "watches": watches})

    async def alerts_api(request: Request) -> Response:
        alerts = await run_in_threadpool(read_alerts)
        # The session's CSRF token, for scripts that acknowledge (another site cannot read
        # this answer: no CORS).
        resp = api(request, {"alerts_log": str(alerts_log), "alerts": alerts,
                             "csrf": request.state.session["csrf"]})
        return with_session(request, resp)

    async def alerts_ack(request: Request) -> Response:
        form = await request.form()
        ids = [str(v)[:64] for v in form.getlist("id")]
        if not ids:
            raise BadRequest("no alert to acknowledge: send id=ALERT_ID")
        await run_in_threadpool(_add_acks, acks_path, ids)
        if request.url.path.startswith("/api/"):
            return api(request, {"acknowledged": ids})
        return RedirectResponse("/alerts", status_code=303)

    # --- station ---
    def station_doc() -> dict:
        doc: dict[str, Any] = {"status": None, "verdict": None, "reasons": [],
                               "status_error": None}
        if settings.status_path is None:
            doc["status_error"] = ("no status file configured: serve with --config "
                                   "DEVICE.toml (or --status FILE) to show the daemon's health")
        else:
            try:
                status = read_status(settings.status_path)
                state, reasons = verdict(status)
                doc.update(status=status, verdict=state, reasons=reasons)
            except (CvahashError, KeyError, ValueError) as exc:
                doc["status_error"] = str(exc)
        return doc

    def info_doc() -> dict:
        info = store_info(settings.db)
        try:
            _, bundle = library.get()
            info["bundle_fingerprint"] = bundle.fingerprint
            info["bundle_path"] = str(bundle.path)
            info["bundle_precision"] = bundle.precision
        except CvahashError as exc:
            info["bundle_error"] = str(exc)
        return info

    async def station_page(request: Request) -> Response:
        doc = await run_in_threadpool(station_doc)
        try:
            info, info_error = await run_in_threadpool(info_doc), None
        except CvahashError as exc:
            info, info_error = None, str(exc)
        return page(request, "station.html", {**doc, "info": info, "info_error": info_error,
                                              "page_name": "station"})

    async def status_api(request: Request) -> Response:
        return api(request, await run_in_threadpool(station_doc))

    async def info_api(request: Request) -> Response:
        return api(request, await run_in_threadpool(info_doc))

    # --- login ---
    async def login_page(request: Request) -> Response:
        if password is None:
            return RedirectResponse("/search", status_code=303)
        return page(request, "login.html", {"next": _safe_next(_param(request, "next")),
                                            "message": None})

    async def login(request: Request) -> Response:
        if password is None:
            return error(request, 404, "this station has no password: nothing to log in to")
        client = request.client.host if request.client else "?"
        wait = limiter.retry_after(client)
        if wait:
            resp = error(request, 429, f"too many failed logins from {client}: try again in "
                                       f"{wait:.0f} s")
            resp.headers["Retry-After"] = str(int(wait))
            return resp
        form = await request.form()
        given = str(form.get("password", ""))[:1024]
        nxt = _safe_next(str(form.get("next", "")))
        ok = await run_in_threadpool(auth.verify_password, given, password)
        if not ok:
            limiter.failed(client)
            return page(request, "login.html", {"next": nxt, "message": "wrong password"}, 401)
        limiter.succeeded(client)
        resp = RedirectResponse(nxt, status_code=303)
        return with_session(request, resp, sessions.new(user=True))  # a fresh CSRF token

    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/login" if password else "/search", status_code=303)
        return with_session(request, resp, sessions.new(user=False))

    async def home(request: Request) -> Response:
        return RedirectResponse("/search", status_code=303)

    async def state_change_refused(request: Request) -> Response | None:
        """403 unless a POST carries this session's CSRF token and (when the browser
        says where it comes from) this host as its Origin."""
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin and origin != "null" and origin.split("://", 1)[-1] != host:
            return error(request, 403, f"request from another site ({origin[:80]}) refused")
        token = request.headers.get("x-csrf-token")
        if token is None:
            try:
                token = (await request.form()).get("csrf")
            except Exception:  # not a form (or too big): no token
                token = None
        if not auth.csrf_ok(session_of(request), token):
            return error(request, 403, "missing or wrong CSRF token: reload the page and try "
                                       "again (forms carry the token; scripts send the "
                                       "X-CSRF-Token header)")
        return None

    def protect(handler, *, public: bool = False):
        async def endpoint(request: Request) -> Response:
            if request.method == "POST":
                refused = await state_change_refused(request)
                if refused is not None:
                    return refused
            if public:
                try:
                    return await handler(request)
                except BadRequest as exc:
                    return error(request, 400, str(exc))
            return await guarded(request, handler)
        return endpoint

    routes = [
        Route("/", home),
        Route("/search", protect(search_page)),
        Route("/api/search", protect(search_api)),
        Route("/like", protect(like_page)),
        Route("/api/like", protect(like_api)),
        Route("/activity", protect(activity_page)),
        Route("/activity.csv", protect(activity_csv)),
        Route("/api/activity", protect(activity_api)),
        Route("/alerts", protect(alerts_page)),
        Route("/api/alerts", protect(alerts_api)),
        Route("/alerts/ack", protect(alerts_ack), methods=["POST"]),
        Route("/api/alerts/ack", protect(alerts_ack), methods=["POST"]),
        Route("/station", protect(station_page)),
        Route("/api/status", protect(status_api)),
        Route("/api/info", protect(info_api)),
        Route("/audio/{row}.wav", protect(audio)),
        Route("/spectrogram/{row}.png", protect(spectrogram)),
        Route("/strip/{row}.png", protect(strip)),
        Route("/login", protect(login_page, public=True)),
        Route("/login", protect(login, public=True), methods=["POST"]),
        Route("/logout", protect(logout, public=True), methods=["POST"]),
        *watch_routes(watch_editor, protect=protect, api=api),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if not hasattr(request.state, "session"):
            request.state.session = session_of(request) or sessions.new()
        message = exc.detail if exc.status_code != 404 else f"no page at {request.url.path}"
        return error(request, exc.status_code, message)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return PlainTextResponse("internal error: the server log (journalctl -u "
                                 "cvahash-web@NAME) says more\n", status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        heavy.shutdown(wait=False, cancel_futures=True)
        library.close()

    async def security(request: Request, call_next):
        request.state.session = session_of(request) or sessions.new()
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found,
                                                       Exception: crashed},
                    lifespan=lifespan, max_body_size=MAX_BODY_BYTES)
    app.add_middleware(BaseHTTPMiddleware, dispatch=security)

    app.state.settings = settings
    app.state.library = library
    return app


# --- helpers -------------------------------------------------------------------------------


def _window(store, row: int):
    try:
        _, windows = store.read([row])
    except (InvalidArgument, IndexError, OverflowError, ValueError):
        raise NotFound(f"no window {row} in the store (forgotten, or beyond its "
                       f"{len(store)} windows)") from None
    return windows[0]


def _check_audio_path(path: str, settings: WebSettings) -> Path:
    """The real path of a recording a store row names, if it lies inside the allowed audio
    folders (the configured ones, else the recording's own folder: a symlink that leads out
    of it is refused)."""
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(r)) for r in settings.audio_roots] or [
        Path(os.path.realpath(os.path.dirname(os.path.abspath(path))))]
    if not any(real == r or r in real.parents for r in roots):
        raise NotFound(f"the recording of this window ({path}) leads outside the audio "
                       "folders; it is not served")
    return real


def _playable(window, row: int, settings: WebSettings) -> Path:
    path = window.recording.path
    if not os.path.isfile(path):
        raise NotFound(f"window {row}: its recording {path} no longer exists (deleted by audio "
                       "retention or moved)")
    return _check_audio_path(path, settings)


def _fix_for(exc: CvahashError, settings: WebSettings) -> str | None:
    where = f"--config {settings.config_path}" if settings.config_path else f"--db {settings.db}"
    if isinstance(exc, FingerprintMismatch):
        return f"serve with the bundle that made the store (cvahash serve {where} --bundle DIR)"
    if isinstance(exc, BundleError):
        return (f"install the bundle the store was indexed with and pass it: cvahash serve "
                f"{where} --bundle DIR")
    if isinstance(exc, StoreError):
        return ("start the daemon (it creates the store) or index recordings: cvahash index "
                f"RECORDINGS --db {settings.db} --bundle BUNDLE")
    return None


def _filter_values(request: Request) -> dict[str, str]:
    return {n: request.query_params.get(n, "")[:200] for n in ("since", "until", "station")}


def _search_context(request, q, k, filters, result) -> dict:
    hits = []
    if result is not None:
        names = display_paths([h.path for h in result.hits])
        for h, name in zip(result.hits, names, strict=True):
            hits.append({"hit": h, "name": name, "span": format_span(h.start_s, h.end_s),
                         "time": (h.known_capture_time.strftime("%Y-%m-%d %H:%M:%S UTC")
                                  if h.known_capture_time else "unknown"),
                         "uncertain": h.clock_source in ("file-mtime", "unknown")})
    return {"q": q or "", "k": k, "filters": _filter_values(request), "result": result,
            "hits": hits, "page_name": "search", "like_row": None}


def _safe_next(value: str | None) -> str:
    """Only a local path (no scheme, no //host) may follow a login."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/search"
    return value[:200]


def alert_id(alert: dict) -> str:
    """A stable id for an alert line (its watch, window and capture time)."""
    key = json.dumps([alert.get("watch"), alert.get("row"), alert.get("capture_utc"),
                      alert.get("recording"), alert.get("offset_s")], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_alerts(path: Path, limit: int = ALERTS_SHOWN) -> list[dict]:
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


def _read_acks(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


_acks_lock = threading.Lock()


def _add_acks(path: Path, ids: list[str]) -> None:
    with _acks_lock:
        acked = _read_acks(path) | set(ids)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(sorted(acked)), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise CvahashError(f"cannot record the acknowledgement in {path}: "
                               f"{exc.strerror or exc}") from None
