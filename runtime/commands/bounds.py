"""Ranges of command-line values, checked before anything is opened or created.

The same bounds as the station config (``[runtime] threads`` 0-256, ``[windows] hop_s``
up to 60 s): ``--threads 100000`` would ask ONNX Runtime for 100 000 threads, ``--hop
1e308`` overflows the sample arithmetic. A ``--db`` path through a folder that does
not exist (``a/missing/../b``) is refused too: the operating system and Python's path
arithmetic disagree about where it points, so the store could land somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_THREADS = 256
MAX_HOP_S = 60.0


def db_path_problem(db: str) -> str | None:
    """Why ``--db DIR`` is no safe place for a store, or None: a ``..`` after a folder
    that does not exist, or a path whose parent is not a folder."""
    path = Path(db)
    if ".." in path.parts:
        prefix = Path()
        for part in path.parts:
            if part == ".." and not prefix.is_dir():
                return (f"--db {db}: {prefix} does not exist, so '..' after it is ambiguous; "
                        "give the store folder without '..' (e.g. "
                        f"--db {os.path.normpath(db)})")
            prefix = prefix / part
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        return f"--db {db}: {parent} is a file, not a folder; choose another path"
    return None
