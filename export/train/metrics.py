"""Retrieval metrics in pure numpy: rankings, mAP@K, P@K.

Definitions (for one query with ranked results r_1, r_2, ... and R relevant items in the
whole database):

- ``P@K = (number of relevant among r_1..r_K) / K``.
- ``AP@K = (1 / min(K, R)) * sum_{i <= K, r_i relevant} P@i``: the average of the precision
  at each relevant hit within the top K, divided by the most hits the top K could hold.
  AP@K is 1 exactly when the top min(K, R) results are all relevant.
- ``mAP@K`` is the mean of AP@K over queries with R > 0; queries with no relevant item in
  the database are left out of both metrics (they carry no information about ranking).

Ranking ties: Hamming distances tie often; ties are broken by database id (ascending,
stable sort), the same order the runtime's kernel returns, so results are reproducible.
Cosine rankings use the same stable rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distances (nq, nd) between {0,1} or {-1,+1} or boolean code matrices."""
    q = np.asarray(query_codes) > 0
    d = np.asarray(db_codes) > 0
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bits, database codes {d.shape[1]}")
    qi, di = q.astype(np.int32), d.astype(np.int32)
    # |a xor b| = |a| + |b| - 2 a.b
    return qi.sum(1)[:, None] + di.sum(1)[None, :] - 2 * (qi @ di.T)


def cosine_similarities(queries: np.ndarray, db: np.ndarray) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float64)
    d = np.asarray(db, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return q @ d.T


def rank_by_distance(distances: np.ndarray) -> np.ndarray:
    """Database ids per query, nearest first; ties by id (stable sort)."""
    return np.argsort(distances, axis=1, kind="stable")


def rank_by_similarity(similarities: np.ndarray) -> np.ndarray:
    """Database ids per query, most similar first; ties by id."""
    return np.argsort(-similarities, axis=1, kind="stable")


def rerank(candidates: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Two-stage ranking: reorder each query's ``candidates`` (nq, C) by ``similarities``
    (nq, nd), most similar first (ties keep the candidate order)."""
    cand_sim = np.take_along_axis(similarities, candidates, axis=1)
    order = np.argsort(-cand_sim, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def relevance_matrix(query_labels, db_labels) -> np.ndarray:
    """Boolean (nq, nd): query i and item j share at least one label."""
    db_sets = [set(x) for x in db_labels]
    return np.array([[bool(set(q) & d) for d in db_sets] for q in query_labels], dtype=bool)


def _ranked_relevance(ranking: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    return np.take_along_axis(relevant, ranking[:, :k], axis=1)


def average_precision_at_k(ranking: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@K per query (nq,), NaN for queries with no relevant item. See module docstring."""
    hits = _ranked_relevance(ranking, relevant, k).astype(np.float64)
    kk = hits.shape[1]
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, kk + 1)
    n_rel = relevant.sum(axis=1)
    denom = np.minimum(k, n_rel).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_i * hits).sum(axis=1) / denom
    ap[n_rel == 0] = np.nan
    return ap


def precision_at_k(ranking: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """P@K per query (nq,), NaN for queries with no relevant item."""
    hits = _ranked_relevance(ranking, relevant, k)
    p = hits.sum(axis=1) / float(k)
    p = p.astype(np.float64)
    p[relevant.sum(axis=1) == 0] = np.nan
    return p


def retrieval_scores(ranking: np.ndarray, relevant: np.ndarray,
                     ks=(1, 5, 10, 20)) -> dict[str, float]:
    """{"mAP@K": ..., "P@K": ...} means over queries with at least one relevant item."""
    out = {}
    for k in ks:
        out[f"mAP@{k}"] = float(np.nanmean(average_precision_at_k(ranking, relevant, k)))
        out[f"P@{k}"] = float(np.nanmean(precision_at_k(ranking, relevant, k)))
    return out


# ---------------------------------------------------------------- mAP change, with an interval

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass
class MapChange:
    """mAP of a reference and a candidate on the same queries, and the relative change
    (candidate - reference) / reference with a paired bootstrap interval over queries."""

    reference: float
    candidate: float
    change: float          # relative; > 0 means the candidate is better
    low: float             # interval bounds of ``change``
    high: float
    queries: int
    confidence: float = CONFIDENCE
    resamples: int = BOOTSTRAP_RESAMPLES


def map_change_interval(ap_reference: np.ndarray, ap_candidate: np.ndarray, *,
                        resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = 0) -> MapChange | None:
    """Paired percentile bootstrap of the relative mAP change over the queries both sides
    scored (NaN = no relevant clip, dropped). None when the reference mAP is 0 or no query
    is left (a relative change is undefined)."""
    ref = np.asarray(ap_reference, dtype=float)
    new = np.asarray(ap_candidate, dtype=float)
    keep = np.isfinite(ref) & np.isfinite(new)
    ref, new = ref[keep], new[keep]
    n = ref.size
    if n == 0 or ref.mean() <= 0:
        return None
    change = (new.mean() - ref.mean()) / ref.mean()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    ref_means, new_means = ref[idx].mean(axis=1), new[idx].mean(axis=1)
    ok = ref_means > 0
    ratios = (new_means[ok] - ref_means[ok]) / ref_means[ok]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha]) if ratios.size else (change, change)
    return MapChange(float(ref.mean()), float(new.mean()), float(change), float(low),
                     float(high), n, confidence, resamples)
