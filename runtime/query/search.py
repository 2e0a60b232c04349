"""Searching a code store: by typed text, or by example (a recorded call), into hit records.

- `prepare_query(text)`: checks and tidies what the user typed (refuses empty or
  whitespace-only queries, drops control characters, normalises Unicode, truncates very
  long text at a word boundary and says so).
- `parse_like("FILE@START_S")`: the query-by-example argument (start in seconds or
  ``[h:]mm:ss``; default 0).
- `parse_when("2024-06-12T05:30")`: the ``--since``/``--until`` bounds (UTC unless a
  zone is given).
- `search_text(store, bundle, text, k, ...)` and `search_like(store, bundle, path, start_s,
  k, ...)` -> `SearchResult`, whose ``hits`` are `Hit` records sorted by (distance, row).
- `resolve_bundle(explicit, store_dir)`: where the model bundle is when ``--bundle`` is
  left out (the path recorded at index time, then ``$CVAHASH_BUNDLE``).

Text and audio codes live in one code space (Cross-View Alignment trains both views
into it), so a query by example is an audio code searched against the stored audio codes
with the same kernel; the store refuses queries from another bundle's fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, InvalidArgument

__all__ = [
    "BUNDLE_ENV",
    "MAX_QUERY_CHARS",
    "Hit",
    "SearchResult",
    "parse_like",
    "parse_when",
    "prepare_query",
    "resolve_bundle",
    "search_like",
    "search_text",
]

BUNDLE_ENV = "CVAHASH_BUNDLE"
# Far more than the text encoder reads (CLAP's tokenizer keeps 77 tokens, a few hundred
# characters); longer input is a paste gone wrong, and we say we cut it.
MAX_QUERY_CHARS = 1000
EXAMPLE_QUERY = '"woodpecker drumming on dead tree"'


class QueryError(InvalidArgument):
    """A query that cannot be searched for (empty, only spaces, unreadable example)."""


@dataclass
class Hit:
    """One search result: a stored window and how far its code is from the query's.

    ``start_s``/``end_s`` are seconds into ``recording`` (the path given at index time);
    ``capture_time`` is when the window's first sample was recorded (UTC), or None, and
    ``clock_source`` says which clock that came from. ``extra`` holds any further
    metadata the store keeps (content hash, sample rate...)."""

    rank: int
    distance: int
    row: int
    recording: str
    start_s: float
    end_s: float
    capture_time: datetime | None = None
    clock_source: str = "unknown"
    station: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from .report import jsonable

        d = {
            "rank": self.rank,
            "distance": self.distance,
            "row": self.row,
            "recording": self.recording,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "capture_time": jsonable(self.capture_time),
            "clock_source": self.clock_source,
            "station": self.station,
        }
        d.update({k: jsonable(v) for k, v in self.extra.items() if k not in d})
        return d


@dataclass
class SearchResult:
    """A query as it was searched and its hits, best first."""

    query: str  # the text searched for, or "FILE@START" for a query by example
    mode: str  # "text" or "like"
    bits: int
    fingerprint: str
    k: int
    hits: list[Hit]
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from .report import jsonable

        return {
            "query": self.query,
            "mode": self.mode,
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "k": self.k,
            "truncated": self.truncated,
            "notes": list(self.notes),
            "filters": {k: jsonable(v) for k, v in self.filters.items() if v is not None},
            "hits": [h.to_dict() for h in self.hits],
        }


# --- the query ------------------------------------------------------------------------


def prepare_query(text: str, max_chars: int = MAX_QUERY_CHARS) -> tuple[str, bool, list[str]]:
    """``(query, truncated, notes)`` for what the user typed.

    Unicode is NFC-normalised (the same word typed on two keyboards gives one code),
    control characters become spaces and runs of whitespace collapse to one. Non-ASCII
    text is kept: the tokenizer is byte-level, though a model trained on English captions
    knows little of other languages (a note says so). Empty or whitespace-only queries
    raise `QueryError`; text longer than ``max_chars`` is cut at the last word boundary
    before it, with ``truncated`` set and a note saying how much was kept.
    """
    if not isinstance(text, str):
        raise QueryError(f"the query must be text, not {type(text).__name__}")
    clean = unicodedata.normalize("NFC", text)
    clean = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in clean)
    clean = " ".join(clean.split())
    if not clean:
        raise QueryError(
            "the query is empty" + (" (only spaces)" if text else "")
            + f": type what you want to hear, e.g. cvahash search {EXAMPLE_QUERY} --db DIR"
        )
    notes = []
    truncated = False
    if len(clean) > max_chars:
        cut = clean.rfind(" ", 0, max_chars + 1)
        cut = cut if cut > max_chars // 2 else max_chars
        notes.append(
            f"query truncated: kept the first {cut} of {len(clean)} characters "
            "(the model reads only the start of long text; describe the sound in a sentence)"
        )
        clean = clean[:cut].rstrip()
        truncated = True
    if not clean.isascii():
        notes.append("query has non-ASCII characters: the model was trained on English captions")
    return clean, truncated, notes


_CLOCK = re.compile(r"^(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:\.\d*)?)$")


def parse_offset(text: str) -> float:
    """Seconds from ``"95"``, ``"95.5"``, ``"1:35"`` or ``"0:01:35"``; raises QueryError."""
    m = _CLOCK.match(text.strip())
    if not m:
        raise QueryError(f"{text!r} is not a time into the recording (use seconds like 95.5 or mm:ss)")
    seconds = int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + float(m["s"])
    if not math.isfinite(seconds):
        raise QueryError(f"{text!r} is not a finite time")
    return seconds


def parse_like(spec: str) -> tuple[Path, float]:
    """``FILE[@START]`` -> (path, start seconds). The last ``@`` splits only when what
    follows is a time, so file names containing ``@`` still work."""
    if not spec or not spec.strip():
        raise QueryError("--like needs a recording: --like FILE or --like FILE@START_S")
    head, sep, tail = spec.rpartition("@")
    if sep and head and _CLOCK.match(tail.strip()):
        return Path(head), parse_offset(tail)
    return Path(spec), 0.0


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_when(text: str, *, end_of_day: bool = False) -> datetime:
    """An aware UTC datetime from ISO-8601 (``2024-06-12``, ``2024-06-12T05:30``,
    ``2024-06-12 05:30:00+02:00``, ``...Z``). No zone means UTC. A bare date means
    the start of that day, or with ``end_of_day`` the start of the next (so
    ``--until 2024-06-12`` includes all of the 12th)."""
    raw = text.strip()
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is not a date/time: use ISO form like 2024-06-12 or 2024-06-12T05:30 (UTC)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    if end_of_day and _DATE_ONLY.match(raw):
        t += timedelta(days=1)
    return t.astimezone(timezone.utc)


# --- where the bundle is --------------------------------------------------------------


def resolve_bundle(explicit: str | os.PathLike | None, recorded: str | None) -> Path:
    """The bundle folder to use: ``explicit`` (``--bundle``), else the one recorded in
    the store at index time if it still exists, else ``$CVAHASH_BUNDLE``. Raises
    `BundleError` saying what to pass when none is usable."""
    if explicit:
        return Path(explicit)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    env = os.environ.get(BUNDLE_ENV)
    if env:
        return Path(env)
    where = (
        f"the store was indexed with {recorded}, which no longer exists"
        if recorded
        else "the store does not record which bundle made it"
    )
    raise BundleError(
        f"no model bundle given and {where}: pass --bundle DIR (the folder with manifest.json) "
        f"or set {BUNDLE_ENV}=DIR"
    )


# --- opening a store with its bundle --------------------------------------------------

# A small file beside the store's own files that remembers which bundle folder indexed
# it, so `search` works without --bundle. The store itself only binds the fingerprint.
INDEXED_WITH = "indexed-with.json"


def recorded_bundle(store_dir: str | os.PathLike) -> str | None:
    """The bundle folder recorded at index time, or None."""
    try:
        data = json.loads((Path(store_dir) / INDEXED_WITH).read_text(encoding="utf-8"))
        return str(data["bundle"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_bundle(store_dir: str | os.PathLike, bundle) -> None:
    """Remember ``bundle``'s folder (absolute) and fingerprint in the store folder
    (temp file + rename: a cut leaves the old record or the new one)."""
    path = Path(store_dir) / INDEXED_WITH
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"bundle": str(Path(bundle.path).resolve()),
                               "fingerprint": bundle.fingerprint}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _is_store(store_dir: Path) -> bool:
    from ..store.code_store import META_FILE

    return (store_dir / META_FILE).is_file()


def open_bundle_for(store_dir: str | os.PathLike, explicit, store_fingerprint: str | None,
                    threads: int = 0):
    """Open the bundle for a store and refuse one with another fingerprint, showing both."""
    from ..errors import FingerprintMismatch
    from ..model.bundle import ModelBundle

    recorded = recorded_bundle(store_dir)
    path = resolve_bundle(explicit, recorded)
    bundle = ModelBundle.open(path, threads=threads)
    if store_fingerprint is not None and bundle.fingerprint != store_fingerprint:
        hint = f" (it was indexed with {recorded})" if recorded else ""
        raise FingerprintMismatch(
            f"the code store {store_dir} was made with bundle fingerprint {store_fingerprint}, "
            f"but the bundle {path} has fingerprint {bundle.fingerprint}: codes of different "
            f"bundles cannot be compared; pass the bundle that made the store{hint}, or index "
            "into a new --db with this one"
        )
    return bundle


def open_store_and_bundle(store_dir, bundle_dir=None, *, mode: str = "r", threads: int = 0,
                          create: bool = False):
    """``(CodeStore, ModelBundle)`` that belong together.

    ``mode="r"``: the store must exist. ``mode="w"``: open for appending, or with
    ``create`` make a new store bound to the bundle (and remember the bundle's folder).
    The bundle is opened and checked before a store is created, so a bad bundle or a
    mismatch leaves no new store behind. Raises StoreError, BundleError or
    FingerprintMismatch (both fingerprints in the message).
    """
    from ..errors import StoreError
    from ..store.code_store import CodeStore

    store_dir = Path(store_dir)
    if not _is_store(store_dir):
        if mode == "w" and create:
            if store_dir.exists() and (not store_dir.is_dir() or any(store_dir.iterdir())):
                raise StoreError(
                    f"{store_dir} exists and is not a code store (nor an empty folder); "
                    "choose a new --db folder"
                )
            bundle = open_bundle_for(store_dir, bundle_dir, None, threads)
            store = CodeStore.create(store_dir, bundle.bits, bundle.fingerprint)
            record_bundle(store_dir, bundle)
            return store, bundle
        raise StoreError(
            f"{store_dir} is not a code store (no metadata database there); make one with "
            f"`cvahash index RECORDINGS --db {store_dir} --bundle BUNDLE`"
        )
    probe = CodeStore.open(store_dir, "r")
    try:
        fingerprint = probe.fingerprint
    finally:
        probe.close()
    bundle = open_bundle_for(store_dir, bundle_dir, fingerprint, threads)
    store = CodeStore.open(store_dir, "a" if mode == "w" else "r", fingerprint=fingerprint)
    if mode == "w" and bundle_dir and recorded_bundle(store_dir) is None:
        record_bundle(store_dir, bundle)
    return store, bundle


def store_info(store_dir: str | os.PathLike) -> dict[str, Any]:
    """What ``cvahash info`` shows, as a JSON-ready dict (opens the store read-only)."""
    from ..errors import StoreError
    from ..store.code_store import CodeStore
    from .report import jsonable

    store_dir = Path(store_dir)
    if not _is_store(store_dir):
        raise StoreError(f"{store_dir} is not a code store (no metadata database there)")
    with CodeStore.open(store_dir, "r") as store:
        stats = store.stats()
        recordings = store.recordings()
    first, last = stats["first_capture_utc"], stats["last_capture_end_utc"]
    audio_s = sum(r.duration_s or 0.0 for r in recordings)
    return {
        "store": str(store_dir),
        "windows": stats["rows"],
        "recordings": stats["recordings"],
        "audio_hours": round(audio_s / 3600, 3),
        "first_capture": None if first is None else jsonable(_utc(first)),
        "last_capture_end": None if last is None else jsonable(_utc(last)),
        "stations": {name or "(none)": n for name, n in sorted(stats["stations"].items())},
        "bits": stats["bits"],
        "fingerprint": stats["fingerprint"],
        "bundle": recorded_bundle(store_dir),
        "code_bytes": stats["code_bytes"],
        "metadata_bytes": stats["metadata_bytes"],
        "bytes": stats["code_bytes"] + stats["metadata_bytes"],
        "forgotten_windows": stats["forgotten_rows"],
    }


# --- searching ------------------------------------------------------------------------


def _hits(store, codes: np.ndarray, k: int, filters: dict[str, Any], threads: int) -> list[Hit]:
    found = store.search(codes, k, threads=threads,
                         **{n: v for n, v in filters.items() if v is not None})[0]
    return [_to_hit(rank, h) for rank, h in enumerate(found, start=1)]


def _to_hit(rank: int, h) -> Hit:
    """A Hit from the store's hit record (`cvahash.store.records.Hit`)."""
    rec = h.recording
    known_time = h.clock_source != "unknown"
    return Hit(
        rank=rank,
        distance=int(h.distance),
        row=int(h.row),
        recording=rec.path,
        start_s=float(h.offset_s),
        end_s=float(h.offset_s + h.length_s),
        capture_time=h.capture_time if known_time else None,
        clock_source=h.clock_source,
        station=rec.station or None,
        extra={
            "recording_start": None if rec.start_utc is None else _utc(rec.start_utc),
            "recording_duration_s": rec.duration_s,
            "sample_rate": rec.sample_rate,
            "content_hash": rec.content_hash or None,
        },
    )


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"-k {k!r}: the number of results must be a whole number >= 1")
    return k


def text_query_code(bundle, text: str) -> tuple[str, np.ndarray, bool, list[str]]:
    """``(query, codes uint8 [1, nbytes], truncated, notes)``: what ``search`` searches for
    when the user types ``text`` (tidied by `prepare_query`, encoded by the text graph).
    Shared by every searcher of codes (the station store, the network archive)."""
    query, truncated, notes = prepare_query(text)
    tokens = bundle.tokenize([query])
    if bool(tokens.truncated[0]):
        truncated = True
        notes.append(
            f"query truncated: the model reads only its first {tokens.input_ids.shape[1]} "
            "tokens; the rest was ignored (a short description works best)"
        )
    return query, bundle.encode_text([query]), truncated, notes


def like_query_code(bundle, path: str | os.PathLike, start_s: float = 0.0) -> np.ndarray:
    """The code (uint8 [1, nbytes]) ``search --like FILE@START_S`` searches for."""
    from ..model.frontend import log_mel

    samples = example_window(path, start_s, bundle.frontend_params)
    return bundle.encode_audio(log_mel(samples, bundle.frontend_params))


def search_text(store, bundle, text: str, k: int = 20, *, threads: int = 0, **filters) -> SearchResult:
    """Encode ``text`` with the bundle's text graph and return the ``k`` nearest windows
    (filters: ``since``, ``until``, ``station``, as the store takes them)."""
    k = _check_k(k)
    query, codes, truncated, notes = text_query_code(bundle, text)
    hits = _hits(store, codes, k, filters, threads)
    return SearchResult(query, "text", bundle.bits, bundle.fingerprint, k, hits, truncated,
                        notes, dict(filters))  # fmt: skip


def example_window(path: str | os.PathLike, start_s: float, params) -> np.ndarray:
    """The 10 s window (``params.max_length_s``) of a recording starting at ``start_s``,
    mono at the model's rate. Raises AudioError for bad files, QueryError when the
    start lies at or past the end."""
    from ..model import audio

    path = Path(path)
    info = audio.probe(path)
    if start_s < 0 or start_s >= info.duration_s:
        raise QueryError(
            f"--like {path}@{start_s:g}: the start is past the end of the recording "
            f"({info.duration_s:.1f} s long); use a start between 0 and {max(info.duration_s - 1, 0):.0f}"
        )
    # Windows at 0, start_s, 2 * start_s...: the second is the one we want, cut by the
    # same continuous resampler as at index time (so an indexed window finds itself at
    # distance 0); streaming keeps memory bounded however far into the file it is.
    window_s = params.max_length_s
    hop_s = start_s if start_s > 0 else window_s
    best = None
    for w in audio.iter_windows(path, window_s=window_s, hop_s=hop_s,
                                sample_rate=params.sample_rate, min_last_s=0.0):  # fmt: skip
        if w.offset_s <= start_s + 1e-9:
            best = w
        if w.offset_s >= start_s - 1e-9:
            break
    if best is None:  # pragma: no cover - probe said the file is longer than start_s
        raise QueryError(f"--like {path}@{start_s:g}: no audio at that time")
    # Near the end only a window starting earlier may exist: keep the part from start_s.
    skip = max(0, round((start_s - best.offset_s) * params.sample_rate))
    samples = best.samples[skip:]
    if samples.size == 0:
        raise QueryError(f"--like {path}@{start_s:g}: no audio at that time")
    return samples


def search_like(store, bundle, path: str | os.PathLike, start_s: float = 0.0, k: int = 20, *,
                threads: int = 0, **filters) -> SearchResult:  # fmt: skip
    """Query by example: encode the window of ``path`` starting at ``start_s`` with the
    audio graph and return the ``k`` nearest stored windows."""
    k = _check_k(k)
    codes = like_query_code(bundle, path, start_s)
    hits = _hits(store, codes, k, filters, threads)
    return SearchResult(f"{path}@{start_s:g}", "like", bundle.bits, bundle.fingerprint, k, hits,
                        filters=dict(filters))  # fmt: skip


__all__ += ["QueryError", "example_window", "like_query_code", "text_query_code",
            "open_store_and_bundle", "parse_offset", "store_info"]
