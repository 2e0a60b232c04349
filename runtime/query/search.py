"""Searching a code store: by typed text, or by example (a recorded call), into hit records.

- `prepare_query(text)`: checks and tidies what the user typed (refuses empty or
  whitespace-only queries, drops control characters, normalises Unicode, truncates very
  long text at a word boundary and says so).
- `parse_like("FILE@START_S")`: the query-by-example argument (start in seconds or
  ``[h:]mm:ss``; default 0).
- `parse_when("2024-06-12T05:30")`: the ``--since``/``--until`` bounds (UTC unless a
  zone is given).
- `search_text(store, bundle, text, k, ...)` and `search_like(store, bundle, path, start_s,
  k, ...)` -> `SearchResult`, whose ``hits`` are `Hit` records, best first.

How text hits are ordered: the store's `RERANK_DEPTH` (or ``k``, if more) nearest windows
by Hamming distance to the query's code are the candidates; they are ordered by the
query-weighted distance (`cvahash.kernel.weighted`: each bit where a window disagrees
with the query's sign costs ``|logit|`` of the query's text-graph output for that bit),
then by Hamming distance, then by row, and the first ``k`` are kept. Each hit's
``distance`` stays its Hamming distance in bits (the calibration and watchlist radii are
in bits). ``rerank=False`` keeps the plain Hamming order, (distance, row). A query by
example (``--like``) is ranked by Hamming distance alone.

The store and its bundle are opened together as a `cvahash.library.Library`; hits are
the store's own `cvahash.store.records.Hit` records, ranked.

Text and audio codes live in one code space (Cross-View Alignment trains both views
into it), so a query by example is an audio code searched against the stored audio codes
with the same kernel; the store refuses queries from another bundle's fingerprint.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from ..kernel.weighted import rerank as weighted_order
from ..model.bundle import pack_codes
from ..model.frontend import log_mel
from ..store.records import Hit
from .results import SearchResult

__all__ = [
    "MAX_QUERY_CHARS",
    "RERANK_DEPTH",
    "Hit",
    "SearchResult",
    "parse_like",
    "parse_when",
    "prepare_query",
    "search_like",
    "search_text",
]

# Far more than the text encoder reads (CLAP's tokenizer keeps 77 tokens, a few hundred
# characters); longer input is a paste gone wrong, and we say we cut it.
MAX_QUERY_CHARS = 1000
EXAMPLE_QUERY = '"woodpecker drumming on dead tree"'
# Hamming-nearest candidates re-ranked by the query-weighted distance (at least k).
RERANK_DEPTH = 200


class QueryError(InvalidArgument):
    """A query that cannot be searched for (empty, only spaces, unreadable example)."""


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
        raise QueryError(f"{text!r} is not a time into the recording "
                         "(use seconds like 95.5 or mm:ss)")
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


# The dates a store can hold (cvahash.limits EARLIEST_UTC .. LATEST_UTC).
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
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
    if not _EARLIEST <= t < _LATEST:
        raise InvalidArgument(f"{text!r} is outside 1970-2199; give a date in that range "
                              "(e.g. 2024-06-12)")
    if end_of_day and _DATE_ONLY.match(raw):
        t += timedelta(days=1)
    return t.astimezone(timezone.utc)


# --- searching ------------------------------------------------------------------------


def _hits(store, codes: np.ndarray, k: int, filters: dict[str, Any], threads: int) -> list[Hit]:
    found = store.search(codes, k, threads=threads, **_given(filters))[0]
    return [replace(h, rank=rank) for rank, h in enumerate(found, start=1)]


def _given(filters: dict[str, Any]) -> dict[str, Any]:
    return {n: v for n, v in filters.items() if v is not None}


def _reranked(store, logits: np.ndarray, k: int, depth: int, filters: dict[str, Any],
              threads: int) -> list[Hit]:
    """The ``max(k, depth)`` Hamming-nearest windows, ordered by (query-weighted distance,
    Hamming distance, the store's order), the first ``k`` of them ranked 1, 2, ..."""
    def order(i, codes, distances):
        return weighted_order(logits[i], codes, distances)[:k]

    found = store.search_reordered(pack_codes(logits), max(k, depth), order, threads=threads,
                                   **_given(filters))[0]
    return [replace(h, rank=rank) for rank, h in enumerate(found, start=1)]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"-k {k!r}: the number of results must be a whole number >= 1")
    return k


def text_query_logits(bundle, text: str) -> tuple[str, np.ndarray, bool, list[str]]:
    """``(query, logits float32 [1, bits], truncated, notes)``: the text graph's output for
    what the user typed (tidied by `prepare_query`); its signs are the query's code."""
    query, truncated, notes = prepare_query(text)
    tokens = bundle.tokenize([query])  # once: the logits come from these same tokens
    if bool(tokens.truncated[0]):
        truncated = True
        notes.append(
            f"query truncated: the model reads only its first {tokens.input_ids.shape[1]} "
            "tokens; the rest was ignored (a short description works best)"
        )
    return query, bundle.token_logits(tokens), truncated, notes


def text_query_code(bundle, text: str) -> tuple[str, np.ndarray, bool, list[str]]:
    """``(query, codes uint8 [1, nbytes], truncated, notes)``: the code ``search`` looks
    up for ``text`` (`text_query_logits` packed: bit i is logit i > 0). Shared by every
    searcher of codes (the station store, the network archive)."""
    query, logits, truncated, notes = text_query_logits(bundle, text)
    return query, pack_codes(logits), truncated, notes


def like_query_code(bundle, path: str | os.PathLike, start_s: float = 0.0) -> np.ndarray:
    """The code (uint8 [1, nbytes]) ``search --like FILE@START_S`` searches for."""
    samples = example_window(path, start_s, bundle.frontend_params)
    return bundle.encode_audio(log_mel(samples, bundle.frontend_params))


def search_text(store, bundle, text: str, k: int = 20, *, threads: int = 0,
                rerank: bool = True, depth: int = RERANK_DEPTH, **filters) -> SearchResult:
    """Encode ``text`` with the bundle's text graph and return the ``k`` best windows
    (filters: ``since``, ``until``, ``station``, as the store takes them).

    With ``rerank`` (the default) the ``max(k, depth)`` Hamming-nearest windows are
    ordered by the query-weighted distance (see the module docstring); ``rerank=False``
    gives the plain Hamming order. Either way each hit's ``distance`` is its Hamming
    distance in bits. A store without ``search_reordered`` is searched by Hamming
    distance (the result's ``order`` says which)."""
    k = _check_k(k)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InvalidArgument(f"re-rank depth {depth!r}: must be a whole number >= 1")
    query, logits, truncated, notes = text_query_logits(bundle, text)
    if rerank and hasattr(store, "search_reordered"):
        hits, order = _reranked(store, logits, k, depth, filters, threads), "weighted"
    else:
        hits, order = _hits(store, pack_codes(logits), k, filters, threads), "hamming"
    return SearchResult(query, "text", bundle.bits, bundle.fingerprint, k, hits, truncated,
                        notes, dict(filters), order)  # fmt: skip


def example_window(path: str | os.PathLike, start_s: float, params) -> np.ndarray:
    """The 10 s window (``params.max_length_s``) of a recording starting at ``start_s``,
    mono at the model's rate. Raises AudioError for bad files, QueryError when the
    start lies at or past the end."""
    from ..model import audio  # lazy: a text search reads no audio

    path = Path(path)
    info = audio.probe(path)
    if start_s < 0 or start_s >= info.duration_s:
        raise QueryError(
            f"--like {path}@{start_s:g}: the start is past the end of the recording "
            f"({info.duration_s:.1f} s long); "
            f"use a start between 0 and {max(info.duration_s - 1, 0):.0f}"
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


__all__ += ["QueryError", "example_window", "like_query_code", "parse_offset",
            "text_query_code", "text_query_logits"]
