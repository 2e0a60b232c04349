"""Which files an `index` run reads, and how a recording is recognised by its content.

`find_recordings` walks the named files and folders for audio, keeping the entries that
are not readable recordings (broken links, FIFOs, unreadable folders...) so that the run
names each with its own reason (`entry_problem`) instead of stopping. `content_hash` is
a recording's identity: the same bytes found again under any name are the same recording.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import AudioError
from ..model import audio

__all__ = ["content_hash", "entry_problem", "find_recordings"]

# Bytes read from each of the sampled places of a file by `content_hash`.
_HASH_CHUNK = 1 << 16
_HASH_PLACES = 16


def content_hash(path: str | os.PathLike) -> str:
    """A fingerprint of a file's bytes, cheap even for hours of audio on an SD card.

    SHA-256 over the size, the first and last 64 KiB and 16 evenly spaced 64 KiB
    samples (at most about 1.1 MB read): a recording that was rewritten, re-encoded,
    truncated or extended gets a new hash; the same file found again gets the same
    one. Prefixed ``"s256:"`` so a full-file hash could be told apart later.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= _HASH_CHUNK * (_HASH_PLACES + 2):
            h.update(f.read())
        else:
            places = np.linspace(0, size - _HASH_CHUNK, _HASH_PLACES + 2).astype(np.int64)
            for at in places:
                f.seek(int(at))
                h.update(f.read(_HASH_CHUNK))
    return "s256:" + h.hexdigest()[:32]


def entry_problem(path: Path) -> str | None:
    """Why a folder entry found while indexing is not a recording to read, or None.

    Each kind gets its own reason, and none stops the run: a dangling symbolic link, a
    link loop, a FIFO (reading one would block), a device or socket, anything else that
    is not a regular file, an unreadable file, and a folder that cannot be listed (its
    recordings are not indexed; the rest are).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("a dangling symbolic link (its target does not exist)" if os.path.islink(path)
                else "it no longer exists")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"it cannot be read ({e.strerror or e})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as e:
            return (f"a folder that cannot be read ({e.strerror or e}); the recordings in it "
                    "were not indexed")
        return "a folder named as a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a recording file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a recording file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a recording file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "it cannot be read (permission denied)"
    return None


def _unreadable_folders(paths: list[Path]) -> list[Path]:
    """Subfolders under ``paths`` that cannot be listed (os.walk skips them silently)."""
    bad: list[Path] = []
    for p in paths:
        if p.is_dir():
            for _root, dirs, _files in os.walk(p, onerror=lambda e: bad.append(Path(e.filename))):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return bad


def find_recordings(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The audio files under ``paths`` (`cvahash.model.audio.find_audio`), plus entries
    that are not readable recordings (broken links, FIFOs, unreadable folders, ...) so
    that indexing can name each with its reason (`entry_problem`); AudioError when a
    path does not exist or there are no audio files at all."""
    paths = [Path(p) for p in paths]
    # a named path that is a broken link exists as an entry: skipped later, with a reason
    broken = [p for p in paths if os.path.lexists(p) and not p.exists()]
    rest = [p for p in paths if p not in broken]
    files = audio.find_audio(rest) if rest else []
    files = sorted({*files, *broken, *_unreadable_folders(rest)}, key=str)
    if not files:
        raise AudioError(
            f"no audio files under {', '.join(map(str, paths))} (looked for "
            f"{', '.join(sorted(audio.AUDIO_EXTENSIONS))}; hidden files are ignored)"
        )
    return files
