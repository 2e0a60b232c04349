"""`cvahash check --db DIR [--json]`: is a code store intact?

Read-only. Verifies SQLite's integrity, every metadata checksum, the committed row
count against the journal, the journal replayed against the metadata, and every code
row's checksum. Exit 0: clean; exit 1: damaged, with what is wrong and in which file
(then run `cvahash repair --db DIR`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="verify a code store (read-only)",
        description="Verify every checksum of a code store: metadata, committed row count, "
                    "journal and code rows. Read-only. Exit 0 when clean, 1 when damaged "
                    "(then run `cvahash repair --db DIR`).")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..store.doctor import diagnose

    d = diagnose(args.db)
    if args.json:
        print(json.dumps({"store": str(d.directory), "clean": d.clean,
                          "problems": d.problems,
                          "windows": d.stats["rows"] if d.stats else None}, indent=2,
                         ensure_ascii=False))
    elif d.clean:
        print(f"{d.directory}: clean ({d.stats['rows']} windows, {d.stats['recordings']} "
              f"recordings, every checksum verified)")
    else:
        print(f"{d.directory}: DAMAGED")
        for problem in d.problems:
            print(f"  {problem}")
    return 0 if d.clean else 1
