"""Keep the long-running server's heap small (glibc only; a no-op elsewhere).

`limit_heap()` fixes glibc's mmap threshold at 128 KiB instead of letting it slide up to
32 MiB, so the large short-lived arrays of a search or a picture (a window's samples and
its resampled copy, the search's distances) are mapped and unmapped on their own instead
of staying in the heap once freed: about 19 MB less server RSS after twenty clients with
the full-size int8 bundle and a 10M-window store (docs/benchmarks/web.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  glibc has it; musl and macOS may not
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_heap() -> bool:
    """Fix glibc's mmap threshold for this process; False where that is not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
