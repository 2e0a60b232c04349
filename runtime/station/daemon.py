"""The soundscape-monitoring daemon: capture, encode, store, alert, for months.

One loop, one worker thread (the caller's): read what the source captured, downmix and
resample it to 48 kHz mono and cut windows (cvahash.model.audio.Windower, the same
windowing as file indexing), compute log-mel
(cvahash.model.frontend), encode with the bundle's audio graph, append to the code store in
batched commits, check the watchlist, and write the health status. The capture thread
(PortAudio's callback in cvahash.station.capture) only copies into a ring buffer.

Audio is organised in *runs*: a run is continuous audio from one source, at most
``chunk_s`` long. Each run becomes one store recording (path: the retained FLAC file, or
``capture:<station>:<start>`` when audio is not retained), so codes, retained audio and
`cvahash search --clips` line up. A gap (device lost, buffer overflow) ends the run;
the gap is recorded in the health status. Every window records the clock source of the
station's clock and its capture time; the run's monotonic start is kept in the health
status so times can be corrected when the clock is fixed later.

Faults: a vanished input device is retried with exponential backoff (1 s .. 60 s); an
input overflow is counted, not fatal; a full disk pauses audio retention first
(cvahash.station.retention keeps a reserve) and codes go on until the store itself cannot
write, which is logged and retried at the next commit, never corrupting the store
(its commit protocol, cvahash.store.code_store). SIGTERM/SIGINT stop the loop, flush, and exit
well within 5 s.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..errors import CvahashError, StoreError
from ..library.index import held_content
from ..library.library import Library
from ..library.recordings import content_hash
from ..model.audio import Windower, downmix
from ..model.bundle import ModelBundle
from ..model.frontend import log_mel
from ..safeio import UnsafeFile
from ..store.records import Recording, Window
from ..timeutil import utc_datetime
from .capture import Block, CaptureError, DeviceSource, FileSource
from .health import Health, write_status
from .notify import Notifier, targets_from_settings
from .retention import AudioRetention
from .watchlist import Watchlist, web_watchlist_path

log = logging.getLogger(__name__)

CHUNK_S = 600.0  # one store recording (and one retained FLAC file) per 10 minutes
ENCODE_EVERY_S = 2.0  # encode pending windows at least this often
BACKOFF_MAX_S = 60.0
MIN_LAST_S = 1.0  # a run's last partial window is kept from this length, as in indexing


def station_clock_source() -> str:
    """How this machine's clock is disciplined, as far as we can tell cheaply."""
    if Path("/run/systemd/timesync/synchronized").exists():
        return "ntp"
    if Path("/dev/pps0").exists():
        return "gps"
    return "rtc"


@dataclass
class _Run:
    recording: object  # cvahash.store.code_store.Recording
    start_utc: float
    start_monotonic: float
    windower: Windower
    clock_source: str
    duplicate: bool = False  # a replayed file whose audio the store holds: adds nothing


class Daemon:
    """Run with `run()`; `request_stop()` (or SIGTERM/SIGINT) ends it cleanly."""

    def __init__(self, config, source: str | None = None, *, realtime: bool = True,
                 chunk_s: float = CHUNK_S, alerts_log: Path | None = None, bundle=None):
        self.cfg = config
        self.source_spec = source or f"device:{config.capture.device}"
        self.realtime = realtime
        self.chunk_s = chunk_s
        self.station = config.device.name
        self.status_path = Path(config.status.path)
        self._alerts_given = Path(alerts_log) if alerts_log else None  # --alerts
        self.alerts_log = Path(alerts_log) if alerts_log else (
            Path(config.store.path).parent / "alerts.jsonl")
        self._bundle = bundle
        self._stop = threading.Event()
        self._stop_reason = ""
        self.health = Health(source=self.source_spec)
        self._run: _Run | None = None
        self._pending: list[tuple[np.ndarray, dict]] = []  # (samples, window info)
        self._last_encode = time.monotonic()
        self._last_status = 0.0
        # Monotonic time the audio of the oldest appended-but-uncommitted window ended:
        # `_tick` commits once that is commit_interval_s ago, so a window is searchable at
        # most that long after its audio was heard.
        self._uncommitted_since: float | None = None
        self._rate_mark = (time.monotonic(), 0)
        self.store = None
        self.library = None
        self.retention = None
        self.watchlist = None
        self.notifier = None

    # ------------------------------------------------------------------ setup
    def request_stop(self, signum=None, _frame=None) -> None:
        if not self._stop.is_set():
            self._stop_reason = (f"{signal.Signals(signum).name} received" if signum
                                 else "stop requested")
        self._stop.set()

    def _open_bundle(self):
        if self._bundle is None:
            rt = self.cfg.runtime
            self._bundle = ModelBundle.open(rt.bundle, threads=rt.threads,
                                            providers=list(rt.execution_providers))
        return self._bundle

    def _open_store(self, bundle):
        """The configured store with ``bundle``: opened for appending, or made (and the
        bundle's folder recorded, so `cvahash search --db` finds it by itself)."""
        opts = {"commit_every_windows": self.cfg.store.commit_every_windows,
                "commit_every_s": self.cfg.store.commit_interval_s}
        self.library = Library.open(self.cfg.store.path, bundle, mode="w", create=True, **opts)
        return self.library.store

    def _start_notifier(self) -> None:
        """[notify] targets get the alerts from alerts.jsonl in their own thread."""
        settings = getattr(self.cfg, "notify", None)
        if settings is None or not (settings.mqtt or settings.apprise):
            return
        self.notifier = Notifier(self.alerts_log, targets_from_settings(settings),
                                 retry_s=settings.retry_s, station=self.station).start()
        log.info("notify: alerts also go to %s",
                 ", ".join(t.name for t in self.notifier.targets))

    def _make_source(self):
        kind, _, arg = self.source_spec.partition(":")
        if kind == "file":
            return FileSource(arg, realtime=self.realtime)
        if kind == "device":
            cap = self.cfg.capture
            device = arg if arg not in ("", "default") else cap.device
            if isinstance(device, str) and device.isdigit():
                device = int(device)
            return DeviceSource(device, cap.sample_rate, cap.channels, cap.blocksize,
                                cap.latency, cap.buffer_s)
        raise CvahashError(f"--source {self.source_spec!r}: expected device:NAME or file:PATH")

    # ------------------------------------------------------------------ runs
    def _start_run(self, source, block: Block) -> None:
        start = block.wall
        clock = getattr(source, "clock_source", None) or station_clock_source()
        path = None
        if isinstance(source, FileSource):
            rec = Recording(path=str(source.path.resolve()), station=self.station,
                            start_utc=start.timestamp(), sample_rate=source.sample_rate,
                            duration_s=source.info.duration_s,
                            content_hash=content_hash(source.path))
        else:
            if self.retention is not None:
                path = self.retention.open(start)
            name = str(path) if path else (
                f"capture:{self.station}:{start.strftime('%Y%m%dT%H%M%SZ')}")
            rec = Recording(path=name, station=self.station, start_utc=start.timestamp(),
                            sample_rate=self._bundle.frontend_params.sample_rate,
                            duration_s=None)
        w, rate = self.cfg.windows, self._bundle.frontend_params.sample_rate
        windower = Windower(source.sample_rate, rate, round(w.window_s * rate),
                            round(w.hop_s * rate), round(MIN_LAST_S * rate))
        self._run = _Run(rec, start.timestamp(), block.monotonic, windower, clock)
        if isinstance(source, FileSource):
            same = held_content(self.store, rec.content_hash)
            if same is not None:
                self._run.duplicate = True
                log.warning("replay of %s: the same audio (%s) is in the store already; "
                            "its windows are not added again", rec.path, same)
                return
        log.info("new run %s (clock %s)", rec.path, clock)

    def _end_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        samples = run.windower.finish()
        windows = list(run.windower.ready())
        self._retain(samples)
        self._queue(run, windows)
        self._encode_pending()
        if self.retention is not None:
            self.retention.close()

    def _retain(self, samples: np.ndarray) -> None:
        if self.retention is not None and len(samples):
            self.retention.write(samples)
            self.health.retention = self.retention.state

    def _queue(self, run: _Run, windows) -> None:
        if run.duplicate:
            return
        for win in windows:
            capture_s = run.start_utc + win.offset_s
            info = {"recording": run.recording.path, "offset_s": round(win.offset_s, 3),
                    "length_s": round(win.length_s, 3), "capture_s": capture_s,
                    "capture_utc": utc_datetime(capture_s).isoformat(),
                    "clock_source": run.clock_source,
                    "monotonic_s": run.start_monotonic + win.offset_s,
                    "_run": run}
            self._pending.append((win.samples, info))

    # ------------------------------------------------------------------ encode + store
    def _encode_pending(self) -> None:
        if not self._pending:
            return

        bundle = self._bundle
        batch, self._pending = self._pending, []
        feats = log_mel([s for s, _ in batch], bundle.frontend_params)
        codes = bundle.encode_audio(feats)
        windows = [Window(recording=info["_run"].recording, offset_s=info["offset_s"],
                          length_s=info["length_s"], capture_utc=info["capture_s"],
                          clock_source=info["clock_source"]) for _, info in batch]
        try:
            rows = self.store.append(codes, windows)
        except (StoreError, OSError) as exc:
            # The store's commit protocol leaves it consistent; the batch is lost and said so.
            self.health.last_error = f"store append failed: {exc}"
            log.error("store append failed, %d windows lost: %s", len(batch), exc)
            return
        infos = []
        for row, (_, info) in zip(rows, batch, strict=True):
            info = {k: v for k, v in info.items() if k != "_run"}
            info["row"] = row
            infos.append(info)
        if self.watchlist is not None:
            self.health.alerts_total += len(self.watchlist.check(codes, infos))
        self.health.windows_total += len(batch)
        if self.store.pending_rows and self._uncommitted_since is None:
            first = batch[0][1]
            self._uncommitted_since = min(time.monotonic(),
                                          first["monotonic_s"] + first["length_s"])
        elif not self.store.pending_rows:
            self._uncommitted_since = None
        self._count_rows()
        last = batch[-1][1]
        # Monotonic, not wall time: a replayed file or a clock step must not fake a lag.
        self.health.lag_s = max(0.0, time.monotonic() - (last["monotonic_s"] + last["length_s"]))
        self._last_encode = time.monotonic()

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        bundle = self._open_bundle()
        # What `cvahash config check` reports, refused here in the same words.
        self.cfg.check_station(bundle, self._alerts_given)
        self.watchlist = Watchlist.from_entries(self.cfg.watchlist, bundle.encode_text,
                                                self.alerts_log)
        # ... and the watches added on the web page's Alerts page, re-read when they change.
        self.watchlist.follow(web_watchlist_path(self.alerts_log), bundle.encode_text)
        log.info("watchlist: %d standing queries", len(self.watchlist.watches))
        self._start_notifier()
        self.store = self._open_store(bundle)
        source = self._make_source()
        if self.cfg.retention.enabled and not isinstance(source, FileSource):
            self.retention = AudioRetention(self.cfg.retention.path, self.cfg.retention.quota_mb,
                                            sample_rate=bundle.frontend_params.sample_rate)
            self.health.retention = "on"
        self.health.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        retention = (f"on ({self.cfg.retention.path}, quota {self.cfg.retention.quota_mb} MB)"
                     if self.retention is not None else "off")
        log.info("started: bundle %s (%d bits, %s), store %s (%d windows), status file %s, "
                 "audio retention %s, source %s, config %s", bundle.path, bundle.bits,
                 bundle.precision, self.cfg.store.path, len(self.store), self.status_path,
                 retention, self.source_spec, self.cfg.source or "(not from a file)")
        backoff = 1.0
        retry_at = 0.0
        started = False
        gap_from: str | None = None
        try:
            while not self._stop.is_set():
                if not started:
                    if time.monotonic() < retry_at:
                        self._stop.wait(min(0.5, retry_at - time.monotonic()))
                        self._tick(source)
                        continue
                    try:
                        source.start()
                        started, backoff = True, 1.0
                        self.health.state = "capturing"
                        self.health.last_error = None
                    except (CaptureError, CvahashError) as exc:
                        if isinstance(source, FileSource):
                            raise
                        self.health.state = "reconnecting"
                        self.health.last_error = str(exc)
                        log.warning("cannot open %s: %s; retrying in %.0f s", source.name, exc,
                                    backoff)
                        retry_at = time.monotonic() + backoff
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
                        self._tick(source)
                        continue
                try:
                    block = source.read(timeout=0.5)
                    if block is None and isinstance(source, DeviceSource) and \
                            self.health.last_capture_monotonic is not None and \
                            time.monotonic() - self.health.last_capture_monotonic > 10:
                        raise CaptureError(f"no audio from {source.name} for 10 s")
                except CaptureError as exc:
                    log.warning("input lost: %s; reconnecting", exc)
                    gap_from = self.health.last_capture_utc
                    self._end_run()
                    source.stop()
                    started = False
                    self.health.state = "reconnecting"
                    self.health.reconnects += 1
                    self.health.last_error = str(exc)
                    retry_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    self.health.last_capture_monotonic = None
                    continue
                if block is None:
                    if isinstance(source, FileSource) and source.finished:
                        self._stop_reason = f"end of {source.path}"
                        break
                else:
                    if gap_from is not None or block.gap_before:
                        self.health.gaps.append({"from": gap_from or self.health.last_capture_utc,
                                                 "to": block.wall.isoformat()})
                        gap_from = None
                        if block.gap_before:
                            self._end_run()
                    self._consume(source, block)
                # Live audio: encode each window as soon as it is complete (windows come
                # seconds apart); a fast file replay batches them.
                if len(self._pending) >= 8 or (self._pending and (
                        self.realtime or time.monotonic() - self._last_encode > ENCODE_EVERY_S)):
                    self._encode_pending()
                self._tick(source)
        except BaseException as exc:
            self._stop_reason = (f"error: {exc}" if isinstance(exc, Exception)
                                 else type(exc).__name__)
            raise
        finally:
            self.health.state = "stopping"
            last_commit = None
            try:
                self._end_run()
                if self.store is not None:
                    self.store.flush()
                    last_commit = datetime.now(timezone.utc).isoformat(timespec="seconds")
            finally:
                source.stop()
                if self.watchlist is not None:
                    self.watchlist.close()
                if self.notifier is not None:
                    self.notifier.stop()
                if self.store is not None:
                    self._count_rows()
                    self.store.close()
                self.health.state = "stopped"
                self._write_status(source)
                log.info("stopped (%s): %d windows written this run, store %s holds %d, "
                         "last commit %s", self._stop_reason or "stopped",
                         self.health.windows_total, self.cfg.store.path,
                         self.health.store_rows, last_commit or "failed (see the error above)")
        return 0

    def _consume(self, source, block: Block) -> None:
        run = self._run
        if run is not None and block.wall.timestamp() - run.start_utc >= self.chunk_s \
                and not isinstance(source, FileSource):
            self._end_run()
            run = None
        if run is None:
            self._start_run(source, block)
            run = self._run
        samples = run.windower.push(downmix(block.frames))
        windows = list(run.windower.ready())
        self._retain(samples)
        self._queue(run, windows)
        end = block.wall + timedelta(seconds=len(block.frames) / source.sample_rate)
        self.health.last_capture_utc = end.isoformat()
        self.health.last_capture_monotonic = time.monotonic()
        self.health.last_audio_utc = datetime.now(timezone.utc).isoformat()

    def _count_rows(self) -> None:
        # Committed rows are what `search` and `info` see; rows still buffered are shown
        # apart, so the status never promises windows a search cannot find yet.
        self.health.store_rows = len(self.store)
        self.health.pending_rows = self.store.pending_rows

    def _tick(self, source) -> None:
        now = time.monotonic()
        if self.store is not None and self.store.pending_rows \
                and self._uncommitted_since is not None \
                and now - self._uncommitted_since >= self.cfg.store.commit_interval_s:
            # The store checks its own timer only when appending; a quiet source appends
            # nothing, so the timer lives here too.
            self.store.flush()
            self._uncommitted_since = None
            self._count_rows()
        if now - self._last_status >= self.cfg.status.interval_s:
            # Windows per second over at least the last 30 s: with a 5 s hop an
            # instantaneous rate would flicker between 0 and 1/s.
            t0, n0 = self._rate_mark
            if now - t0 >= 30 or self.health.windows_per_s == 0.0:
                self.health.windows_per_s = (self.health.windows_total - n0) / max(now - t0, 1e-9)
            if now - t0 >= 30:
                self._rate_mark = (now, self.health.windows_total)
            self._write_status(source)
            self._last_status = now

    def _write_status(self, source) -> None:
        self.health.input_overflows = getattr(source, "overflows", 0)
        self.health.dropped_frames = getattr(source, "dropped_frames", 0)
        try:
            write_status(self.status_path, self.health.snapshot(
                self.cfg.status.interval_s, Path(self.cfg.store.path).parent))
        except (OSError, UnsafeFile) as exc:
            log.error("cannot write status file %s: %s", self.status_path, exc)


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT end the loop; the loop flushes and exits within a second or two."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, daemon.request_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.debug("pid %d handles SIGTERM/SIGINT", os.getpid())
