"""Background sounds for the synthetic corpus: pink noise, rain, wind, stream, quiet.

`render_background(kind, rng, n, sr)` returns n samples of float64 at unit RMS; the
caller scales it to the wanted signal-to-noise ratio. `BackgroundStream` yields an
endless background block by block for hours-long soundscapes with bounded memory:
independent segments joined by sine-window overlap-add (sin^2 + cos^2 = 1, so the
level of uncorrelated noise stays constant across the joins).

"stream" is the noise condition held out of train and val (`HELDOUT_BACKGROUNDS`).

`render_augment_background(rng, n, sr)` is training-time augmentation only (the stand-in
pretraining, `cvahash.export.train.standin`): a random member of a wide procedural family
(coloured noise of random slope and band, band-passed noise bursts, amplitude-modulated
noise bands, filtered clicks, and the four training backgrounds), never "stream" and none
of its code. It is not a corpus background and never captioned.
"""

from __future__ import annotations

import numpy as np

from .calls import coloured_noise, fast_fft_len

BACKGROUNDS = ("pink", "rain", "wind", "stream", "quiet")
HELDOUT_BACKGROUNDS = ("stream",)
TRAIN_BACKGROUNDS = tuple(b for b in BACKGROUNDS if b not in HELDOUT_BACKGROUNDS)
TRAINING_BACKGROUNDS_FOR_AUGMENT = TRAIN_BACKGROUNDS

# Mix levels in dB of calls over background. "quiet" is a faint room-tone rumble, so it
# is mixed far below the calls; the others span 0-20 dB as the corpus promises.
SNR_RANGE_DB = {"pink": (0.0, 20.0), "rain": (0.0, 20.0), "wind": (0.0, 20.0),
                "stream": (0.0, 20.0), "quiet": (30.0, 40.0)}

_TOP_HZ = 14000.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _shaped(rng: np.random.Generator, n: int, sr: int, gain) -> np.ndarray:
    """White noise coloured by gain(f) in the frequency domain, unit RMS."""
    top = min(_TOP_HZ, 0.48 * sr)
    return coloured_noise(rng, n, sr, lambda f: gain(f) * (f <= top))


def _pink(rng, n, sr):
    return _shaped(rng, n, sr, lambda f: 1.0 / np.sqrt(np.maximum(f, 30.0)) * (f > 20))


def _quiet(rng, n, sr):
    # room tone of a still night: a brownish rumble with a trace of hiss
    rumble = _shaped(rng, n, sr, lambda f: 1.0 / np.maximum(f, 60.0) * (f > 30))
    return _unit(rumble + 0.1 * _pink(rng, n, sr))


def _droplets(rng, n, sr, rate, f_lo, f_hi, n_templates=6):
    """Poisson droplets: short rising damped sinusoids (bubble resonances) at `rate`/s."""
    m = int(0.02 * sr)
    t = np.arange(m) / sr
    kernels = np.empty((n_templates, m))
    for k in range(n_templates):
        f = min(rng.uniform(f_lo, f_hi), 0.45 * sr)
        chirp = f * (1 + 0.8 * t / t[-1])
        kernels[k] = (np.sin(2 * np.pi * np.cumsum(chirp) / sr)
                      * np.exp(-t / rng.uniform(0.002, 0.006)))
    count = rng.poisson(rate * n / sr)
    where = rng.integers(0, n, count)
    which = rng.integers(0, n_templates, count)
    amp = rng.lognormal(0.0, 0.7, count)
    out = np.zeros(n + m)
    # drops are sparse: add each kernel where it falls, in groups to bound the temporaries
    for g in range(0, count, 1024):
        sl = slice(g, g + 1024)
        idx = (where[sl, None] + np.arange(m)).ravel()
        out += np.bincount(idx, (amp[sl, None] * kernels[which[sl]]).ravel(), n + m)
    return out[:n]


def _rain(rng, n, sr):
    hiss = _shaped(rng, n, sr, lambda f: (f > 300) / (1 + (f / 9000.0) ** 2))
    drops = _droplets(rng, n, sr, rng.uniform(40, 250), 1000, 6000)
    return _unit(_unit(drops) + rng.uniform(0.3, 1.0) * hiss)


def _slow_curve(rng, n, sr, cutoff):
    """A smooth random curve of unit RMS, varying slower than `cutoff` Hz."""
    m = max(64, int(n * 4 * cutoff / sr))  # compute coarse, then interpolate: cheap
    coarse = _shaped(rng, m, 4 * cutoff, lambda f: np.exp(-((f / cutoff) ** 2)))
    return np.interp(np.linspace(0, m - 1, n), np.arange(m), coarse)


def _wind(rng, n, sr):
    fc = rng.uniform(150, 500)
    rumble = _shaped(rng, n, sr, lambda f: (f > 40) / (1 + (f / fc) ** 2))
    gusts = np.exp(0.7 * _slow_curve(rng, n, sr, rng.uniform(0.1, 0.4)))
    return _unit(rumble * gusts)


def _stream(rng, n, sr):
    # babbling water: several bands of noise, each with a fast random amplitude flutter,
    # plus dense low bubbles. The bands are cut from one white spectrum (they barely
    # overlap), which saves an FFT and a noise draw per band.
    m = fast_fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    logf = np.log(np.maximum(np.fft.rfftfreq(m, 1.0 / sr), 1.0))
    out = np.zeros(n)
    for centre in np.geomspace(400, 3000, 5) * rng.uniform(0.9, 1.1):
        band = np.fft.irfft(spec * np.exp(-(((logf - np.log(centre)) / 0.35) ** 2)), m)[:n]
        flutter = 1 + 0.9 * np.tanh(_slow_curve(rng, n, sr, rng.uniform(8, 25)))
        out += _unit(band) * flutter
    bubbles = _droplets(rng, n, sr, rng.uniform(300, 700), 300, 1500)
    return _unit(_unit(out) + 0.5 * _unit(bubbles))


_RENDER = {"pink": _pink, "rain": _rain, "wind": _wind, "stream": _stream, "quiet": _quiet}


def render_background(kind: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """n samples of background `kind` at unit RMS (float64)."""
    if kind not in _RENDER:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    if n <= 0:
        return np.zeros(0)
    return _RENDER[kind](rng, n, sr)


AUGMENT_KINDS = ("tilted", "bursts", "modulated", "clicks", *TRAINING_BACKGROUNDS_FOR_AUGMENT)


def _tilted(rng, n, sr):
    # coloured noise f^(-slope/2) in a random band
    slope = rng.uniform(-0.5, 2.5)
    lo, hi = np.exp(rng.uniform(np.log(30), np.log(2000))), np.exp(rng.uniform(np.log(3000),
                                                                               np.log(_TOP_HZ)))
    return _shaped(rng, n, sr, lambda f: np.maximum(f, 30.0) ** (-slope / 2) * (f > lo) * (f < hi))


def _band(rng, n, sr, centre, width_oct):
    logf = np.log2(np.maximum(np.fft.rfftfreq(fast_fft_len(n), 1.0 / sr), 1.0))
    m = fast_fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m)) * np.exp(-(((logf - np.log2(centre))
                                                            / width_oct) ** 2))
    return _unit(np.fft.irfft(spec, m)[:n])


def _bursts(rng, n, sr):
    # band-passed noise bursts of random length, level and band over a faint floor
    out = 0.05 * _tilted(rng, n, sr)
    for _ in range(int(rng.integers(2, 20))):
        length = int(min(n, rng.uniform(0.05, 2.0) * sr))
        start = int(rng.integers(0, max(1, n - length)))
        band = _band(rng, length, sr, np.exp(rng.uniform(np.log(100), np.log(10000))),
                     rng.uniform(0.2, 2.0))
        env = np.sin(np.pi * (np.arange(length) + 0.5) / length) ** rng.uniform(0.3, 3)
        out[start:start + length] += rng.lognormal(0, 0.8) * band * env
    return _unit(out)


def _modulated(rng, n, sr):
    # 1-4 noise bands, each with its own random amplitude modulation (0.2-40 Hz)
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 5))):
        band = _band(rng, n, sr, np.exp(rng.uniform(np.log(80), np.log(10000))),
                     rng.uniform(0.15, 2.0))
        rate = np.exp(rng.uniform(np.log(0.2), np.log(40)))
        depth = rng.uniform(0.2, 1.5)
        out += rng.lognormal(0, 0.6) * band * np.exp(depth * np.tanh(_slow_curve(rng, n, sr,
                                                                                  rate)))
    return _unit(out)


def _clicks(rng, n, sr):
    # Poisson clicks (damped resonances) at a random rate and band, over a faint floor
    f_lo = np.exp(rng.uniform(np.log(150), np.log(6000)))
    drops = _droplets(rng, n, sr, rng.uniform(5, 800), f_lo, min(f_lo * rng.uniform(1.2, 4),
                                                                  _TOP_HZ))
    return _unit(_unit(drops) + rng.uniform(0.0, 0.5) * _tilted(rng, n, sr))


_AUGMENT = {"tilted": _tilted, "bursts": _bursts, "modulated": _modulated, "clicks": _clicks}


def render_augment_background(rng: np.random.Generator, n: int, sr: int) -> tuple[str, np.ndarray]:
    """A random training-only background: (kind, n samples at unit RMS).

    One or two members of `AUGMENT_KINDS` summed at random levels. Used only to augment
    the stand-in's training clips; "stream" is never drawn.
    """
    k = int(rng.integers(1, 3))
    kinds = [AUGMENT_KINDS[int(i)] for i in rng.choice(len(AUGMENT_KINDS), k, replace=False)]
    out = np.zeros(n)
    for kind in kinds:
        render = _AUGMENT.get(kind) or _RENDER[kind]
        out += rng.lognormal(0, 0.7) * render(rng, n, sr)
    return "+".join(kinds), _unit(out)


class BackgroundStream:
    """An endless background as consecutive blocks of `hop` samples, unit RMS.

    Segment j (2*hop samples, its own generator seeded from (seed, j)) is windowed with
    a sine and overlap-added to its neighbours; block k is the second half of segment k
    plus the first half of segment k+1. Memory is a few segments whatever the length.
    """

    def __init__(self, kind: str, seed: int, sr: int, hop: int):
        if kind not in _RENDER:
            raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
        self.kind, self.seed, self.sr, self.hop = kind, seed, sr, hop
        self._window = np.sin(np.pi * (np.arange(2 * hop) + 0.5) / (2 * hop))
        self._next = 0
        self._tail = self._segment()[hop:]

    def _segment(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, self._next])
        self._next += 1
        return render_background(self.kind, rng, 2 * self.hop, self.sr) * self._window

    def next_block(self) -> np.ndarray:
        seg = self._segment()
        block = self._tail + seg[: self.hop]
        self._tail = seg[self.hop:]
        return block
