"""The call types of the synthetic bioacoustic corpus: one registry, numpy only.

Each `CallType` has a label id ("woodpecker_drumming"), the words a field user would
type for it (seen phrasings, used in training captions, and held-out phrasings, kept
for the test split and for queries), the band where most of its energy lies, the range
of event lengths, and a generator. ``call.generate(rng, sr, duration)`` returns a
float32 signal of exactly ``round(duration * sr)`` samples; ``call.render(..., pitch,
tempo)`` does the same with the two variation knobs in [-1, 1] given explicitly, so the
caption writer knows whether the call came out high or low, fast or slow. Every
generator also varies note lengths, repeat counts, harmonics and envelopes from `rng`.

Families are deliberately confusable (seven whistle variants, several trills, frogs
and insects that all pulse), since the corpus is a retrieval benchmark; content stays
between about 100 Hz and 14 kHz, the model's mel range being 50 Hz-14 kHz.

Why one long module: it is a catalogue, one short generator per call type beside its
registry entry; reading a call's words next to the code that makes its sound is the
point, so the catalogue stays in one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Upper edge of generated content: the model's mel filterbank stops at 14 kHz.
TOP_HZ = 13500.0


def _limit(sr: int) -> float:
    """Highest frequency a generator may put energy at for this sample rate."""
    return min(TOP_HZ, 0.45 * sr)


def _n(sr: int, seconds: float) -> int:
    return max(1, round(seconds * sr))


def _env(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack and release (seconds), so no element starts with a click."""
    e = np.ones(n)
    a = min(n // 2, max(1, int(attack * sr)))
    r = min(n - a, max(1, int(release * sr)))
    e[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    e[n - r:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)
    return e


def _sweep(sr: int, seconds: float, f0: float, f1: float, log: bool = True) -> np.ndarray:
    """Instantaneous frequency from f0 to f1 (exponential by default, like a slur)."""
    x = np.linspace(0.0, 1.0, _n(sr, seconds))
    return f0 * (f1 / f0) ** x if log else f0 + (f1 - f0) * x


def _harmonic(f_inst: np.ndarray, sr: int, amps=(1.0,), phase: float = 0.0) -> np.ndarray:
    """Sum of harmonics k*f_inst with amplitudes `amps`; those above the limit are dropped."""
    ph = phase + 2 * np.pi * np.cumsum(f_inst) / sr
    top = float(np.max(f_inst)) if len(f_inst) else 0.0
    out = np.zeros(len(f_inst))
    for k, a in enumerate(amps, start=1):
        if a and k * top < _limit(sr):
            out += a * np.sin(k * ph)
    return out


def fast_fft_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFTs of awkward lengths (large prime factors) are
    many times slower, and filtered noise can be made longer and cut."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def coloured_noise(rng: np.random.Generator, n: int, sr: int, gain) -> np.ndarray:
    """n samples of white noise coloured by gain(f) in the frequency domain, unit RMS."""
    m = fast_fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    x = np.fft.irfft(spec * gain(np.fft.rfftfreq(m, 1.0 / sr)), m)[:n]
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _bandnoise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz with smooth edges, unit RMS."""
    hi = min(hi, _limit(sr))
    lo = min(lo, 0.7 * hi)
    width = 0.15 * (hi - lo) + 1.0
    return coloured_noise(rng, n, sr, lambda f: 1.0 / (1.0 + np.exp(-(f - lo) / width * 4))
                          / (1.0 + np.exp((f - hi) / width * 4)))


def _lowpass_noise(rng: np.random.Generator, n: int, sr: int, cutoff: float) -> np.ndarray:
    """Smooth random curve (noise low-passed at `cutoff` Hz), unit RMS."""
    return coloured_noise(rng, n, sr, lambda f: np.exp(-((f / cutoff) ** 2)))


def _place(out: np.ndarray, element: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(element))
    if start < end:
        out[start:end] += element[: end - start]


def _repeat(rng, sr, duration, make, interval, jitter=0.15, start=0.0) -> np.ndarray:
    """Elements from `make()` every `interval` s (onset to onset) while they fit.

    The first element is always placed (cut with a fade if the event is shorter than
    it), so every event has sound in it.
    """
    n = _n(sr, duration)
    out = np.zeros(n)
    t, first = start, True
    while True:
        el = make()
        s = int(t * sr)
        if s + len(el) > n:
            if not first:
                break
            el = el[: n - s] * _env(n - s, sr, 0.0, min(0.05, 0.3 * (n - s) / sr))
        _place(out, el, s)
        first = False
        t += interval * rng.uniform(1 - jitter, 1 + jitter)
        if t >= duration:
            break
    return out


def _tone(sr, f_inst, amps, attack=0.02, release=0.05):
    return _harmonic(f_inst, sr, amps) * _env(len(f_inst), sr, attack, release)


def _click(rng, sr, lo=800.0, hi=4000.0, decay=(0.003, 0.008)) -> np.ndarray:
    """A knock on wood: a few damped resonances plus a short noise burst."""
    n = _n(sr, 0.03)
    t = np.arange(n) / sr
    x = np.zeros(n)
    for _ in range(3):
        f = min(rng.uniform(lo, hi), _limit(sr))
        x += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * f * t) * np.exp(-t / rng.uniform(*decay))
    burst = _bandnoise(rng, n, sr, lo, 3 * hi) * np.exp(-t / 0.0015)
    return x + 0.4 * burst


# --------------------------------------------------------------------- generators
# Each takes (rng, sr, duration, pitch, tempo) with pitch, tempo in [-1, 1]:
# `ps` scales frequencies (about +/-0.2 octave), `ts` scales repetition rates.

def _ps(p: float, octaves: float = 0.2) -> float:
    return 2.0 ** (octaves * p)


def _ts(t: float, octaves: float = 0.4) -> float:
    return 2.0 ** (octaves * t)


def _rising_whistle(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def note():
        f = _sweep(sr, rng.uniform(0.3, 0.6), 2000 * ps * rng.uniform(0.95, 1.05),
                   3300 * ps * rng.uniform(0.95, 1.05))
        return _tone(sr, f, (1, 0.15, 0.04), 0.03, 0.08)
    return _repeat(rng, sr, dur, note, rng.uniform(0.9, 1.6) / ts)


def _descending_whistle(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def note():
        f = _sweep(sr, rng.uniform(0.3, 0.6), 3300 * ps * rng.uniform(0.95, 1.05),
                   2000 * ps * rng.uniform(0.95, 1.05))
        return _tone(sr, f, (1, 0.15, 0.04), 0.03, 0.08)
    return _repeat(rng, sr, dur, note, rng.uniform(0.9, 1.6) / ts)


def _steady_whistle(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def note():
        n = _n(sr, rng.uniform(0.4, 0.9))
        f0 = 2800 * ps * rng.uniform(0.97, 1.03)
        f = f0 * (1 + 0.008 * np.sin(2 * np.pi * 5 * np.arange(n) / sr))
        return _tone(sr, f, (1, 0.1), 0.04, 0.1)
    return _repeat(rng, sr, dur, note, rng.uniform(1.2, 2.2) / ts)


def _two_note_whistle(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def call():
        a = _tone(sr, np.full(_n(sr, rng.uniform(0.25, 0.35)), 3300 * ps), (1, 0.1), 0.03, 0.05)
        b = _tone(sr, np.full(_n(sr, rng.uniform(0.3, 0.4)), 2750 * ps), (1, 0.1), 0.03, 0.08)
        return np.concatenate([a, np.zeros(_n(sr, 0.06)), b])
    return _repeat(rng, sr, dur, call, rng.uniform(1.5, 2.6) / ts)


def _warbling_song(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def phrase():
        notes = []
        for _ in range(rng.integers(8, 20)):
            notes.append(np.full(_n(sr, rng.uniform(0.06, 0.14) / ts),
                                 rng.uniform(2500, 5000) * ps))
        f = np.concatenate(notes)
        k = _n(sr, 0.012)
        f = np.convolve(np.pad(f, k, mode="edge"), np.ones(k) / k, mode="same")[k:-k]
        f *= 1 + 0.05 * np.sin(2 * np.pi * rng.uniform(15, 25) * np.arange(len(f)) / sr)
        am = 0.6 + 0.4 * np.abs(np.sin(np.pi * np.arange(len(f)) / sr * rng.uniform(6, 10)))
        return _tone(sr, f, (1, 0.2, 0.05), 0.05, 0.1) * am
    return _repeat(rng, sr, dur, phrase, rng.uniform(2.5, 4.0))


def _arched_whistle(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def note():
        n = _n(sr, rng.uniform(0.4, 0.7))
        x = np.linspace(0, 1, n)
        lo, hi = 2200 * ps, 3400 * ps * rng.uniform(0.95, 1.05)
        return _tone(sr, lo + (hi - lo) * np.sin(np.pi * x), (1, 0.12), 0.03, 0.08)
    return _repeat(rng, sr, dur, note, rng.uniform(1.0, 1.8) / ts)


def _rising_chirp_series(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t)

    def bout():
        def chirp():
            return _tone(sr, _sweep(sr, rng.uniform(0.06, 0.09), 2500 * ps, 4500 * ps),
                         (1, 0.1), 0.01, 0.02)

        return _repeat(rng, sr, rng.uniform(1.0, 2.0), chirp, rng.uniform(0.13, 0.2) / ts, 0.1)
    return _repeat(rng, sr, dur, bout, rng.uniform(2.6, 3.5))


def _trill(rng, sr, bout_s, element, rate):
    return _repeat(rng, sr, bout_s, element, 1.0 / rate, 0.04)


def _fast_trill(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t, 0.3)

    def bout():
        def el():
            return _tone(sr, _sweep(sr, 0.022, 6000 * ps, 4500 * ps), (1, 0.1), 0.004, 0.008)

        return _trill(rng, sr, rng.uniform(1.5, 3.0), el, rng.uniform(16, 22) * ts)
    return _repeat(rng, sr, dur, bout, rng.uniform(3.5, 5.0))


def _slow_trill(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t, 0.3)

    def bout():
        def el():
            return _tone(sr, _sweep(sr, 0.06, 3000 * ps, 4000 * ps), (1, 0.15), 0.008, 0.015)

        return _trill(rng, sr, rng.uniform(1.5, 3.0), el, rng.uniform(5, 8) * ts)
    return _repeat(rng, sr, dur, bout, rng.uniform(3.5, 5.0))


def _descending_trill(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t, 0.3)

    def bout():
        n_el = int(rng.integers(14, 24))
        freqs = np.geomspace(5000, 2500, n_el) * ps
        gaps = np.geomspace(0.06, 0.12, n_el) / ts
        out = np.zeros(_n(sr, float(np.sum(gaps)) + 0.1))
        at = 0.0
        for f, g in zip(freqs, gaps, strict=False):
            _place(out, _tone(sr, _sweep(sr, 0.04, f * 1.1, f), (1, 0.15), 0.005, 0.012),
                   int(at * sr))
            at += g
        return out
    return _repeat(rng, sr, dur, bout, rng.uniform(3.5, 5.0))


def _rattle_call(rng, sr, dur, p, t):
    ps, ts = _ps(p), _ts(t, 0.3)

    def bout():
        def pulse():
            n = _n(sr, 0.025)
            return _bandnoise(rng, n, sr, 2000 * ps, 5000 * ps) * np.exp(-np.arange(n) / sr / 0.006)
        return _trill(rng, sr, rng.uniform(1.0, 2.5), pulse, rng.uniform(12, 18) * ts)
    return _repeat(rng, sr, dur, bout, rng.uniform(3.0, 4.5))


def _cricket_chirping(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t)
    f0 = 4500 * ps

    def chirp():
        pulse = _tone(sr, np.full(_n(sr, 0.015), f0), (1, 0.1), 0.002, 0.004)
        out = np.zeros(_n(sr, 0.2))
        for k in range(int(rng.integers(3, 6))):
            _place(out, pulse, _n(sr, 0.03 * k))
        return out
    return _repeat(rng, sr, dur, chirp, rng.uniform(0.4, 0.8) / ts, 0.05)


def _cricket_trill(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t, 0.3)
    n = _n(sr, dur)
    rate = rng.uniform(40, 60) * ts
    x = np.arange(n) / sr
    pulses = np.clip(np.sin(2 * np.pi * rate * x), 0, None) ** 2
    slow = 0.8 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * x + rng.uniform(0, 6.28))
    return _harmonic(np.full(n, 4000 * ps), sr, (1, 0.08)) * pulses * slow * _env(n, sr, 0.1, 0.2)


def _katydid_stridulation(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.1), _ts(t)

    def buzz():
        n = _n(sr, rng.uniform(0.2, 0.5))
        am = np.clip(np.sin(2 * np.pi * rng.uniform(150, 250) * np.arange(n) / sr), 0, None)
        return _bandnoise(rng, n, sr, 8000 * ps, 12000 * ps) * am * _env(n, sr, 0.02, 0.03)
    return _repeat(rng, sr, dur, buzz, rng.uniform(0.35, 0.7) / ts, 0.1)


def _cicada_drone(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t)
    n = _n(sr, dur)
    x = np.arange(n) / sr
    am = 1 + 0.9 * np.sin(2 * np.pi * rng.uniform(120, 200) * x)
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 1.0) * ts * x)
    carrier = _bandnoise(rng, n, sr, 4000 * ps, 7000 * ps)
    return carrier * am * swell * _env(n, sr, min(1.0, dur / 4), min(1.0, dur / 4))


def _grasshopper_rasp(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.1), _ts(t)

    def rasp():
        n = _n(sr, rng.uniform(0.2, 0.5))
        am = (np.sin(2 * np.pi * rng.uniform(40, 80) * ts * np.arange(n) / sr) > 0).astype(float)
        return _bandnoise(rng, n, sr, 6000 * ps, 12000 * ps) * am * _env(n, sr, 0.01, 0.02)
    return _repeat(rng, sr, dur, rasp, rng.uniform(0.6, 1.2) / ts, 0.2)


def _bee_buzzing(rng, sr, dur, p, t):
    ps = _ps(p, 0.25)
    n = _n(sr, dur)
    f = 210 * ps * (1 + 0.05 * _lowpass_noise(rng, n, sr, 1.0))
    amps = [1.0 / k for k in range(1, 30)]
    x = np.linspace(-1, 1, n)
    pass_by = np.exp(-(((x - rng.uniform(-0.3, 0.3)) / rng.uniform(0.4, 0.8)) ** 2))
    return _harmonic(f, sr, amps) * pass_by * _env(n, sr, 0.05, 0.05)


def _mosquito_whine(rng, sr, dur, p, t):
    ps = _ps(p, 0.25)
    n = _n(sr, dur)
    vib = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * np.arange(n) / sr)
    f = 560 * ps * vib * (1 + 0.02 * _lowpass_noise(rng, n, sr, 0.5))
    level = 0.6 + 0.4 * np.abs(_lowpass_noise(rng, n, sr, 0.7)).clip(0, 1.5) / 1.5
    return _harmonic(f, sr, (1, 0.6, 0.4, 0.3, 0.15)) * level * _env(n, sr, 0.2, 0.2)


def _pulsed(sr, n, rate, duty_power=4):
    return np.abs(np.sin(np.pi * rate * np.arange(n) / sr)) ** duty_power


def _tree_frog_croaking(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t)

    def croak():
        n = _n(sr, rng.uniform(0.12, 0.25))
        carrier = _harmonic(np.full(n, 1800 * ps), sr, (1, 0.5, 0.25))
        return carrier * _pulsed(sr, n, rng.uniform(80, 120) / 2) * _env(n, sr, 0.01, 0.02)
    return _repeat(rng, sr, dur, croak, rng.uniform(0.5, 0.9) / ts, 0.1)


def _bullfrog_call(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t)
    f0 = 130 * ps

    def rum():
        n = _n(sr, rng.uniform(0.5, 0.9))
        f = f0 * (1 + 0.04 * np.sin(np.pi * np.arange(n) / n))
        amps = [np.exp(-(((k * f0) - 300 * ps) / 250) ** 2) + 0.1 / k for k in range(1, 25)]
        return _tone(sr, f, amps, 0.06, 0.12)
    return _repeat(rng, sr, dur, rum, rng.uniform(1.0, 1.5) / ts, 0.1)


def _toad_trill(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t, 0.25)
    n = _n(sr, dur)
    carrier = _harmonic(np.full(n, 1500 * ps), sr, (1, 0.2))
    return carrier * _pulsed(sr, n, rng.uniform(30, 40) * ts / 2) * _env(n, sr, 0.15, 0.3)


def _spring_peeper(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t)

    def peep():
        return _tone(sr, _sweep(sr, rng.uniform(0.1, 0.15), 2600 * ps, 3100 * ps), (1, 0.1),
                     0.01, 0.02)
    return _repeat(rng, sr, dur, peep, rng.uniform(0.6, 1.1) / ts, 0.1)


def _frog_snoring(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.15), _ts(t, 0.3)

    def snore():
        def pulse():
            n = _n(sr, 0.012)
            return _bandnoise(rng, n, sr, 500 * ps, 1500 * ps) * np.hanning(n)
        return _trill(rng, sr, rng.uniform(1.5, 3.0), pulse, rng.uniform(12, 20) * ts)
    return _repeat(rng, sr, dur, snore, rng.uniform(3.5, 5.0))


def _woodpecker_drumming(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.25), _ts(t, 0.25)

    def roll():
        rate = rng.uniform(16, 25) * ts
        n_hits = max(3, int(rng.uniform(0.6, 1.8) * rate))
        out = np.zeros(_n(sr, n_hits / rate + 0.05))
        for k in range(n_hits):
            hit = _click(rng, sr, 800 * ps, 4000 * ps) * (1 - 0.5 * k / n_hits)
            _place(out, hit, int(k / rate * sr))
        return out
    return _repeat(rng, sr, dur, roll, rng.uniform(2.5, 4.0), 0.2)


def _woodpecker_tapping(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.25), _ts(t)
    n = _n(sr, dur)
    out = np.zeros(n)
    at = 0.0
    while at < dur:
        _place(out, _click(rng, sr, 800 * ps, 4000 * ps) * rng.uniform(0.5, 1.0), int(at * sr))
        at += rng.uniform(0.15, 0.6) / ts
    return out


def _grouse_drumming(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t, 0.2)
    n = _n(sr, dur)
    out = np.zeros(n)
    f = 120 * ps
    m = _n(sr, 0.2)
    tt = np.arange(m) / sr
    thump = (np.sin(2 * np.pi * f * tt) + 0.5 * np.sin(4 * np.pi * f * tt)
             + 0.25 * np.sin(6 * np.pi * f * tt)) * np.exp(-tt / 0.04) * _env(m, sr, 0.004, 0.01)
    gap, at = 0.7 / ts, 0.0
    while at < dur:
        _place(out, thump * rng.uniform(0.8, 1.0), int(at * sr))
        at += gap
        gap = max(0.05, gap * rng.uniform(0.78, 0.85))
    return out


def _owl_hooting(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def series():
        hoots = []
        for _ in range(int(rng.integers(2, 6))):
            f = _sweep(sr, rng.uniform(0.3, 0.6), 380 * ps, 360 * ps)
            hoots.append(_tone(sr, f, (1, 0.3, 0.1), 0.06, 0.12))
            hoots.append(np.zeros(_n(sr, rng.uniform(0.25, 0.5) / ts)))
        return np.concatenate(hoots)
    return _repeat(rng, sr, dur, series, rng.uniform(4.0, 6.0))


def _dove_cooing(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def song():
        parts = [_tone(sr, _sweep(sr, rng.uniform(0.3, 0.5), 500 * ps, 620 * ps), (1, 0.25, 0.08),
                       0.05, 0.08), np.zeros(_n(sr, 0.15 / ts))]
        for _ in range(int(rng.integers(2, 5))):
            parts.append(_tone(sr, _sweep(sr, rng.uniform(0.4, 0.7), 560 * ps, 520 * ps),
                               (1, 0.25, 0.08), 0.06, 0.1))
            parts.append(np.zeros(_n(sr, rng.uniform(0.15, 0.3) / ts)))
        return np.concatenate(parts)
    return _repeat(rng, sr, dur, song, rng.uniform(4.0, 6.0))


def _cuckoo_call(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def call():
        a = _tone(sr, np.full(_n(sr, rng.uniform(0.18, 0.25)), 720 * ps), (1, 0.2), 0.02, 0.05)
        b = _tone(sr, np.full(_n(sr, rng.uniform(0.25, 0.35)), 590 * ps), (1, 0.2), 0.02, 0.1)
        return np.concatenate([a, np.zeros(_n(sr, 0.12)), b])
    return _repeat(rng, sr, dur, call, rng.uniform(0.9, 1.3) / ts, 0.08)


def _formant_amps(f0: float, centre: float, width: float, k_max: int):
    return [np.exp(-(((k * f0) - centre) / width) ** 2) + 0.05 for k in range(1, k_max + 1)]


def _crow_cawing(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def caw():
        n = _n(sr, rng.uniform(0.25, 0.45))
        f0 = rng.uniform(550, 700) * ps
        f = f0 * np.linspace(1.05, 0.9, n)
        rough = 1 + 0.5 * _lowpass_noise(rng, n, sr, 60.0)
        voiced = _harmonic(f, sr, _formant_amps(f0, 1500 * ps, 900, 12)) * rough
        return (voiced + 0.3 * _bandnoise(rng, n, sr, 600, 5000)) * _env(n, sr, 0.02, 0.06)
    return _repeat(rng, sr, dur, caw, rng.uniform(0.45, 0.7) / ts, 0.15)


def _goose_honking(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def honk():
        n = _n(sr, rng.uniform(0.15, 0.3))
        f0 = 380 * ps
        return _tone(sr, f0 * np.linspace(0.95, 1.05, n), _formant_amps(f0, 1200 * ps, 500, 14),
                     0.02, 0.04)
    return _repeat(rng, sr, dur, honk, rng.uniform(0.35, 0.7) / ts, 0.2)


def _gull_laughing(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def laugh():
        k = int(rng.integers(6, 12))
        parts = []
        for f0 in np.linspace(1100, 800, k) * ps:
            parts.append(_tone(sr, f0 * np.linspace(1.05, 0.95, _n(sr, rng.uniform(0.12, 0.2))),
                               (1, 0.7, 0.5, 0.3), 0.01, 0.04))
            parts.append(np.zeros(_n(sr, rng.uniform(0.08, 0.12) / ts)))
        return np.concatenate(parts)
    return _repeat(rng, sr, dur, laugh, rng.uniform(4.0, 5.5))


def _wolf_howling(rng, sr, dur, p, t):
    ps = _ps(p, 0.2)

    def howl():
        n = _n(sr, min(dur, rng.uniform(2.0, 5.0)))
        x = np.linspace(0, 1, n)
        lo, hi, end = 350 * ps, 650 * ps, 500 * ps
        f = np.where(x < 0.2, lo + (hi - lo) * np.sin(np.pi / 2 * x / 0.2),
                     np.where(x < 0.8, hi, hi + (end - hi) * (x - 0.8) / 0.2))
        f = f * (1 + 0.01 * np.sin(2 * np.pi * 5 * x * n / sr))
        return _tone(sr, f, (1, 0.35, 0.12), 0.15, 0.4)
    return _repeat(rng, sr, dur, howl, rng.uniform(5.5, 7.0), 0.1)


def _deer_barking(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t)

    def bark():
        n = _n(sr, rng.uniform(0.12, 0.2))
        f0 = rng.uniform(400, 550) * ps
        voiced = _harmonic(f0 * np.linspace(1.1, 0.85, n), sr,
                           _formant_amps(f0, 1400 * ps, 1000, 12))
        noise = _bandnoise(rng, n, sr, 300 * ps, 4000 * ps)
        return (voiced + 0.6 * noise) * _env(n, sr, 0.005, 0.08)
    return _repeat(rng, sr, dur, bark, rng.uniform(1.0, 2.5) / ts, 0.2)


def _squirrel_chatter(rng, sr, dur, p, t):
    ps, ts = _ps(p, 0.2), _ts(t, 0.3)

    def bout():
        def chirp():
            n = _n(sr, rng.uniform(0.03, 0.04))
            tone = _harmonic(_sweep(sr, n / sr, 7000 * ps, 3000 * ps), sr, (1, 0.2))
            return (tone + 0.3 * _bandnoise(rng, n, sr, 2000, 8000)) * np.hanning(n)
        return _trill(rng, sr, rng.uniform(1.0, 3.0), chirp, rng.uniform(10, 15) * ts)
    return _repeat(rng, sr, dur, bout, rng.uniform(3.5, 5.0))


# ----------------------------------------------------------------------- registry

@dataclass(frozen=True)
class CallType:
    """One kind of animal sound in the synthetic corpus.

    `phrases` are the seen phrasings (noun phrases without an article; the first is
    `name`), used in train, val and test captions. `heldout_phrases` never appear in
    train or val captions. `band` is (low, high) Hz holding most of the energy (for
    tests and pictures). `duration` is the (min, max) event length in seconds.
    `pitch_words` / `tempo_words` say whether "high/low", "fast/slow" describe it.
    """

    label: str
    family: str
    band: tuple[float, float]
    duration: tuple[float, float]
    phrases: tuple[str, ...]
    heldout_phrases: tuple[str, ...]
    render_fn: Callable
    pitch_words: bool = True
    tempo_words: bool = True

    @property
    def name(self) -> str:
        """The call's plain name in a field user's words ("woodpecker drumming")."""
        return self.phrases[0]

    def render(self, rng: np.random.Generator, sr: int, duration: float,
               pitch: float = 0.0, tempo: float = 0.0) -> np.ndarray:
        """float32 signal of round(duration*sr) samples, peak 1 (or all zeros if it
        fell entirely above the sample rate's limit); pitch, tempo in [-1, 1]."""
        x = np.asarray(self.render_fn(rng, sr, float(duration), float(pitch), float(tempo)))
        n = _n(sr, duration)
        x = np.pad(x, (0, max(0, n - len(x))))[:n]
        peak = float(np.max(np.abs(x))) if n else 0.0
        return (x / peak if peak > 0 else x).astype(np.float32)

    def generate(self, rng: np.random.Generator, sr: int, duration: float) -> np.ndarray:
        """The generator contract: (rng, sr, duration) -> float32 signal, with pitch and
        tempo drawn from `rng`."""
        pitch, tempo = rng.uniform(-1, 1, 2)
        return self.render(rng, sr, duration, pitch, tempo)


def _c(label, family, band, duration, phrases, heldout, fn, pitch=True, tempo=True):
    return CallType(label, family, band, duration, tuple(phrases), tuple(heldout), fn,
                    pitch, tempo)


CALL_TYPES: tuple[CallType, ...] = (
    # whistles: a confusable family on purpose
    _c("rising_whistle", "whistle", (1500, 4500), (1.5, 6.0),
       ["rising whistle", "upward-sweeping whistle of a bird", "bird whistling upward"],
       ["ascending whistled note"], _rising_whistle),
    _c("descending_whistle", "whistle", (1500, 4500), (1.5, 6.0),
       ["descending whistle", "falling whistle of a bird", "downward-sliding whistle"],
       ["whistle that drops in pitch"], _descending_whistle),
    _c("steady_whistle", "whistle", (2000, 4000), (1.5, 6.0),
       ["steady whistle", "pure whistled tone", "flat whistle of a bird"],
       ["even, unwavering whistle"], _steady_whistle),
    _c("two_note_whistle", "whistle", (2000, 4500), (2.0, 6.0),
       ["two-note whistle", "bird whistling two notes", "fee-bee call"],
       ["two-tone whistled call"], _two_note_whistle),
    _c("warbling_song", "whistle", (1800, 7000), (2.0, 7.0),
       ["warbling songbird", "songbird warbling", "warbled bird song"],
       ["melodious twittering song"], _warbling_song, tempo=False),
    _c("arched_whistle", "whistle", (1800, 4500), (1.5, 6.0),
       ["arched whistle", "whistle that rises then falls", "up-and-down whistle"],
       ["slurred whistle going up and down"], _arched_whistle),
    _c("rising_chirp_series", "whistle", (2000, 6000), (1.5, 6.0),
       ["repeated rising chirps", "series of upslurred chirps", "bird giving rising chirps"],
       ["string of upward chips"], _rising_chirp_series),
    # trills and rattles
    _c("fast_trill", "trill", (3500, 7500), (1.5, 6.0),
       ["fast bird trill", "rapid trill of a sparrow", "sparrow trilling fast"],
       ["dry mechanical trill of a sparrow"], _fast_trill, tempo=False),
    _c("slow_trill", "trill", (2200, 5000), (1.5, 6.0),
       ["slow bird trill", "slow trill of a songbird", "bird trilling slowly"],
       ["leisurely trilled song"], _slow_trill, tempo=False),
    _c("descending_trill", "trill", (2000, 6500), (1.5, 6.0),
       ["descending trill", "trill that falls in pitch", "cascading trill of a wren"],
       ["downward-tumbling trill"], _descending_trill),
    _c("rattle_call", "trill", (1500, 6500), (1.0, 6.0),
       ["rattling call", "kingfisher rattle", "dry rattle of a bird"],
       ["harsh clattering call"], _rattle_call),
    # insects
    _c("cricket_chirping", "insect", (3500, 6000), (1.5, 8.0),
       ["cricket chirping", "chirps of a cricket", "field cricket calling"],
       ["cricket song in short bursts"], _cricket_chirping),
    _c("cricket_trill", "insect", (3200, 5500), (2.0, 8.0),
       ["cricket trilling", "continuous trill of a tree cricket", "steady cricket trill"],
       ["unbroken insect trill"], _cricket_trill),
    _c("katydid_stridulation", "insect", (6500, 13500), (1.5, 8.0),
       ["katydid stridulation", "katydid buzzing", "stridulation buzz of a bush cricket"],
       ["scratchy katydid rasps"], _katydid_stridulation),
    _c("cicada_drone", "insect", (3500, 8000), (2.0, 8.0),
       ["cicada droning", "buzzing cicada", "loud cicada song"],
       ["electric whine of cicadas"], _cicada_drone),
    _c("grasshopper_rasp", "insect", (5000, 13500), (1.5, 7.0),
       ["grasshopper rasping", "grasshopper stridulating", "rasps of a grasshopper"],
       ["scraping grasshopper sounds"], _grasshopper_rasp),
    _c("bee_buzzing", "insect", (150, 3000), (1.5, 7.0),
       ["bee buzzing", "bumblebee humming", "buzz of a flying bee"],
       ["droning insect flying past"], _bee_buzzing, tempo=False),
    _c("mosquito_whine", "insect", (400, 3500), (1.5, 6.0),
       ["mosquito whine", "whining mosquito", "buzz of a mosquito"],
       ["high whine of a gnat"], _mosquito_whine, tempo=False),
    # frogs and toads
    _c("tree_frog_croaking", "frog", (1300, 6000), (1.5, 7.0),
       ["tree frog croaking", "croaks of a tree frog", "tree frog calling"],
       ["pulsed treefrog call"], _tree_frog_croaking),
    _c("bullfrog_call", "frog", (100, 800), (2.0, 7.0),
       ["bullfrog calling", "bullfrog croaking", "low rumbling croak of a bullfrog"],
       ["jug-o-rum of a bullfrog"], _bullfrog_call),
    _c("toad_trill", "frog", (1100, 3500), (2.0, 8.0),
       ["toad trilling", "long trill of a toad", "american toad calling"],
       ["sustained toad trill"], _toad_trill),
    _c("spring_peeper", "frog", (2000, 4000), (1.5, 6.0),
       ["spring peeper peeping", "peeping frog", "high peeps of a spring peeper"],
       ["chorus frog's piping note"], _spring_peeper),
    _c("frog_snoring", "frog", (400, 2000), (1.5, 6.0),
       ["frog snoring", "snoring call of a leopard frog", "leopard frog call"],
       ["guttural frog chuckle"], _frog_snoring),
    # drumming and knocking
    _c("woodpecker_drumming", "pulse", (600, 6000), (1.0, 6.0),
       ["woodpecker drumming", "rapid knocking of a woodpecker",
        "woodpecker drumming on dead wood"],
       ["woodpecker hammering on a hollow trunk"], _woodpecker_drumming),
    _c("woodpecker_tapping", "pulse", (600, 6000), (1.5, 6.0),
       ["woodpecker tapping", "slow tapping of a woodpecker", "woodpecker pecking at bark"],
       ["irregular pecks on wood"], _woodpecker_tapping),
    _c("grouse_drumming", "pulse", (80, 500), (3.0, 8.0),
       ["grouse drumming", "ruffed grouse drumming", "accelerating thumps of a grouse"],
       ["low wingbeat drum speeding up"], _grouse_drumming, tempo=False),
    # hoots, coos, caws, honks
    _c("owl_hooting", "hoot", (250, 1300), (1.5, 7.0),
       ["owl hooting", "hoots of an owl", "owl calling at night"],
       ["hooting of a tawny owl"], _owl_hooting),
    _c("dove_cooing", "hoot", (350, 2000), (2.0, 7.0),
       ["dove cooing", "cooing of a pigeon", "mourning dove call"],
       ["soft coos of a dove"], _dove_cooing),
    _c("cuckoo_call", "hoot", (450, 1800), (1.5, 6.0),
       ["cuckoo calling", "cuckoo call", "two-note cuckoo"],
       ["cuck-oo of a common cuckoo"], _cuckoo_call),
    _c("crow_cawing", "harsh", (400, 5000), (1.0, 6.0),
       ["crow cawing", "caws of a crow", "harsh crow calls"],
       ["raucous caw of a raven"], _crow_cawing),
    _c("goose_honking", "harsh", (300, 3000), (1.0, 6.0),
       ["goose honking", "honks of a goose", "geese honking"],
       ["nasal honk of a goose"], _goose_honking),
    _c("gull_laughing", "harsh", (600, 4500), (2.0, 7.0),
       ["gull laughing", "laughing call of a gull", "gull calling"],
       ["seagull ha-ha-ha call"], _gull_laughing),
    # mammals
    _c("wolf_howling", "mammal", (250, 2200), (2.5, 8.0),
       ["wolf howling", "howl of a wolf", "long wolf howl"],
       ["mournful howl of a wolf"], _wolf_howling, tempo=False),
    _c("deer_barking", "mammal", (250, 4500), (1.0, 6.0),
       ["deer barking", "bark of a deer", "alarm bark of a roe deer"],
       ["muntjac barking"], _deer_barking),
    _c("squirrel_chatter", "mammal", (2000, 8500), (1.0, 6.0),
       ["squirrel chattering", "chatter of a red squirrel", "squirrel alarm chatter"],
       ["scolding squirrel"], _squirrel_chatter),
)

CALLS: dict[str, CallType] = {c.label: c for c in CALL_TYPES}


def call_type(label: str) -> CallType:
    """The registry entry for `label`; KeyError names the known labels."""
    try:
        return CALLS[label]
    except KeyError:
        raise KeyError(f"unknown call type {label!r}; known: {', '.join(CALLS)}") from None
