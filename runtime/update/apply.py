"""SD-card updates between code stores: build on one machine, apply on a station.

- `build_update(store_dir, key, out, since=None, root=None)` reads a store and writes one
  signed ``.cvaup`` file with its codes and window metadata (see `cvahash.update.format`).
- `apply_update(file, store_dir, trusted)` verifies the file completely (signature,
  checksum, every field, bit width and bundle fingerprint) *before* it opens the store
  for writing, then appends everything in one tagged commit of the store: after a power
  cut at any instant the store holds all of the update or none of it, and applying the
  same update again changes nothing (the tag is ``update:<update id>``, recorded in the
  same transaction as the rows). Windows the store already holds (same station,
  recording content hash and offset: two overlapping updates, or an update of windows
  that came before by another route) are left out and counted, never stored twice.
  Each applied update is noted in ``updates-applied.jsonl`` in the store folder, so a
  hit whose audio never reached this machine can say which update and station it
  came from (`update_origins`).

Merging several stations' stores is `cvahash.update.merge`.

A store holds codes of one bundle only: an update or a source of another fingerprint or
bit width is refused with a message that says how to re-index or keep a store per bundle.
"""

from __future__ import annotations

import json
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
from ..library.library import record_bundle
from ..limits import META_FILE  # what makes a folder a code store
from ..model.bundle import ModelBundle
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

# One JSON line per update applied to a store: its id, stations and recordings.
ORIGINS_FILE = "updates-applied.jsonl"


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
    already_present: int = 0  # the update's windows the store held already (not added)
    bundle: str | None = None  # the bundle folder recorded for `search` (--bundle)


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
                 create: bool = False, bundle_dir: str | Path | None = None) -> ApplyResult:
    """Verify ``update_file`` against the ``trusted`` public key files, then add it to the
    store in ``store_dir`` all at once (or not at all). ``create``: make the store, bound
    to the update's bundle, when ``store_dir`` holds none. ``bundle_dir``: the bundle
    folder on this machine; it must have the update's fingerprint and is recorded in the
    store, so `cvahash search --db` finds it without --bundle.

    Raises UpdateRejected (the file), UpdateForOtherBundle (another bundle or width), or
    StoreError; in every case the store is left as it was."""
    if not trusted:
        raise InvalidArgument("no trusted key given: pass the signer's KEY.pub with --trust")
    keys = [load_public_key(p) for p in trusted]
    update = read_update(update_file, keys)
    segments_of(update)  # check the rows before the store is touched
    bundle = _bundle_for(update, bundle_dir) if bundle_dir is not None else None
    tag = f"update:{update.update_id}"

    store_dir = Path(store_dir)
    if (store_dir / META_FILE).is_file():
        with CodeStore.open(store_dir, "r") as store:  # read-only: refusals change nothing
            update.check_target(store.fingerprint, store.bits)
            if store.has_tag(tag):
                _record(store_dir, update, bundle)
                return ApplyResult(update.update_id, 0, True, update.fingerprint, False,
                                   bundle=_bundle_path(bundle))
            keep = _new_windows(store, update)
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
                added = store.append(update.codes, segments_of(update), tag=tag)
            _record(tmp, update, bundle)
            if store_dir.exists():
                store_dir.rmdir()
            os.rename(tmp, store_dir)
            fsync_dir(store_dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ApplyResult(update.update_id, len(added), False, update.fingerprint, True,
                           bundle=_bundle_path(bundle))
    else:
        raise StoreError(f"{store_dir} is not a code store; pass --create to make a new store "
                         f"for bundle {update.fingerprint} there, or check the --db path")
    try:
        # One tagged append is one commit: the rows, their metadata and the tag land in
        # the same SQLite transaction, after the codes are fdatasync()ed. Windows already
        # in the store are left out; the tag is recorded even when none is new.
        if store.has_tag(tag):  # applied by another process since we looked
            added = range(0)
        else:
            added = store.append(update.codes[keep], segments_of(update, keep), tag=tag)
    finally:
        store.close()
    _record(store_dir, update, bundle)
    already = int(update.count - keep.sum())
    return ApplyResult(update.update_id, len(added),
                       len(added) == 0 and update.count > 0 and already == 0,
                       update.fingerprint, False, already_present=already,
                       bundle=_bundle_path(bundle))


def window_identity(station: str, content_hash: str, path: str, offset_s: float) -> tuple:
    """What makes two windows the same window, whichever way they reached a store: the
    station, the recording's content (its hash; the path when it has none, as for live
    capture without retained audio) and the offset in it, to the millisecond."""
    return (station, content_hash or f"path:{path}", round(float(offset_s), 3))


def _new_windows(store: CodeStore, update: UpdatePackage) -> np.ndarray:
    """Boolean mask over the update's rows: True for windows the store does not hold.

    Each (station, content) pair gets a small integer and each offset is counted in whole
    milliseconds, so one window is one int64 and the comparison is one search over
    arrays (the update can carry millions of windows): a sorted search, several times
    faster here than `np.isin`'s hashing."""
    recs = [window_identity(r["station"], r["content_hash"], r["path"], 0)[:2]
            for r in update.recordings]
    number = {who: i for i, who in enumerate(dict.fromkeys(recs))}
    held: list[np.ndarray] = []
    for seg, _codes in store.iter_segments():
        rec = seg.recording
        i = number.get(window_identity(rec.station, rec.content_hash, rec.path, 0)[:2])
        if i is None:
            continue
        offsets = seg.first_offset_s + np.arange(seg.n_rows) * seg.hop_s
        held.append(_window_keys(np.full(seg.n_rows, i), offsets))
    if not held:
        return np.ones(update.count, bool)
    rec_number = np.array([number[who] for who in recs], dtype=np.int64)
    rows = _window_keys(rec_number[np.asarray(update.rows["recording"], dtype=np.int64)],
                        np.asarray(update.rows["offset_s"], dtype=np.float64))
    held_keys = np.sort(np.concatenate(held))
    at = np.minimum(np.searchsorted(held_keys, rows), len(held_keys) - 1)
    return held_keys[at] != rows


_MS_BITS = 42  # offsets up to 2**42 ms (139 years) below the recording number


def _window_keys(numbers: np.ndarray, offsets_s: np.ndarray) -> np.ndarray:
    """One int64 per window: the recording's number above its offset in milliseconds."""
    ms = np.rint(np.asarray(offsets_s, dtype=np.float64) * 1000.0).astype(np.int64)
    return (np.asarray(numbers, dtype=np.int64) << _MS_BITS) | (ms & ((1 << _MS_BITS) - 1))


def _bundle_for(update: UpdatePackage, bundle_dir: str | Path):
    """Open ``bundle_dir`` and refuse it unless it made the update's codes."""
    bundle = ModelBundle.open(bundle_dir)
    if (bundle.fingerprint, bundle.bits) != (update.fingerprint, update.bits):
        raise FingerprintMismatch(
            f"--bundle {bundle_dir} has fingerprint {bundle.fingerprint} ({bundle.bits} bits) "
            f"but update {update.update_id} holds codes of bundle {update.fingerprint} "
            f"({update.bits} bits); pass the bundle the sending station uses")
    return bundle


def _bundle_path(bundle) -> str | None:
    return None if bundle is None else str(Path(bundle.path).resolve())


def _record(store_dir: Path, update: UpdatePackage, bundle) -> None:
    """Note the update in the store folder (ORIGINS_FILE), and the bundle if given."""
    if bundle is not None:
        record_bundle(store_dir, bundle)
    if any(o.get("update_id") == update.update_id for o in _read_origins(store_dir)):
        return
    line = {"update_id": update.update_id,
            "stations": sorted({r["station"] for r in update.recordings if r["station"]}),
            "created": update.created,
            "recordings": [[r["path"], r["content_hash"], r["station"]]
                           for r in update.recordings]}
    try:
        with open(Path(store_dir) / ORIGINS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    except OSError as exc:  # the windows are in; only the explanation of missing audio is
        log.warning("cannot note update %s in %s: %s", update.update_id, store_dir, exc)


def _read_origins(store_dir: Path) -> list[dict]:
    try:
        text = (Path(store_dir) / ORIGINS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a power failure
    return out


def update_origins(store_dir: str | Path) -> dict[str, str]:
    """Recording path -> "update U from station S" for every recording that reached the
    store in an update (`cvahash search` explains hits whose audio is not here)."""
    out = {}
    for o in _read_origins(Path(store_dir)):
        for path, _hash, station in o.get("recordings", []):
            out.setdefault(path, f"update {o.get('update_id')} from station "
                                 f"{station or '(unnamed)'}")
    return out


def segments_of(update: UpdatePackage, keep: np.ndarray | None = None) -> list[Segment]:
    """The update's rows (those where ``keep`` is True, if given) as store segments:
    consecutive rows of one recording and clock on a regular hop become one segment,
    with the store's grid tolerance."""
    recordings = [Recording(path=r["path"], station=r["station"], start_utc=r["start_utc"],
                            sample_rate=r["sample_rate"], duration_s=r["duration_s"],
                            content_hash=r["content_hash"]) for r in update.recordings]
    rows = update.rows if keep is None else update.rows[keep]
    rec_a = np.asarray(rows["recording"], dtype=np.int64)
    clock_a = np.asarray(rows["clock"], dtype=np.int64)
    offset_a = np.asarray(rows["offset_s"], dtype=np.float64)
    length_a = np.asarray(rows["length_s"], dtype=np.float64)
    capture_a = np.asarray(rows["capture_utc"], dtype=np.float64)
    rec, clock = rec_a.tolist(), clock_a.tolist()
    offset, length, capture = offset_a.tolist(), length_a.tolist(), capture_a.tolist()
    tol = GRID_TOLERANCE_S
    segments: list[Segment] = []
    start, n, hop = 0, 0, 0.0

    def close_run():
        segments.append(Segment(recording=recordings[rec[start]], first_offset_s=offset[start],
                                length_s=length[start], capture_start_utc=capture[start],
                                hop_s=hop if n > 1 else 0.0, n_rows=n,
                                clock_source=update.clocks[clock[start]]))

    def run_continues(i: int) -> int:
        """How many rows from i on continue the open run (hop known), checked with numpy
        a block at a time: the same test as the loop below, row by row."""
        total, block = 0, 256
        while i + total < len(rec):
            j = slice(i + total, min(len(rec), i + total + block))
            k = np.arange(n + total, n + total + (j.stop - j.start))
            ok = ((rec_a[j] == rec[start]) & (clock_a[j] == clock[start])
                  & (np.abs(length_a[j] - length[start]) <= tol)
                  & (np.abs(offset[start] + k * hop - offset_a[j]) <= tol)
                  & (np.abs(capture[start] + k * hop - capture_a[j]) <= tol))
            bad = np.flatnonzero(~ok)
            if len(bad):
                return total + int(bad[0])
            total += j.stop - j.start
            block *= 4
        return total

    i = 0
    while i < len(rec):
        if n >= 2:  # a run on a known hop: take every row that continues it at once
            more = run_continues(i)
            n += more
            i += more
            if i >= len(rec):
                break
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
                i += 1
                continue
            close_run()
        start, n, hop = i, 1, 0.0
        i += 1
    if n:
        close_run()
    return segments


# ---------------------------------------------------------------------------------------
# Merge
