"""`cvahash archive ingest|search|activity|info`: every station's codes in one archive.

  cvahash archive ingest /media/sd/*.cvaup --archive /data/archive --trust lab.pub
  cvahash archive search "owl hooting" --archive /data/archive --bundle B --since 2025-03-01
  cvahash archive activity "owl hooting" --archive /data/archive --bundle B --by day \\
      --radius 12 --png owls.png --csv owls.csv
  cvahash archive info --archive clickhouse://office@db.lan:8123/cvahash

The archive is a folder (embedded ClickHouse, chDB) or a ClickHouse server or cluster
(``clickhouse://user@host:port/db``, password from $CVAHASH_ARCHIVE_PASSWORD or a 0600
file named by $CVAHASH_ARCHIVE_PASSWORD_FILE). Needs the ``archive`` extra. See
docs/archive.md. Exit codes: 0 ok, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .options import add_time_range, check_threads, time_range

ARCHIVE_ENV = "CVAHASH_ARCHIVE"

EPILOG = """\
--archive: a folder (embedded chDB) or clickhouse://user@host:port/db (a server; the
password comes from $CVAHASH_ARCHIVE_PASSWORD or from the 0600 file named by
$CVAHASH_ARCHIVE_PASSWORD_FILE, never from the command line). Default: $CVAHASH_ARCHIVE.
Times are UTC unless they carry a zone; --until with a bare date includes that whole day.
"""


def _common(p, bundle: bool = False) -> None:
    p.add_argument("--archive", metavar="TARGET", default=os.environ.get(ARCHIVE_ENV),
                   help="archive folder or clickhouse://user@host:port/db "
                        f"(default ${ARCHIVE_ENV})")
    if bundle:
        p.add_argument("text", nargs="?", metavar="TEXT", help="what you want to hear, in words")
        p.add_argument("--like", metavar="FILE[@START_S]",
                       help="query by example: the 10 s of FILE from START_S")
        p.add_argument("--bundle", metavar="DIR", default=os.environ.get("CVAHASH_BUNDLE"),
                       help="model bundle the stations indexed with (default $CVAHASH_BUNDLE)")
        p.add_argument("--station", action="append", metavar="NAME",
                       help="only windows from this station; repeatable")
        add_time_range(p)
        p.add_argument("--threads", type=int, default=0, metavar="N",
                       help="ONNX Runtime and ClickHouse threads for the query (default 0: "
                            "one per core)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "archive", help="the network archive: ingest updates, search and chart all stations",
        description="Every station's codes in one ClickHouse archive (chDB in a folder, or a "
                    "server): ingest signed updates, search them together, count activity.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="archive_command", metavar="ACTION", required=True)

    p = sub.add_parser("ingest", help="verify signed update files and add them to the archive",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE.cvaup")
    _common(p)
    p.add_argument("--trust", required=True, action="append", metavar="KEY.pub",
                   help="public key of a signer to accept; repeatable")
    p.add_argument("--new-bundle", action="store_true",
                   help="accept updates of a bundle the archive does not hold yet (its codes "
                        "get a table of their own)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_ingest, _parser=p)

    p = sub.add_parser("search", help="find windows of every station that sound like TEXT",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, bundle=True)
    p.add_argument("-k", type=int, default=20, metavar="N", help="number of results (default 20)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (as cvahash search --json)")
    p.add_argument("--hamming-only", action="store_true",
                   help="rank text results by Hamming distance alone (default: re-ranked by "
                        "the query-weighted distance, as cvahash search)")
    p.set_defaults(func=run_search, _parser=p)

    p = sub.add_parser("activity", help="count windows near TEXT per station and day or hour",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, bundle=True)
    p.add_argument("--by", choices=("day", "hour"), default="day", help="time bucket")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--radius", type=int, metavar="R",
                     help="count windows within R bits of the query")
    how.add_argument("--top", type=int, metavar="K", help="count the K nearest windows")
    p.add_argument("--csv", metavar="FILE", help="write station,bucket,count rows (- for stdout)")
    p.add_argument("--png", metavar="FILE", help="draw a chart (needs the plots extra)")
    p.set_defaults(func=run_activity, _parser=p)

    p = sub.add_parser("info", help="stations, windows, time span, bundles, ingest history",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run_info, _parser=p)


def _target(args) -> str:
    if not args.archive:
        args._parser.error(f"give --archive FOLDER or clickhouse://user@host:port/db (or set "
                           f"${ARCHIVE_ENV})")
    return args.archive


def run_ingest(args) -> int:
    from ..archive.archive import Archive

    target = _target(args)
    with Archive.open(target) as archive:
        results = archive.ingest(args.files, args.trust, new_bundle=args.new_bundle)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2, ensure_ascii=False))
        return 0
    for r in results:
        if r.already_ingested:
            print(f"{r.file}: update {r.update_id} was already ingested; nothing changed")
        else:
            dup = r.rows_in_file - r.rows_added
            print(f"{r.file}: {r.rows_added} windows added from {', '.join(r.stations)}"
                  + (f" ({dup} already in the archive)" if dup else "")
                  + f", bundle {r.fingerprint} ({r.bits} bits), update {r.update_id}")
    return 0


def _query(args):
    """Check the query arguments before anything is opened; returns the filters."""
    parser = args._parser
    from ..query.search import parse_like, prepare_query

    if (args.text is None) == (args.like is None):
        parser.error("give either TEXT or --like FILE[@START_S] (exactly one)")
    check_threads(args)
    if args.text is not None:
        prepare_query(args.text)
        args._like = None
    else:
        args._like = parse_like(args.like)
    if not args.bundle:
        parser.error("give --bundle DIR (the bundle the stations indexed with) or set "
                     "$CVAHASH_BUNDLE")
    filters = {**time_range(args), "station": args.station}
    return filters


def _open(args):
    from ..archive.archive import Archive
    from ..model.bundle import ModelBundle

    bundle = ModelBundle.open(args.bundle, threads=args.threads)
    archive = Archive.open(_target(args), create=False)
    try:
        view = archive.view(bundle.fingerprint, bundle.bits)
    except BaseException:
        archive.close()
        raise
    return archive, view, bundle


def run_search(args) -> int:
    if args.k < 1:
        args._parser.error(f"-k {args.k}: the number of results must be at least 1")
    _target(args)
    filters = _query(args)
    # lazy: the query layer loads numpy and onnxruntime; `cvahash --help` stays fast
    from ..query import report
    from ..query.search import search_like, search_text

    archive, view, bundle = _open(args)
    with archive:
        if args.text is not None:
            result = search_text(view, bundle, args.text, args.k, threads=args.threads,
                                 rerank=not args.hamming_only, **filters)
        else:
            result = search_like(view, bundle, *args._like, args.k, threads=args.threads,
                                 **filters)
    if not report.print_result(result, bundle.manifest, as_json=args.json):  # as `search`
        print("no windows match (the archive holds none of this bundle, or the filters "
              "exclude everything)", file=sys.stderr)
    return 0


def run_activity(args) -> int:
    _target(args)
    filters = _query(args)
    if args.radius is not None and args.radius < 0:
        args._parser.error(f"--radius {args.radius}: must be 0 or more bits")
    if args.top is not None and args.top < 1:
        args._parser.error(f"--top {args.top}: must be at least 1")
    from ..archive.activity import format_table, write_csv, write_png
    from ..query.search import like_query_code, text_query_code

    archive, view, bundle = _open(args)
    with archive:
        if args.text is not None:
            query, code, _, notes = text_query_code(bundle, args.text)
        else:
            path, start = args._like
            query, code, notes = f"{path}@{start:g}", like_query_code(bundle, path, start), []
        counts = view.activity(code[0], by=args.by, radius=args.radius, top=args.top,
                               **filters)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    how = f"within {args.radius} bits" if args.radius is not None else f"top {args.top}"
    title = f'"{query}": windows {how}, per station and {args.by}'
    if args.csv:
        write_csv(counts, args.csv, args.by)
    if args.png:
        path = write_png(counts, args.png, args.by, title)
        print(f"wrote {path}", file=sys.stderr)
    if not args.csv or args.csv != "-":
        print(format_table(counts, args.by) if counts else "no windows match")
    return 0


def run_info(args) -> int:
    from ..archive.activity import format_info
    from ..archive.archive import Archive

    with Archive.open(_target(args), create=False) as archive:
        info = archive.info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_info(info))
    return 0
