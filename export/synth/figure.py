"""A picture of the synthetic call types: a grid of spectrograms (docs/img/synth_calls.png).

    python -m cvahash.export.synth.figure [OUT.png]

Needs matplotlib (the [export] extra); the generators themselves do not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .backgrounds import render_background
from .calls import call_type

# Twelve types that show the range, including three confusable whistles.
GALLERY = ("rising_whistle", "descending_whistle", "two_note_whistle", "fast_trill",
           "cricket_chirping", "katydid_stridulation", "tree_frog_croaking", "bullfrog_call",
           "woodpecker_drumming", "grouse_drumming", "owl_hooting", "crow_cawing")


def spectrogram_db(x: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 512) -> np.ndarray:
    """Power in dB, [freq bins, frames], periodic Hann window."""
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, n_fft // 2), n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return 10 * np.log10(np.maximum(power.T, 1e-10))


def plot_call_gallery(path, labels=GALLERY, *, seed: int = 0, sr: int = 32000,
                      seconds: float = 4.0, snr_db: float = 15.0) -> Path:
    """Render each call type over light pink noise and save a 3-column grid of
    spectrograms (0-14 kHz) to `path`."""
    import matplotlib  # lazy: the plots extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: the plots extra

    cols = 3
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.4 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        rng = np.random.default_rng([seed, 9])
        call = call_type(label)
        x = call.render(rng, sr, seconds).astype(np.float64)
        x /= np.sqrt(np.mean(x * x)) + 1e-12
        x += render_background("pink", rng, len(x), sr) * 10 ** (-snr_db / 20)
        spec = spectrogram_db(x, sr)
        top = np.max(spec)
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 70, vmax=top,
                  extent=(0, seconds, 0, sr / 2000))
        ax.set_ylim(0, 14)
        ax.set_title(f"{call.name}  ({label})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("kHz", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("s", fontsize=8)
    fig.suptitle("cvahash synth: procedural call types (15 dB over pink noise)", fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    # a 64-colour palette makes the noisy backgrounds compress: ~4x smaller file
    from PIL import Image  # lazy: the plots extra

    with Image.open(out) as img:
        small = img.convert("RGB").quantize(64)
    small.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(plot_call_gallery(sys.argv[1] if len(sys.argv) > 1 else "docs/img/synth_calls.png"))
