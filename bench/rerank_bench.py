"""What re-ranking a text search by the query-weighted distance costs (docs/search.md).

Builds a store of ``--rows`` random codes of the demo bundle's width (64 bits) and times
`search_text` with and without ``rerank`` (the query's logits memoised after the first
call, so both time the store search, the candidates' codes and metadata, and the
re-rank), interleaved, ``--runs`` times each, plus the re-rank alone on 200 codes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rerank_bench.py --out /tmp/rerank --rows 1000000

Prints medians and ranges in milliseconds and the CPU model.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from cvahash.kernel.hamming import active_isa
from cvahash.kernel.weighted import rerank
from cvahash.model.bundle import ModelBundle
from cvahash.query.search import RERANK_DEPTH, search_text, text_query_logits
from cvahash.store.code_store import CodeStore
from cvahash.store.records import Recording, Segment

DEMO = Path(__file__).resolve().parent.parent / "tests" / "data" / "demo-bundle"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def build(directory: Path, bundle: ModelBundle, rows: int) -> CodeStore:
    if (directory / "codes").exists() or any(directory.glob("*")):
        return CodeStore.open(directory, "r")
    rng = np.random.default_rng(0)
    store = CodeStore.create(directory, bundle.bits, bundle.fingerprint)
    per = 10_000
    for i in range(0, rows, per):
        n = min(per, rows - i)
        rec = Recording(path=f"/data/rec{i // per}.wav", station="ridge-2",
                        start_utc=1.7e9 + i * 5.0, sample_rate=48000, duration_s=n * 5.0,
                        content_hash=f"h{i}")
        store.append(rng.integers(0, 256, (n, bundle.nbytes), np.uint8),
                     Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                             capture_start_utc=1.7e9 + i * 5.0, hop_s=5.0, n_rows=n,
                             clock_source="gps"))
    store.flush()
    store.close()
    return CodeStore.open(directory, "r")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the store (reused if present)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=31)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    bundle = ModelBundle.open(DEMO, threads=1)
    store = build(Path(args.out) / f"store{args.rows}", bundle, args.rows)
    query = "an owl hooting at night"
    _, logits, _, _ = text_query_logits(bundle, query)  # memoised from here on
    times: dict[str, list[float]] = {"hamming": [], "weighted": []}
    for _ in range(3):
        for on in (False, True):
            search_text(store, bundle, query, args.k, threads=args.threads, rerank=on)
    for _ in range(args.runs):
        for name, on in (("hamming", False), ("weighted", True)):
            t = time.perf_counter()
            search_text(store, bundle, query, args.k, threads=args.threads, rerank=on)
            times[name].append(1e3 * (time.perf_counter() - t))
    dist, rows = store.search_rows(np.packbits(logits > 0, axis=1), RERANK_DEPTH, threads=1)
    codes = np.array(store.codes[rows[0]])
    alone = []
    for _ in range(args.runs):
        t = time.perf_counter()
        rerank(logits[0], codes, dist[0])
        alone.append(1e3 * (time.perf_counter() - t))
    times["re-rank alone (200 codes)"] = alone
    print(f"{len(store)} windows of {bundle.bits}-bit codes, k={args.k}, depth {RERANK_DEPTH}, "
          f"search threads {args.threads}, kernel {active_isa()}, CPU {cpu_model()}")
    for name, ts in times.items():
        print(f"  {name:<28} median {statistics.median(ts):8.3f} ms  "
              f"(min {min(ts):.3f}, max {max(ts):.3f}, {len(ts)} runs)")
    store.close()
    bundle.close()


if __name__ == "__main__":
    main()
