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

This module holds the routes and the security around them (login, CSRF, headers); the
rest lives beside it, one job a module: `settings` (what is served, the shared store),
`params` (reading a request), `media` (audio and pictures of a row), `alerts`, `status`
(the station page's facts), `auth`, `charts`, `pictures`. `create_app` is one closure over
the server's state (sessions, library, picture cache), so it stays one function.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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

from ...errors import AudioError, CvahashError, InvalidArgument
from ...model.calibration import Calibration
from ...query.activity import count_activity
from ...query.report import display_paths, format_span, to_doc
from ...query.search import search_like, search_text
from . import auth
from .alerts import acks_path_for, add_acks, alert_id, alerts_with_acks
from .charts import activity_svg, legend, spectrogram_ticks
from .media import MAX_CONTEXT_S, Pictures, check_audio_path, cut_audio, window_of
from .params import (
    DEFAULT_K,
    MAX_K,
    BadRequest,
    NotFound,
    filter_values,
    filters,
    int_param,
    param,
    query_text,
    row_id,
    safe_next,
)
from .settings import SharedLibrary, WebSettings, fix_for
from .status import info_doc, station_doc
from .watches import WatchEditor, watch_routes

__all__ = ["WebSettings", "alert_id", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024  # a login or an acknowledgement is a few hundred bytes


def create_app(settings: WebSettings) -> Starlette:
    password = auth.read_password_file(settings.password_file)
    sessions = auth.SessionCodec(password)
    limiter = auth.LoginLimiter()
    library = SharedLibrary(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    busy = asyncio.Semaphore(settings.searches_at_once)
    # Heavy work on its own few threads: each thread that computes a spectrogram may hold
    # the front-end's 20 MB of scratch arrays, so a pool of forty could keep 800 MB.
    heavy = ThreadPoolExecutor(settings.searches_at_once, thread_name_prefix="cvahash-web")
    pictures = Pictures(library, settings)
    alerts_log = settings.alerts_log or Path(settings.db).parent / "alerts.jsonl"
    acks_path = acks_path_for(alerts_log)
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
            return error(request, 503, str(exc), fix_for(exc, settings))

    async def searching(fn, *args, **kwargs):
        """Run CPU-heavy work (searches, pictures, audio) at most `searches_at_once` at a
        time: twenty phones queue instead of growing the server's memory twenty-fold."""
        async with busy:
            return await asyncio.get_running_loop().run_in_executor(
                heavy, functools.partial(fn, *args, **kwargs))

    # --- search ---
    # Each search reads the whole code file through its memory map; its pages are given
    # back after the search so the server's resident memory stays small between them.
    def do_search(q, k, filters):
        store, bundle = library.get()
        try:
            return search_text(store, bundle, q, k, threads=settings.threads, **filters)
        finally:
            store.release_pages()

    def do_like(row, k, filters):
        store, bundle = library.get()
        window = window_of(store, row)
        path = window.recording.path
        if not os.path.exists(path):
            raise NotFound(f"window {row}: its recording {path} no longer exists (deleted by "
                           "audio retention or moved), so it cannot be searched by example")
        check_audio_path(path, settings)
        try:
            return search_like(store, bundle, path, window.offset_s, k,
                               threads=settings.threads, **filters)
        finally:
            store.release_pages()

    def search_args(request):
        return (int_param(request, "k", DEFAULT_K, 1, MAX_K), filters(request))

    def ticks() -> dict:
        try:
            return spectrogram_ticks(library.get()[1].frontend_params)
        except CvahashError:
            return {"freq": [], "time": []}

    async def search_page(request: Request) -> Response:
        q = query_text(request, required=False)
        k, filters = search_args(request)
        result = None
        if q is not None:
            result = await searching(do_search, q, k, filters)
        ctx = _search_context(request, q, k, filters, result)
        ctx["ticks"] = ticks() if result is not None else {}
        return page(request, "search.html", ctx)

    async def search_api(request: Request) -> Response:
        q = query_text(request)
        k, filters = search_args(request)
        result = await searching(do_search, q, k, filters)
        # the same document as `cvahash search --json`, calibration column included
        return api(request, to_doc(result, Calibration.from_manifest(library.get()[1].manifest)))

    async def like_page(request: Request) -> Response:
        row = row_id(param(request, "row") or "")
        k, filters = search_args(request)
        result = await searching(do_like, row, k, filters)
        ctx = _search_context(request, None, k, filters, result)
        ctx["like_row"] = row
        ctx["ticks"] = ticks()
        return page(request, "search.html", ctx)

    async def like_api(request: Request) -> Response:
        raw = param(request, "row")
        if raw is None:
            raise BadRequest("give the window to search by example: row=N (a hit's row)")
        k, filters = search_args(request)
        return api(request, (await searching(do_like, row_id(raw), k, filters)).to_dict())

    # --- activity ---
    def do_activity(q, by, top, radius, filters):
        store, bundle = library.get()
        try:
            return count_activity(store, bundle, q, by=by, top=top, radius=radius,
                                  threads=settings.threads, **filters)
        finally:
            store.release_pages()

    def activity_args(request):
        by = param(request, "by", "hour")
        if by not in ("hour", "day"):
            raise BadRequest(f"by={by[:20]!r}: use hour or day")
        top = int_param(request, "top", None, 1, 10_000)
        radius = int_param(request, "radius", None, 0, 256)
        if top is not None and radius is not None:
            raise BadRequest("give top=K or radius=R, not both")
        return by, top, radius, filters(request)

    async def activity_page(request: Request) -> Response:
        q = query_text(request, required=False)
        by, top, radius, filters = activity_args(request)
        act = None
        if q is not None:
            act = await searching(do_activity, q, by, top, radius, filters)
        ctx = {"q": q or "", "by": by, "top": top, "radius": radius, "act": act,
               "filters": filter_values(request), "page_name": "activity",
               "chart": activity_svg(act) if act and act.total else None,
               "legend": legend(act) if act else [],
               "csv_url": "/activity.csv?" + str(request.query_params) if act else None}
        return page(request, "activity.html", ctx)

    async def activity_api(request: Request) -> Response:
        q = query_text(request)
        act = await searching(do_activity, q, *activity_args(request))
        return api(request, act.to_dict())

    async def activity_csv(request: Request) -> Response:
        q = query_text(request)
        act = await searching(do_activity, q, *activity_args(request))
        return Response(act.to_csv(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="activity-{act.by}.csv"'})

    # --- audio and pictures, by row ---
    async def audio(request: Request) -> Response:
        row = row_id(request.path_params["row"])
        raw = param(request, "context", "1")
        try:
            context_s = float(raw)
        except ValueError:
            raise BadRequest(f"context={raw[:20]!r} is not a number of seconds") from None
        if not 0 <= context_s <= MAX_CONTEXT_S:
            raise BadRequest(f"context={raw}: use 0 to {MAX_CONTEXT_S:g} seconds")
        data = await searching(cut_audio, library, settings, row, context_s)
        return Response(data, media_type="audio/wav",
                        headers={"Cache-Control": "private, max-age=3600"})

    def picture(full: bool):
        """The handler of the CLI's figure (``full``) or the search page's strip."""
        async def draw(request: Request) -> Response:
            row = row_id(request.path_params["row"])
            data = await searching(pictures.draw, row, full)
            return Response(data, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})
        return draw

    # --- alerts ---
    async def alerts_page(request: Request) -> Response:
        alerts = await run_in_threadpool(alerts_with_acks, alerts_log)
        watches = await run_in_threadpool(watch_editor.listing)
        return page(request, "alerts.html", {"alerts": alerts, "alerts_log": alerts_log,
                                             "page_name": "alerts", "watches": watches})

    async def alerts_api(request: Request) -> Response:
        alerts = await run_in_threadpool(alerts_with_acks, alerts_log)
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
        await run_in_threadpool(add_acks, acks_path, ids)
        if request.url.path.startswith("/api/"):
            return api(request, {"acknowledged": ids})
        return RedirectResponse("/alerts", status_code=303)

    # --- station ---
    async def station_page(request: Request) -> Response:
        doc = await run_in_threadpool(station_doc, settings)
        try:
            info, info_error = await run_in_threadpool(info_doc, settings, library), None
        except CvahashError as exc:
            info, info_error = None, str(exc)
        return page(request, "station.html", {**doc, "info": info, "info_error": info_error,
                                              "page_name": "station"})

    async def status_api(request: Request) -> Response:
        return api(request, await run_in_threadpool(station_doc, settings))

    async def info_api(request: Request) -> Response:
        return api(request, await run_in_threadpool(info_doc, settings, library))

    # --- login ---
    async def login_page(request: Request) -> Response:
        if password is None:
            return RedirectResponse("/search", status_code=303)
        return page(request, "login.html", {"next": safe_next(param(request, "next")),
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
        nxt = safe_next(str(form.get("next", "")))
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
        Route("/spectrogram/{row}.png", protect(picture(full=True))),
        Route("/strip/{row}.png", protect(picture(full=False))),
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


def _search_context(request, q, k, filters, result) -> dict:
    hits = []
    if result is not None:
        names = display_paths([h.path for h in result.hits])
        for h, name in zip(result.hits, names, strict=True):
            hits.append({"hit": h, "name": name, "span": format_span(h.start_s, h.end_s),
                         "time": (h.known_capture_time.strftime("%Y-%m-%d %H:%M:%S UTC")
                                  if h.known_capture_time else "unknown"),
                         "uncertain": h.clock_source in ("file-mtime", "unknown")})
    return {"q": q or "", "k": k, "filters": filter_values(request), "result": result,
            "hits": hits, "page_name": "search", "like_row": None}



