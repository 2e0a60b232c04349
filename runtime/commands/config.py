"""`cvahash config check FILE...` and `cvahash config show FILE`: validate station configs.

``check`` prints one "OK" line per valid file and every problem of the others, and exits
1 if any file has a problem. ``show`` prints a valid config as JSON with defaults filled
in and relative paths resolved, which is what the daemon will use.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="check a device config file (device_configs/*.toml)",
        description="Validate station config files; see docs/configuration.md.")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="validate one or more config files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--base-dir", default=None,
                       help="resolve relative paths against this folder "
                            "(default: each file's own folder)")
    check.set_defaults(func=run_check)

    show = sub.add_parser("show", help="print a config as the daemon sees it (JSON)")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--base-dir", default=None)
    show.set_defaults(func=run_show)


def run_check(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..station.config import load_config

    failed = 0
    for path in args.files:
        try:
            config = load_config(path, base_dir=args.base_dir)
        except ConfigError as exc:
            failed += 1
            for line in getattr(exc, "problems", [str(exc)]):
                print(line, file=sys.stderr)
            continue
        n = len(config.watchlist)
        print(f"OK {path} ({config.device.name}: {config.runtime.precision}, "
              f"{n} watchlist {'entry' if n == 1 else 'entries'})")
    if failed:
        print(f"{failed} of {len(args.files)} config files have problems", file=sys.stderr)
    return 1 if failed else 0


def run_show(args: argparse.Namespace) -> int:
    from ..station.config import load_config

    config = load_config(args.file, base_dir=args.base_dir)
    json.dump(config.to_dict(), sys.stdout, indent=2)
    print()
    return 0
