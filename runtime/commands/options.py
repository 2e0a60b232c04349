"""Options several commands share: the capture-time range (``--since`` / ``--until``) and
the ``--threads`` check.

Registered by `add_time_range`, checked by `time_range` / `check_threads` before anything
is opened, so ``search``, ``activity``, ``index`` and ``archive search|activity`` read and
refuse them alike.
"""

from __future__ import annotations

import argparse


def add_time_range(p: argparse.ArgumentParser) -> None:
    """``--since TIME`` and ``--until TIME`` (UTC unless they carry a zone)."""
    p.add_argument("--since", metavar="TIME", help="only windows captured at or after TIME")
    p.add_argument("--until", metavar="TIME", help="only windows captured before TIME")


def time_range(args: argparse.Namespace) -> dict:
    """``{"since", "until"}`` as datetimes or None; a bare ``--until`` date includes that
    whole day. A range that is empty is a usage error (exit 2)."""
    from ..query.search import parse_when  # lazy: `cvahash --help` stays fast

    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until, end_of_day=True) if args.until else None
    if since and until and since >= until:
        args._parser.error(f"--since {args.since} is not before --until {args.until}")
    return {"since": since, "until": until}


def check_threads(args: argparse.Namespace) -> None:
    """``--threads N``: 0 (one per core) or more, else a usage error (exit 2)."""
    if args.threads < 0:
        args._parser.error(f"--threads {args.threads}: must be 0 (one per core) or more")
