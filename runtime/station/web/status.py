"""The station page's facts: the daemon's health (its status file) and the store with the
bundle that serves it, as the page and /api/status, /api/info show them."""

from __future__ import annotations

from typing import Any

from ...errors import CvahashError
from ...library.library import store_info
from ..health import read_status, verdict
from .settings import SharedLibrary, WebSettings


def station_doc(settings: WebSettings) -> dict:
    """The daemon's status file and its verdict, or why there is none."""
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


def info_doc(settings: WebSettings, library: SharedLibrary) -> dict:
    """What `cvahash info` says of the store, with the bundle serving it."""
    info = store_info(settings.db)
    try:
        _, bundle = library.get()
        info["bundle_fingerprint"] = bundle.fingerprint
        info["bundle_path"] = str(bundle.path)
        info["bundle_precision"] = bundle.precision
    except CvahashError as exc:
        info["bundle_error"] = str(exc)
    return info
