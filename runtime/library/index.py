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

import errno
import hashlib
import math
import os
import queue
import stat
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
    interrupted: bool = False  # stopped by Ctrl-C; the same command resumes

    @property
    def exit_code(self) -> int:
        return 3 if self.skipped else 0

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, list_skipped: bool = True) -> list[str]:
        """Human lines: what went in, what was already there, every skipped file and why
        (``list_skipped=False``: only their number, when each was noted as it happened)."""
        lines = [
            f"indexed {len(self.indexed)} file{'s' * (len(self.indexed) != 1)} "
            f"({self.audio_s / 3600:.2f} h, {self.windows} windows) in {self.elapsed_s:.1f} s"
            + (f", {self.realtime_factor:.0f}x real time" if self.audio_s else "")
        ]
        if self.already:
            lines.append(f"already in the store: {len(self.already)} (skipped, unchanged)")
        if self.skipped and not list_skipped:
            lines.append(f"skipped {len(self.skipped)} with problems (each named above)")
        elif self.skipped:
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


def _seconds_down(seconds: float) -> str:
    """Seconds rounded *down* to the millisecond: 0.9999 s reads "0.999 s", never "1.00 s"
    beside a 1 s minimum."""
    return f"{math.floor(seconds * 1000) / 1000:.3f} s"


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


def _duration_or_zero(path: Path) -> float:
    try:
        return audio.probe(path).duration_s
    except (AudioError, OSError):
        return 0.0


def check_reindex_options(store, files: list[Path], *, station: str | None,
                          hop_s: float | None) -> None:
    """Refuse a --station or --hop that differs from what recordings already in the store
    were indexed with: re-running `index` skips them, so the new value would silently not
    apply. Raises InvalidArgument naming the option, the stored value and the files."""
    if station is None and hop_s is None:
        return
    wanted = {str(p.resolve()): p for p in files if entry_problem(p) is None}
    held = {r.path: r for r in store.recordings() if r.path in wanted}
    if not held:
        return
    problems = []
    if station is not None:
        differ: dict[str, list[Path]] = {}
        for key, rec in held.items():
            if rec.station != station:
                differ.setdefault(rec.station, []).append(wanted[key])
        for old, paths in differ.items():
            problems.append(f"--station {station!r}: {_some(paths)} already indexed with "
                            f"station {old or '(none)'!r}")
    if hop_s is not None:
        hops: dict[float, list[Path]] = {}
        for seg, _codes in store.iter_segments():
            key = seg.recording.path
            if key in held and seg.n_rows > 1 and abs(seg.hop_s - hop_s) > 1e-6:
                hops.setdefault(round(seg.hop_s, 3), []).append(wanted[key])
        for old, paths in hops.items():
            problems.append(f"--hop {hop_s:g}: {_some(sorted(set(paths)))} already indexed "
                            f"with --hop {old:g}")
    if problems:
        raise InvalidArgument(
            "; ".join(problems) + ". Recordings already in the store are skipped, so the new "
            "value would not apply to them: leave the option out to keep what they have, or "
            "index them into a new --db with the new value")


def _some(paths: list[Path], n: int = 3) -> str:
    names = ", ".join(p.name for p in paths[:n])
    more = f" and {len(paths) - n} more" if len(paths) > n else ""
    return f"{len(paths)} recording{'s' * (len(paths) != 1)} ({names}{more})"


def entry_problem(path: Path) -> str | None:
    """Why a folder entry found while indexing is not a recording to read, or None.

    Each kind gets its own reason, and none stops the run: a dangling symbolic link, a
    link loop, a FIFO (reading one would block), a device or socket, anything else that
    is not a regular file, an unreadable file, and a folder that cannot be listed (its
    recordings are not indexed; the rest are).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("a dangling symbolic link (its target does not exist)" if os.path.islink(path)
                else "it no longer exists")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"it cannot be read ({e.strerror or e})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as e:
            return (f"a folder that cannot be read ({e.strerror or e}); the recordings in it "
                    "were not indexed")
        return "a folder named as a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a recording file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a recording file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a recording file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "it cannot be read (permission denied)"
    return None


def _unreadable_folders(paths: list[Path]) -> list[Path]:
    """Subfolders under ``paths`` that cannot be listed (os.walk skips them silently)."""
    bad: list[Path] = []
    for p in paths:
        if p.is_dir():
            for _root, dirs, _files in os.walk(p, onerror=lambda e: bad.append(Path(e.filename))):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return bad


def find_recordings(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The audio files under ``paths`` (`cvahash.model.audio.find_audio`), plus entries
    that are not readable recordings (broken links, FIFOs, unreadable folders, ...) so
    that indexing can name each with its reason (`entry_problem`); AudioError when a
    path does not exist or there are no audio files at all."""
    paths = [Path(p) for p in paths]
    # a named path that is a broken link exists as an entry: skipped later, with a reason
    broken = [p for p in paths if os.path.lexists(p) and not p.exists()]
    rest = [p for p in paths if p not in broken]
    files = audio.find_audio(rest) if rest else []
    files = sorted({*files, *broken, *_unreadable_folders(rest)}, key=str)
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
    stop: threading.Event | None = None,
) -> IndexReport:
    """Index every recording under ``paths`` into ``store`` (open for writing, bound to
    ``bundle``'s fingerprint). ``hop_s`` defaults to the window length (no overlap).
    Missing paths raise AudioError before anything is written; a folder holding no
    audio files raises AudioError too. ``stop``: when set (Ctrl-C), the run ends before
    the next batch; the file in progress is left out (nothing of it is stored) and
    ``report.interrupted`` is True. Returns the `IndexReport`."""
    params = bundle.frontend_params
    hop_s = params.max_length_s if hop_s is None else float(hop_s)
    if not (math.isfinite(hop_s) and hop_s > 0):
        raise InvalidArgument(f"--hop {hop_s:g}: the seconds between windows must be above 0")
    files = find_recordings(paths)
    report = IndexReport()
    progress = progress or Progress(len(files), enabled=False)
    t0 = time.monotonic()
    for n, path in enumerate(files):
        if stop is not None and stop.is_set():
            report.interrupted = True
            break
        problem = entry_problem(path)
        if problem:
            report.skipped.append(Skipped(path, f"{path}: {problem}"))
            progress.note(f"skipped {path}: {problem}")
            continue
        try:
            info = audio.probe(path)
            key_path = str(path.resolve())
            digest = content_hash(path)
            if store.has_recording(key_path, digest):
                report.already.append(path)
                progress.skip(info.duration_s)
                continue
            if info.truncated:
                progress.note(f"note {path}: the file is shorter than its header says (cut "
                              f"off while recording?); indexing the "
                              f"{_seconds_down(info.duration_s)} present")
            start, clock = audio.capture_time(path, info)
            recording = Recording(path=key_path, station=station,
                                  start_utc=None if start is None else start.timestamp(),
                                  sample_rate=info.sample_rate, duration_s=info.duration_s,
                                  content_hash=digest)  # fmt: skip
            codes, offsets, lengths = [], [], []
            batches = _background(_feature_batches(path, params, hop_s, batch, report.timings))
            for offs, lens, feats in batches:
                if stop is not None and stop.is_set():
                    batches.close()  # now, not whenever the generator is collected
                    report.interrupted = True
                    break
                t = time.perf_counter()
                codes.append(bundle.encode_audio(feats))
                report.timings["encode"] += time.perf_counter() - t
                offsets += offs
                lengths += lens
                progress.update(n, report.windows + len(offsets),
                                report.audio_s + min(offsets[-1] + lengths[-1], info.duration_s),
                                path.name)  # fmt: skip
            if report.interrupted:
                break
            if not offsets:
                raise AudioError(f"{path}: shorter than the 1 s minimum "
                                 f"({_seconds_down(info.duration_s)}); nothing to index")
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
            progress.skip(_duration_or_zero(path))
            continue
        report.indexed.append(path)
        report.windows += len(offsets)
        report.audio_s += info.duration_s
        progress.update(n + 1, report.windows, report.audio_s, path.name, finished=True)
    report.elapsed_s = time.monotonic() - t0
    progress.update(len(files), report.windows, report.audio_s, final=True)
    return report
