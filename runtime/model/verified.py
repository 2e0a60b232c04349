"""A record of bundle files already hashed, so a cold start does not re-hash them.

Hashing a full-size bundle's audio graph (about 157 MB) costs most of a cold `search`,
which never loads it. Each file whose sha256 matched its manifest is remembered with
its size, modification time, change time, inode and device; a later open of the same
unchanged file takes the recorded digest instead of reading it again. Writing a file
(or copying a new one in its place) changes its mtime/ctime or inode, so it is hashed
again. ``cvahash bundle verify`` never uses the record: it always reads every byte.

The record lives in ``$CVAHASH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cvahash`` or
``~/.cache/cvahash``) as ``verified-files.json``; when that folder cannot be written
(a read-only home) nothing is recorded and every open hashes as before.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

CACHE_ENV = "CVAHASH_CACHE_DIR"
RECORD_FILE = "verified-files.json"
MAX_ENTRIES = 64  # a station holds one or two bundles; a workstation a few dozen files

_lock = threading.Lock()


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvahash"


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _load() -> dict:
    try:
        data = json.loads((cache_dir() / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known_digest(path: Path) -> str | None:
    """The sha256 recorded for ``path`` if the file is unchanged since, else None."""
    try:
        entry = _load().get(str(path.resolve()))
        ident = _identity(path)
    except OSError:
        return None
    if isinstance(entry, dict) and entry.get("identity") == ident:
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) else None
    return None


def remember(path: Path, digest: str) -> None:
    """Record that ``path`` (as it is now) hashes to ``digest``; never raises."""
    with _lock:
        try:
            ident = _identity(path)
            records = _load()
            records.pop(str(path.resolve()), None)
            records[str(path.resolve())] = {"identity": ident, "sha256": digest}
            while len(records) > MAX_ENTRIES:
                records.pop(next(iter(records)))
            folder = cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{RECORD_FILE}.tmp{os.getpid()}.{threading.get_ident()}"
            tmp.write_text(json.dumps(records) + "\n", encoding="utf-8")
            os.replace(tmp, folder / RECORD_FILE)
        except OSError:
            pass
