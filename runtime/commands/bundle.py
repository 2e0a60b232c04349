"""`cvahash bundle verify`: check a model bundle, and prove it matches its training run.

    cvahash bundle verify BUNDLE                               # files, hashes, format
    cvahash bundle verify BUNDLE --against RUN_DIR --data MANIFEST

The first form runs on a station (no torch). With ``--against`` it encodes held-out
clips and captions with PyTorch and with the bundle and reports bit agreement and
mAP@10 of both with a bootstrap interval on the change (needs the [export] extra).
Exit 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bundle", help="check a model bundle (verify)",
        description="Model bundle tools.")
    sub = p.add_subparsers(dest="bundle_command", metavar="ACTION")
    v = sub.add_parser(
        "verify", help="check hashes; with --against, code agreement with the training run",
        description="Verify a bundle's files (format, sha256, fingerprint); with --against "
                    "RUN_DIR compare its codes with PyTorch's on held-out corpus clips.")
    v.add_argument("bundle", metavar="BUNDLE", help="bundle folder (with manifest.json)")
    v.add_argument("--against", metavar="RUN_DIR", default=None,
                   help="the training run the bundle was exported from")
    v.add_argument("--data", metavar="MANIFEST", default=None,
                   help="corpus manifest; its val/test clips are encoded (default: a built-in "
                        "synthetic probe)")
    v.add_argument("--limit", type=int, default=200, help="held-out clips to use (default 200)")
    v.add_argument("--min-agreement", type=float, default=0.98,
                   help="fail below this bit agreement per branch (default 0.98)")
    v.add_argument("--max-map-drop", type=float, default=0.02,
                   help="fail when mAP@10 is worse than PyTorch's by more than this, relative, "
                        "with 95%% confidence (default 0.02)")
    v.add_argument("--min-queries", type=int, default=30,
                   help="below this many scored queries the mAP@10 change is reported, not "
                        "judged; bit agreement alone decides (default 30)")
    v.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_verify(args: argparse.Namespace) -> int:
    from .wording import mute_library_future_warnings

    mute_library_future_warnings()
    from ..errors import BundleError, MissingExtra

    if args.data and not args.against:
        print("cvahash bundle verify: error: --data needs --against RUN_DIR", file=sys.stderr)
        return 2
    if (args.limit < 1 or not 0 <= args.min_agreement <= 1 or args.max_map_drop < 0
            or args.min_queries < 1):
        print("cvahash bundle verify: error: --limit and --min-queries must be >= 1, "
              "--min-agreement within 0..1 and --max-map-drop >= 0", file=sys.stderr)
        return 2
    # cvahash.export.onnx.verify needs numpy and cvahash.model.bundle only; torch is imported for
    # --against alone, so the files-only check runs on a station.
    from ..export.onnx.verify import verify_bundle

    if args.against and importlib.util.find_spec("torch") is None:
        raise MissingExtra("--against needs the workstation extra (torch is missing): "
                           "pip install '.[export]' in the cvahash checkout")
    try:
        report = verify_bundle(args.bundle, args.against, args.data,
                               min_agreement=args.min_agreement,
                               max_map_drop=args.max_map_drop,
                               min_queries=args.min_queries, limit=args.limit,
                               threads=args.threads)
    except BundleError as exc:
        if args.json:
            print(json.dumps({"bundle": args.bundle, "passed": False, "failures": [str(exc)]},
                             indent=2))
        else:
            print(f"bundle      {args.bundle}\nFAIL        {exc}\nresult      FAIL")
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.passed else 1
