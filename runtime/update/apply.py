"""SD-card updates between code stores: build on one machine, apply on a station, merge.

- `build_update(store_dir, key, out, since=None, root=None)` reads a store and writes one
  signed ``.cvaup`` file with its codes and window metadata (see `cvahash.update.format`).
- `apply_update(file, store_dir, trusted)` verifies the file completely (signature,
  checksum, every field, bit width and bundle fingerprint) *before* it opens the store
  for writing, then appends everything in one tagged commit of the store: after a power
  cut at any instant the store holds all of the update or none of it, and applying the
  same update again changes nothing (the tag is ``update:<update id>``, recorded in the
  same transaction as the rows).
- `merge_stores(sources, out)` copies several stations' stores of one bundle into a new
  store, built under a temporary name and renamed when complete. Every recording keeps
  its station; a recording of a source with no station name gets the source folder's
  name, and two stations' recordings that would share a (path, content hash) key are
  kept apart by prefixing the later one's path with its station. A segment identical to
  one already merged (same recording, grid and codes: a store and a copy of it) is
  merged once.

A store holds codes of one bundle only: an update or a source of another fingerprint or
bit width is refused with a message that says how to re-index or keep a store per bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import CvahashError, FingerprintMismatch, InvalidArgument, StoreError
from ..limits import META_FILE  # what makes a folder a code store
from ..store.code_store import CodeStore, Recording, Segment
from ..store.format import fsync_dir
from ..store.records import GRID_TOLERANCE_S
from ..timeutil import utc_datetime
from .format import (
    ROW_DTYPE,
    UpdatePackage,
    check_recording_path,
    load_private_key,
    load_public_key,
    pack_update,
    read_update,
    trust,
    write_update,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BuildResult:
    path: Path
    update_id: str
    rows: int
    recordings: int
    fingerprint: str
    bits: int
    bytes: int


@dataclass(frozen=True)
class ApplyResult:
    update_id: str
    rows: int               # rows this call appended (0 when already applied)
    already_applied: bool
    fingerprint: str
    created_store: bool


@dataclass(frozen=True)
class MergeResult:
    path: Path
    rows: int
    recordings: int
    stations: dict[str, int]


def parse_since(text: str | None) -> float | None:
    """``--since`` as UTC epoch seconds: an ISO date or date-time; no zone means UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"--since {text!r}: expected an ISO date or time such as "
                              "2026-06-01 or 2026-06-01T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def portable_path(path: str, root: str | Path | None = None) -> str:
    """A station's recording path as it goes into an update: relative to ``root`` when it
    lies under it, else with its leading ``/`` dropped. Raises InvalidArgument when the
    result is still not a safe relative path (the receiving station would refuse it)."""
    text = str(path)
    if root is not None:
        root_text = str(root).rstrip("/") + "/"
        text = text.removeprefix(root_text)
    text = text.lstrip("/")
    try:
        return check_recording_path(text)
    except ValueError as exc:
        raise InvalidArgument(f"recording path {str(path)!r} cannot go into an update: it "
                              f"{exc}; pass --root to make paths relative to a folder") from None


# ---------------------------------------------------------------------------------------
# Build


def build_update(store_dir: str | Path, key_path: str | Path, out: str | Path, *,
                 since: str | None = None, root: str | Path | None = None) -> BuildResult:
    """Write the windows of ``store_dir`` (those captured at or after ``since``, if given)
    as a signed update to ``out``. Raises CvahashError when there is nothing to send."""
    private_key = load_private_key(key_path)
    since_s = parse_since(since)
    with CodeStore.open(store_dir, "r") as store:
        fingerprint, bits = store.fingerprint, store.bits
        codes, rows, recordings, clocks = _collect(store, since_s, root)
    if not len(codes):
        when = f" captured since {since}" if since else ""
        raise CvahashError(f"the code store {store_dir} has no windows{when}; nothing to "
                           "put in an update")
    stations = sorted({r["station"] for r in recordings if r["station"]})
    source = {"stations": ",".join(stations)[:1024], "store": Path(store_dir).name[:1024],
              "built_by": f"cvahash {__version__}"}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    since_iso = None if since_s is None else utc_datetime(since_s).isoformat()
    data = pack_update(private_key=private_key, fingerprint=fingerprint, bits=bits,
                       codes=codes, rows=rows, recordings=recordings, clocks=clocks,
                       created=created, since=since_iso, source=source)
    path = write_update(out, data)
    update = read_update(data, [_own_trust(private_key)])  # what a station will see
    return BuildResult(path, update.update_id, len(codes), len(recordings), fingerprint, bits,
                       len(data))


def _own_trust(private_key):
    return trust(private_key.public_key(), "signing key")


def _collect(store: CodeStore, since_s: float | None, root):
    """Codes, ROW_DTYPE rows, recordings and clocks tables of a store's live windows."""
    rec_index: dict[tuple[str, str], int] = {}
    recordings: list[dict] = []
    clock_index: dict[str, int] = {}
    code_parts, row_parts = [], []
    for seg, seg_codes in store.iter_segments():
        j = np.arange(seg.n_rows)
        capture = seg.capture_start_utc + j * seg.hop_s
        keep = slice(None) if since_s is None else capture >= since_s
        j, capture, seg_codes = j[keep], capture[keep], seg_codes[keep]
        if not len(j):
            continue
        rec = seg.recording
        if rec.key not in rec_index:
            rec_index[rec.key] = len(recordings)
            recordings.append({
                "path": portable_path(rec.path, root), "station": rec.station,
                "content_hash": rec.content_hash, "start_utc": rec.start_utc,
                "sample_rate": rec.sample_rate, "duration_s": rec.duration_s})
        clock = clock_index.setdefault(seg.clock_source, len(clock_index))
        rows = np.zeros(len(j), ROW_DTYPE)
        rows["recording"] = rec_index[rec.key]
        rows["clock"] = clock
        rows["offset_s"] = seg.first_offset_s + j * seg.hop_s
        rows["length_s"] = seg.length_s
        rows["capture_utc"] = capture
        code_parts.append(seg_codes)
        row_parts.append(rows)
    nbytes = (store.bits + 7) // 8
    codes = np.concatenate(code_parts) if code_parts else np.zeros((0, nbytes), np.uint8)
    rows = np.concatenate(row_parts) if row_parts else np.zeros(0, ROW_DTYPE)
    return codes, rows, recordings, list(clock_index)


# ---------------------------------------------------------------------------------------
# Apply


def apply_update(update_file: str | Path, store_dir: str | Path, trusted: list[str | Path], *,
                 create: bool = False) -> ApplyResult:
    """Verify ``update_file`` against the ``trusted`` public key files, then add it to the
    store in ``store_dir`` all at once (or not at all). ``create``: make the store, bound
    to the update's bundle, when ``store_dir`` holds none.

    Raises UpdateRejected (the file), UpdateForOtherBundle (another bundle or width), or
    StoreError; in every case the store is left as it was."""
    if not trusted:
        raise InvalidArgument("no trusted key given: pass the signer's KEY.pub with --trust")
    keys = [load_public_key(p) for p in trusted]
    update = read_update(update_file, keys)
    segments = segments_of(update)  # also before the store is touched
    tag = f"update:{update.update_id}"

    store_dir = Path(store_dir)
    if (store_dir / META_FILE).is_file():
        with CodeStore.open(store_dir, "r") as store:  # read-only: refusals change nothing
            update.check_target(store.fingerprint, store.bits)
            if store.has_tag(tag):
                return ApplyResult(update.update_id, 0, True, update.fingerprint, False)
        store = CodeStore.open(store_dir, "a", fingerprint=update.fingerprint,
                               bits=update.bits)
    elif create:
        if store_dir.exists() and (not store_dir.is_dir() or any(store_dir.iterdir())):
            raise StoreError(f"{store_dir} exists and is not a code store; give --db an "
                             "empty or new folder with --create")
        # A new store is filled under a temporary name and renamed into place, so a cut
        # leaves no store (as before) or the complete one, never an empty one.
        tmp = store_dir.parent / f".{store_dir.name}.applying-{uuid.uuid4().hex[:8]}"
        try:
            with CodeStore.create(tmp, update.bits, update.fingerprint) as store:
                added = store.append(update.codes, segments, tag=tag)
            if store_dir.exists():
                store_dir.rmdir()
            os.rename(tmp, store_dir)
            fsync_dir(store_dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ApplyResult(update.update_id, len(added), False, update.fingerprint, True)
    else:
        raise StoreError(f"{store_dir} is not a code store; pass --create to make a new store "
                         f"for bundle {update.fingerprint} there, or check the --db path")
    try:
        # One tagged append is one commit: the rows, their metadata and the tag land in
        # the same SQLite transaction, after the codes are fdatasync()ed.
        added = store.append(update.codes, segments, tag=tag)
    finally:
        store.close()
    return ApplyResult(update.update_id, len(added), len(added) == 0 and update.count > 0,
                       update.fingerprint, False)


def segments_of(update: UpdatePackage) -> list[Segment]:
    """The update's rows as store segments: consecutive rows of one recording and clock on
    a regular hop become one segment, with the store's grid tolerance."""
    recordings = [Recording(path=r["path"], station=r["station"], start_utc=r["start_utc"],
                            sample_rate=r["sample_rate"], duration_s=r["duration_s"],
                            content_hash=r["content_hash"]) for r in update.recordings]
    rec = update.rows["recording"].tolist()
    clock = update.rows["clock"].tolist()
    offset = update.rows["offset_s"].tolist()
    length = update.rows["length_s"].tolist()
    capture = update.rows["capture_utc"].tolist()
    tol = GRID_TOLERANCE_S
    segments: list[Segment] = []
    start, n, hop = 0, 0, 0.0

    def close_run():
        segments.append(Segment(recording=recordings[rec[start]], first_offset_s=offset[start],
                                length_s=length[start], capture_start_utc=capture[start],
                                hop_s=hop if n > 1 else 0.0, n_rows=n,
                                clock_source=update.clocks[clock[start]]))

    for i in range(len(rec)):
        if n:
            same = (rec[i] == rec[start] and clock[i] == clock[start]
                    and abs(length[i] - length[start]) <= tol)
            if same and n == 1:
                step = offset[i] - offset[start]
                same = step > tol and abs(capture[i] - capture[start] - step) <= tol
                if same:
                    hop = step
            elif same:
                same = (abs(offset[start] + n * hop - offset[i]) <= tol
                        and abs(capture[start] + n * hop - capture[i]) <= tol)
            if same:
                n += 1
                continue
            close_run()
        start, n, hop = i, 1, 0.0
    if n:
        close_run()
    return segments


# ---------------------------------------------------------------------------------------
# Merge


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
