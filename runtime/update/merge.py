"""Merging several stations' code stores of one bundle into a new store.

`merge_stores(sources, out)` copies several stations' stores of one bundle into a new
store, built under a temporary name and renamed when complete. Every recording keeps
its station; a recording of a source with no station name gets the source folder's
name, and two stations' recordings that would share a (path, content hash) key are
kept apart by prefixing the later one's path with its station. A segment identical to
one already merged (same recording, grid and codes: a store and a copy of it) is
merged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import FingerprintMismatch, InvalidArgument, StoreError
from ..store.code_store import CodeStore, Recording, Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeResult:
    path: Path
    rows: int
    recordings: int
    stations: dict[str, int]


def merge_stores(sources: list[str | Path], out: str | Path) -> MergeResult:
    """Copy the stores ``sources`` (one bundle) into a new store ``out``, all or nothing."""
    if not sources:
        raise InvalidArgument("give at least one source store to merge")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} already exists and is not empty; merge into a new folder")
    opened = []
    try:
        for src in sources:
            opened.append(CodeStore.open(src, "r"))
        first = opened[0]
        for src, store in zip(sources[1:], opened[1:], strict=True):
            if (store.fingerprint, store.bits) != (first.fingerprint, first.bits):
                raise FingerprintMismatch(
                    f"{src} holds codes of bundle {store.fingerprint} ({store.bits} bits), "
                    f"{sources[0]} of bundle {first.fingerprint} ({first.bits} bits): merge "
                    "stores of one bundle only; re-index one station with the other's "
                    "bundle (cvahash index ... --db NEW_DIR) or keep one store per bundle")
        tmp = out.parent / f".{out.name}.merging-{uuid.uuid4().hex[:8]}"
        try:
            result = _merge_into(tmp, sources, opened)
            if out.exists():
                out.rmdir()
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return MergeResult(out, *result)
    finally:
        for store in opened:
            store.close()


def _merge_into(tmp: Path, sources, opened) -> tuple[int, int, dict[str, int]]:
    first = opened[0]
    owner: dict[tuple[str, str], str] = {}   # recording key in the merged store -> station
    renamed: dict[tuple[int, tuple[str, str]], Recording] = {}
    seen: set[tuple] = set()   # segments already merged: a store and its copy merge once
    stations: dict[str, int] = {}
    rows = 0
    with CodeStore.create(tmp, first.bits, first.fingerprint,
                          commit_every_windows=1 << 20) as merged:
        for i, (src, store) in enumerate(zip(sources, opened, strict=True)):
            label = Path(src).resolve().name or f"source{i}"
            for seg, codes in store.iter_segments():
                rec = renamed.get((i, seg.recording.key))
                if rec is None:
                    rec = seg.recording
                    station = rec.station or label
                    key = rec.key
                    if key in owner and owner[key] != station:
                        key = (f"{station}/{rec.path.lstrip('/')}", rec.content_hash)
                        log.info("merge: %s of station %s shares its key with station %s; "
                                 "stored as %s", rec.path, station, owner[rec.key], key[0])
                    owner.setdefault(key, station)
                    rec = Recording(path=key[0], station=station, start_utc=rec.start_utc,
                                    sample_rate=rec.sample_rate, duration_s=rec.duration_s,
                                    content_hash=rec.content_hash)
                    renamed[(i, seg.recording.key)] = rec
                digest = hashlib.blake2b(codes.tobytes(), digest_size=16).digest()
                same = (rec.key, seg.first_offset_s, seg.hop_s, seg.n_rows, seg.length_s,
                        seg.capture_start_utc, digest)
                if same in seen:
                    continue
                seen.add(same)
                merged.append(codes, Segment(
                    recording=rec, first_offset_s=seg.first_offset_s, length_s=seg.length_s,
                    capture_start_utc=seg.capture_start_utc, hop_s=seg.hop_s,
                    n_rows=seg.n_rows, clock_source=seg.clock_source))
                stations[rec.station] = stations.get(rec.station, 0) + seg.n_rows
                rows += seg.n_rows
        merged.flush()
        recordings = len(merged.recordings())
    return rows, recordings, stations
