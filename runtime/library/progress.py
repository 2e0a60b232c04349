"""The `index` progress line: a bar by audio seconds with the speed and the time left."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

__all__ = ["Progress", "seconds_down"]


class Progress:
    """One status line on stderr, rewritten in place on a terminal (at most 4 times a
    second); elsewhere (journald, a log file) one line per finished file.

    With ``total_audio_s`` (the seconds of audio the run will read) the line is a bar by
    audio seconds with the time left, since one long recording can outweigh hundreds of
    short ones: ``[######------]  52%  1.04 of 2.00 h audio, 41x real time, 2 min 10 s
    left``."""

    BAR = 20

    def __init__(self, total_files: int, stream: TextIO | None = None, enabled: bool = True,
                 total_audio_s: float | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = total_files
        self.total_audio_s = total_audio_s
        self.t0 = time.monotonic()
        self._last = 0.0
        self._width = 0
        self._skipped_s = 0.0  # audio of files skipped or already indexed: not to wait for

    def skip(self, audio_s: float) -> None:
        """Audio the run counted in ``total_audio_s`` but will not read."""
        self._skipped_s += audio_s

    def _text(self, done_files: int, windows: int, audio_s: float, elapsed: float) -> str:
        rate = audio_s / elapsed
        if not self.total_audio_s:
            pct = 100.0 * done_files / self.total if self.total else 100.0
            return (f"[{done_files}/{self.total} files {pct:3.0f}%] {windows} windows, "
                    f"{audio_s / 3600:.2f} h audio, {rate:.0f}x real time")
        total = max(self.total_audio_s - self._skipped_s, 0.0)
        frac = min(audio_s / total, 1.0) if total > 0 else 1.0
        full = int(frac * self.BAR)
        left = (total - audio_s) / rate if rate > 0 and audio_s > 0 else None
        eta = "" if left is None or frac >= 1 else f", {_duration(left)} left"
        return (f"[{'#' * full}{'-' * (self.BAR - full)}] {100 * frac:3.0f}%  "
                f"{_hours(audio_s)} of {_hours(total)} audio, {done_files}/{self.total} "
                f"files, {rate:.0f}x real time{eta}")

    def update(self, done_files: int, windows: int, audio_s: float, current: str = "",
               *, finished: bool = False, final: bool = False) -> None:  # fmt: skip
        """Show the state; ``finished``: a file was just done; ``final``: the run is."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and not final and now - self._last < 0.25:
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        text = self._text(done_files, windows, audio_s, elapsed)
        if current:
            text += f"  {current}"
        if self.tty:
            text = text[:160]
            pad = max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        elif final or finished:
            # Not a terminal (journald, a log file): one line per finished file.
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        """A line that must stay visible (a skipped file), above the status line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(line + "\n")
        self.stream.flush()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def seconds_down(seconds: float) -> str:
    """Seconds rounded *down* to the millisecond: 0.9999 s reads "0.999 s", never "1.00 s"
    beside a 1 s minimum."""
    return f"{math.floor(seconds * 1000) / 1000:.3f} s"
