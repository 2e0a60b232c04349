"""Turns a live stream of frames into fixed-length analysis windows at 48 kHz mono.

The daemon feeds blocks of any size, rate and channel count; `StreamWindower`
downmixes, resamples continuously with soxr (one ResampleStream per contiguous run,
so there are no clicks at block edges) and yields a window of `window_s` seconds every
`hop_s` seconds. `finish()` ends the run: it flushes the resampler and yields the last
partial window when it is at least `min_last_s` long (the front-end repeat-pads it),
exactly as file indexing treats the end of a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StreamWindow:
    offset_s: float  # from the start of the run
    length_s: float
    samples: np.ndarray  # float32 mono at the target rate


class StreamWindower:
    def __init__(self, in_rate: int, window_s: float = 10.0, hop_s: float = 10.0,
                 out_rate: int = 48000, min_last_s: float = 1.0):
        import soxr

        if hop_s <= 0 or window_s <= 0 or hop_s > window_s:
            raise ValueError(f"need 0 < hop_s <= window_s, got window {window_s}, hop {hop_s}")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.win = round(window_s * out_rate)
        self.hop = round(hop_s * out_rate)
        self.min_last = round(min_last_s * out_rate)
        self._resampler = (soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32")
                           if self.in_rate != self.out_rate else None)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute sample index (out rate) of _buf[0]
        self._next = 0  # absolute start of the next window
        self.samples_out = 0

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono, last=last)

    def feed(self, frames: np.ndarray) -> tuple[np.ndarray, list[StreamWindow]]:
        """Add frames ([n] or [n, channels]); returns (the new 48 kHz mono samples, windows)."""
        mono = frames if frames.ndim == 1 else frames.mean(axis=1)
        out = self._resample(np.ascontiguousarray(mono, dtype=np.float32), last=False)
        return out, self._push(out)

    def finish(self) -> tuple[np.ndarray, list[StreamWindow]]:
        out = self._resample(np.zeros(0, dtype=np.float32), last=True)
        windows = self._push(out)
        end = self._buf_start + len(self._buf)
        # The tail: audio after the last full window's hop start, if long enough and
        # not already entirely covered by the previous window.
        covered_to = self._next - self.hop + self.win if self._next > 0 else 0
        if end - self._next >= self.min_last and end > covered_to:
            seg = self._buf[self._next - self._buf_start:]
            windows.append(StreamWindow(self._next / self.out_rate, len(seg) / self.out_rate,
                                        seg.copy()))
        self._buf = np.zeros(0, dtype=np.float32)
        return out, windows

    def _push(self, out: np.ndarray) -> list[StreamWindow]:
        self.samples_out += len(out)
        if len(out):
            self._buf = np.concatenate([self._buf, out])
        windows = []
        while self._next + self.win <= self._buf_start + len(self._buf):
            i = self._next - self._buf_start
            windows.append(StreamWindow(self._next / self.out_rate, self.win / self.out_rate,
                                        self._buf[i:i + self.win].copy()))
            self._next += self.hop
        drop = self._next - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = self._next
        return windows
