"""Reading field recordings: probe, load, stream fixed windows, find files.

When a recording started: `cvahash.model.timestamps` (re-exported here).

Recordings come in any sample rate (8 kHz .. 384 kHz), mono or multichannel, as WAV,
FLAC, OGG and the other formats libsndfile reads, and may be hours long. Everything here
hands out float32 *mono* samples at the model's rate (48 kHz): channels are averaged,
then resampled with soxr ("HQ"). `iter_windows` streams a file in blocks, so memory stays
flat whatever the file's length, and its output equals `load`'s whole-file resampling
sample for sample (soxr's stream is continuous across blocks: no clicks at block edges).

Every problem with a file raises `AudioError` whose message reads
``"<path>: <what is wrong> (<what to do>)"``; NaN or infinite samples are refused with the
time at which they occur rather than silently zeroed, because a code computed from them
would be garbage that still matches queries.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError, InvalidArgument
from .timestamps import capture_time, parse_audiomoth_comment, parse_filename_time

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "Window",
    "Windower",
    "capture_time",
    "downmix",
    "find_audio",
    "iter_windows",
    "load",
    "parse_audiomoth_comment",
    "parse_filename_time",
    "probe",
]

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 384_000
RESAMPLE_QUALITY = "HQ"
# iter_windows reads at most this many samples (frames x channels) at a time.
MAX_BLOCK_VALUES = 1 << 22

# File name extension -> libsndfile major format. Only those this libsndfile build can
# read are kept (MP3 and Opus need libsndfile >= 1.1 / 1.0.29).
_EXTENSION_FORMATS = {
    ".wav": "WAV", ".wave": "WAV", ".bwf": "WAV", ".flac": "FLAC",
    ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG", ".mp3": "MP3",
    ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".w64": "W64", ".rf64": "RF64",
    ".caf": "CAF",
}  # fmt: skip
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    ext for ext, fmt in _EXTENSION_FORMATS.items() if fmt in sf.available_formats()
)


@dataclass
class AudioInfo:
    """What a file's header says. ``frames`` counts frames actually present (libsndfile
    shortens it for a file cut off mid-data, and sets ``truncated``); ``comment`` is the
    file's comment tag (WAV LIST/INFO ICMT, where AudioMoth writes its clock), if any."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str
    comment: str | None = None
    truncated: bool = False


@dataclass
class Window:
    """A stretch of a recording: mono float32 ``samples`` at the requested rate, starting
    ``offset_s`` seconds into the file; ``length_s`` is shorter than asked only for the
    last window of a file."""

    offset_s: float
    length_s: float
    samples: np.ndarray


# libsndfile's public error codes (sndfile.h); any other code is a parser's own error.
_SF_ERR_UNRECOGNISED_FORMAT = 1
_SF_ERR_SYSTEM = 2
_SF_ERR_UNSUPPORTED_ENCODING = 4
_DATA_TOO_SHORT = re.compile(r"^data\s*:\s*\d+\s*\(should be \d+\)", re.MULTILINE)


def _open(path: Path) -> sf.SoundFile:
    """Open for reading, turning libsndfile's complaints into an AudioError a user can act on."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found (check the path)") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot be read: {e.strerror} (check permissions)") from None
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file (pass the files inside it)")
    if st.st_size == 0:
        raise AudioError(
            f"{path}: file is empty, 0 bytes (the recorder probably lost power; delete it)"
        )
    try:
        return sf.SoundFile(str(path))
    except sf.LibsndfileError as e:
        detail = e.error_string.strip().rstrip(".")
        if e.code == _SF_ERR_UNRECOGNISED_FORMAT:
            raise AudioError(
                f"{path}: not an audio file libsndfile recognises: {detail} "
                f"(is it really {path.suffix.lstrip('.').upper() or 'audio'}? "
                "convert it to WAV or FLAC)"
            ) from None
        if e.code == _SF_ERR_SYSTEM:
            raise AudioError(f"{path}: cannot be read: {detail} (check permissions)") from None
        if e.code == _SF_ERR_UNSUPPORTED_ENCODING or "fmt " in detail or "ncoding" in detail:
            raise AudioError(
                f"{path}: unsupported audio format or encoding: {detail} "
                "(convert it to 16/24-bit PCM WAV or FLAC)"
            ) from None
        raise AudioError(
            f"{path}: corrupt or truncated header: {detail} "
            "(copy the file from the recorder's card again, or repair/convert it)"
        ) from None
    except (OSError, RuntimeError, ValueError) as e:
        raise AudioError(f"{path}: cannot be opened: {e} (check the file)") from None


def _info_from(path: Path, f: sf.SoundFile) -> AudioInfo:
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: implausible sample rate {f.samplerate} Hz in the header, outside "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz (the header is probably corrupt; "
            "copy the file again)"
        )
    if f.frames <= 0:
        raise AudioError(
            f"{path}: contains no audio samples, only a header "
            "(the recording was empty or cut off; delete it)"
        )
    try:
        comment = f.copy_metadata().get("comment")
    except (RuntimeError, ValueError, OSError):  # a nicety; never fail a readable file over it
        comment = None
    # A recorder that cannot seek back writes 0 or 0xFFFFFFFF as the data size: a
    # streamed file, not a cut one.
    extra = f.extra_info or ""
    truncated = bool(_DATA_TOO_SHORT.search(extra)) and not re.search(
        r"^data\s*:\s*(0|4294967295)\s", extra, re.MULTILINE)
    if truncated:
        # INFO, not WARNING: `cvahash index` notes it on its own line; the daemon logs it.
        log.info(
            "%s: file is shorter than its header says; using the %d frames present", path, f.frames
        )
    return AudioInfo(
        path=path,
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=int(f.frames),
        duration_s=f.frames / f.samplerate,
        format=f.format,
        subtype=f.subtype,
        comment=comment,
        truncated=truncated,
    )


def probe(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header and check it is usable; raises AudioError saying why not
    (missing, a directory, empty, not audio, unsupported encoding, corrupt header,
    sample rate outside 8..384 kHz, no frames). A file cut off in the middle of its
    data is usable: `AudioInfo.truncated` is set and the frames present are counted."""
    path = Path(path)
    with _open(path) as f:
        return _info_from(path, f)


def _format_time(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{seconds - whole // 60 * 60:06.3f}"


def _check_finite(frames: np.ndarray, path: Path, first_frame: int, sample_rate: int) -> None:
    """Refuse NaN/Inf samples (only float files can hold them), naming where they are."""
    if frames.dtype.kind == "f" and not np.isfinite(frames).all():
        frame, channel = np.argwhere(~np.isfinite(frames))[0]
        t = (first_frame + int(frame)) / sample_rate
        raise AudioError(
            f"{path}: NaN or infinite sample at {_format_time(t)} ({t:.3f} s, channel "
            f"{int(channel) + 1}) (the file is damaged; cut that part out or re-export it)"
        )


def downmix(frames: np.ndarray) -> np.ndarray:
    """[n, channels] float32 -> [n] float32, the mean of the channels."""
    if frames.shape[1] == 1:
        return frames[:, 0]
    return frames.mean(axis=1, dtype=np.float32)


def _read(f: sf.SoundFile, n: int, path: Path, position: int, sample_rate: int) -> np.ndarray:
    """Up to ``n`` frames from ``position`` on, float32 [frames, channels]."""
    try:
        return f.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        start, end = position / sample_rate, min(position + n, f.frames) / sample_rate
        raise AudioError(
            f"{path}: unreadable audio data between {_format_time(start)} and "
            f"{_format_time(end)} ({start:.3f}..{end:.3f} s): {str(e).strip()} "
            "(the file is damaged; copy it again, or cut out that part)"
        ) from None


def _check_rate(sample_rate: int) -> int:
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, (int, np.integer))
        or not (MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE)
    ):
        raise InvalidArgument(
            f"sample_rate: {sample_rate!r} must be an integer in "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}"
        )
    return int(sample_rate)


def load(path: str | os.PathLike, sample_rate: int = 48000) -> np.ndarray:
    """The whole file as float32 mono at ``sample_rate``: channels averaged, then
    resampled with soxr. Meant for short training clips; use `iter_windows` for long
    field recordings (this holds the whole file in memory twice)."""
    sample_rate = _check_rate(sample_rate)
    path = Path(path)
    parts = []
    with _open(path) as f:
        info = _info_from(path, f)
        # Block by block, so a decoding error or a NaN is reported at its real time.
        block = max(1, MAX_BLOCK_VALUES // info.channels)
        position = 0
        while len(frames := _read(f, block, path, position, info.sample_rate)):
            _check_finite(frames, path, position, info.sample_rate)
            position += len(frames)
            parts.append(downmix(frames))
            del frames
    mono = np.concatenate(parts) if len(parts) > 1 else parts[0]
    del parts
    if info.sample_rate != sample_rate:
        mono = soxr.resample(mono, info.sample_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(mono, dtype=np.float32)


def iter_windows(
    path: str | os.PathLike,
    window_s: float = 10.0,
    hop_s: float = 10.0,
    sample_rate: int = 48000,
    *,
    min_last_s: float = 1.0,
    block_s: float = 60.0,
) -> Iterator[Window]:
    """Stream a recording as mono float32 windows of ``window_s`` every ``hop_s`` seconds.

    The file is read ``block_s`` seconds at a time (at most `MAX_BLOCK_VALUES` samples
    across all channels), downmixed and resampled by one
    continuous soxr stream, so memory is bounded by about one block plus one window
    whatever the file's length, and the samples equal `load`'s. Windows start at
    ``k * hop_s``; after the last full window, one shorter window reaching the end of
    the file follows if it holds at least ``min_last_s`` seconds and the file's end is
    not already covered (the front-end repeat-pads it). A file shorter than
    ``min_last_s`` therefore yields nothing.

    The file is probed when this is called, so a missing or unreadable file raises
    AudioError here, not at the first ``next()``; NaN/Inf samples or damaged data raise
    AudioError (with the time) when the stream reaches them.
    """
    sample_rate = _check_rate(sample_rate)
    for name, value, low in (
        ("window_s", window_s, 0),
        ("hop_s", hop_s, 0),
        ("block_s", block_s, 0),
    ):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
            raise InvalidArgument(f"{name}: {value!r} must be a number of seconds above 0")
    if not (isinstance(min_last_s, (int, float)) and 0 <= min_last_s <= window_s):
        raise InvalidArgument(
            f"min_last_s: {min_last_s!r} must be between 0 and window_s ({window_s})"
        )
    win = round(window_s * sample_rate)
    hop = round(hop_s * sample_rate)
    min_last = max(1, round(min_last_s * sample_rate))
    if win < 1 or hop < 1:
        raise InvalidArgument(f"window_s/hop_s: {window_s}/{hop_s} s is under one sample")
    path = Path(path)
    info = probe(path)
    # Cap a block at ~16 MiB of float32 so a 384 kHz or 8-channel file cannot blow up a Pi.
    block = max(1, min(round(block_s * info.sample_rate), MAX_BLOCK_VALUES // info.channels))
    return _stream(path, info, win, hop, min_last, block, sample_rate)


class Windower:
    """Cuts a continuous mono stream into windows at the output rate: the one windowing
    rule for files (`iter_windows`) and live capture (cvahash.station.daemon).

    `push(mono)` resamples a block (one soxr stream for the whole run, so there are no
    clicks at block edges) and returns the resampled samples; `ready()` then yields every
    window the buffer completes: starts at ``k * hop``, ``win`` samples long. `finish()`
    marks the end of the stream (and returns the resampler's last samples); `ready()`
    then also yields one shorter tail window reaching the end, if it holds at least
    ``min_last`` samples and the end is not already covered.
    The buffer holds at most about one window plus one block.
    """

    def __init__(self, in_rate: int, out_rate: int, win: int, hop: int, min_last: int):
        self.out_rate = out_rate
        self.win, self.hop, self.min_last = win, hop, max(1, min_last)
        self._resampler = None
        if in_rate != out_rate:
            self._resampler = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # output-sample index of _buf[0]
        self._next = 0  # start of the next window
        self._covered = 0  # output samples [0, covered) are inside some yielded window
        self._last = False

    def push(self, mono: np.ndarray) -> np.ndarray:
        return self._append(np.asarray(mono, dtype=np.float32), last=False)

    def finish(self) -> np.ndarray:
        return self._append(np.zeros(0, dtype=np.float32), last=True)

    def _append(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is not None:
            out = self._resampler.resample_chunk(mono, last=last)
        else:
            out = mono
        self._buf = np.concatenate([self._buf, out]) if len(self._buf) else out
        self._last = self._last or last
        return out

    def ready(self) -> Iterator[Window]:
        rate, win = self.out_rate, self.win
        end = self._buf_start + len(self._buf)
        while self._next + win <= end:
            i = self._next - self._buf_start
            yield Window(self._next / rate, win / rate, self._buf[i : i + win].copy())
            self._covered = self._next + win
            self._next += self.hop
        if self._last and end > self._covered and end - self._next >= self.min_last:
            i = self._next - self._buf_start
            tail = self._buf[i:].copy()
            self._covered = end
            yield Window(self._next / rate, len(tail) / rate, tail)
        # Drop what no later window needs (all of it when hop > window).
        drop = min(max(self._next - self._buf_start, 0), len(self._buf))
        self._buf = self._buf[drop:]
        self._buf_start += drop


def _stream(
    path: Path, info: AudioInfo, win: int, hop: int, min_last: int, block: int, sample_rate: int
) -> Iterator[Window]:
    windower = Windower(info.sample_rate, sample_rate, win, hop, min_last)
    read_pos = 0
    with _open(path) as f:
        while True:
            frames = _read(f, block, path, read_pos, info.sample_rate)
            if len(frames) == 0:
                windower.finish()
                yield from windower.ready()
                return
            _check_finite(frames, path, read_pos, info.sample_rate)
            read_pos += len(frames)
            windower.push(downmix(frames))
            del frames
            yield from windower.ready()


# --- finding recordings ---------------------------------------------------------------


def _is_audio_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def find_audio(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Audio files under ``paths`` (files and/or folders), recursively, sorted, unique.

    In folders, files with an extension in `AUDIO_EXTENSIONS` (any case: AudioMoth
    writes ``.WAV``) are kept; hidden files and folders (``.name``, including macOS
    ``._name`` shadow files) are skipped and symlinked folders are not followed. A
    file named explicitly is kept whatever its extension. A path that does not exist
    raises AudioError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(Path(root, n) for n in files if _is_audio_name(n))
        elif p.exists():
            found.add(p)
        else:
            raise AudioError(f"{p}: no such file or folder (check the path)")
    return sorted(found, key=lambda q: str(q))
