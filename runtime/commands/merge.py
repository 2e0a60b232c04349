"""`cvahash merge SRC... --out DIR`: several stations' code stores into one (workstation).

All sources must hold codes of the same bundle. The merged store is built under a
temporary name and appears at DIR only when complete; every recording keeps the
station it came from (a source without station names is labelled with its folder name),
so ``cvahash search --station`` still tells stations apart. See docs/updates.md.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge several stations' code stores into a new one",
        description="Copy code stores of one bundle into a new store DIR, keeping stations "
                    "apart in the metadata.")
    parser.add_argument("sources", nargs="+", metavar="SRC", help="code store folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="new store folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..update.merge import merge_stores

    result = merge_stores(args.sources, args.out)
    per_station = ", ".join(f"{name or '(none)'}: {n}" for name, n in
                            sorted(result.stations.items()))
    print(f"merged {len(args.sources)} stores into {result.path}: {result.rows} windows, "
          f"{result.recordings} recordings ({per_station})")
    return 0
