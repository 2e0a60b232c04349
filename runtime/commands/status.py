"""`cvahash status --config FILE | --file STATUS.json [--json]`: is the station listening?

Prints the daemon's health (lag, overflows, windows per second, disk free, last capture)
with a verdict: OK, DEGRADED, NOT CAPTURING, STOPPED or STALE (the status file stopped
being refreshed). Exit code 0 for OK, 1 otherwise, so monitoring scripts can use it.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="show the monitoring daemon's health",
        description="Read the daemon's status file and say whether it is capturing. "
                    "Exit 0 when OK, 1 otherwise.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE", help="device config naming the status file")
    g.add_argument("--file", metavar="STATUS", help="the status file itself")
    p.add_argument("--json", action="store_true", help="print the raw status document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..station.health import format_status, read_status, verdict

    if args.config:
        from ..station.config import load_config

        path = load_config(args.config).status.path
    else:
        path = args.file
    doc = read_status(path)
    state, _ = verdict(doc)
    if args.json:
        print(json.dumps({**doc, "verdict": state}, indent=1))
    else:
        print(format_status(doc))
    return 0 if state == "OK" else 1
