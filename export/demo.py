"""`make demo` (for now): exact Hamming search over 1M random 64-bit codes.

Times cvahash.hamming.knn against the numpy way (unpackbits of the XOR, argsort) on a
few queries, checks both return the same distances, and prints the hits. This is a
placeholder: the full end-to-end demo (train, export, index audio, search by text)
replaces it. Runs in a few seconds with numpy and the C kernel only.
"""

from __future__ import annotations

import time

import numpy as np
from cvahash import hamming

N_CODES = 1_000_000
BITS = 64
N_QUERIES = 4
K = 5


def numpy_knn(query: np.ndarray, codes: np.ndarray, k: int):
    """The straightforward numpy search: unpack the XOR, count bits, sort."""
    dist = np.unpackbits(np.bitwise_xor(codes, query), axis=1).sum(axis=1)
    ids = np.lexsort((np.arange(len(dist)), dist))[:k]
    return dist[ids], ids


def main() -> int:
    rng = np.random.default_rng(2026)
    codes = np.frombuffer(rng.bytes(N_CODES * BITS // 8), dtype=np.uint8).reshape(N_CODES, -1)
    queries = np.frombuffer(rng.bytes(N_QUERIES * BITS // 8), dtype=np.uint8).reshape(N_QUERIES, -1)
    # Plant a near-duplicate of each query (3 bits flipped) so every search has a clear hit.
    codes = codes.copy()
    planted = rng.choice(N_CODES, size=N_QUERIES, replace=False)
    for qi, row in enumerate(planted):
        bits = np.unpackbits(queries[qi])
        bits[rng.choice(BITS, size=3, replace=False)] ^= 1
        codes[row] = np.packbits(bits)

    print(f"cvahash demo: exact Hamming search, {N_CODES:,} random {BITS}-bit codes, "
          f"kernel {hamming.active_isa()}")
    hamming.knn(queries[:1], codes, K)  # warm-up (page faults, kernel selection)
    total_c = total_n = 0.0
    ok = True
    for qi in range(N_QUERIES):
        t0 = time.perf_counter()
        dist, ids = hamming.knn(queries[qi], codes, K)
        t1 = time.perf_counter()
        nd, nids = numpy_knn(queries[qi], codes, K)
        t2 = time.perf_counter()
        total_c += t1 - t0
        total_n += t2 - t1
        same = np.array_equal(dist[0], nd) and np.array_equal(ids[0], nids)
        ok &= same
        hits = ", ".join(f"#{i} (d={d})" for d, i in zip(dist[0], ids[0]))
        print(f"  query {qi}: {hits}  [planted #{planted[qi]}]  "
              f"cvahash {1e3 * (t1 - t0):.2f} ms, numpy {1e3 * (t2 - t1):.1f} ms, "
              f"{'same' if same else 'DIFFERENT'}")
    print(f"total: cvahash {1e3 * total_c:.2f} ms, numpy {1e3 * total_n:.1f} ms "
          f"({total_n / max(total_c, 1e-9):.0f}x faster); results {'identical' if ok else 'DIFFER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
