"""Independent numpy references the tests compare cvahash against."""

from __future__ import annotations

import numpy as np


def hamming_matrix(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances, int64[nq, n], by unpackbits (no shared code)."""
    q = np.unpackbits(np.ascontiguousarray(queries, dtype=np.uint8), axis=1)
    c = np.unpackbits(np.ascontiguousarray(codes, dtype=np.uint8), axis=1)
    if c.shape[0] == 0:
        return np.zeros((q.shape[0], 0), dtype=np.int64)
    return (q[:, None, :] != c[None, :, :]).sum(axis=2, dtype=np.int64)


def knn_reference(queries, codes, k, allowed=None):
    """Exact k nearest rows sorted by (distance, id); k' = min(k, eligible rows).

    ``allowed`` is None, a boolean mask of len(codes), or an int array of row ids.
    """
    d = hamming_matrix(queries, codes)
    n = d.shape[1]
    if allowed is None:
        rows = np.arange(n)
    else:
        allowed = np.asarray(allowed)
        rows = np.flatnonzero(allowed) if allowed.dtype == bool else np.unique(allowed)
    kk = min(k, rows.size)
    out_d = np.zeros((d.shape[0], kk), dtype=np.int32)
    out_i = np.zeros((d.shape[0], kk), dtype=np.int64)
    for qi in range(d.shape[0]):
        dq = d[qi, rows]
        order = np.lexsort((rows, dq))[:kk]
        out_d[qi] = dq[order]
        out_i[qi] = rows[order]
    return out_d, out_i
