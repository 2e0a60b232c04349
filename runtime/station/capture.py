"""Where the daemon's audio comes from: a live input device or a recording replayed.

Both sources hand the daemon's worker blocks of float32 frames at the source's native
sample rate and channel count, with the wall-clock and monotonic time of each block's
first sample. Resampling, log-mel and encoding happen in the worker, never here: the
PortAudio callback of `DeviceSource` only copies into a preallocated ring buffer,
because anything slower in that callback makes the sound card overrun.

`DeviceSource` needs the `[capture]` extra (sounddevice, and Debian's libportaudio2);
`FileSource` needs only soundfile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import AudioError, CvahashError
from ..model.audio import capture_time, probe

log = logging.getLogger(__name__)


class CaptureError(CvahashError):
    """The input device could not be opened, or it stopped delivering audio."""


@dataclass
class Block:
    """Consecutive frames from a source.

    ``frames`` is float32 [n, channels]. ``wall`` is the UTC time of the first frame and
    ``monotonic`` the matching time.monotonic() value; ``gap_before`` is True when
    frames were lost right before this block (device loss, buffer overflow), so the
    worker must not stitch it onto what came before.
    """

    frames: np.ndarray
    wall: datetime
    monotonic: float
    gap_before: bool = False


class RingBuffer:
    """A fixed-size frame buffer written by the audio callback and read by the worker.

    When the worker falls behind and the buffer fills, the newest frames are dropped
    and counted (``dropped``), and the next block read is flagged as following a gap:
    losing audio is reported, never silently stitched over.
    """

    def __init__(self, capacity_frames: int, channels: int):
        self._buf = np.zeros((capacity_frames, channels), dtype=np.float32)
        self._cap = capacity_frames
        self._read = 0  # absolute frame counters; index = counter % capacity
        self._write = 0
        self._lock = threading.Lock()
        self._data = threading.Event()
        self._first_wall: datetime | None = None
        self._first_mono = 0.0
        self._gap = False
        self.dropped = 0

    def write(self, frames: np.ndarray, wall: datetime, mono: float) -> None:
        n = len(frames)
        with self._lock:
            free = self._cap - (self._write - self._read)
            if n > free:
                self.dropped += n
                self._gap = True
                return
            if self._first_wall is None:  # first frames since the last read
                self._first_wall, self._first_mono = wall, mono
            start = self._write % self._cap
            first = min(n, self._cap - start)
            self._buf[start:start + first] = frames[:first]
            if first < n:
                self._buf[: n - first] = frames[first:]
            self._write += n
        self._data.set()

    def read(self, timeout: float) -> Block | None:
        """Everything buffered so far, or None if nothing arrived within `timeout`."""
        if not self._data.wait(timeout):
            return None
        with self._lock:
            n = self._write - self._read
            if n == 0:
                self._data.clear()
                return None
            start = self._read % self._cap
            first = min(n, self._cap - start)
            frames = np.concatenate([self._buf[start:start + first], self._buf[: n - first]])
            wall, mono, gap = self._first_wall, self._first_mono, self._gap
            self._read += n
            self._gap = False
            self._first_wall = None
            self._data.clear()
        return Block(frames, wall, mono, gap)


def _now() -> tuple[datetime, float]:
    return datetime.now(timezone.utc), time.monotonic()


class DeviceSource:
    """Live capture with a sounddevice InputStream at the device's native rate.

    `device` is a name, an index, or "default". A sample rate or channel count of 0
    means "what the device reports as its default".
    """

    def __init__(self, device: str | int = "default", sample_rate: int = 0, channels: int = 0,
                 blocksize: int = 0, latency: str | float = "high", buffer_s: float = 60.0):
        try:
            import sounddevice as sd  # optional: the [capture] extra
        except OSError as exc:  # the PortAudio shared library is missing
            raise CaptureError(
                f"cannot load PortAudio ({exc}); install Debian's libportaudio2") from exc
        except ImportError as exc:
            raise CaptureError(
                "live capture needs the sounddevice package: pip install '.[capture]' in the "
                "cvahash checkout"
            ) from exc
        self._sd = sd
        self.device = None if device in ("default", "", None) else device
        self.requested_rate = int(sample_rate)
        self.requested_channels = int(channels)
        self.blocksize = int(blocksize)
        self.latency = latency
        self.buffer_s = buffer_s
        self.sample_rate = 0
        self.channels = 0
        self.overflows = 0
        self.callbacks = 0
        self._stream = None
        self._ring: RingBuffer | None = None
        self._started_once = False
        self.name = str(device)

    def _resolve(self) -> None:
        try:
            info = self._sd.query_devices(self.device, "input")
        except (ValueError, self._sd.PortAudioError) as exc:
            raise CaptureError(f"input device {self.name!r} not found: {exc}. "
                               "List devices with: python -m sounddevice") from exc
        self.sample_rate = self.requested_rate or int(info["default_samplerate"])
        max_ch = int(info["max_input_channels"])
        if max_ch < 1:
            raise CaptureError(f"device {info['name']!r} has no input channels")
        self.channels = min(self.requested_channels or 1, max_ch)
        self.name = info["name"]

    def start(self) -> None:
        if self._started_once:
            # PortAudio lists devices once, at initialisation: a USB microphone plugged
            # back in (or a restarted sound server) is only found after a re-init.
            try:
                self._sd._terminate()
                self._sd._initialize()
            except Exception as exc:  # noqa: BLE001 - best effort; start() reports failure
                log.debug("PortAudio re-initialisation: %s", exc)
        self._started_once = True
        self._resolve()
        self._ring = RingBuffer(int(self.sample_rate * self.buffer_s), self.channels)
        ring = self._ring

        def callback(indata, frames, t, status):  # PortAudio thread: copy and return
            wall, mono = _now()
            lag = frames / self.sample_rate
            if status.input_overflow:
                self.overflows += 1
            self.callbacks += 1
            ring.write(indata, wall - timedelta(seconds=lag), mono - lag)

        try:
            self._stream = self._sd.InputStream(
                device=self.device, samplerate=self.sample_rate, channels=self.channels,
                dtype="float32", blocksize=self.blocksize, latency=self.latency,
                callback=callback)
            self._stream.start()
        except self._sd.PortAudioError as exc:
            self._stream = None
            raise CaptureError(f"cannot open input device {self.name!r}: {exc}") from exc
        log.info("capturing from %r at %d Hz, %d channel(s)", self.name, self.sample_rate,
                 self.channels)

    def read(self, timeout: float = 1.0) -> Block | None:
        if self._stream is None or self._ring is None:
            raise CaptureError("the input stream is not open")
        if not self._stream.active:
            raise CaptureError(f"input stream of {self.name!r} stopped")
        return self._ring.read(timeout)

    @property
    def dropped_frames(self) -> int:
        return self._ring.dropped if self._ring else 0

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # noqa: BLE001 - a vanished device can fail to close
                log.debug("closing input stream: %s", exc)


class FileSource:
    """Replays a recording as if it were a microphone: at real time or as fast as it can.

    Block times start at the recording's capture time when known (AudioMoth metadata or
    file name, through cvahash.model.audio.capture_time), else at the moment of replay.
    """

    def __init__(self, path: str | Path, realtime: bool = False, block_s: float = 1.0):

        self.path = Path(path)
        self.info = probe(self.path)
        self.sample_rate = self.info.sample_rate
        self.channels = self.info.channels
        self.realtime = realtime
        self.block = max(1, int(block_s * self.sample_rate))
        start, self.clock_source = capture_time(self.path, self.info)
        if start is None:
            start, self.clock_source = datetime.now(timezone.utc), "replay"
        self._start_wall = start
        self._sf = sf
        self._file = None
        self._pos = 0
        self._t0 = 0.0
        self.finished = False
        self.overflows = 0
        self.dropped_frames = 0
        self.name = f"file:{self.path}"

    def start(self) -> None:
        try:
            self._file = self._sf.SoundFile(str(self.path))
        except (RuntimeError, self._sf.LibsndfileError) as exc:
            raise AudioError(f"{self.path}: cannot open for replay: {exc}") from exc
        self._t0 = time.monotonic()

    def read(self, timeout: float = 1.0) -> Block | None:
        if self._file is None:
            raise CaptureError(f"{self.path}: replay not started")
        if self.finished:
            return None
        if self.realtime:
            due = self._t0 + self._pos / self.sample_rate
            wait = due - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)
        frames = self._file.read(self.block, dtype="float32", always_2d=True)
        if len(frames) == 0:
            self.finished = True
            return None
        offset = self._pos / self.sample_rate
        block = Block(frames, self._start_wall + timedelta(seconds=offset), self._t0 + offset)
        self._pos += len(frames)
        return block

    def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
