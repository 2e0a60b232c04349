"""`cvahash daemon --config FILE [--source device:NAME|file:PATH] [--fast]`.

Listens day and night: capture, encode, store, raise alerts for the config's watchlist,
write the health status. Logs go to stderr (journald under systemd). SIGTERM or SIGINT
flushes the store and exits.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "daemon", help="capture, encode and store continuously; raise watchlist alerts",
        description="Continuous soundscape monitoring with the settings of a device config "
                    "(capture device, windows, store, retention, watchlist, status file).")
    p.add_argument("--config", required=True, metavar="FILE", help="device config (TOML)")
    p.add_argument("--source", metavar="SPEC",
                   help="device:NAME (an input device; default: the config's) or file:PATH "
                        "(replay a recording, for tests, re-analysis, or AudioMoth ingest)")
    p.add_argument("--fast", action="store_true",
                   help="replay a file source as fast as possible instead of in real time")
    p.add_argument("--alerts", metavar="FILE",
                   help="alerts log, one JSON line per alert (default: alerts.jsonl beside "
                        "the store)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..station.config import load_config
    from ..station.daemon import Daemon, install_signal_handlers

    cfg = load_config(args.config)
    if args.verbose == 0:
        logging.getLogger().setLevel(cfg.logging.level.upper())
    daemon = Daemon(cfg, args.source, realtime=not args.fast, alerts_log=args.alerts)
    install_signal_handlers(daemon)
    return daemon.run()
