"""Reading a request: query parameters, checked once, with a message that says what to
send instead (`BadRequest` is a 400, `NotFound` a 404)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ...errors import InvalidArgument
from ...query.search import parse_when

MAX_K = 200
DEFAULT_K = 10
# Longer input than this is not a query but a paste gone wrong (or an attack): refused
# outright. Between the search module's limit and this, the CLI's truncation note applies.
MAX_QUERY_INPUT = 10_000


class BadRequest(Exception):
    """Bad input in a request: 400 with this message."""


class NotFound(Exception):
    """Nothing at this id: 404 with this message."""


def param(request: Request, name: str, default: str | None = None) -> str | None:
    value = request.query_params.get(name)
    if value is None or value.strip() == "":
        return default
    return value


def int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = param(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw[:40]!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={value} is out of range: use {lo} to {hi}")
    return value


def query_text(request: Request, required: bool = True) -> str | None:
    q = param(request, "q")
    if q is None:
        if required:
            raise BadRequest("type what you want to hear in the search box (q=TEXT)")
        return None
    if len(q) > MAX_QUERY_INPUT:
        raise BadRequest(f"the query is {len(q)} characters long; describe the sound in a "
                         f"sentence (at most {MAX_QUERY_INPUT} characters)")
    return q


def filters(request: Request) -> dict[str, Any]:
    since, until = param(request, "since"), param(request, "until")
    try:
        f = {"since": parse_when(since) if since else None,
             "until": parse_when(until, end_of_day=True) if until else None}
    except (InvalidArgument, ValueError, OverflowError) as exc:
        raise BadRequest(str(exc)) from None
    if f["since"] and f["until"] and f["since"] >= f["until"]:
        raise BadRequest(f"since={since} is not before until={until}")
    station = param(request, "station")
    if station is not None and len(station) > 200:
        raise BadRequest("the station name is too long")
    f["station"] = station
    return f


def row_id(value: str) -> int:
    try:
        row = int(value)
    except ValueError:
        raise NotFound(f"{value[:40]!r} is not a window id") from None
    if not 0 <= row < 2**62:
        raise NotFound(f"no window {row} in the store")
    return row


def safe_next(value: str | None) -> str:
    """Only a local path (no scheme, no //host) may follow a login."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/search"
    return value[:200]


def filter_values(request: Request) -> dict[str, str]:
    return {n: request.query_params.get(n, "")[:200] for n in ("since", "until", "station")}
