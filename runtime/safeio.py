"""Reading and writing files that someone else may have put in the way.

Every layer reads small files it does not control (a bundle's manifest.json, a device
config, the daemon's status file, an update's records) and the daemon writes files at
paths from its config (status, alerts, retained audio). A path may hold a device node
(``/dev/zero``), a FIFO, a symlink onto either, or a file far larger than any real one.

- `read_capped`: the bytes of a *regular* file of at most ``limit`` bytes; anything
  else (a device, a FIFO, a folder, a bigger file) raises `UnsafeFile` without blocking
  or reading more than ``limit + 1`` bytes.
- `open_new_or_regular`: a file descriptor for writing that never follows a symlink at
  the last path component (``O_NOFOLLOW``) and refuses an existing non-regular file.
- `write_problem`: why a path could not be written that way (for ``config check``).
- `toml_depth`: how deeply a parsed TOML/JSON value nests (tables in arrays in tables...).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .errors import CvahashError

__all__ = ["UnsafeFile", "kind_of", "open_new_or_regular", "read_capped", "toml_depth",
           "write_problem"]

KIB = 1024
MIB = 1024 * KIB


class UnsafeFile(ValueError, CvahashError):
    """A path holds something other than a regular file, or one too big to be real."""


def kind_of(mode: int) -> str:
    """A file type in words: "a folder", "a device", "a FIFO (named pipe)", ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def read_capped(path: str | os.PathLike, limit: int, *, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path`` (symlinks to regular files are fine),
    at most ``limit`` bytes. Raises `UnsafeFile` for a device, FIFO, socket or folder
    (opened non-blocking, so a FIFO never hangs) or a file over ``limit`` bytes;
    OSError as ``open`` does (FileNotFoundError, PermissionError...)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: is {kind_of(st.st_mode)}, not a regular {what}")
        if st.st_size > limit:
            raise UnsafeFile(f"{path}: {st.st_size} bytes is too large for a {what} "
                             f"(at most {limit})")
        chunks, total = [], 0
        while total <= limit:
            block = os.read(fd, min(limit + 1 - total, MIB))
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if total > limit:
            raise UnsafeFile(f"{path}: more than {limit} bytes is too large for a {what}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_new_or_regular(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_CREAT | O_NOFOLLOW | O_NONBLOCK)`` that refuses what
    is not a regular file: a symlink at ``path`` (OSError ELOOP, reported as
    `UnsafeFile`), a device, FIFO or folder. ``flags``: ``O_WRONLY`` plus ``O_APPEND``,
    ``O_TRUNC`` or ``O_EXCL`` as needed. Returns the descriptor (blocking again)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path}: is {kind_of(st.st_mode)}, not a regular file; cvahash "
                         "writes only regular files it creates (remove it or choose another "
                         "path)")
    # O_TRUNC only after the type check: truncating a device or FIFO is never wanted.
    trunc = flags & os.O_TRUNC
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "EMLINK", 31)):
            raise UnsafeFile(f"{path}: is a symbolic link; cvahash does not write through "
                             "links (remove it or choose another path)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: is {kind_of(st.st_mode)}, not a regular file")
        if trunc:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_problem(path: str | os.PathLike) -> str | None:
    """Why `open_new_or_regular` would refuse ``path`` (it exists as a symlink, device,
    FIFO, folder...), or None when it is absent or a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return (f"is {kind_of(st.st_mode)}; cvahash writes only regular files it creates "
            "(remove it or choose another path)")


def toml_depth(value: Any, _depth: int = 0) -> int:
    """Nesting depth of a parsed value (a scalar is 0, ``{"a": 1}`` is 1). Iterative
    enough for what a size-capped file can hold."""
    deepest = _depth
    stack = [(value, _depth)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
        stack.extend((c, d + 1) for c in children)
    return deepest
