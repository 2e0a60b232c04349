"""`cvahash update build|apply`: move codes between stores on an SD card, signed.

  cvahash update build --db /data/store --key ~/.cvahash/signing.key --out /media/sd/june.cvaup \\
      [--since 2026-06-01] [--root /data/recordings]
  cvahash update apply /media/sd/june.cvaup --db /var/lib/cvahash/store --trust /etc/cvahash/lab.pub
      [--create --bundle /opt/cvahash/bundle]

``apply`` verifies the whole file before it touches the store and then adds it all at
once; a refused file leaves the store unchanged and says why. Applying an update twice
changes nothing. Exit codes: 0 applied (or already applied), 1 refused or failed.
See docs/updates.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "update", help="build or apply a signed SD-card update (.cvaup)",
        description="Build a signed update file from a code store, or verify and apply one.")
    sub = parser.add_subparsers(dest="update_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="write a store's codes into a signed update file")
    build.add_argument("--db", required=True, metavar="STORE", help="code store to read")
    build.add_argument("--key", required=True, metavar="KEY",
                       help="private signing key (from cvahash keygen)")
    build.add_argument("--out", required=True, metavar="FILE.cvaup", help="update file to write")
    build.add_argument("--since", metavar="WHEN",
                       help="only windows captured at or after this ISO date/time (UTC if no "
                            "zone), e.g. 2026-06-01")
    build.add_argument("--root", metavar="DIR",
                       help="store recording paths relative to this folder (default: the "
                            "full path without its leading /)")
    build.set_defaults(func=run_build)

    apply = sub.add_parser("apply", help="verify an update file and add it to a store")
    apply.add_argument("file", metavar="FILE.cvaup")
    apply.add_argument("--db", required=True, metavar="DIR", help="code store to add to")
    apply.add_argument("--trust", required=True, action="append", metavar="PUBKEY",
                       help="public key file (KEY.pub) of a signer to accept; repeatable")
    apply.add_argument("--create", action="store_true",
                       help="make the store if DIR holds none (bound to the update's bundle)")
    apply.add_argument("--bundle", metavar="DIR",
                       help="this machine's copy of the update's model bundle: checked against "
                            "the update and recorded in the store, so `cvahash search --db DIR` "
                            "needs no --bundle")
    apply.add_argument("--json", action="store_true", help="print the result as JSON")
    apply.set_defaults(func=run_apply)


def run_build(args: argparse.Namespace) -> int:
    from ..update.apply import build_update

    result = build_update(args.db, args.key, args.out, since=args.since, root=args.root)
    print(f"wrote {result.path}: {result.rows} windows from {result.recordings} recordings, "
          f"{result.bits}-bit codes of bundle {result.fingerprint}, {result.bytes} bytes, "
          f"update id {result.update_id}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from ..update.apply import apply_update

    result = apply_update(args.file, args.db, args.trust, create=args.create,
                          bundle_dir=args.bundle)
    if args.json:
        print(json.dumps({"update_id": result.update_id, "rows": result.rows,
                          "already_present": result.already_present,
                          "already_applied": result.already_applied,
                          "fingerprint": result.fingerprint,
                          "created_store": result.created_store,
                          "bundle": result.bundle}))
    elif result.already_applied:
        print(f"update {result.update_id} was already applied to {args.db}; nothing changed")
    else:
        made = " (new store)" if result.created_store else ""
        there = (f"; {result.already_present} of its windows were already there (an "
                 "overlapping update) and were not added again" if result.already_present
                 else "")
        print(f"applied update {result.update_id}: {result.rows} windows added to "
              f"{args.db}{made}{there}")
    if result.bundle is None and not result.already_applied and result.created_store:
        print(f"note: search it with `cvahash search TEXT --db {args.db} --bundle DIR` (a "
              f"bundle with fingerprint {result.fingerprint}), or pass --bundle DIR to "
              "`update apply` once to record it", file=sys.stderr)
    return 0
