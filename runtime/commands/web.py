"""`cvahash web passwd --config FILE` (or `--file PATH`): set the web page's password.

Asks for the password twice (or reads one line from stdin with --stdin) and writes its
scrypt hash, mode 0600, to the config's [web] password_file (default: web-password in
the config's folder). Changing it logs every browser out.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "web", help="manage the station web page (set its password)",
        description="Settings of the station web page served by cvahash serve.")
    sub = p.add_subparsers(dest="web_command", metavar="ACTION", required=True)
    pw = sub.add_parser("passwd", help="set the password the web page asks for",
                        description="Set the web page's password (stored as a scrypt hash, "
                                    "mode 0600). Needed to serve on any address but "
                                    "127.0.0.1.")
    g = pw.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE", help="device config: its [web] password_file")
    g.add_argument("--file", metavar="PATH", help="the password file itself")
    pw.add_argument("--stdin", action="store_true",
                    help="read the password from the first line of stdin (for scripts)")
    pw.set_defaults(func=run_passwd)


def run_passwd(args: argparse.Namespace) -> int:
    import getpass
    import sys
    from pathlib import Path

    from ..errors import CvahashError
    from ..station.web.auth import write_password_file

    if args.config:
        from ..station.config import load_config

        path = Path(load_config(args.config).web.password_file)
    else:
        path = Path(args.file)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("new web password: ")
            again = getpass.getpass("again: ")
        except EOFError:
            raise CvahashError("no password typed (use --stdin to pipe one in)") from None
        if password != again:
            raise CvahashError("the two passwords differ; nothing was changed")
    write_password_file(path, password)
    print(f"password set in {path} (mode 0600); restart cvahash serve to use it",
          file=sys.stderr)
    return 0
