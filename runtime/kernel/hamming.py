"""Exact Hamming nearest-neighbour search over packed binary codes.

Codes are row-major, C-contiguous ``uint8`` arrays of shape ``(n, nbytes)``,
packed MSB-first per byte (``numpy.packbits``), ``nbytes`` from 1 to 1024. They may
be a ``numpy.memmap``. Results are exact and sorted by (distance, id), so they are
identical for every kernel (ISA) and every thread count.

The C kernel (csrc/) is chosen once, at import, from what the CPU supports;
``CVAHASH_SIMD=serial|avx2|avx512|neon`` forces one (an unavailable choice is an
error, not a silent fallback). ``active_isa()`` names it. The GIL is released
during each search, so searches from several Python threads run concurrently.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CvahashError, InvalidArgument, InvalidCodes
from ._hamming_cffi import ffi, lib

__all__ = ["MAX_NBYTES", "KernelUnavailable", "active_isa", "available_isas", "knn", "within"]

MAX_NBYTES = lib.CVH_MAX_NBYTES
_ISA_IDS = {ffi.string(lib.cvh_isa_name(i)).decode(): i for i in range(lib.CVH_ISA_COUNT)}
_ERRORS = {
    lib.CVH_ERR_ISA: "kernel not supported on this CPU",
    lib.CVH_ERR_NOMEM: "out of memory",
    lib.CVH_ERR_ARG: "invalid argument",
    lib.CVH_ERR_THREAD: "could not start a worker thread",
}


class KernelUnavailable(ValueError, CvahashError):
    """A SIMD kernel was requested (CVAHASH_SIMD or by name) that this CPU cannot run."""


def available_isas() -> tuple[str, ...]:
    """Names of the kernels this CPU can run, slowest (serial) first."""
    return tuple(name for name, i in _ISA_IDS.items() if lib.cvh_isa_supported(i))


def _isa_id(name: str) -> int:
    if name not in _ISA_IDS:
        raise KernelUnavailable(
            f"unknown Hamming kernel {name!r}; choose one of {', '.join(_ISA_IDS)}"
        )
    if not lib.cvh_isa_supported(_ISA_IDS[name]):
        raise KernelUnavailable(
            f"Hamming kernel {name!r} is not supported on this CPU (available: "
            f"{', '.join(available_isas())}); unset CVAHASH_SIMD or pick an available one"
        )
    return _ISA_IDS[name]


def _choose_isa() -> int:
    forced = os.environ.get("CVAHASH_SIMD", "").strip()
    if forced:
        return _isa_id(forced)
    return lib.cvh_best_isa()


_ACTIVE = _choose_isa()


def active_isa() -> str:
    """Name of the kernel every search uses: serial, avx2, avx512 or neon."""
    return ffi.string(lib.cvh_isa_name(_ACTIVE)).decode()


def _check_codes(codes) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise InvalidCodes(f"codes must be a numpy uint8 array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise InvalidCodes(
            f"codes must have dtype uint8 (packed bits, numpy.packbits), got {codes.dtype}"
        )
    if codes.ndim != 2:
        raise InvalidCodes(f"codes must be 2-D (rows, bytes per code), got shape {codes.shape}")
    if not 1 <= codes.shape[1] <= MAX_NBYTES:
        raise InvalidCodes(
            f"code width must be 1..{MAX_NBYTES} bytes, got {codes.shape[1]} (shape {codes.shape})"
        )
    if not codes.flags.c_contiguous:
        raise InvalidCodes(
            "codes must be C-contiguous (row-major); pass numpy.ascontiguousarray(codes)"
        )
    return codes


def _check_queries(queries, nbytes: int, what: str = "queries") -> np.ndarray:
    if not isinstance(queries, np.ndarray):
        raise InvalidCodes(f"{what} must be a numpy uint8 array, got {type(queries).__name__}")
    if queries.dtype != np.uint8:
        raise InvalidCodes(f"{what} must have dtype uint8 (packed bits), got {queries.dtype}")
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    if queries.ndim != 2:
        raise InvalidCodes(f"{what} must be 1-D or 2-D, got shape {queries.shape}")
    if queries.shape[1] != nbytes:
        raise InvalidCodes(
            f"{what} are {queries.shape[1]} bytes wide but codes are {nbytes} bytes wide; "
            "both must come from the same model (same bit count)"
        )
    if not queries.flags.c_contiguous:
        raise InvalidCodes(f"{what} must be C-contiguous; pass numpy.ascontiguousarray({what})")
    return queries


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_allowed(allowed, n: int):
    """Returns (filter kind, mask or None, ranges or None, eligible row count)."""
    if allowed is None:
        return lib.CVH_FILTER_NONE, None, None, n
    if not isinstance(allowed, np.ndarray):
        allowed = np.asarray(allowed)
    if allowed.dtype == np.bool_:
        if allowed.ndim != 1 or allowed.shape[0] != n:
            raise InvalidArgument(
                f"allowed mask must be 1-D with one entry per code row ({n}), "
                f"got shape {allowed.shape}"
            )
        mask = np.ascontiguousarray(allowed).view(np.uint8)
        return lib.CVH_FILTER_MASK, mask, None, int(np.count_nonzero(mask))
    if allowed.dtype.kind in "iu":
        if allowed.ndim != 2 or allowed.shape[1] != 2:
            raise InvalidArgument(
                "allowed must be a boolean mask of length n or an int array of shape (r, 2) "
                f"of [start, end) row ranges, got dtype {allowed.dtype} shape {allowed.shape}"
            )
        if allowed.dtype.kind == "u" and allowed.size and allowed.max() > np.iinfo(np.int64).max:
            raise InvalidArgument("allowed row ranges exceed int64")
        ranges = np.ascontiguousarray(allowed, dtype=np.int64)
        if ranges.size:
            starts, ends = ranges[:, 0], ranges[:, 1]
            if starts.min() < 0 or ends.max() > n:
                raise InvalidArgument(f"allowed row ranges must lie within [0, {n}]")
            if np.any(ends < starts):
                raise InvalidArgument("allowed row ranges must have start <= end")
            if np.any(starts[1:] < ends[:-1]):
                raise InvalidArgument("allowed row ranges must be sorted and non-overlapping")
        eligible = int((ranges[:, 1] - ranges[:, 0]).sum()) if ranges.size else 0
        return lib.CVH_FILTER_RANGES, None, ranges, eligible
    raise InvalidArgument(
        "allowed must be None, a boolean mask of length n, or an int64 array of shape (r, 2) "
        f"of [start, end) row ranges; got dtype {allowed.dtype}"
    )


def _ptr(ctype: str, arr):
    if arr is None:
        return ffi.NULL
    return ffi.cast(ctype, arr.ctypes.data)


def _raise_for(rc: int, what: str) -> None:
    if rc == lib.CVH_ERR_NOMEM:
        raise MemoryError(f"{what}: out of memory in the Hamming kernel")
    if rc != lib.CVH_OK:
        raise RuntimeError(f"{what}: Hamming kernel failed ({_ERRORS.get(rc, rc)})")


def _knn(isa: int, queries, codes, k, threads, allowed):
    codes = _check_codes(codes)
    n, nbytes = codes.shape
    queries = _check_queries(queries, nbytes)
    k = _check_int(k, "k", 1)
    threads = _check_int(threads, "threads", 0)
    kind, mask, ranges, eligible = _check_allowed(allowed, n)
    nq = queries.shape[0]
    kk = min(k, eligible)
    dist = np.zeros((nq, kk), dtype=np.int32)
    ids = np.zeros((nq, kk), dtype=np.int64)
    if kk == 0 or nq == 0:
        return dist, ids
    rc = lib.cvh_knn(
        isa, _ptr("uint8_t *", queries), nq, _ptr("uint8_t *", codes), n, nbytes, kk, threads,
        kind, _ptr("uint8_t *", mask), _ptr("int64_t *", ranges),
        0 if ranges is None else ranges.shape[0],
        _ptr("int32_t *", dist), _ptr("int64_t *", ids),
    )  # fmt: skip
    _raise_for(rc, "knn")
    return dist, ids


def knn(queries, codes, k, *, threads=0, allowed=None):
    """The exact k nearest code rows to each query by Hamming distance.

    queries: uint8 ``(nq, nbytes)`` (or one query, ``(nbytes,)``); codes: uint8
    ``(n, nbytes)``, C-contiguous, may be a memmap. ``threads=0`` uses every core.
    ``allowed`` restricts the rows searched: a boolean mask of length n, or an int
    array of shape (r, 2) of sorted, non-overlapping [start, end) row ranges.

    Returns ``(distances int32[nq, k'], ids int64[nq, k'])`` with
    k' = min(k, eligible rows), each row sorted by (distance, id).
    Raises ValueError (InvalidCodes / InvalidArgument) on bad input.
    """
    return _knn(_ACTIVE, queries, codes, k, threads, allowed)


def _within(isa: int, query, codes, radius, threads, allowed):
    codes = _check_codes(codes)
    n, nbytes = codes.shape
    query = _check_queries(query, nbytes, "query")
    if query.shape[0] != 1:
        raise InvalidCodes(f"within takes one query, got {query.shape[0]}")
    radius = _check_int(radius, "radius", 0)
    threads = _check_int(threads, "threads", 0)
    kind, mask, ranges, eligible = _check_allowed(allowed, n)
    if eligible == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    out_d = ffi.new("int32_t **")
    out_i = ffi.new("int64_t **")
    count = ffi.new("size_t *")
    rc = lib.cvh_within(
        isa, _ptr("uint8_t *", query), _ptr("uint8_t *", codes), n, nbytes,
        min(radius, 8 * nbytes), threads, kind, _ptr("uint8_t *", mask),
        _ptr("int64_t *", ranges), 0 if ranges is None else ranges.shape[0], out_d, out_i, count,
    )  # fmt: skip
    try:
        _raise_for(rc, "within")
        m = count[0]
        dist = np.frombuffer(ffi.buffer(out_d[0], 4 * m), dtype=np.int32).copy() if m else None
        ids = np.frombuffer(ffi.buffer(out_i[0], 8 * m), dtype=np.int64).copy() if m else None
    finally:
        lib.cvh_free(out_d[0])
        lib.cvh_free(out_i[0])
    if not m:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    return dist, ids


def within(query, codes, radius, *, threads=0, allowed=None):
    """Every code row within ``radius`` bits (distance <= radius) of one query.

    query: uint8 ``(nbytes,)`` or ``(1, nbytes)``; codes and ``allowed`` as in
    :func:`knn`. Returns ``(distances int32[m], ids int64[m])`` sorted by
    (distance, id). Raises ValueError on bad input (radius < 0 included).
    """
    return _within(_ACTIVE, query, codes, radius, threads, allowed)


def _knn_with(isa: str, queries, codes, k, *, threads=0, allowed=None):
    """knn with a named kernel, for tests that compare kernels."""
    return _knn(_isa_id(isa), queries, codes, k, threads, allowed)


def _within_with(isa: str, query, codes, radius, *, threads=0, allowed=None):
    """within with a named kernel, for tests that compare kernels."""
    return _within(_isa_id(isa), query, codes, radius, threads, allowed)


def _distances_with(isa: str, query, codes) -> np.ndarray:
    """All distances from one query to every row with a named kernel (tests only)."""
    codes = _check_codes(codes)
    query = _check_queries(query, codes.shape[1], "query")[0]
    out = np.zeros(codes.shape[0], dtype=np.uint16)
    if codes.shape[0]:
        rc = lib.cvh_distances(
            _isa_id(isa), _ptr("uint8_t *", query), _ptr("uint8_t *", codes), codes.shape[0],
            codes.shape[1], _ptr("uint16_t *", out),
        )  # fmt: skip
        _raise_for(rc, "distances")
    return out


def _agrees_with_serial(isa: int) -> bool:
    """Run `isa` against the serial reference on small cases with ties, at every fast-path
    width and a few odd ones (well under a millisecond).

    Why at import: a kernel can only be tested where its CPU features exist, and the
    build machines lack some (AVX-512 was never run where this was written). So the
    first station whose CPU selects such a kernel checks it before trusting it.
    """
    serial = _ISA_IDS["serial"]
    for nbytes in (1, 3, 8, 9, 16, 32, 64, 100):
        # Fixed pseudo-random bytes: the top byte of a Fibonacci hash of the position
        # (numpy.random would add about 12 ms of imports to every cold `search`).
        n = np.arange(1, 300 * nbytes + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        codes = (n >> np.uint64(56)).astype(np.uint8).reshape(300, nbytes)
        codes[100:160] = codes[0]  # ties across block boundaries
        codes[200:210, 0] ^= 1  # near-duplicates
        queries = np.ascontiguousarray(codes[[0, 7, 205]])
        for threads in (1, 2):
            got = _knn(isa, queries, codes, 25, threads, None)
            want = _knn(serial, queries, codes, 25, 1, None)
            if not all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)):
                return False
        radius = 4 * nbytes
        got = _within(isa, queries[0], codes, radius, 1, None)
        want = _within(serial, queries[0], codes, radius, 1, None)
        if not all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)):
            return False
    return True


if not os.environ.get("CVAHASH_SIMD", "").strip() and not _agrees_with_serial(_ACTIVE):
    import logging

    _bad = active_isa()
    for _name in reversed(available_isas()):
        if _name != _bad and _agrees_with_serial(_ISA_IDS[_name]):
            _ACTIVE = _ISA_IDS[_name]
            break
    logging.getLogger(__name__).error(
        "the %s Hamming kernel disagrees with the serial reference on this CPU; using %s "
        "instead. Please report this with the output of `lscpu`.", _bad, active_isa())
