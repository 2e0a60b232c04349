"""Constants more than one layer relies on, defined once.

- Code widths: ``MAX_CODE_BITS`` is the widest code a bundle may produce (256 bits,
  32 bytes a row); the update format, the station config (watch radius) and the query
  layer check against it. The C kernel accepts wider rows (``CVH_MAX_NBYTES`` in
  csrc/hamming.h, 1024 bytes) and the code file's header field holds up to 65535 bits;
  those are the limits of those formats, not of a bundle.
- File names inside a code store folder (``META_FILE`` makes a folder a store) and the
  record of which bundle indexed it (``INDEXED_WITH``).
- Clock sources: the words a window's capture time may come from, and the pattern any
  other source name must match.
- ``is_int``: an integer that is not a bool (JSON/TOML ``true`` is no 1).
"""

from __future__ import annotations

import re
from typing import Any

MAX_CODE_BITS = 256

META_FILE = "meta.sqlite"  # the store's SQLite metadata database
LOCK_FILE = "writer.lock"  # held (flock) by the one writer of a store
INDEXED_WITH = "indexed-with.json"  # which bundle folder indexed the store

KNOWN_CLOCK_SOURCES = ("gps", "ntp", "rtc", "audiomoth", "filename", "file-mtime", "unknown")
CLOCK_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
