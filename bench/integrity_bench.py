"""What the store's checksums cost: search latency, open + first search, append rate.

    .venv/bin/python bench/integrity_bench.py [--rows 2000000] [--bits 64]

Builds a store of ``--rows`` windows (one-hour recordings of 720 windows, appended
50,000 at a time), then measures, as medians over ``--repeats``:

- ``search``: one query, k=10, on an open store (steady state: every row verified);
- ``open+search``: open read-only and run the first search (this is where a process
  verifies the CRC32s of every code row against the journal, once);
- ``append``: windows per second while building.

Run it once with this tree and once with an older one (``PYTHONPATH=<old runtime
copy>``) to compare; docs/benchmarks/integrity.md has the figures and the machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# The store benchmark's layout: one-hour recordings of 720 windows on a 5 s hop.
from store_bench import segments  # bench/ is on sys.path when run as a script

from cvahash.store.code_store import CodeStore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    nbytes = args.bits // 8
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="integrity-bench-"))
    try:
        path = tmp / "store"
        t = time.perf_counter()
        with CodeStore.create(path, args.bits, "bench") as s:
            for first in range(0, args.rows, 50_000):
                n = min(50_000, args.rows - first)
                s.append(rng.integers(0, 256, (n, nbytes), np.uint8), segments(first, n))
        append_rate = args.rows / (time.perf_counter() - t)
        q = rng.integers(0, 256, (1, nbytes), np.uint8)
        with CodeStore.open(path) as s:
            s.search(q, 10, threads=1)
            warm = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                s.search(q, 10, threads=1)
                warm.append(time.perf_counter() - t)
        cold = []
        for _ in range(max(5, args.repeats // 3)):
            t = time.perf_counter()
            with CodeStore.open(path) as s:
                s.search(q, 10, threads=1)
            cold.append(time.perf_counter() - t)
        sizes = {p.name: p.stat().st_size for p in path.iterdir()}
        print(f"rows {args.rows}, {args.bits} bits: search {statistics.median(warm) * 1e3:.2f} ms"
              f", open+search {statistics.median(cold) * 1e3:.2f} ms, append "
              f"{append_rate:,.0f} windows/s, files {sizes}")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
