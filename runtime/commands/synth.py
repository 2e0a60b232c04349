"""`cvahash synth`: make a synthetic bioacoustic corpus or a long test soundscape.

Three modes (exactly one):
  cvahash synth --out DIR --n 3000 --seed 0 [--sample-rate 32000] [--format flac|wav]
  cvahash synth --extend DIR --extra 2000    (more train-split clips for a corpus)
  cvahash synth --soundscape FILE.flac --minutes 60 --seed 0 [--events-per-minute 4]
``--list`` prints the call types. Needs only numpy and soundfile (base install).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """\
corpus: DIR/audio/{train,val,test}/NNNNNN.flac, DIR/manifest.jsonl (one JSON object per
clip: audio, caption, labels, split, background, snr_db, sources...) and DIR/corpus.json.
The test split alone holds the "stream" background and the held-out caption phrasings.

extend: DIR/audio/train-extra/ and DIR/manifest-extended.jsonl (the corpus's clips and the
new ones; the corpus's own manifest is untouched): more training pairs, with training
backgrounds and seen phrasings only, so val and test stay unseen.
Default sample rate 32000 Hz for a corpus (content stops at 14 kHz; the pipeline
resamples) and 48000 Hz for a soundscape.

soundscape: FILE (.flac or .wav) plus FILE-stem.events.json listing every event
(label, start_s, end_s, snr_db). Written in blocks: hours-long files need little memory.
See docs/synth.md.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="make a synthetic bioacoustic corpus or a test soundscape",
        description="Generate procedural animal-call audio with captions and labels, "
                    "for training, evaluation and demos without any dataset.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR", help="write a corpus of clips into DIR")
    mode.add_argument("--extend", metavar="DIR",
                      help="add --extra train-split clips to the corpus in DIR")
    mode.add_argument("--soundscape", metavar="FILE",
                      help="write one long recording with known events to FILE")
    mode.add_argument("--list", action="store_true", help="list the call types and exit")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="sample rate (default 32000 for a corpus, 48000 for a soundscape)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty DIR / over an existing FILE")
    corpus = parser.add_argument_group("corpus (--out)")
    corpus.add_argument("--n", type=int, default=3000, help="number of clips (default 3000)")
    corpus.add_argument("--format", choices=["flac", "wav"], default="flac",
                        help="audio format, 16-bit (default flac)")
    corpus.add_argument("--extra", type=int, default=2000,
                        help="--extend: number of train-split clips to add (default 2000)")
    corpus.add_argument("--workers", type=int, default=1,
                        help="processes to use; output is identical for any value (default 1)")
    scape = parser.add_argument_group("soundscape (--soundscape)")
    scape.add_argument("--minutes", type=float, default=60.0,
                       help="length of the recording in minutes (default 60)")
    scape.add_argument("--events-per-minute", type=float, default=4.0,
                       help="mean number of calls per minute (default 4)")
    scape.add_argument("--background", default="pink",
                       help="pink, rain, wind, stream or quiet (default pink)")
    scape.add_argument("--call-types", default=None, metavar="LABEL,LABEL",
                       help="only these call types (default: all; see --list)")
    parser.set_defaults(func=run)


class _Progress:
    """Progress on stderr: one rewritten line on a terminal, a line per 10% otherwise."""

    def __init__(self, what: str):
        self.what, self.tty = what, sys.stderr.isatty()
        self.start, self.last_tenth = time.monotonic(), -1

    def __call__(self, done: float, total: float) -> None:
        tenth = int(10 * done / total) if total else 10
        if not self.tty and tenth == self.last_tenth:
            return
        self.last_tenth = tenth
        elapsed = time.monotonic() - self.start
        line = f"synth: {done:g}/{total:g} {self.what} ({elapsed:.0f} s)"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..export.synth import corpus as synth

    if args.list:
        for call in synth.CALL_TYPES:
            lo, hi = call.band
            print(f"{call.label:22s} {call.family:8s} {lo:>6.0f}-{hi:<6.0f} Hz  {call.name}")
        return 0

    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InvalidArgument(f"--out {out} is a file; give a folder for the corpus")
        if out.is_dir() and any(out.iterdir()) and not args.force:
            raise InvalidArgument(f"--out {out} is not empty; pick an empty folder "
                                  f"or add --force to write into it")
        progress = _Progress("clips")
        t0 = time.monotonic()
        manifest = synth.generate_corpus(
            out, n=args.n, seed=args.seed, sample_rate=args.sample_rate or 32000,
            fmt=args.format, workers=args.workers, progress=progress)
        progress.close()
        print(f"wrote {args.n} clips and {manifest} in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
        return 0

    if args.extend is not None:
        t0 = time.monotonic()
        manifest = synth.extend_train_split(args.extend, args.extra, workers=args.workers)
        print(f"wrote {args.extra} train-split clips and {manifest} in "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
        return 0

    path = Path(args.soundscape)
    if path.exists() and not args.force:
        raise InvalidArgument(f"--soundscape {path} exists; add --force to overwrite it")
    if not args.minutes > 0:
        raise InvalidArgument(f"--minutes must be positive, got {args.minutes}")
    call_types = None
    if args.call_types:
        call_types = [c.strip() for c in args.call_types.split(",") if c.strip()]
    progress = _Progress("s of audio")
    events = synth.make_soundscape(
        path, args.minutes * 60.0, args.events_per_minute, args.seed,
        call_types=call_types, background=args.background,
        sample_rate=args.sample_rate or 48000, progress=progress)
    progress.close()
    print(f"wrote {path} ({args.minutes:g} min, {len(events)} events) and "
          f"{synth.events_path(path)}", file=sys.stderr)
    return 0
