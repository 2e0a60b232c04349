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
    check.add_argument("--file-only", action="store_true",
                       help="check the file alone, not this machine: skip opening the bundle, "
                            "alert commands and writable paths (e.g. on a workstation before "
                            "the card goes into the station)")
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
            if not args.file_only:
                config.check_station(_open_bundle(config, path))
        except ConfigError as exc:
            failed += 1
            for line in getattr(exc, "problems", [str(exc)]):
                print(line, file=sys.stderr)
            continue
        n = len(config.watchlist)
        checked = "" if args.file_only else "; bundle, commands and paths checked"
        print(f"OK {path} ({config.device.name}: {config.runtime.precision}, "
              f"{n} watchlist {'entry' if n == 1 else 'entries'}{checked})")
    if failed:
        print(f"{failed} of {len(args.files)} config files have problems", file=sys.stderr)
    return 1 if failed else 0


def _open_bundle(config, path):
    """The config's bundle, as the daemon opens it; a failure is a ConfigError line."""
    from ..errors import ConfigError, CvahashError
    from ..model.bundle import ModelBundle

    try:
        return ModelBundle.open(config.runtime.bundle, threads=1)
    except CvahashError as exc:
        error = ConfigError(f"{path}: [runtime] bundle: {exc}")
        error.problems = [str(error)]
        raise error from None


def run_show(args: argparse.Namespace) -> int:
    from ..station.config import load_config

    config = load_config(args.file, base_dir=args.base_dir)
    json.dump(config.to_dict(), sys.stdout, indent=2)
    print()
    return 0
