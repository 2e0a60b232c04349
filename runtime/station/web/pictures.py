"""Spectrogram pictures for the web page, two sizes of the same log-mel:

- `strip_png(samples, params)`: the bare log-mel of a window, one pixel per frame and
  mel band (1001 x 64 for CLAP's front-end), low frequencies at the bottom, in the CLI
  pictures' colour map (magma) and dynamic range (80 dB below the loudest bin). The page
  shows it inside every hit, with its axes laid out in HTML around it: about 30 ms of CPU,
  where a full matplotlib figure takes about 280 ms, so a page of ten hits stays fast.
- `figure_png(samples, params, ...)`: the picture `cvahash search --spectrograms` draws
  (`cvahash.query.plots.spectrogram_figure`: axes in seconds, clock time and kHz, a dB
  colour bar, a title, a short window's padding greyed), for the page's "full picture".

The figure needs matplotlib (the ``[plots]`` extra; without it, MissingExtra naming the
install command); the strip needs only numpy and zlib.
"""

from __future__ import annotations

import io
import struct
import zlib
from datetime import datetime

import numpy as np

from ...model.frontend import log_mel, release_scratch
from ...query import plots

__all__ = ["figure_png", "strip_png"]

COLOUR_MAP = "magma"  # as cvahash.query.plots draws the CLI pictures


# matplotlib's "magma" as 256 RGB bytes (`colormaps["magma"](range(256), bytes=True)`), so
# the strips need neither matplotlib nor PIL in the server's memory (about 18 MB less RSS).
MAGMA_HEX = (
    "00000300000400000601000701010901010b02020d02020f03031104031304041505041706051907051b08061d"
    "09071f0a07220b08240c09260d0a280e0a2a0f0b2c100c2f110c31120d33140d35150e38160e3a170f3c180f3f"
    "1a10411b10441c10461e10491f114b20114d2211502311522511552611572811592a115c2b115e2d10602f1062"
    "301065321067341068350f6a370f6c390f6e3b0f6f3c0f713e0f72400f73420f74430f75450f76470f77481078"
    "4a10794b10794d117a4f117b50127b52127c53137c55137d57147d58157e5a157e5b167e5d177e5e177f60187f"
    "61187f63197f651a80661a80681b80691c806b1c806c1d806e1e816f1e81711f81731f81742081762181772181"
    "7922817a22817c23817e24817f24818125818225818426818526818727818928818a28818c29808d29808f2a80"
    "912a80922b80942b80952c80972c7f992d7f9a2d7f9c2e7f9e2e7e9f2f7ea12f7ea3307ea4307da6317da7317d"
    "a9327cab337cac337bae347bb0347bb1357ab3357ab53679b63679b83778b93778bb3877bd3977be3976c03a75"
    "c23a75c33b74c53c74c63c73c83d72ca3e72cb3e71cd3f70ce4070d0416fd1426ed3426dd4436dd6446cd7456b"
    "d9466ada4769dc4869dd4968de4a67e04b66e14c66e24d65e44e64e55063e65162e75262e85461ea5560eb5660"
    "ec585fed595fee5b5eee5d5def5e5df0605df1615cf2635cf3655cf3675bf4685bf56a5bf56c5bf66e5bf6705b"
    "f7715bf7735cf8755cf8775cf9795cf97b5df97d5dfa7f5efa805efa825ffb8460fb8660fb8861fb8a62fc8c63"
    "fc8e63fc9064fc9265fc9366fd9567fd9768fd9969fd9b6afd9d6bfd9f6cfda16efda26ffda470fea671fea873"
    "feaa74feac75feae76feaf78feb179feb37bfeb57cfeb77dfeb97ffebb80febc82febe83fec085fec286fec488"
    "fec689fec78bfec98dfecb8efdcd90fdcf92fdd193fdd295fdd497fdd698fdd89afdda9cfddc9dfddd9ffddfa1"
    "fde1a3fce3a5fce5a6fce6a8fce8aafceaacfcecaefceeb0fcf0b1fcf1b3fcf3b5fcf5b7fbf7b9fbf9bbfbfabd"
    "fbfcbf"
)
_MAGMA = np.frombuffer(bytes.fromhex("".join(MAGMA_HEX)), np.uint8).reshape(256, 3)


def strip_rgb(samples: np.ndarray, params) -> np.ndarray:
    """uint8 RGB [mels, frames, 3] of the log-mel, highest band in row 0 (the colours of
    matplotlib's ``colormaps["magma"](scaled, bytes=True)``)."""
    mel = log_mel(samples, params)[0, 0].T[::-1]  # [mels, frames], high bands on top
    top = float(mel.max())
    scaled = np.clip((mel - (top - plots.DYNAMIC_RANGE_DB)) / plots.DYNAMIC_RANGE_DB, 0, 1)
    return _MAGMA[np.minimum((scaled * 256).astype(np.intp), 255)]


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """A PNG of a uint8 RGB [height, width, 3] array (8 bits per channel, no filter)."""
    height, width, _ = rgb.shape
    rows = np.empty((height, 1 + 3 * width), np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rows[:, 1:] = rgb.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b""))


def strip_png(samples: np.ndarray, params) -> bytes:
    # zlib level 1: a third of level 6's time for a picture about 10% larger.
    try:
        return png_bytes(strip_rgb(samples, params))
    finally:
        release_scratch()  # 20 MB per server thread otherwise, for a picture now and then


def figure_png(samples: np.ndarray, params, *, start_s: float,
               capture_time: datetime | None, title: str, subtitle: str) -> bytes:
    try:
        fig = plots.spectrogram_figure(samples, params, start_s=start_s,
                                       capture_time=capture_time, title=title,
                                       subtitle=subtitle)
    finally:
        release_scratch()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
