"""Spectrogram pictures for the web page, two sizes of the same log-mel:

- `strip_png(samples, params)`: the bare log-mel of a window, one pixel per frame and
  mel band (1001 x 64 for CLAP's front-end), low frequencies at the bottom, in the CLI
  pictures' colour map (magma) and dynamic range (80 dB below the loudest bin). The page
  shows it inside every hit, with its axes laid out in HTML around it: about 30 ms of CPU,
  where a full matplotlib figure takes about 280 ms, so a page of ten hits stays fast.
- `figure_png(samples, params, ...)`: the picture `cvahash search --spectrograms` draws
  (`cvahash.query.plots.spectrogram_figure`: axes in seconds, clock time and kHz, a dB
  colour bar, a title, a short window's padding greyed), for the page's "full picture".

Both need matplotlib (the ``[plots]`` extra); without it they raise MissingExtra naming
the install command.
"""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np

from ...model.frontend import log_mel
from ...query import plots

__all__ = ["figure_png", "strip_png"]

COLOUR_MAP = "magma"  # as cvahash.query.plots draws the CLI pictures


def strip_rgb(samples: np.ndarray, params) -> np.ndarray:
    """uint8 RGB [mels, frames, 3] of the log-mel, highest band in row 0."""
    from matplotlib import colormaps  # optional: the [plots] extra

    mel = log_mel(samples, params)[0, 0].T[::-1]  # [mels, frames], high bands on top
    top = float(mel.max())
    scaled = np.clip((mel - (top - plots.DYNAMIC_RANGE_DB)) / plots.DYNAMIC_RANGE_DB, 0, 1)
    return colormaps[COLOUR_MAP](scaled, bytes=True)[..., :3]


def strip_png(samples: np.ndarray, params) -> bytes:
    plots.require()
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    # zlib level 1: a third of level 6's time for a picture about 10% larger.
    Image.fromarray(strip_rgb(samples, params)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def figure_png(samples: np.ndarray, params, *, start_s: float,
               capture_time: datetime | None, title: str, subtitle: str) -> bytes:
    fig = plots.spectrogram_figure(samples, params, start_s=start_s, capture_time=capture_time,
                                   title=title, subtitle=subtitle)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
