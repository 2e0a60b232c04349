"""`cvahash search "TEXT" --db DIR` (or `--like FILE[@START_S]`): find windows by sound.

Text results are the Hamming-nearest windows re-ranked by the query-weighted distance
(`cvahash.query.search`; ``--hamming-only`` keeps the plain Hamming order). Prints a
table of the k best windows (rank, Hamming distance, recording, start-end,
capture time UTC, station; for text queries with a bundle that carries a calibration
curve, a confidence column: likely / possible / unlikely and the estimated precision at
that distance), or one JSON document with ``--json``; ``--clips OUT`` writes
WAV snippets of the hits cut from the original recordings and ``--spectrograms OUT``
a PNG per hit. Notes (a truncated query, a recording that is gone) go to stderr.

Exit codes: 0 ok (also when nothing matched the filters), 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_time_range, check_threads, time_range

EPILOG = """\
examples:
  cvahash search "woodpecker drumming on dead tree" --db /data/store
  cvahash search "owl hooting" --db /data/store -k 5 --since 2024-06-01 --station ridge-2
  cvahash search --like calls/wren.wav@12.5 --db /data/store --clips /tmp/wren-hits
  cvahash search "frog chorus" --db /data/store --json | jq '.hits[0]'

the bundle: --bundle DIR, else the bundle the store was indexed with, else $CVAHASH_BUNDLE.
times are UTC unless they carry a zone; --until with a bare date includes that whole day.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="find windows that sound like TEXT (or like a recorded example)",
        description="Search a code store by typed text, or by example with --like.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", metavar="TEXT", help="what you want to hear, in words")
    p.add_argument("--like", metavar="FILE[@START_S]",
                   help="query by example: the 10 s of FILE from START_S (seconds or mm:ss, "
                        "default 0)")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder")
    p.add_argument("--bundle", metavar="DIR", help="model bundle folder (see below)")
    p.add_argument("-k", type=int, default=20, metavar="N", help="number of results (default 20)")
    add_time_range(p)
    p.add_argument("--station", metavar="NAME", help="only windows from this station")
    p.add_argument("--hamming-only", action="store_true",
                   help="rank text results by Hamming distance alone (default: the 200 "
                        "Hamming-nearest windows re-ranked by the query-weighted distance)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--clips", metavar="OUT", help="write a WAV snippet per hit into folder OUT")
    p.add_argument("--context", type=float, default=1.0, metavar="SECONDS",
                   help="seconds of audio kept either side of a hit in --clips (default 1)")
    p.add_argument("--spectrograms", metavar="OUT", help="write a spectrogram PNG per hit into OUT")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime and search threads (default 0: one per core)")
    # quick_exit: everything is closed when run returns; the CLI skips the teardown.
    p.set_defaults(func=run, _parser=p, quick_exit=True)


def run(args: argparse.Namespace) -> int:
    parser = args._parser
    if (args.text is None) == (args.like is None):
        parser.error("give either TEXT or --like FILE[@START_S] (exactly one)")
    if args.k < 1:
        parser.error(f"-k {args.k}: the number of results must be at least 1")
    check_threads(args)
    if not 0 <= args.context <= 60:
        parser.error(f"--context {args.context}: must be between 0 and 60 seconds")

    # One query per process. numpy starts a BLAS thread per core when it loads, which a
    # search does not use (a --like query's one window is a small product): about 40
    # CPU-ms and more wall time on a busy station (docs/benchmarks/runtime.md, run 8).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Lazy: the query layer loads numpy and onnxruntime; `cvahash --help` stays fast.
    from ..library.library import Library
    from ..query import report
    from ..query.search import parse_like, prepare_query, search_like, search_text

    # Check what the user typed before loading anything: bad input changes nothing.
    if args.spectrograms:
        from ..query.plots import require

        require()  # names the install command before any searching
    if args.text is not None:
        prepare_query(args.text)
    else:
        like_path, like_start = parse_like(args.like)
    filters = {**time_range(args), "station": args.station}

    # Only the graph this search runs is hashed (and not at all when unchanged since).
    graphs = ("text",) if args.text is not None else ("audio",)
    with Library.open(args.db, args.bundle, mode="r", threads=args.threads,
                      graphs=graphs) as lib:
        store, bundle = lib.store, lib.bundle
        bundle.one_shot_text = True  # one query: weights used as mapped, not packed first
        stats = None  # the store's summary, read only when a message needs it
        if args.station is not None:
            stats = store.stats()
            check_station(args.station, stats["stations"], args.db)
        if args.text is not None:
            result = search_text(store, bundle, args.text, args.k, threads=args.threads,
                                 rerank=not args.hamming_only, **filters)
        else:
            result = search_like(store, bundle, like_path, like_start, args.k,
                                 threads=args.threads, **filters)
        if not result.hits and stats is None:
            stats = store.stats()

    if not report.print_result(result, bundle.manifest, as_json=args.json):
        print(why_nothing(args, stats), file=sys.stderr)
    origins = None
    if args.clips or args.spectrograms:
        from ..update.apply import update_origins

        origins = update_origins(args.db)
    if args.clips:
        saved = report.write_clips(result.hits, args.clips, context_s=args.context,
                                   origins=origins)
        for line in report.saved_summary("WAV snippets", saved, args.clips):
            print(line, file=sys.stderr)
    if args.spectrograms:
        saved = report.write_spectrograms(result.hits, args.spectrograms, bundle.frontend_params,
                                          origins=origins,
                                          query=args.text if args.text is not None
                                          else f"like {args.like}")
        for line in report.saved_summary("spectrograms", saved, args.spectrograms):
            print(line, file=sys.stderr)
    return 0


def _when(seconds) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def check_station(name: str, stations: dict, db) -> None:
    """Refuse a --station the store has no window of, naming the ones it has."""
    import difflib

    from ..errors import InvalidArgument

    if name in stations:
        return
    named = [s for s in stations if s]
    if not named:
        raise InvalidArgument(f"--station {name!r}: the store {db} records no station names "
                              "(index with --station NAME to set them); leave --station out")
    close = difflib.get_close_matches(name, named, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(f"{s} ({n} windows)" for s, n in sorted(stations.items()) if s)
    raise InvalidArgument(f"--station {name!r}: no such station in {db}{hint}; it has: "
                          f"{listed}")


def why_nothing(args, stats: dict) -> str:
    """Why a search found nothing: an empty store, or filters that exclude it all."""
    if not stats["rows"]:
        return (f"no windows: the code store {args.db} is empty (nothing indexed or committed "
                "yet; a running daemon commits every [store] commit_interval_s)")
    span = (f"{_when(stats['first_capture_utc'])} .. {_when(stats['last_capture_end_utc'])}"
            if stats["first_capture_utc"] is not None else "unknown")
    used = " ".join(f"--{k} {v}" for k, v in (("since", args.since), ("until", args.until),
                                                ("station", args.station)) if v)
    return (f"no windows match {used}: the store holds {stats['rows']} windows captured "
            f"{span} (UTC); widen or drop the filters")
