"""Making a new code store's folder (``CodeStore.create``) and tidying one a cut left
behind (stray code files of an interrupted compact or create).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument, StoreError
from .format import (
    LOCK_FILE,
    MAX_FINGERPRINT,
    META_FILE,
    CodeHeader,
    code_file_name,
    fsync_dir,
    write_new_code_file,
)
from .journal import journal_name, write_journal
from .replay import new_database

log = logging.getLogger(__name__)


def create_files(directory, bits: int, fingerprint: str) -> Path:
    """Make the files of a new, empty store in ``directory`` (which must not exist or
    be empty); return its absolute path."""
    directory = Path(directory)
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
            or not 1 <= bits <= 65535:
        raise InvalidArgument(f"bits must be an integer in 1..65535, got {bits!r}")
    if not isinstance(fingerprint, str) or not fingerprint or not fingerprint.isascii() \
            or len(fingerprint) > MAX_FINGERPRINT:
        raise InvalidArgument(f"fingerprint must be a non-empty ASCII string of at most "
                              f"{MAX_FINGERPRINT} characters, got {fingerprint!r}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise StoreError(f"cannot create a code store in {directory}: it already exists "
                         "and is not an empty directory; choose another --db folder")
    # Build it under a temporary name beside it and rename: a cut during create
    # leaves either nothing or a complete store, never a half-made one. The parent
    # is taken lexically ("a/x/../b" is "a/b"), so the temporary folder is always
    # where the rename puts the store.
    directory = Path(os.path.abspath(directory))
    parent = directory.parent
    tmp = parent / f".{directory.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        build(tmp, int(bits), fingerprint)
        if directory.exists():
            directory.rmdir()
        os.rename(tmp, directory)
        fsync_dir(parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if directory.is_dir() and (directory / META_FILE).exists():
            raise StoreError(f"another process created the code store {directory} at the "
                             "same time; run the command again to add to it") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"the disk holding {parent} is full: cannot create the code "
                             f"store {directory}; free space and try again") from None
        raise StoreError(f"cannot create the code store {directory}: {e.strerror or e} "
                         f"({e.filename or parent}); check the --db path and its "
                         "permissions") from None
    return directory


def build(tmp: Path, bits: int, fingerprint: str) -> None:
    """The files of a new, empty store in the folder ``tmp``."""
    store_id = uuid.uuid4()
    header = CodeHeader(bits=bits, fingerprint=fingerprint, store_id=store_id.bytes,
                        generation=0)
    write_new_code_file(tmp / code_file_name(0), header)
    base = {"kind": "base", "v": 0, "rows": 0, "forgotten": 0, "generation": 0,
            "max_span_s": 0.0, "bits": bits, "fingerprint": fingerprint,
            "store_id": store_id.hex, "segs": [], "tags": [], "sums": b""}
    write_journal(tmp / journal_name(0), [base])
    conn = sqlite3.connect(tmp / META_FILE, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        new_database(conn, base, store_id.hex, bits, fingerprint, time.time())
    except sqlite3.Error as e:
        raise OSError(errno.ENOSPC if "full" in str(e) else errno.EIO, str(e),
                      str(tmp / META_FILE)) from e
    finally:
        conn.close()
    (tmp / LOCK_FILE).touch()
    fsync_dir(tmp)


def remove_strays(directory: Path, generation: int) -> None:
    """Delete code files a cut left behind (an interrupted compact or create)."""
    keep = {code_file_name(generation), journal_name(generation)}
    for p in directory.iterdir():
        if p.name.startswith(("codes-", "journal-")) and p.name not in keep:
            log.warning("code store %s: removing %s left by an interrupted compact",
                        directory, p.name)
            p.unlink()
