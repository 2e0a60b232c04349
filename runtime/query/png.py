"""A tiny PNG writer (numpy + zlib) and a viridis-like colour map.

The station has no matplotlib or Pillow; spectrogram pictures of search hits only need
8-bit greyscale or RGB images, which PNG stores as zlib-compressed scanlines, each
prefixed by a filter byte (we always use filter 0, "none"). See the PNG specification,
sections 11.2.2 (IHDR) and 12.8 (scanline filtering).

- `encode_png(image) -> bytes`: uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB).
- `write_png(path, image)`: the same, written to a file atomically (temp file + rename).
- `colorize(values, vmin=None, vmax=None) -> uint8 [H, W, 3]`: maps numbers to colours
  from dark blue-violet (low) through teal and green to yellow (high), like matplotlib's
  viridis; NaN maps to black.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument

__all__ = ["VIRIDIS_ANCHORS", "colorize", "encode_png", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Seventeen colours sampled evenly from matplotlib's viridis (0, 1/16, ..., 1); `colorize`
# interpolates linearly between them, within about 5 levels (of 255) of the original.
VIRIDIS_ANCHORS = np.array(
    [
        [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139],
        [51, 99, 141], [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136],
        [40, 174, 128], [63, 188, 115], [94, 201, 98], [132, 212, 75], [173, 220, 48],
        [216, 226, 25], [253, 231, 37],
    ],
    dtype=np.float64,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    # The CRC covers the chunk type and data, not the length (PNG spec 5.3).
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """PNG file bytes for a uint8 image ``[H, W]`` (greyscale) or ``[H, W, 3]`` (RGB).

    Row 0 is the top of the picture. Raises `InvalidArgument` for any other dtype or
    shape, or for an empty image (PNG needs at least 1 x 1 pixel).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidArgument(f"encode_png: image must be uint8, not {image.dtype}")
    if image.ndim == 2:
        colour_type = 0  # greyscale
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type = 2  # truecolour RGB
    else:
        raise InvalidArgument(f"encode_png: image shape {image.shape} is not [H, W] or [H, W, 3]")
    height, width = image.shape[:2]
    if height < 1 or width < 1 or height >= 2**31 or width >= 2**31:
        raise InvalidArgument(f"encode_png: image size {width} x {height} is out of range")
    rows = np.ascontiguousarray(image).reshape(height, -1)
    # Each scanline starts with its filter type byte: 0 = no filtering.
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, compress_level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write `encode_png(image)` to ``path`` (temp file in the same folder, then rename,
    so a reader never sees half a picture). Returns the path."""
    path = Path(path)
    data = encode_png(image)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def colorize(values: np.ndarray, vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """Map a 2-D array of numbers to viridis-like RGB, uint8 ``[H, W, 3]``.

    ``vmin``/``vmax`` default to the finite minimum and maximum of ``values``; values
    outside are clipped. A constant image maps to the lowest colour; NaN/Inf to black.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise InvalidArgument(f"colorize: values must be 2-D, not shape {v.shape}")
    finite = np.isfinite(v)
    if vmin is None or vmax is None:
        lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 1.0)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = vmax - vmin
    t = np.clip((v - vmin) / span, 0.0, 1.0) if span > 0 else np.zeros_like(v)
    t = np.where(finite, t, 0.0)
    pos = t * (len(VIRIDIS_ANCHORS) - 1)
    i = np.minimum(pos.astype(np.int64), len(VIRIDIS_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    rgb = VIRIDIS_ANCHORS[i] * (1.0 - frac) + VIRIDIS_ANCHORS[i + 1] * frac
    rgb[~finite] = 0.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
