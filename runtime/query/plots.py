"""Spectrogram pictures of search hits, drawn with matplotlib (the ``[plots]`` extra).

`spectrogram_png(path, samples, params, ...)` draws the log-mel of one hit's window, the
picture the model saw, so that a person can read it without knowing the model:

- the time axis in seconds into the recording (bottom) and in clock time UTC (top),
- the frequency axis in kHz (the rows are mel bands, so the scale is the mel scale:
  low frequencies get more room, as in the model's input),
- a title with the query, rank, Hamming distance, station and capture time,
- a colour scale in dB,
- when the window is shorter than the model's input (the last window of a recording,
  a short file), the rest of the picture is what the front-end filled in (whole
  repeats of the audio, then silence, for the default "repeatpad"); it is greyed out, the
  end of the recording is marked and the fill is named, so a 2.3 s call does not read as
  four calls.

matplotlib is used without pyplot (a `Figure` on the Agg canvas): no display, no global
state, safe in a service. `require()` raises `MissingExtra` with the install command when
matplotlib is missing.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MissingExtra
from ..model.frontend import log_mel, mel_filterbank

if TYPE_CHECKING:  # pragma: no cover
    from ..model.frontend import FrontendParams

INSTALL = "pip install '.[plots]' in the cvahash checkout"
DYNAMIC_RANGE_DB = 80.0  # quieter than this below the loudest bin is noise floor
KHZ_TICKS = (0.25, 0.5, 1, 2, 4, 8, 12, 16, 20)


def require() -> None:
    """Raise MissingExtra naming the install command unless matplotlib is importable."""
    try:
        import matplotlib  # noqa: F401  # optional: the [plots] extra
    except ImportError:
        raise MissingExtra(f"--spectrograms draws with matplotlib, which is not installed: "
                           f"{INSTALL}") from None


def mel_centres_hz(params: FrontendParams) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of the front-end, lowest first."""
    fb = mel_filterbank(params)  # [fft bins, mels]
    return np.argmax(fb, axis=0) * params.sample_rate / params.n_fft


def spectrogram_png(path: str | os.PathLike, samples: np.ndarray, params: FrontendParams,
                    **how) -> None:
    """Draw `spectrogram_figure` into the PNG file ``path`` (replaced atomically)."""
    fig = spectrogram_figure(samples, params, **how)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def spectrogram_figure(samples: np.ndarray, params: FrontendParams, *, start_s: float,
                       capture_time: datetime | None, title: str, subtitle: str = ""):
    """A matplotlib Figure of the log-mel of ``samples`` (mono, at ``params.sample_rate``:
    the hit's window, ``start_s`` seconds into its recording, captured at
    ``capture_time``)."""
    require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional: [plots]
    from matplotlib.figure import Figure  # optional: [plots]
    from matplotlib.ticker import FuncFormatter  # optional: [plots]

    mel = log_mel(samples, params)[0, 0].T  # [mels, frames], padded to the model's input
    seconds_per_frame = params.hop_length / params.sample_rate
    input_s = mel.shape[1] * seconds_per_frame
    real_s = min(len(samples) / params.sample_rate, input_s)
    top = float(mel.max())

    fig = Figure(figsize=(10, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                      vmin=top - DYNAMIC_RANGE_DB, vmax=top, interpolation="nearest",
                      extent=(start_s, start_s + input_s, -0.5, mel.shape[0] - 0.5))
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("level (dB, log-mel)")

    # Frequency: rows are mel bands; label them in kHz where the bands lie.
    centres = mel_centres_hz(params) / 1000
    ticks = [f for f in KHZ_TICKS if centres[0] <= f <= centres[-1]]
    ax.set_yticks(np.interp(ticks, centres, np.arange(len(centres))))
    ax.set_yticklabels([f"{f:g}" for f in ticks])
    ax.set_ylabel("frequency (kHz, mel scale)")

    ax.set_xlim(start_s, start_s + input_s)
    ax.set_xlabel("seconds into the recording")
    if capture_time is not None:
        t0 = capture_time.astimezone(timezone.utc) - timedelta(seconds=start_s)
        clock = ax.secondary_xaxis("top")
        clock.xaxis.set_major_formatter(FuncFormatter(
            lambda s, _pos: (t0 + timedelta(seconds=s)).strftime("%H:%M:%S")))
        clock.set_xlabel(f"clock time UTC, {capture_time.astimezone(timezone.utc):%Y-%m-%d}")

    if real_s < input_s - seconds_per_frame:
        end = start_s + real_s
        ax.axvspan(end, start_s + input_s, color="0.55", alpha=0.85, lw=0)
        ax.axvline(end, color="white", lw=1.5)
        ax.text(end + 0.08, mel.shape[0] * 0.5, "end of recording\n" +
                padding_note(params.padding, real_s, input_s),
                color="black", fontsize=9, va="center", ha="left")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10, loc="left")
    return fig


def padding_note(padding: str, real_s: float, input_s: float) -> str:
    """What the front-end put after a window of ``real_s`` seconds to fill ``input_s``
    (its ``padding`` mode), in words for the greyed part of the picture."""
    if padding == "pad" or real_s <= 0:
        return "(the model saw\nsilence here)"
    if padding == "repeat":
        return f"(the model saw the\n{real_s:.1f} s repeated here)"
    copies = int(input_s / real_s)  # "repeatpad": whole copies, then silence
    rest = input_s - copies * real_s
    if copies < 2:
        return f"(the model saw\n{rest:.1f} s of silence here)"
    again = "once more" if copies == 2 else f"{copies - 1} more times"
    return (f"(the model saw the\n{real_s:.1f} s {again}" +
            (f",\nthen {rest:.1f} s of silence)" if rest >= 0.05 else ")"))


def hit_title(hit, query: str | None) -> tuple[str, str]:
    """Title and subtitle for a hit: query, rank, distance; station and capture time."""
    what = f"\"{query}\"" if query else "query"
    if len(what) > 70:
        what = what[:67] + "...\""
    title = f"{what}  rank {hit.rank}, distance {hit.distance} bits"
    captured = hit.known_capture_time
    when = (captured.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            if captured is not None else "capture time unknown")
    clock = f" (clock: {hit.clock_source})" if captured is not None else ""
    sub = (f"station {hit.station or '-'}, captured {when}{clock}; "
           f"{os.path.basename(hit.path)} {hit.start_s:.1f}-{hit.end_s:.1f} s")
    return title, sub
