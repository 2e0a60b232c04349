"""`cvahash repair --db DIR [--json]`: rebuild a damaged code store from what is
provably good.

Copies the store to `DIR.backup-<UTC time>` first. Rebuilds the metadata from the
store's journal (or from the metadata itself when the journal is damaged and the
metadata passes every check), keeps every code row whose checksum matches, and names
each window whose bytes are gone (recording, offsets). Every recording that lost a
window is retired as a whole, so that running `cvahash index` again on the same
folders re-does exactly those recordings. Exit 0 when the store is clean afterwards.
Stop the daemon or any index run first (repair takes the writer lock).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "repair", help="rebuild a damaged code store (keeps a backup)",
        description="Back up a code store, then rebuild its metadata from its journal, "
                    "keeping every window whose checksum matches and naming the ones lost. "
                    "Recordings that lost windows are retired so that `cvahash index` "
                    "re-does them.")
    p.add_argument("--db", required=True, metavar="DIR", help="code store folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..store.doctor import diagnose, repair

    r = repair(args.db)
    after = diagnose(args.db)
    if args.json:
        print(json.dumps({
            "store": str(r.directory), "backup": str(r.backup), "source": r.source,
            "windows": r.windows, "lost_windows": r.lost_windows,
            "lost": [{"recording": p, "first_offset_s": a, "last_offset_s": b, "windows": n}
                     for p, a, b, n in r.lost],
            "retired": [{"recording": p, "windows": n} for p, n in r.retired],
            "unknown_rows": r.unknown_rows, "dropped_tags": r.dropped_tags,
            "notes": r.notes, "clean": after.clean, "problems": after.problems},
            indent=2, ensure_ascii=False))
        return 0 if after.clean else 1
    print(f"{r.directory}: rebuilt from its {r.source}; backup in {r.backup}")
    print(f"  {r.windows} windows kept")
    for note in r.notes:
        print(f"  note: {note}")
    if r.lost or r.unknown_rows:
        print(f"  {r.lost_windows} windows lost (their bytes are gone or fail their checksum):")
        for path, a, b, n in r.lost:
            print(f"    {path}: {n} windows at offsets {a:.2f}-{b:.2f} s")
        if r.unknown_rows:
            print(f"    {r.unknown_rows} windows of an unreadable journal record")
    if r.retired:
        print(f"  {len(r.retired)} recordings retired; run `cvahash index` on the same "
              "folders again to re-do them:")
        for path, n in r.retired:
            print(f"    {path} ({n} windows)")
    if r.dropped_tags:
        print(f"  {len(r.dropped_tags)} update batches can be applied again: "
              f"{', '.join(r.dropped_tags)}")
    if not after.clean:
        print("  still damaged:")
        for problem in after.problems:
            print(f"    {problem}")
        return 1
    print("  the store is clean now (`cvahash check` passes)")
    return 0
