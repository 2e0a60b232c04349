"""Precision@10 of a bundle on demo soundscapes it never saw, in both search orders.

    .venv/bin/python bench/soundscape_precision.py --bundle tests/data/demo-bundle \
        --out /tmp/scapes --seeds 11 12 13 14 15 16 [--minutes 30] [--background stream]

For each seed: the demo's field recording (`python -m cvahash.export.demo`'s step 2: the
demo's eight call types, 3 events per minute, ``--background``), indexed into its own
store with the bundle (step 3), then the demo's five queries in the phrasing held out of
the training captions (``--seen-queries``: the first, seen phrasing; ``--all-calls``: all
eight call types of the recording), each searched with
the station's order (Hamming candidates re-ranked by the query-weighted distance) and
with ``--hamming-only``'s plain Hamming order. A hit counts when the queried call sounds
for at least 0.5 s inside its window (the demo's rule); chance is the share of windows
that hold the call. Prints one row per seed and query and the means; writes
``OUT/precision.json``. Recordings and stores are reused when they exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--background", default="stream")
    ap.add_argument("--seen-queries", action="store_true",
                    help="query with each call's first seen phrasing instead of the held-out one")
    ap.add_argument("--all-calls", action="store_true",
                    help="query all eight call types in the recording, not the demo's five")
    ap.add_argument("--threads", type=int, default=1, help="indexing threads (default 1)")
    args = ap.parse_args(argv)

    from cvahash.cli import main as cli
    from cvahash.export.demo import DEMO_CALLS, window_labels
    from cvahash.export.synth.captions import queries_for
    from cvahash.export.synth.corpus import events_path
    from cvahash.library.library import Library
    from cvahash.query.search import search_text

    rows, t0 = [], time.monotonic()
    for seed in args.seeds:
        field = args.out / f"field-{seed}-{args.background}"
        recording = field / "20240612_050000.flac"
        if not events_path(recording).exists():
            field.mkdir(parents=True, exist_ok=True)
            if cli(["synth", "--soundscape", str(recording), "--minutes", str(args.minutes),
                    "--seed", str(seed), "--background", args.background,
                    "--events-per-minute", "3", "--call-types", ",".join(DEMO_CALLS),
                    "--force"]) != 0:
                return 1
        events = json.loads(events_path(recording).read_text())
        events = events["events"] if isinstance(events, dict) else events
        store_dir = args.out / f"store-{seed}-{args.background}"
        if cli(["index", str(field), "--db", str(store_dir), "--bundle", args.bundle,
                "--station", "demo-forest", "--threads", str(args.threads)]) not in (0, 3):
            return 1
        lib = Library.open(store_dir, args.bundle, graphs=("text",))
        _, windows = lib.store.read(range(len(lib.store)))
        for label in DEMO_CALLS if args.all_calls else DEMO_CALLS[:5]:
            query = queries_for(label, heldout=not args.seen_queries)[0]
            holding = sum(label in window_labels(events, w.offset_s, w.offset_s + w.length_s)
                          for w in windows)
            row = {"seed": seed, "label": label, "query": query,
                   "chance": holding / max(len(windows), 1)}
            for name, rerank in (("weighted", True), ("hamming", False)):
                hits = search_text(lib.store, lib.bundle, query, k=10, rerank=rerank).hits
                good = sum(label in window_labels(events, h.start_s, h.end_s) for h in hits)
                row[name] = good / max(len(hits), 1)
            rows.append(row)
            print(f"seed {seed:>3}  {label:<22} weighted {row['weighted']:.2f}  hamming "
                  f"{row['hamming']:.2f}  chance {row['chance']:.2f}  \"{query}\"", flush=True)
        lib.close()

    def mean(key, seed=None):
        vals = [r[key] for r in rows if seed is None or r["seed"] == seed]
        return sum(vals) / len(vals)

    print("\nseed   weighted  hamming  chance")
    for seed in args.seeds:
        print(f"{seed:>4}   {mean('weighted', seed):>8.2f} {mean('hamming', seed):>8.2f} "
              f"{mean('chance', seed):>7.2f}")
    summary = {k: round(mean(k), 4) for k in ("weighted", "hamming", "chance")}
    print(f"mean   {summary['weighted']:>8.2f} {summary['hamming']:>8.2f} "
          f"{summary['chance']:>7.2f}   ({len(rows)} queries, {time.monotonic() - t0:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(
        {"argv": sys.argv, "bundle": str(args.bundle), "summary": summary, "rows": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
