"""Indexing recordings into a code store: files -> 10 s windows -> codes -> store.

`index_recordings(paths, store, bundle, station=...)` walks the paths (recursively, see
`cvahash.model.audio.find_audio`), and for each recording:

1. probes it and works out when it was recorded (`cvahash.model.audio.capture_time`);
2. skips it when the store already holds it (same path and content hash): indexing is
   resumable, run it again after a power cut or on a growing folder;
3. streams it as windows (`cvahash.model.audio.iter_windows`), turns batches of windows into
   log-mel features (`cvahash.model.frontend.log_mel`) in a helper thread while the main thread
   runs the audio graph (`bundle.encode_audio`) on the previous batch, so the front-end
   and ONNX Runtime overlap on two cores;
4. appends all the file's codes with their metadata (path, station, capture start and
   clock source, sample rate, duration, content hash) in ONE store commit, so a crash
   mid-file leaves nothing of that file and the next run indexes it again.

A bad file (missing, empty, truncated header, not audio, unsupported, NaN samples, absurd
rate...) is skipped with its reason and never stops the run; `IndexReport` lists them,
and its exit code is 0 when every file went in, 3 when some were skipped.

The capture time of window j is the recording's start + its offset in the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from ..errors import AudioError, CvahashError, InvalidArgument
from ..model import audio
from ..model.audio import iter_windows
from ..model.frontend import log_mel
from ..store.records import Recording, Segment

__all__ = [
    "BATCH_WINDOWS",
    "IndexReport",
    "Progress",
    "Skipped",
    "content_hash",
    "find_recordings",
    "index_recordings",
]

# Windows per ONNX Runtime call: large enough to amortise per-call overhead, small
# enough that a batch of float64 front-end work (about 0.5 MB a window) stays modest.
BATCH_WINDOWS = 8
# Bytes read from each of the sampled places of a file by `content_hash`.
_HASH_CHUNK = 1 << 16
_HASH_PLACES = 16


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class IndexReport:
    """What an indexing run did. ``exit_code`` is 0 (all indexed or already there) or
    3 (some files skipped)."""

    indexed: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    windows: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: {"frontend": 0.0, "encode": 0.0,
                                                                "store": 0.0})  # fmt: skip

    @property
    def exit_code(self) -> int:
        return 3 if self.skipped else 0

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> list[str]:
        """Human lines: what went in, what was already there, every skipped file and why."""
        lines = [
            f"indexed {len(self.indexed)} file{'s' * (len(self.indexed) != 1)} "
            f"({self.audio_s / 3600:.2f} h, {self.windows} windows) in {self.elapsed_s:.1f} s"
            + (f", {self.realtime_factor:.0f}x real time" if self.audio_s else "")
        ]
        if self.already:
            lines.append(f"already in the store: {len(self.already)} (skipped, unchanged)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} with problems:")
            lines += [f"  {s.reason}" if str(s.path) in s.reason else f"  {s.path}: {s.reason}"
                      for s in self.skipped]  # fmt: skip
        return lines


def content_hash(path: str | os.PathLike) -> str:
    """A fingerprint of a file's bytes, cheap even for hours of audio on an SD card.

    SHA-256 over the size, the first and last 64 KiB and 16 evenly spaced 64 KiB
    samples (at most about 1.1 MB read): a recording that was rewritten, re-encoded,
    truncated or extended gets a new hash; the same file found again gets the same
    one. Prefixed ``"s256:"`` so a full-file hash could be told apart later.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= _HASH_CHUNK * (_HASH_PLACES + 2):
            h.update(f.read())
        else:
            places = np.linspace(0, size - _HASH_CHUNK, _HASH_PLACES + 2).astype(np.int64)
            for at in places:
                f.seek(int(at))
                h.update(f.read(_HASH_CHUNK))
    return "s256:" + h.hexdigest()[:32]


class Progress:
    """One status line on stderr, rewritten in place on a terminal (at most 4 times a
    second); elsewhere (journald, a log file) one line per finished file."""

    def __init__(self, total_files: int, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = total_files
        self.t0 = time.monotonic()
        self._last = 0.0
        self._width = 0

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
        pct = 100.0 * done_files / self.total if self.total else 100.0
        text = (f"[{done_files}/{self.total} files {pct:3.0f}%] {windows} windows, "
                f"{audio_s / 3600:.2f} h audio, {audio_s / elapsed:.0f}x real time")  # fmt: skip
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


_DONE = object()


def _background(gen: Iterator, depth: int = 2) -> Iterator:
    """Run a generator in a helper thread, ``depth`` items ahead; re-raise its errors
    here. numpy's FFT and matrix products release the GIL, so this overlaps the
    front-end with ONNX Runtime."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put((_DONE, e))

    t = threading.Thread(target=work, name="cvahash-frontend", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue, then wait for it.
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _feature_batches(path: Path, params, hop_s: float, batch: int, timings: dict):
    """(offsets, lengths, features) per batch of windows of one recording."""
    pending = []
    for w in iter_windows(path, window_s=params.max_length_s, hop_s=hop_s,
                          sample_rate=params.sample_rate):  # fmt: skip
        pending.append(w)
        if len(pending) == batch:
            t = time.perf_counter()
            feats = log_mel([x.samples for x in pending], params)
            timings["frontend"] += time.perf_counter() - t
            yield [x.offset_s for x in pending], [x.length_s for x in pending], feats
            pending = []
    if pending:
        t = time.perf_counter()
        feats = log_mel([x.samples for x in pending], params)
        timings["frontend"] += time.perf_counter() - t
        yield [x.offset_s for x in pending], [x.length_s for x in pending], feats


def _segments(recording, offsets, lengths, start_utc: float, clock: str, hop_s: float):
    """Store segments for one file's windows: one for the regular run of full windows,
    one more for a shorter last window."""
    segs = []
    i = 0
    while i < len(offsets):
        j = i + 1
        while j < len(offsets) and abs(lengths[j] - lengths[i]) < 1e-6:
            j += 1
        segs.append(Segment(recording=recording, first_offset_s=offsets[i], length_s=lengths[i],
                            capture_start_utc=start_utc + offsets[i], hop_s=hop_s,
                            n_rows=j - i, clock_source=clock))  # fmt: skip
        i = j
    return segs


def find_recordings(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The audio files under ``paths`` (`cvahash.model.audio.find_audio`); AudioError when a
    path does not exist or there are none at all."""
    paths = [Path(p) for p in paths]
    files = audio.find_audio(paths)
    if not files:
        raise AudioError(
            f"no audio files under {', '.join(map(str, paths))} (looked for "
            f"{', '.join(sorted(audio.AUDIO_EXTENSIONS))}; hidden files are ignored)"
        )
    return files


def index_recordings(
    paths: Iterable[str | os.PathLike],
    store,
    bundle,
    *,
    station: str = "",
    hop_s: float | None = None,
    batch: int = BATCH_WINDOWS,
    progress: Progress | None = None,
) -> IndexReport:
    """Index every recording under ``paths`` into ``store`` (open for writing, bound to
    ``bundle``'s fingerprint). ``hop_s`` defaults to the window length (no overlap).
    Missing paths raise AudioError before anything is written; a folder holding no
    audio files raises AudioError too. Returns the `IndexReport`."""
    params = bundle.frontend_params
    hop_s = params.max_length_s if hop_s is None else float(hop_s)
    if not (math.isfinite(hop_s) and hop_s > 0):
        raise InvalidArgument(f"--hop {hop_s:g}: the seconds between windows must be above 0")
    files = find_recordings(paths)
    report = IndexReport()
    progress = progress or Progress(len(files), enabled=False)
    t0 = time.monotonic()
    for n, path in enumerate(files):
        try:
            info = audio.probe(path)
            key_path = str(path.resolve())
            digest = content_hash(path)
            if store.has_recording(key_path, digest):
                report.already.append(path)
                continue
            start, clock = audio.capture_time(path, info)
            recording = Recording(path=key_path, station=station,
                                  start_utc=None if start is None else start.timestamp(),
                                  sample_rate=info.sample_rate, duration_s=info.duration_s,
                                  content_hash=digest)  # fmt: skip
            codes, offsets, lengths = [], [], []
            for offs, lens, feats in _background(
                _feature_batches(path, params, hop_s, batch, report.timings)
            ):
                t = time.perf_counter()
                codes.append(bundle.encode_audio(feats))
                report.timings["encode"] += time.perf_counter() - t
                offsets += offs
                lengths += lens
                progress.update(n, report.windows + len(offsets),
                                report.audio_s + min(offsets[-1] + lengths[-1], info.duration_s),
                                path.name)  # fmt: skip
            if not offsets:
                raise AudioError(
                    f"{path}: shorter than the 1 s minimum ({info.duration_s:.2f} s); "
                    "nothing to index"
                )
            t = time.perf_counter()
            segs = _segments(recording, offsets, lengths,
                             0.0 if start is None else start.timestamp(), clock, hop_s)  # fmt: skip
            store.append(np.concatenate(codes), segs, commit=True)
            report.timings["store"] += time.perf_counter() - t
        except (AudioError, InvalidArgument, OSError) as e:
            # A problem with this file: skip it. Store and bundle errors are not caught:
            # they would fail every file alike, so the run stops and says why.
            reason = str(e) if isinstance(e, CvahashError) else f"{path}: {e.strerror or e}"
            report.skipped.append(Skipped(path, reason))
            progress.note(f"skipped {reason}" if str(path) in reason
                          else f"skipped {path}: {reason}")
            continue
        report.indexed.append(path)
        report.windows += len(offsets)
        report.audio_s += info.duration_s
        progress.update(n + 1, report.windows, report.audio_s, path.name, finished=True)
    report.elapsed_s = time.monotonic() - t0
    progress.update(len(files), report.windows, report.audio_s, final=True)
    return report
