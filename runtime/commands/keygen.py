"""`cvahash keygen --out KEY`: make the Ed25519 key pair that signs SD-card updates.

KEY (the private key, mode 0600) stays on the workstation; KEY.pub goes to each station
and is named with ``cvahash update apply --trust KEY.pub``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "keygen", help="make a key pair for signing updates (KEY and KEY.pub)",
        description="Write a new Ed25519 private key to KEY (readable only by you) and its "
                    "public key to KEY.pub. Existing files are never overwritten.")
    parser.add_argument("--out", required=True, metavar="KEY", help="private key file to write")
    parser.add_argument("--comment", default="", help="a label stored in KEY.pub (e.g. who signs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..update.format import generate_keypair, load_public_key

    private, public = generate_keypair(args.out, comment=args.comment)
    key_id = load_public_key(public).key_id_hex
    print(f"private key: {private} (keep it on the workstation, mode 0600)")
    print(f"public key:  {public} (copy to each station; key id {key_id})")
    return 0
