"""The `cvahash` command line.

Each command lives in its own module under ``cvahash.commands`` and provides
``register(subparsers)``, which adds its parser and sets ``func`` to the function that
runs it. Command modules import heavy dependencies inside that function, never at the
top, so ``cvahash --help`` stays fast and works on a station without torch.

Exit codes: 0 success, 1 a failure with a message, 2 bad usage, 3 partial success
(for example ``index`` skipped some files), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from . import __version__
from .commands.wording import in_cli_words
from .errors import CvahashError

# (module under cvahash.commands, one-line purpose); order is the order in --help.
COMMANDS = [
    ("index", "device"),
    ("search", "device"),
    ("activity", "device"),
    ("info", "device"),
    ("relabel", "device"),
    ("check", "device"),
    ("repair", "device"),
    ("daemon", "device"),
    ("serve", "device"),
    ("web", "device"),
    ("watch", "device"),
    ("status", "device"),
    ("config", "device"),
    ("update", "device"),
    ("archive", "office"),
    ("keygen", "workstation"),
    ("merge", "workstation"),
    ("synth", "workstation"),
    ("train", "workstation"),
    ("eval", "workstation"),
    ("export", "workstation"),
    ("bundle", "workstation"),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or, when ``argv`` names a command, that one only (a
    cold `cvahash search` then imports one command module instead of all of them)."""
    parser = argparse.ArgumentParser(
        prog="cvahash",
        description="Find sounds in field recordings by typing what you want to hear.",
    )
    parser.add_argument("--version", action="version", version=f"cvahash {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output on stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = _named_command(argv)
    for name, _where in COMMANDS:
        if named is not None and name != named:
            continue
        try:
            module = importlib.import_module(f"cvahash.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cvahash.commands.{name}":
                if named is not None:  # not built in this version: let argparse say so
                    return build_parser()
                continue  # command not built in this version
            raise
        module.register(sub)
    return parser


def _named_command(argv: list[str] | None) -> str | None:
    """The command ``argv`` runs when it is one of `COMMANDS` and only -v flags come
    before it; None otherwise (then every command is registered, as --help needs)."""
    for arg in argv or ():
        if arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            continue
        return arg if any(arg == name for name, _ in COMMANDS) else None
    return None


# Set by `main` when the command that ran allows `run` to skip the interpreter's teardown.
_quick_exit = False


def main(argv: list[str] | None = None) -> int:
    global _quick_exit
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    _quick_exit = bool(getattr(args, "quick_exit", False))
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cvahash search ... | head`: the reader left; not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CvahashError as exc:
        print(f"cvahash {args.command}: error: {in_cli_words(str(exc))}", file=sys.stderr)
        return 1
    return int(rc or 0)


def run() -> None:
    """The console entry point (`cvahash`, `python -m cvahash`): exit with main's code.

    A Ctrl-C that lands after the work is done (while the interpreter shuts down) would
    otherwise end a finished run by the signal instead of its exit code.
    """
    try:
        rc = main()
    except KeyboardInterrupt:  # while the parser or a command module was being imported
        print("interrupted", file=sys.stderr)
        rc = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _quick_exit:
        # A command that has closed everything it opened (`search`) ends without the
        # interpreter's teardown: freeing the ONNX Runtime session, numpy and every module
        # costs a cold search about 40 CPU-ms after its output is out
        # (docs/benchmarks/runtime.md, run 8).
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that left, or a closed stream
                pass
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    run()
