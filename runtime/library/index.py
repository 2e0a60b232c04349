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

import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AudioError, CvahashError, InvalidArgument
from ..model import audio
from ..model.audio import iter_windows
from ..model.frontend import log_mel
from ..store.records import Recording, Segment
from .progress import Progress, seconds_down
from .recordings import content_hash, entry_problem, find_recordings

__all__ = [
    "BATCH_WINDOWS",
    "IndexReport",
    "Progress",
    "Skipped",
    "content_hash",
    "entry_problem",
    "find_recordings",
    "held_content",
    "index_recordings",
]

# Windows per ONNX Runtime call: large enough to amortise per-call overhead, small
# enough that a batch of float64 front-end work (about 0.5 MB a window) stays modest.
BATCH_WINDOWS = 8


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
    # Identity by content: files whose bytes are already in the store under another
    # path (file, that path), files re-indexed because they changed since an earlier
    # run, and how many windows of their old versions were retired from search.
    same_content: list[tuple[Path, str]] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    retired: int = 0

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
        if self.replaced:
            lines.append(f"changed since indexed: {len(set(self.replaced))} re-indexed, "
                         f"{self.retired} windows of their old versions retired")
        if self.skipped and not list_skipped:
            lines.append(f"skipped {len(self.skipped)} with problems (each named above)")
        elif self.skipped:
            lines.append(f"skipped {len(self.skipped)} with problems:")
            lines += [f"  {s.reason}" if str(s.path) in s.reason else f"  {s.path}: {s.reason}"
                      for s in self.skipped]  # fmt: skip
        return lines


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


@dataclass
class _Held:
    """What the store holds, by content hash (-> path) and by path (-> its versions)."""

    by_hash: dict[str, str]
    by_path: dict[str, list]

    @classmethod
    def of(cls, store) -> _Held:
        by_hash: dict[str, str] = {}
        by_path: dict[str, list] = {}
        for rec in store.recordings():
            if rec.content_hash:
                by_hash.setdefault(rec.content_hash, rec.path)
            by_path.setdefault(rec.path, []).append(rec)
        return cls(by_hash, by_path)


def _identity(path: Path) -> tuple:
    """Size, modification time and inode: what changes when a file is rewritten,
    appended to or cut while it is read."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def held_content(store, digest: str) -> str | None:
    """The path under which the store holds a recording with content hash ``digest``
    (the same audio indexed before, under any name), or None."""
    if not digest:
        return None
    return _Held.of(store).by_hash.get(digest)


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
    held = _Held.of(store)
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
            before = _identity(path)
            info = audio.probe(path)
            key_path = str(path.resolve())
            digest = content_hash(path)
            if store.has_recording(key_path, digest):
                report.already.append(path)
                progress.skip(info.duration_s)
                continue
            same = held.by_hash.get(digest)
            if same is not None and same != key_path:
                # The same bytes under another name (a copy, a second card reader): its
                # windows are in the store already and would only come back twice.
                report.already.append(path)
                report.same_content.append((path, same))
                progress.note(f"note {path}: same audio as {same}, already in the store; "
                              "not indexed again")
                for old in held.by_path.pop(key_path, []):  # its own older version
                    report.retired += store.forget(old)
                    report.replaced.append(path)
                progress.skip(info.duration_s)
                continue
            if info.truncated:
                progress.note(f"note {path}: the file is shorter than its header says (cut "
                              f"off while recording?); indexing the "
                              f"{seconds_down(info.duration_s)} present")
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
            if _identity(path) != before or content_hash(path) != digest:
                raise AudioError(f"{path}: changed while it was being read (still being "
                                 "written or copied?); nothing of it was stored, run the "
                                 "same command again once the file is complete")
            if not offsets:
                raise AudioError(f"{path}: shorter than the 1 s minimum "
                                 f"({seconds_down(info.duration_s)}); nothing to index")
            t = time.perf_counter()
            segs = _segments(recording, offsets, lengths,
                             0.0 if start is None else start.timestamp(), clock, hop_s)  # fmt: skip
            store.append(np.concatenate(codes), segs, commit=True)
            # The file changed since an earlier run: its old windows are retired now that
            # the new ones are committed (a crash in between leaves both, never neither).
            for old in held.by_path.pop(key_path, []):
                report.retired += store.forget(old)
                report.replaced.append(path)
                held.by_hash.pop(old.content_hash, None)
            held.by_hash.setdefault(digest, key_path)
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
