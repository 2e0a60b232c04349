"""Training data: the manifest of (audio, caption, labels, split) and the log-mel cache.

Manifest formats (paths relative to the manifest's folder, or absolute):

- JSONL: one object per line, ``{"audio": "clips/a.wav", "caption": "...",
  "labels": ["frog", ...], "split": "train"}``; ``labels`` may also be one string with
  labels separated by ``;``; ``split`` is optional. Blank lines are skipped.
- CSV: a header naming at least ``audio`` and ``caption``; ``labels`` separated by ``;``;
  ``split`` optional.

Errors name the file and line (``manifest.jsonl:12: ...``) and what to do.

Log-mel features come from ``cvahash.model.frontend.log_mel``, the same numpy front-end the
device runs, once per clip, stored as float16 in a ``.npy`` file in the cache folder,
keyed by the clips (path, size, mtime), the front-end parameters and the crop seed. Clips
longer than the window are cropped once at a random start drawn from
``default_rng([seed, index])`` (rand_trunc), so the cache is deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import AudioError, CvahashError
from ...model.audio import load
from ...model.frontend import FrontendParams, log_mel
from .progress import Progress

MANIFEST_FIELDS = ("audio", "caption", "labels", "split")


class ManifestError(ValueError, CvahashError):
    """A manifest line is malformed or names a missing/unreadable file."""


@dataclass(frozen=True)
class Entry:
    audio: Path
    caption: str
    labels: tuple[str, ...]
    split: str | None
    where: str  # "manifest.jsonl:12", for error messages


def _labels(value, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(";") if s.strip())
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return tuple(str(v) for v in value)
    raise ManifestError(f"{where}: 'labels' must be a list of strings or 'a;b' text, "
                        f"not {value!r}")


def _entry(row: dict, base: Path, where: str, check_files: bool,
           require_caption: bool = True) -> Entry:
    audio = row.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError(f"{where}: missing 'audio' (the path of the clip)")
    caption = row.get("caption")
    if not require_caption and caption in (None, ""):
        caption = ""
    elif not isinstance(caption, str) or not caption.strip():
        raise ManifestError(f"{where}: empty caption for {audio!r}; every clip needs a text "
                            "description")
    path = Path(audio) if Path(audio).is_absolute() else base / audio
    if check_files and not path.is_file():
        raise ManifestError(f"{where}: audio file {path} does not exist "
                            "(paths are relative to the manifest's folder)")
    split = row.get("split") or None
    if split is not None and not isinstance(split, str):
        raise ManifestError(f"{where}: 'split' must be text (train/val/test), not {split!r}")
    return Entry(path, caption.strip(), _labels(row.get("labels"), where), split, where)


def read_manifest(path: str | Path, *, check_files: bool = True,
                  require_caption: bool = True) -> list[Entry]:
    """Read a JSONL or CSV manifest (by extension: .csv is CSV, anything else JSONL).

    ``require_caption=False`` accepts entries without a caption (caption ""), for
    objectives that learn from audio alone (``itq``)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    base = path.parent
    entries: list[Entry] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        needed = {"audio", "caption"} if require_caption else {"audio"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise ManifestError(f"{path}:1: CSV header must name 'audio' and 'caption' "
                                f"(got {reader.fieldnames})")
        for row in reader:
            entries.append(_entry(row, base, f"{path}:{reader.line_num}", check_files,
                                  require_caption))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object")
            entries.append(_entry(row, base, where, check_files, require_caption))
    if not entries:
        raise ManifestError(f"manifest {path} has no entries")
    return entries


def select_split(entries: list[Entry], split: str) -> list[Entry]:
    """Entries of ``split``; if no entry has a split at all, every entry."""
    if all(e.split is None for e in entries):
        return list(entries)
    return [e for e in entries if e.split == split]


# ---------------------------------------------------------------- audio and features


def load_audio(entry: Entry, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``; ManifestError naming the line otherwise."""
    try:
        return load(str(entry.audio), sample_rate=sample_rate)
    except (AudioError, RuntimeError, OSError, ValueError) as exc:
        raise ManifestError(f"{entry.where}: cannot read audio {entry.audio}: {exc}") from exc


def _cache_key(entries: list[Entry], params_dict: dict, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(params_dict, sort_keys=True).encode())
    h.update(str(seed).encode())
    for e in entries:
        st = e.audio.stat()
        h.update(f"{e.audio.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def log_mel_features(entries: list[Entry], cache_dir: str | Path, params=None, *,
                     seed: int = 0, progress: bool = True) -> np.ndarray:
    """float16 log-mel (N, 1, n_frames, n_mels) for ``entries``, memory-mapped from the cache.

    Computed once and written to a temporary file renamed into place, so an interrupted
    run never leaves a truncated cache behind.
    """
    params = params or FrontendParams()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"logmel-{_cache_key(entries, params.to_dict(), seed)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    shape = (len(entries), 1, params.n_frames, params.n_mels)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    bar = Progress(len(entries), "log-mel", enabled=progress)
    try:
        for i, entry in enumerate(entries):
            samples = load_audio(entry, params.sample_rate)
            rng = np.random.default_rng([seed, i])
            out[i] = log_mel(samples, params, rng=rng)[0].astype(np.float16)
            bar.update()
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")
