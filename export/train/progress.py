"""A one-line progress bar on stderr (tqdm is not a dependency).

Redraws at most every ``interval`` seconds with carriage returns when stderr is a
terminal; otherwise prints a plain line every ``interval`` seconds (log files stay short).
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, enabled: bool = True, interval: float = 0.5,
                 initial: int = 0):
        self.total, self.label, self.enabled = max(int(total), 0), label, enabled
        self.done, self.interval = initial, interval
        self.start = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in postfix.items())
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        frac = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        line = (f"{self.label} [{bar}] {self.done}/{self.total} "
                f"{elapsed:.0f}s<{eta:.0f}s {self.postfix}")
        if self._tty:
            sys.stderr.write("\r" + line[:160].ljust(80))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
