"""The audio front-end: mono 48 kHz samples -> the CLAP log-mel spectrogram, in numpy.

`log_mel` reproduces what transformers' ``ClapFeatureExtractor`` gives the *unfused*
CLAP audio encoder (``truncation="rand_trunc"``), so a model trained on the workstation
with transformers sees the same input on the device, where torch and transformers are
not installed. For one 10 s window at 48 kHz that is:

1. fit the window to ``n_samples`` (480 000): longer input is cropped (see `log_mel`),
   shorter input is padded ("repeatpad": tiled ``int(n_samples / len)`` times, then
   zero-padded at the end; "repeat" and "pad" as in transformers too);
2. reflect-pad ``n_fft // 2`` samples at both ends (frames are centred on hop times);
3. frames of ``n_fft`` samples every ``hop_length`` samples (1001 frames), times a
   *periodic* Hann window (``np.hanning(n_fft + 1)[:-1]``);
4. power spectrum ``|rfft|^2`` (``n_fft // 2 + 1`` bins over 0..sr/2);
5. Slaney-scale mel filterbank with Slaney area normalisation (librosa's default);
6. ``10 * log10(max(mel, 1e-10))``, no ``top_db`` clipping;

giving float32 ``[batch, 1, n_frames, n_mels]``. Everything is computed in float64, as
transformers does, so the result matches it to about 1e-5 dB; float32 would save time
but lose low-level bins next to loud ones (tones) by more than that.

The filterbank and window are built once per `FrontendParams` and cached. Only the
FFT bins the filterbank actually uses (about 50 Hz .. 14 kHz) are squared and
projected, which is most of the saving over transformers' frame-by-frame loop. The
work arrays are kept per thread between calls and the squares are taken in place on
the spectrum's (re, im) pairs, projected with a filterbank whose rows are doubled
(0.65x the time of fresh arrays per stage; docs/benchmarks/runtime.md, run 6). numpy's
float32 FFT is about 3x slower than its float64 one, so float32 would not pay here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgument

__all__ = ["FrontendParams", "log_mel", "mel_filterbank"]

TRUNCATIONS = ("rand_trunc",)
PADDINGS = ("repeatpad", "repeat", "pad")
# Power below this is clamped before the log (-100 dB), as in transformers.
MEL_FLOOR = 1e-10


@dataclass(frozen=True)
class FrontendParams:
    """The front-end settings a model was trained with; stored in the bundle manifest.

    Defaults are those of the LAION/BioLingual ``clap-htsat-unfused`` hub configs
    (note: ``ClapFeatureExtractor``'s own class default is ``frequency_min=0``).
    Construction validates every field and raises `InvalidArgument` (a ValueError)
    naming the field. Only ``truncation="rand_trunc"`` exists: the fused model
    ("fusion") cannot be exported to ONNX and is not supported.
    """

    sample_rate: int = 48000
    n_fft: int = 1024
    hop_length: int = 480
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0
    max_length_s: float = 10.0
    truncation: str = "rand_trunc"
    padding: str = "repeatpad"

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidArgument(
                    f"front-end parameter {name}: {value!r} is not a positive integer"
                )
            object.__setattr__(self, name, int(value))
        for name in ("f_min", "f_max", "max_length_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, np.integer, np.floating))
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidArgument(
                    f"front-end parameter {name}: {value!r} is not a finite number >= 0"
                )
            object.__setattr__(self, name, float(value))
        if self.n_fft < 2:
            raise InvalidArgument(f"front-end parameter n_fft: {self.n_fft} is below 2")
        if self.f_max <= self.f_min:
            raise InvalidArgument(
                f"front-end parameter f_max: {self.f_max} must be above f_min ({self.f_min})"
            )
        if self.f_max > self.sample_rate / 2:
            raise InvalidArgument(
                f"front-end parameter f_max: {self.f_max} Hz is above the Nyquist frequency "
                f"({self.sample_rate / 2} Hz)"
            )
        n = self.max_length_s * self.sample_rate
        if n != round(n) or n < self.n_fft:
            raise InvalidArgument(
                f"front-end parameter max_length_s: {self.max_length_s} s at {self.sample_rate} Hz "
                f"must be a whole number of samples and at least n_fft ({self.n_fft}) samples"
            )
        if self.truncation not in TRUNCATIONS:
            raise InvalidArgument(
                f"front-end parameter truncation: {self.truncation!r} is not supported "
                f"(use one of {', '.join(TRUNCATIONS)}; fused CLAP models are not supported)"
            )
        if self.padding not in PADDINGS:
            raise InvalidArgument(
                f"front-end parameter padding: {self.padding!r} is not one of {', '.join(PADDINGS)}"
            )

    @property
    def n_samples(self) -> int:
        """Samples in one model input window (480 000 for 10 s at 48 kHz)."""
        return round(self.max_length_s * self.sample_rate)

    @property
    def n_frames(self) -> int:
        """Spectrogram frames per window (1001): centred frames, one per hop, plus one.

        Counted as transformers counts them over the reflect-padded window, so an odd
        ``n_fft`` (padded by ``n_fft // 2`` at each end, one sample short of ``n_fft``)
        gives one frame fewer when ``n_samples`` is a multiple of ``hop_length``."""
        padded = self.n_samples + 2 * (self.n_fft // 2)
        return 1 + (padded - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field (for manifest.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrontendParams:
        """Inverse of `to_dict`. Unknown keys or bad values raise `InvalidArgument`
        naming the key; keys that are absent take the defaults above."""
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"front-end parameters must be a mapping, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise InvalidArgument(
                f"unknown front-end parameter(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**d)


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-300) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


@functools.lru_cache(maxsize=8)
def _filterbank(params: FrontendParams) -> np.ndarray:
    n_bins = params.n_fft // 2 + 1
    # n_mels + 2 edges equally spaced in mel; filter m rises from edge m to m+1, falls to m+2.
    edges_mel = np.linspace(
        _hz_to_mel_slaney(params.f_min), _hz_to_mel_slaney(params.f_max), params.n_mels + 2
    )
    edges_hz = _mel_to_hz_slaney(edges_mel)
    # Bin frequencies as transformers (and librosa) space them: integer sr // 2 as the top.
    bin_hz = np.linspace(0.0, params.sample_rate // 2, n_bins)
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bin_hz[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney area normalisation: each triangle integrates to about the same energy.
    weights *= 2.0 / (upper - lower)
    weights.setflags(write=False)
    return weights


def mel_filterbank(params: FrontendParams = FrontendParams()) -> np.ndarray:
    """Slaney mel filterbank with area normalisation, float64 ``[n_fft // 2 + 1, n_mels]``.

    Equal to transformers' ``mel_filter_bank(n_fft // 2 + 1, n_mels, f_min, f_max,
    sample_rate, norm="slaney", mel_scale="slaney")``. The returned array is a fresh copy.
    """
    return _filterbank(params).copy()


@dataclass(frozen=True)
class _Plan:
    """What `log_mel` precomputes once per parameter set."""

    window: np.ndarray  # periodic Hann, float64 [n_fft]
    lo: int  # first FFT bin any mel filter uses
    hi: int  # one past the last
    filters: np.ndarray  # float64 [hi - lo, n_mels], C-contiguous
    # `filters` with every row twice: the projection of the squared (re, im) pairs of
    # the spectrum as they lie in memory sums re^2 + im^2 inside the matrix product.
    pair_filters: np.ndarray  # float64 [2 * (hi - lo), n_mels]


@functools.lru_cache(maxsize=8)
def _plan(params: FrontendParams) -> _Plan:
    window = np.hanning(params.n_fft + 1)[:-1]
    fb = _filterbank(params)
    used = np.flatnonzero(fb.any(axis=1))
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
    filters = np.ascontiguousarray(fb[lo:hi])
    pair_filters = np.repeat(filters, 2, axis=0)
    for a in (window, filters, pair_filters):
        a.setflags(write=False)
    return _Plan(window=window, lo=lo, hi=hi, filters=filters, pair_filters=pair_filters)


class _Scratch(threading.local):
    """Per-thread work arrays of `_one`, kept between calls: a fresh 8 MB array per
    stage and window costs more in page faults than the arithmetic on it."""

    def __init__(self) -> None:
        self.params: FrontendParams | None = None

    def get(self, params: FrontendParams) -> _Scratch:
        if self.params != params:
            n_fft = params.n_fft
            self.padded = np.empty(params.n_samples + 2 * (n_fft // 2))
            self.windowed = np.empty((params.n_frames, n_fft))
            self.spectrum = np.empty((params.n_frames, n_fft // 2 + 1), dtype=np.complex128)
            self.params = params
        return self


_scratch = _Scratch()


def release_scratch() -> None:
    """Free this thread's work arrays (about 20 MB with CLAP's front-end); the next
    `log_mel` on this thread allocates them again. For a long-running process that draws
    a log-mel now and then (the web page's spectrograms)."""
    _scratch.params = None
    for name in ("padded", "windowed", "spectrum"):
        _scratch.__dict__.pop(name, None)


def _fit_length(
    x: np.ndarray, params: FrontendParams, rng: np.random.Generator | None
) -> np.ndarray:
    """Crop or pad one waveform to exactly ``params.n_samples`` samples (float64)."""
    n = params.n_samples
    if len(x) > n:
        start = int(rng.integers(0, len(x) - n + 1)) if rng is not None else 0
        return x[start : start + n]
    if len(x) < n:
        if params.padding == "repeatpad":
            x = np.tile(x, n // len(x))
        elif params.padding == "repeat":
            x = np.tile(x, n // len(x) + 1)[:n]
        x = np.pad(x, (0, n - len(x)))
    return x


def _one(x: np.ndarray, params: FrontendParams, plan: _Plan) -> np.ndarray:
    half, n = params.n_fft // 2, len(x)
    w = _scratch.get(params)
    padded = w.padded
    padded[half : half + n] = x
    padded[:half] = x[1 : half + 1][::-1]  # reflect: x[half], ..., x[1]
    padded[half + n :] = x[::-1][1 : half + 1]  # x[n - 2], ..., x[n - 1 - half]
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft)[:: params.hop_length]
    np.multiply(frames, plan.window, out=w.windowed)
    np.fft.rfft(w.windowed, axis=-1, out=w.spectrum)
    pairs = w.spectrum.view(np.float64)[:, 2 * plan.lo : 2 * plan.hi]  # re, im, re, im, ...
    np.square(pairs, out=pairs)
    mel = pairs @ plan.pair_filters
    np.maximum(mel, MEL_FLOOR, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel.astype(np.float32)


def log_mel(
    samples: np.ndarray | Sequence[np.ndarray],
    params: FrontendParams = FrontendParams(),
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Log-mel spectrogram(s) of mono audio already at ``params.sample_rate``.

    ``samples`` is one 1-D array (one window) or a sequence of 1-D arrays (a batch, of
    any lengths). Returns float32 ``[batch, 1, params.n_frames, params.n_mels]`` in dB,
    equal to ``ClapFeatureExtractor(..., truncation="rand_trunc")(...)["input_features"]``
    for the unfused model.

    Input longer than ``params.n_samples`` is cropped to ``n_samples``: at a random start
    drawn with ``rng.integers(0, excess + 1)`` when ``rng`` is given (training-time
    augmentation, like transformers' ``np.random.randint``), otherwise deterministically
    to its *first* ``n_samples`` samples (indexing, search: same audio, same code).
    Shorter input is padded per ``params.padding``. Empty, non-1-D or non-finite input
    raises `InvalidArgument` naming the batch item.
    """
    if isinstance(samples, np.ndarray) and samples.ndim == 1:
        batch: Sequence[Any] = [samples]
    elif isinstance(samples, np.ndarray) and samples.ndim == 2:
        batch = list(samples)
    elif isinstance(samples, (list, tuple)):
        batch = samples
    else:
        raise InvalidArgument(
            "log_mel: samples must be a 1-D array (one window) or a list of 1-D arrays, "
            f"not {type(samples).__name__} of shape {getattr(samples, 'shape', '?')}"
        )
    plan = _plan(params)
    out = np.empty((len(batch), 1, params.n_frames, params.n_mels), dtype=np.float32)
    for i, item in enumerate(batch):
        x = np.asarray(item, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise InvalidArgument(
                f"log_mel: batch item {i} has shape {x.shape}; expected non-empty mono 1-D samples"
            )
        x = _fit_length(x, params, rng)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise InvalidArgument(
                f"log_mel: batch item {i} has a NaN or infinite sample at index {bad} "
                "(check the recording; the audio reader should have refused it)"
            )
        out[i, 0] = _one(x, params, plan)
    return out
