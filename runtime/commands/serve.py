"""`cvahash serve --config FILE` (or `--db DIR [--bundle DIR]`): the station web page.

Serves search, "more like this", activity charts, alerts and station health to a browser
(a phone on the station's hotspot or LAN), plus the same data as JSON under /api/. The
store is read as a snapshot reader: the daemon keeps capturing and writing meanwhile.

Listens on 127.0.0.1 unless told otherwise; any other address needs a password
(`cvahash web passwd`) and is refused without one. Needs the web extra:
pip install '.[web]' in the cvahash checkout. docs/web.md describes the pages and
the API.
"""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  cvahash serve --config /etc/cvahash/rpi4.toml
  cvahash serve --config /etc/cvahash/rpi4.toml --listen 0.0.0.0 --port 80
  cvahash serve --db /data/store --listen 127.0.0.1 --port 8080

with --config, the store, bundle, status file, alerts log and [web] settings come from
the device config; the flags given here override them.
"""

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the station web page (search, listen, activity, alerts, health)",
        description="Serve the station web page and its JSON API.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE", help="device config (TOML)")
    g.add_argument("--db", metavar="DIR", help="a code store folder (without a device config)")
    p.add_argument("--bundle", metavar="DIR",
                   help="model bundle folder (default: the config's, or the store's own)")
    p.add_argument("--listen", metavar="ADDRESS",
                   help="address to listen on (default: [web] listen, else 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="N", help="TCP port (default: [web] port, "
                                                          "else 8080)")
    p.add_argument("--password-file", metavar="FILE",
                   help="password file written by cvahash web passwd (default: [web] "
                        "password_file; with --db: none)")
    p.add_argument("--status", metavar="FILE", help="the daemon's status file (default: the "
                                                    "config's [status] path)")
    p.add_argument("--alerts", metavar="FILE",
                   help="alerts log (default: alerts.jsonl beside the store)")
    p.add_argument("--audio-root", action="append", metavar="DIR",
                   help="a folder audio may be played from (repeatable; default: [web] "
                        "audio_roots, else each recording's own folder)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads per search (default: [web] threads, else 1)")
    p.set_defaults(func=run, _parser=p)


def settings_from_args(args: argparse.Namespace):
    """(WebSettings, listen, port) from the flags and the device config."""
    from pathlib import Path

    from ..errors import CvahashError

    try:
        from ..station.web.app import WebSettings
    except ModuleNotFoundError as exc:
        raise CvahashError(f"cvahash serve needs the web extra ({exc.name} is missing): "
                           "pip install '.[web]' in the cvahash checkout") from None
    listen, port, threads = "127.0.0.1", 8080, 1
    kw: dict = {}
    if args.config:
        from ..station.config import load_config

        cfg = load_config(args.config)
        web = cfg.web
        listen, port, threads = web.listen, web.port, web.threads
        roots = tuple(web.audio_roots) or ((cfg.retention.path,) if cfg.retention.path else ())
        kw = {"db": Path(cfg.store.path), "bundle": Path(cfg.runtime.bundle),
              "status_path": Path(cfg.status.path), "password_file": Path(web.password_file),
              "audio_roots": roots, "config_path": Path(args.config),
              "title": f"cvahash · {cfg.device.name}"}
    else:
        kw = {"db": Path(args.db)}
    if args.bundle:
        kw["bundle"] = Path(args.bundle)
    if args.password_file:
        kw["password_file"] = Path(args.password_file)
    if args.status:
        kw["status_path"] = Path(args.status)
    if args.alerts:
        kw["alerts_log"] = Path(args.alerts)
    if args.audio_root:
        kw["audio_roots"] = tuple(Path(r) for r in args.audio_root)
    listen = args.listen or listen
    port = args.port if args.port is not None else port
    kw["threads"] = args.threads if args.threads is not None else threads
    return WebSettings(**kw), listen, port


def check_exposure(settings, listen: str) -> None:
    """Refuse a non-loopback address without a password, saying how to set one."""
    from ..errors import CvahashError
    from ..station.web.auth import read_password_file

    if listen in LOOPBACK or read_password_file(settings.password_file) is not None:
        return
    where = (f"--config {settings.config_path}" if settings.config_path
             else "--file PASSWORD_FILE")
    serve_hint = "" if settings.config_path else " and pass --password-file PASSWORD_FILE"
    raise CvahashError(
        f"refusing to listen on {listen} without a password: anybody on that network could "
        f"read the station. Set one with `cvahash web passwd {where}`{serve_hint}, or "
        "listen on 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    import logging

    parser = args._parser
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: use 1 to 65535")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads {args.threads}: must be 0 (one per core) or more")
    settings, listen, port = settings_from_args(args)
    check_exposure(settings, listen)

    import uvicorn

    from ..station.web.app import create_app
    from ..station.web.memory import limit_heap

    limit_heap()  # big short-lived arrays (pictures, searches) leave no heap behind
    app = create_app(settings)
    log = logging.getLogger("cvahash.serve")
    log.warning("serving %s on http://%s:%d/", settings.db, listen, port)
    uvicorn.run(app, host=listen, port=port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=5)
    return 0
