"""`cvahash watch suggest "TEXT" --precision 0.8`: a watchlist radius from the bundle's curve.

    cvahash watch suggest "owl hooting" --precision 0.8 --bundle /opt/cvahash/bundle
    cvahash watch suggest "owl hooting" --db /data/store        # the store's bundle

Reads the bundle's calibration curve (``cvahash export`` estimates, on held-out caption
and clip pairs, the precision of all hits within each Hamming radius) and proposes the
largest radius whose estimated precision is at least ``--precision``, printed as a
``[[watchlist]]`` entry for the station config. The curve is the bundle's, not the
query's: the text names the entry and is checked like a search query. Exit 0 with a
suggestion, 1 when the bundle has no curve or no radius reaches the precision, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "watch", help="watchlist helpers (suggest a radius for a standing query)",
        description="Watchlist helpers.")
    sub = p.add_subparsers(dest="watch_command", metavar="ACTION")
    s = sub.add_parser(
        "suggest", help="propose a watchlist radius for TEXT at a target precision",
        description="Propose the largest Hamming radius whose hits the bundle's calibration "
                    "curve estimates to be relevant with at least --precision, as a "
                    "[[watchlist]] entry.")
    s.add_argument("text", metavar="TEXT", help="what to listen for, in words")
    s.add_argument("--precision", type=float, default=0.8,
                   help="estimated share of alerts that should be right, 0..1 (default 0.8)")
    s.add_argument("--bundle", metavar="DIR", help="model bundle folder")
    s.add_argument("--db", metavar="DIR",
                   help="code store folder: use the bundle it was indexed with")
    s.add_argument("--name", help="watchlist entry name (default: from TEXT)")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(func=run_suggest, _parser=s)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def entry_name(text: str) -> str:
    """"Owl hooting!" -> "owl-hooting" (at most 40 characters)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return name or "watch"


def run_suggest(args: argparse.Namespace) -> int:
    parser = args._parser
    if not 0 < args.precision <= 1:
        parser.error(f"--precision {args.precision}: must be above 0 and at most 1")
    from ..library.library import recorded_bundle, resolve_bundle
    from ..model.bundle import check_bundle
    from ..model.calibration import Calibration
    from ..query.search import prepare_query

    text, _truncated, _notes = prepare_query(args.text)
    path = resolve_bundle(args.bundle, recorded_bundle(args.db) if args.db else None)
    # Only the manifest is read: no graph needs hashing.
    manifest = check_bundle(path, graphs=(), cache=True)
    calibration = Calibration.from_manifest(manifest)
    if calibration is None:
        print(f"cvahash watch suggest: error: the bundle {path} has no calibration curve "
              "(exported before cvahash estimated one); export it again with `cvahash export "
              "RUN_DIR --out BUNDLE`, or pick a radius by hand: try `cvahash search` on "
              "recorded audio and note the distances of the right hits", file=sys.stderr)
        return 1
    radius = calibration.radius_for(args.precision)
    if radius is None:
        best = calibration.precision_within[0]
        print(f"cvahash watch suggest: error: no radius reaches an estimated precision of "
              f"{args.precision:g} with the bundle {path} (even distance 0 is estimated at "
              f"{best:.2f}); lower --precision", file=sys.stderr)
        return 1
    name = args.name or entry_name(text)
    estimate = calibration.precision_within[radius]
    if args.json:
        print(json.dumps({"query": text, "name": name, "radius": radius,
                          "bits": calibration.bits, "precision_target": args.precision,
                          "estimated_precision": estimate, "base_rate": calibration.base_rate,
                          "calibration_source": calibration.source, "bundle": str(path)},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"radius {radius} of {calibration.bits} bits: hits within it are estimated "
          f"{estimate:.0%} relevant (target {args.precision:.0%}; measured at export on "
          f"{calibration.source or 'held-out pairs'}, where {calibration.base_rate:.0%} of "
          "pairs matched; how common the sound is at your station moves the real rate)")
    print()
    print("[[watchlist]]")
    print(f"name = {json.dumps(name)}")
    print(f"query = {json.dumps(text, ensure_ascii=False)}")
    print(f"radius = {radius}")
    return 0
