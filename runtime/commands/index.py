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

from .options import check_threads

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
    p.add_argument("--station", default=None, metavar="NAME",
                   help="station name stored with every window (for search --station; "
                        "default: none)")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="seconds between window starts (default: the window length, 10 s)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime threads (default 0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run, _parser=p)


def _probe_all(files):
    """(seconds of audio, {file: reason}) over ``files``, reading headers only."""
    from ..errors import AudioError
    from ..model import audio

    total, bad = 0.0, {}
    for path in files:
        try:
            total += audio.probe(path).duration_s
        except (AudioError, OSError) as exc:
            bad[path] = str(exc)
    return total, bad


def run(args: argparse.Namespace) -> int:
    # Lazy: indexing loads numpy and onnxruntime; `cvahash --help` stays fast.
    import signal
    import threading

    from ..errors import AudioError
    from ..library.index import (
        Progress,
        check_reindex_options,
        find_recordings,
        index_recordings,
    )
    from ..library.library import Library

    if args.hop is not None and not (math.isfinite(args.hop) and args.hop > 0):
        args._parser.error(f"--hop {args.hop:g}: the seconds between windows must be above 0")
    check_threads(args)
    # Find the files and open the bundle before the store is created or opened for
    # writing: a typo in a path or a bad bundle leaves no store behind.
    files = find_recordings(args.paths)
    total_s, bad = _probe_all(files)
    if len(bad) == len(files):
        # Nothing here is audio: say so per file, and make no store.
        reasons = "\n".join(f"  {reason}" for reason in bad.values())
        raise AudioError(f"nothing to index, no file is usable audio:\n{reasons}")
    # Ctrl-C: finish the batch in hand and stop cleanly (the file in progress is left out
    # and indexed again next time); a second Ctrl-C stops at once.
    stop = threading.Event()

    def on_sigint(_signum, _frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with Library.open(args.db, args.bundle, mode="w", create=True, threads=args.threads,
                      graphs=("audio",)) as lib:
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            check_reindex_options(lib.store, files, station=args.station, hop_s=args.hop)
            progress = Progress(len(files), enabled=not args.quiet, total_audio_s=total_s)
            report = index_recordings(files, lib.store, lib.bundle, station=args.station or "",
                                      hop_s=args.hop, progress=progress, stop=stop)
        finally:
            signal.signal(signal.SIGINT, previous)
    for line in report.summary(list_skipped=False):
        print(line, file=sys.stderr)
    if report.interrupted:
        print("interrupted: everything listed as indexed is stored; run the same command "
              "again to index the rest", file=sys.stderr)
        return 130
    if os.environ.get("CVAHASH_TIMINGS"):
        t = report.timings
        print(f"time: front-end {t['frontend']:.1f} s, encode {t['encode']:.1f} s, "
              f"store {t['store']:.1f} s", file=sys.stderr)
    return report.exit_code
