"""`cvahash info --db DIR [--json]`: what a code store holds.

Windows, recordings, the captured time span, stations, code width, the bundle
fingerprint it is bound to (and the bundle folder it was indexed with), bytes on disk.
Opens the store read-only; changes nothing.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show what a code store holds",
        description="Windows, recordings, time span, stations, fingerprint and size of a code "
                    "store. Read-only.")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..library.library import store_info

    info = store_info(args.db)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    from ..query.report import format_info

    print(format_info(info))
    return 0
