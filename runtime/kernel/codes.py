"""Checking packed code arrays handed to the numpy-side code paths (weighted re-ranking,
the network archive's word packing): uint8 rows of ``nbytes`` bytes each."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidCodes


def code_rows(codes, nbytes: int, wrong_width: str) -> np.ndarray:
    """``codes`` as a 2-D uint8 array (one row per code; a single 1-D code becomes one row).

    Raises InvalidCodes when it is not a uint8 numpy array, or when its rows are not
    ``nbytes`` wide; ``wrong_width`` is that message, formatted with ``{got}`` (the
    array's byte width) and ``{want}`` (``nbytes``)."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise InvalidCodes("codes must be a numpy uint8 array of packed bits (numpy.packbits)")
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise InvalidCodes(wrong_width.format(got=codes.shape[-1], want=nbytes))
    return codes
