"""Audio and pictures of one store row: the window's recording, checked to lie inside the
allowed audio folders (never a path from the request), cut to WAV, or drawn as the search
page's strip or the CLI's spectrogram figure (kept in a small in-memory cache)."""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ...errors import InvalidArgument
from ...query.report import _read_span
from .params import NotFound
from .pictures import figure_png, strip_png
from .settings import SharedLibrary, WebSettings

MAX_CONTEXT_S = 10.0
SPECTROGRAM_CACHE = 128  # pictures kept in memory (about 100 kB each)


def window_of(store, row: int):
    try:
        _, windows = store.read([row])
    except (InvalidArgument, IndexError, OverflowError, ValueError):
        raise NotFound(f"no window {row} in the store (forgotten, or beyond its "
                       f"{len(store)} windows)") from None
    return windows[0]


def check_audio_path(path: str, settings: WebSettings) -> Path:
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


def playable(window, row: int, settings: WebSettings) -> Path:
    path = window.recording.path
    if not os.path.isfile(path):
        raise NotFound(f"window {row}: its recording {path} no longer exists (deleted by audio "
                       "retention or moved)")
    return check_audio_path(path, settings)


def cut_audio(library: SharedLibrary, settings: WebSettings, row: int, context_s: float) -> bytes:
    """The window of ``row`` with ``context_s`` seconds either side, as 16-bit WAV."""
    store, _ = library.get()
    window = window_of(store, row)
    path = playable(window, row, settings)
    frames, info, _ = _read_span(path, window.offset_s - context_s,
                                 window.offset_s + window.length_s + context_s)
    buf = io.BytesIO()
    sf.write(buf, frames, info.sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


class Pictures:
    """The strip or the CLI's figure of a window as PNG, the newest `SPECTROGRAM_CACHE`
    kept (keyed by the store's id and fingerprint, so a changed store draws afresh)."""

    def __init__(self, library: SharedLibrary, settings: WebSettings):
        self.library = library
        self.settings = settings
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def draw(self, row: int, full: bool) -> bytes:
        """The strip (``full`` False) or the CLI's figure of a window, cached."""
        store, bundle = self.library.get()
        key = (store.store_id, store.fingerprint, row, full)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        window = window_of(store, row)
        path = playable(window, row, self.settings)
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
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > SPECTROGRAM_CACHE:
                self._cache.popitem(last=False)
        return data
