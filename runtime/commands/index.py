"""`cvahash index PATH... --db DIR --bundle DIR [--station NAME]`: recordings into a store.

Walks the paths recursively, turns every 10 s window of every recording into a code and
appends them to the code store (created on first use, bound to the bundle). Resumable:
recordings already in the store are skipped, so the same command can be re-run after a
power cut or when new files arrive. Every bad file is named with its reason and skipped.

Exit codes: 0 every file went in (or was already there), 1 nothing could be done (no
audio found, bundle or store unusable), 3 some files were skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

EPILOG = """\
examples:
  cvahash index /media/sd/2024-06 --db /data/store --bundle /opt/cvahash/bundle --station ridge-2
  cvahash index a.wav b.flac --db /data/store        (bundle from $CVAHASH_BUNDLE)

exit codes: 0 all indexed, 1 error (nothing written), 2 usage, 3 some files skipped
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index", help="index recordings (files or folders) into a code store",
        description="Turn every 10 s window of the recordings under PATH into a code and add "
                    "them to the code store DIR. Re-running skips recordings already indexed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="audio files and/or folders (recursive)")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder (created if new)")
    p.add_argument("--bundle", metavar="DIR",
                   help="model bundle folder (default: $CVAHASH_BUNDLE, or the one the store "
                        "was made with)")
    p.add_argument("--station", default="", metavar="NAME",
                   help="station name stored with every window (for search --station)")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="seconds between window starts (default: the window length, 10 s)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime threads (default 0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    # Lazy: indexing loads numpy and onnxruntime; `cvahash --help` stays fast.
    from ..library.index import Progress, find_recordings, index_recordings
    from ..library.library import Library

    if args.hop is not None and not (math.isfinite(args.hop) and args.hop > 0):
        args._parser.error(f"--hop {args.hop:g}: the seconds between windows must be above 0")
    if args.threads < 0:
        args._parser.error(f"--threads {args.threads}: must be 0 (one per core) or more")
    # Find the files and open the bundle before the store is created or opened for
    # writing: a typo in a path or a bad bundle leaves no store behind.
    files = find_recordings(args.paths)
    with Library.open(args.db, args.bundle, mode="w", create=True, threads=args.threads,
                      graphs=("audio",)) as lib:
        progress = Progress(len(files), enabled=not args.quiet)
        report = index_recordings(files, lib.store, lib.bundle, station=args.station,
                                  hop_s=args.hop, progress=progress)
    for line in report.summary():
        print(line, file=sys.stderr)
    if os.environ.get("CVAHASH_TIMINGS"):
        t = report.timings
        print(f"time: front-end {t['frontend']:.1f} s, encode {t['encode']:.1f} s, "
              f"store {t['store']:.1f} s", file=sys.stderr)
    return report.exit_code
