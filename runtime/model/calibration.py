"""How likely is a hit at Hamming distance d to be what was asked for? The bundle's curve.

``cvahash export`` pairs every held-out caption with every held-out clip, notes each pair's
Hamming distance and whether the two share a label, and fits two curves over d = 0..bits,
stored in manifest.json under ``calibration``:

    precision_at[d]      P(relevant | distance == d), isotonic (non-increasing in d)
    precision_within[d]  P(relevant | distance <= d), the precision of a watchlist radius d

``precision_at`` is the pool-adjacent-violators fit of the per-distance rates weighted by
their pair counts (so empty or thin distances borrow from their neighbours, and a larger
distance never looks more likely than a smaller one). ``precision_within`` is the
cumulative rate, made non-increasing the same way. Each pooled level is then the
posterior mean under a prior worth ``PRIOR_PAIRS`` pairs at the base rate,
``(hits + PRIOR_PAIRS * base) / (pairs + PRIOR_PAIRS)`` (and made non-increasing again):
five relevant pairs out of five read 0.74 at a base rate of 0.1, not a certain 1.00, while
a level backed by hundreds of pairs barely moves. Both are estimates from the export's
probe (its ``source``); on a station's own recordings the rates differ with how common
the asked-for sound is, the ordering holds.

A bundle without ``calibration`` (older exports) still works: ``Calibration.from_manifest``
returns None and callers show no estimate. Numpy only (runs on a station).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Labels for the search table's confidence column (estimated precision at the distance).
LIKELY, POSSIBLE = 0.5, 0.2
# Strength of the base-rate prior on each pooled level, in pairs.
PRIOR_PAIRS = 2.0


def isotonic_decreasing(values: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """Weighted least-squares non-increasing fit (pool adjacent violators). Entries with
    weight 0 take the level of the weighted entry before them (leading ones: the first
    weighted entry's); all NaN when no entry has weight."""
    y = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if y.shape != w.shape or y.ndim != 1:
        raise ValueError("isotonic_decreasing: values and weights must be 1-D, same length")
    idx = np.flatnonzero(w > 0)
    if idx.size == 0:
        return np.full(y.shape, np.nan)
    levels: list[float] = []
    wsum: list[float] = []
    counts: list[int] = []
    for yi, wi in zip(y[idx], w[idx], strict=True):
        levels.append(float(yi))
        wsum.append(float(wi))
        counts.append(1)
        while len(levels) > 1 and levels[-1] > levels[-2]:
            total = wsum[-2] + wsum[-1]
            levels[-2:] = [(levels[-2] * wsum[-2] + levels[-1] * wsum[-1]) / total]
            wsum[-2:] = [total]
            counts[-2:] = [counts[-2] + counts[-1]]
    fitted = np.repeat(np.asarray(levels), counts)
    out = np.empty(y.shape)
    # each position takes the fit of the last weighted entry at or before it
    pos = np.searchsorted(idx, np.arange(y.size), side="right") - 1
    out[:] = fitted[np.maximum(pos, 0)]
    return out


def fit_curves(distances: np.ndarray, relevant: np.ndarray, bits: int) -> dict:
    """The ``calibration`` fields for pairs with Hamming ``distances`` (int) and
    ``relevant`` (bool), flattened or not."""
    d = np.asarray(distances).ravel().astype(int)
    r = np.asarray(relevant).ravel().astype(bool)
    if d.size == 0 or d.size != r.size:
        raise ValueError("fit_curves: need as many relevance flags as distances (> 0)")
    if d.min() < 0 or d.max() > bits:
        raise ValueError(f"fit_curves: distances must lie in 0..{bits}")
    n = np.bincount(d, minlength=bits + 1).astype(float)
    hits = np.bincount(d, weights=r.astype(float), minlength=bits + 1)
    base = float(r.mean())
    rate = np.divide(hits, n, out=np.zeros_like(hits), where=n > 0)
    at = _shrunk(isotonic_decreasing(rate, n), n, base)
    cum_n, cum_hits = np.cumsum(n), np.cumsum(hits)
    within_raw = np.divide(cum_hits, cum_n, out=np.zeros_like(cum_hits), where=cum_n > 0)
    within = isotonic_decreasing(within_raw, cum_n)
    within = isotonic_decreasing((within * cum_n + PRIOR_PAIRS * base) / (cum_n + PRIOR_PAIRS),
                                 cum_n + PRIOR_PAIRS)
    return {"pairs": int(d.size), "relevant_pairs": int(r.sum()),
            "base_rate": round(float(r.mean()), 6),
            "precision_at": [round(float(x), 4) for x in at],
            "precision_within": [round(float(x), 4) for x in within]}


def _shrunk(fit: np.ndarray, n: np.ndarray, base: float) -> np.ndarray:
    """Each level of an isotonic ``fit`` (a run of equal values; its pairs are the sum of
    ``n`` over the run) as its posterior mean under the base-rate prior, non-increasing."""
    starts = np.flatnonzero(np.r_[True, np.diff(fit) != 0])
    pairs = np.add.reduceat(n, starts)
    level = (fit[starts] * pairs + PRIOR_PAIRS * base) / (pairs + PRIOR_PAIRS)
    level = isotonic_decreasing(level, pairs + PRIOR_PAIRS)
    return np.repeat(level, np.diff(np.r_[starts, fit.size]))


@dataclass(frozen=True)
class Calibration:
    bits: int
    precision_at: tuple[float, ...]
    precision_within: tuple[float, ...]
    base_rate: float
    source: str = ""

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> Calibration | None:
        """The bundle's curve, or None when it has none (or an unusable one)."""
        cal = manifest.get("calibration")
        bits = manifest.get("bits")
        if not isinstance(cal, Mapping) or not isinstance(bits, int):
            return None
        at, within = cal.get("precision_at"), cal.get("precision_within")
        ok = all(isinstance(c, list) and len(c) == bits + 1
                 and all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in c)
                 for c in (at, within))
        if not ok:
            return None
        return cls(bits, tuple(float(x) for x in at), tuple(float(x) for x in within),
                   float(cal.get("base_rate", 0.0)), str(cal.get("source", "")))

    def precision(self, distance: int) -> float:
        """Estimated P(relevant) of a hit at ``distance``."""
        return self.precision_at[min(max(int(distance), 0), self.bits)]

    def label(self, distance: int) -> str:
        """likely (>= 0.5) / possible (>= 0.2) / unlikely."""
        p = self.precision(distance)
        return "likely" if p >= LIKELY else "possible" if p >= POSSIBLE else "unlikely"

    def radius_for(self, precision: float) -> int | None:
        """The largest radius whose hits are estimated to be relevant with at least
        ``precision`` (``precision_within``); None when even distance 0 falls short."""
        ok = [d for d, p in enumerate(self.precision_within) if p >= precision]
        return max(ok) if ok else None
