"""`cvahash activity "TEXT" --db DIR --by hour|day [--radius R | --top K]`: hits over time.

Counts the windows that match TEXT per hour or per day and station, and prints a table
(bucket start, station, count), or ``--json``; ``--csv F`` and ``--png F`` write the
counts and a bar chart. The threshold is the K nearest windows (``--top``, default 100)
or every window within R bits (``--radius``). The station web page shows the same
counts (cvahash.query.activity).

Exit codes: 0 ok (also when nothing matched), 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_time_range, check_threads, time_range

EPILOG = """\
examples:
  cvahash activity "woodpecker drumming" --db /data/store --by day --top 200
  cvahash activity "owl hooting" --db /data/store --by hour --radius 12 --png owl.png
  cvahash activity "frog chorus" --db /data/store --station pond-1 --csv frogs.csv
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "activity", help="count the hits of TEXT per hour or day (table, CSV, chart)",
        description="How often a sound was heard over time: the hits of a text search "
                    "counted per hour or per day and per station.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", metavar="TEXT", help="what you want to hear, in words")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder")
    p.add_argument("--bundle", metavar="DIR",
                   help="model bundle folder (default: the one the store was made with)")
    p.add_argument("--by", choices=("hour", "day"), default="hour",
                   help="bucket size (default hour)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--top", type=int, metavar="K",
                   help="count the K nearest windows (default 100)")
    g.add_argument("--radius", type=int, metavar="R",
                   help="count every window within R bits of the query")
    add_time_range(p)
    p.add_argument("--station", metavar="NAME", help="only windows from this station")
    p.add_argument("--csv", metavar="FILE", help="write the counts as CSV to FILE")
    p.add_argument("--png", metavar="FILE", help="write a bar chart to FILE (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime and search threads (default 0: one per core)")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    import json

    parser = args._parser
    if args.top is not None and args.top < 1:
        parser.error(f"--top {args.top}: must be at least 1")
    if args.radius is not None and args.radius < 0:
        parser.error(f"--radius {args.radius}: must be 0 or more")
    check_threads(args)

    from ..library.library import Library
    from ..query.activity import count_activity
    from ..query.search import prepare_query

    prepare_query(args.text)
    filters = {**time_range(args), "station": args.station}
    with Library.open(args.db, args.bundle, mode="r", threads=args.threads,
                      graphs=("text",)) as lib:
        act = count_activity(lib.store, lib.bundle, args.text, by=args.by, top=args.top,
                             radius=args.radius, threads=args.threads, **filters)
    for note in act.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(act.to_dict(), indent=2, ensure_ascii=False))
    elif act.total:
        print(f"{act.total} hits ({act.threshold_text()}) per {act.by}:")
        width = max(len(s) for s in act.stations)
        for entry in act.series():
            for station, n in entry["stations"].items():
                if n:
                    print(f"{entry['start']}  {station:<{width}}  {n:>6}")
    else:
        print("no windows match (the store is empty or the filters exclude everything)",
              file=sys.stderr)
    if args.csv:
        from pathlib import Path

        Path(args.csv).write_text(act.to_csv(), encoding="utf-8")
        print(f"wrote the counts to {args.csv}", file=sys.stderr)
    if args.png:
        act.write_png(args.png)
        print(f"wrote the chart to {args.png}", file=sys.stderr)
    return 0
