"""What the web server serves (`WebSettings`) and the store with its bundle, opened once
for every request and reopened after a failure (`SharedLibrary`); `fix_for` turns a failure
to open them into the command that mends it."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import BundleError, CvahashError, FingerprintMismatch, StoreError
from ...library.library import Library


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


def fix_for(exc: CvahashError, settings: WebSettings) -> str | None:
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
