"""Query-weighted Hamming distance: re-ranking stored codes by how sure the query is.

A query's code is the signs of its logits (``cvahash.model.bundle.pack_codes``: bit i is
``logit_i > 0``, packed MSB-first). The logits say more than their signs: a bit whose
logit is near 0 is a coin flip, one with a large ``|logit|`` is sure. The weighted
distance of a stored code charges each bit where it disagrees with the query's sign
``|logit_i|`` instead of 1::

    weighted = sum over bits i where stored bit != (logit_i > 0) of |logit_i|

Equivalently ``sum_i |logit_i| - weighted`` is half of ``sum_i |logit_i| + sum_i logit_i *
s_i`` with ``s_i = +1/-1`` the stored bit: the inner product of the query's logits with the
stored signs, so ranking by weighted distance ascending is ranking by that product
descending. The stored side stays one bit per dimension; only the query is continuous.

Pure numpy. The distance is a sum of per-byte lookups: for each byte position a 256-entry
table holds the cost of every byte value, so ``m`` codes cost ``m * nbytes`` lookups.
Sums are float64 over the float32 weights, in a fixed order (byte 0 first), so the same
inputs always give the same distances; when every ``|logit|`` is equal each distance is
exactly that weight times the Hamming distance, and `rerank` gives the Hamming order.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from .codes import code_rows

__all__ = ["mismatch_tables", "rerank", "weighted_distances"]

# Bit b (MSB first, as numpy.packbits) of every byte value: bool (256, 8).
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)


def _check_logits(query_logits) -> np.ndarray:
    q = np.asarray(query_logits)
    if q.ndim == 2 and q.shape[0] == 1:
        q = q[0]
    if q.ndim != 1 or q.size == 0:
        raise InvalidArgument(f"query logits must be one query's logits, shape (bits,), got "
                              f"shape {q.shape}")
    if not np.issubdtype(q.dtype, np.floating):
        raise InvalidArgument(f"query logits must be floats, got dtype {q.dtype}")
    q = q.astype(np.float32)
    if not np.isfinite(q).all():
        raise InvalidArgument("query logits contain NaN or infinity")
    return q


def _check_codes(codes, nbytes: int) -> np.ndarray:
    return code_rows(codes, nbytes, "codes are {got} bytes wide but the query has "
                     f"{nbytes * 8 - 7}..{nbytes * 8} bits ({nbytes} bytes); both must come "
                     "from the same model (same bit count)")


def mismatch_tables(query_logits) -> np.ndarray:
    """float64 (nbytes, 256): entry [j, v] is the weighted distance contributed by byte j
    of a stored code holding value v (bits past the last are padding and cost 0)."""
    q = _check_logits(query_logits)
    nbytes = (q.size + 7) // 8
    padded = np.zeros(nbytes * 8, np.float32)
    padded[:q.size] = q
    weights = np.abs(padded).astype(np.float64).reshape(nbytes, 1, 8)
    signs = (padded > 0).reshape(nbytes, 1, 8)
    # The 8 bits of a byte are summed in a fixed order (as float64 of float32 weights).
    return np.where(_BYTE_BITS[None] != signs, weights, 0.0).sum(axis=2)


def weighted_distances(query_logits, codes) -> np.ndarray:
    """float64 (m,): the weighted distance from one query's logits (bits,) to each packed
    code row of ``codes`` uint8 (m, ceil(bits/8)) (MSB-first, as ``numpy.packbits``)."""
    tables = mismatch_tables(query_logits)
    codes = _check_codes(codes, tables.shape[0])
    if codes.shape[0] == 0:
        return np.zeros(0, np.float64)
    out = tables[0][codes[:, 0]]
    for j in range(1, tables.shape[0]):
        out += tables[j][codes[:, j]]
    return out


def rerank(query_logits, codes, distances) -> np.ndarray:
    """int64 (m,): the order of candidate rows by (weighted distance, Hamming distance,
    position). ``codes`` are the candidates' packed codes, ``distances`` their Hamming
    distances, both in the order a store returns them (nearest first, ties in the store's
    own order, by row for a code store), so ties in both distances keep that order."""
    weighted = weighted_distances(query_logits, codes)
    distances = np.asarray(distances)
    if distances.shape != weighted.shape:
        raise InvalidArgument(f"{weighted.shape[0]} candidate codes but "
                              f"{distances.reshape(-1).shape[0]} distances")
    return np.lexsort((np.arange(len(weighted)), distances, weighted)).astype(np.int64)
