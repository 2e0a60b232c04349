"""A small indexed store for the web page, activity and notification tests.

Two stations, recordings named by capture time (so windows carry real UTC times over
several hours and two days), synthetic audio: background noise plus, in some files, a
known event (a steady 3 kHz whistle repeated every second) and in others bird-like
chirps. Indexed with the shipped demo bundle (tests/data/demo-bundle), no torch needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from cvahash.cli import main

DEMO_BUNDLE = Path(__file__).parent / "data" / "demo-bundle"
SR = 16000
# (station, file name = capture start UTC, seconds, kind)
RECORDINGS = [
    ("ridge-1", "20240612_050000.wav", 30, "whistle"),
    ("ridge-1", "20240612_060000.wav", 20, "chirps"),
    ("ridge-1", "20240612_080000.wav", 20, "whistle"),
    ("ridge-1", "20240613_050000.wav", 20, "chirps"),
    ("pond-2", "20240612_050500.wav", 20, "chirps"),
    ("pond-2", "20240612_070000.wav", 30, "whistle"),
    ("pond-2", "20240613_060000.wav", 20, "chirps"),
]


def synth(kind: str, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    x = 0.01 * rng.standard_normal(n)
    t = np.arange(round(0.5 * SR)) / SR
    if kind == "whistle":
        tone = 0.4 * np.sin(2 * np.pi * 3000 * t) * np.hanning(t.size)
        for start in np.arange(0.2, seconds - 0.6, 1.0):
            i = round(start * SR)
            x[i:i + tone.size] += tone
    else:
        for start in rng.uniform(0, seconds - 1, size=int(seconds / 2)):
            f0 = rng.uniform(1500, 6000)
            s = 0.3 * np.sin(2 * np.pi * (f0 * t + 3000 * t**2)) * np.hanning(t.size)
            i = round(start * SR)
            x[i:i + s.size] += s
    return x.astype(np.float32)


def make_store(root: Path) -> tuple[Path, Path]:
    """Write the recordings under root/audio/<station>/ and index them into root/store.
    Returns (store folder, audio folder)."""
    audio = root / "audio"
    for i, (station, name, seconds, kind) in enumerate(RECORDINGS):
        (audio / station).mkdir(parents=True, exist_ok=True)
        sf.write(str(audio / station / name), synth(kind, seconds, i), SR, subtype="PCM_16")
    store = root / "store"
    for station in sorted({r[0] for r in RECORDINGS}):
        rc = main(["index", str(audio / station), "--db", str(store), "--bundle",
                   str(DEMO_BUNDLE), "--station", station, "--quiet", "--threads", "1"])
        assert rc == 0
    return store, audio
