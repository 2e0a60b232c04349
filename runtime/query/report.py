"""Showing search hits to people and scripts: a table, JSON, WAV snippets, spectrograms.

- `format_table(hits)`: the readable table ``cvahash search`` prints (rank, distance,
  recording relative to the recordings' common folder, start-end, capture time UTC,
  station).
- `to_json(result)`: one JSON document with the query, code width, bundle fingerprint,
  the truncation flag and every hit with all its metadata.
- `write_clips(hits, out_dir)`: WAV snippets cut from the original recordings, with
  ``context_s`` seconds either side, at the recording's own rate and channels.
- `write_spectrograms(hits, out_dir, params)`: a PNG per hit, the hit window's log-mel
  (the picture the model saw), drawn with axes and title by `cvahash.query.plots`.

A hit whose recording is gone (audio retention deleted it, the card was swapped) or
unreadable gets a per-hit note (`Saved.problem`); it never stops the others.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AudioError, CvahashError
from ..model.calibration import Calibration
from . import plots
from .results import Hit, SearchResult

if TYPE_CHECKING:  # pragma: no cover
    from ..model.frontend import FrontendParams

__all__ = [
    "Saved",
    "clip_name",
    "display_paths",
    "format_clock",
    "format_info",
    "format_span",
    "format_table",
    "to_json",
    "write_clips",
    "write_spectrograms",
]

# Capture times from these clocks are guesses (a copy resets a file's mtime); the table
# marks them with "~".
UNCERTAIN_CLOCKS = frozenset({"file-mtime", "unknown"})


@dataclass
class Saved:
    """What became of one hit's snippet or picture: ``path`` when written, else ``problem``."""

    rank: int
    path: Path | None = None
    problem: str | None = None


# --- text -----------------------------------------------------------------------------


def format_clock(seconds: float, hours: bool) -> str:
    """``mm:ss`` (or ``h:mm:ss`` when ``hours``), with tenths when not a whole second."""
    tenths = round(seconds * 10)
    whole, frac = divmod(tenths, 10)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}" if hours else f"{m + 60 * h:02d}:{s:02d}"
    return f"{text}.{frac}" if frac else text


def format_span(start_s: float, end_s: float) -> str:
    """``"01:20-01:30"``; ``"1:02:10-1:02:20"`` once the end passes an hour."""
    hours = end_s >= 3600
    return f"{format_clock(start_s, hours)}-{format_clock(end_s, hours)}"


def _iso(t: datetime | None) -> str:
    if t is None:
        return "-"
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def display_paths(paths: Sequence[str]) -> list[str]:
    """Paths relative to the folder they all share (just the names when one folder;
    unchanged when they share nothing but the file system root)."""
    if not paths:
        return []
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    try:
        root = os.path.commonpath(parents)
    except ValueError:  # mixed drives or absolute/relative: show them as they are
        return list(paths)
    if root in ("/", ""):
        return list(paths)
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def format_table(hits: Sequence[Hit], calibration: Calibration | None = None) -> str:
    """The hits as a fixed-width text table, one line per hit, with a header line. With
    the bundle's ``calibration`` (text queries), a confidence column follows the distance:
    likely / possible / unlikely and the estimated precision at that distance."""
    header = ("rank", "distance", "recording", "start-end", "captured (UTC)", "station")
    names = display_paths([h.path for h in hits])
    rows = [
        (
            str(h.rank),
            str(h.distance),
            name,
            format_span(h.start_s, h.end_s),
            _iso(h.known_capture_time) + ("~" if h.clock_source in UNCERTAIN_CLOCKS else ""),
            h.station or "-",
        )
        for h, name in zip(hits, names, strict=True)
    ]
    if calibration is not None:
        header = (*header[:2], "confidence", *header[2:])
        conf = [f"{calibration.label(h.distance)} {calibration.precision(h.distance):.2f}"
                for h in hits]
        rows = [(*r[:2], c, *r[2:]) for r, c in zip(rows, conf, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 1}  # numbers right-aligned

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def to_json(result: SearchResult, calibration: Calibration | None = None) -> str:
    """One JSON document for scripts: query, bits, fingerprint, truncated, filters, hits.
    With ``calibration`` each hit carries ``confidence`` and ``estimated_precision``, and
    ``calibration`` says where the estimate comes from."""
    return json.dumps(to_doc(result, calibration), indent=2, ensure_ascii=False)


def result_calibration(result: SearchResult, manifest: dict) -> Calibration | None:
    """The bundle's precision-vs-distance curve where it speaks for ``result``: it was
    fitted on caption->clip pairs, so text queries only (none for a query by example,
    none for a bundle exported without one)."""
    return Calibration.from_manifest(manifest) if result.mode == "text" else None


def print_result(result: SearchResult, manifest: dict, *, as_json: bool) -> bool:
    """Print a search result as `cvahash search` does: its notes on stderr, then one JSON
    document or the table (with confidence for text queries). False when there is no
    hit to print in a table, so the caller can say why."""
    calibration = result_calibration(result, manifest)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if as_json:
        print(to_json(result, calibration))
        return True
    if not result.hits:
        return False
    print(format_table(result.hits, calibration))
    distances = [h.distance for h in result.hits]
    if result.order == "weighted" and distances != sorted(distances):
        print("note: hits are ranked by how sure the query is of each bit (docs/search.md), "
              "so a distance can exceed the one below it; --hamming-only ranks by distance "
              "alone", file=sys.stderr)
    return True


def to_doc(result: SearchResult, calibration: Calibration | None = None) -> dict:
    """The document of `to_json` as a dict (the station web page's /api/search)."""
    doc = result.to_dict()
    if calibration is not None:
        doc["calibration"] = {"source": calibration.source,
                              "base_rate": calibration.base_rate}
        for hit in doc.get("hits", []):
            hit["confidence"] = calibration.label(hit["distance"])
            hit["estimated_precision"] = calibration.precision(hit["distance"])
    return doc


# --- snippets and pictures ------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def clip_name(rank: int, recording: str, start_s: float, suffix: str = ".wav") -> str:
    """``rank_03_<recording stem>_<start>.wav``, e.g. ``rank_03_20240612_053000_1m20s.wav``:
    safe on every file system (other characters become ``-``)."""
    stem = _UNSAFE.sub("-", Path(recording).stem).strip("-")[:80] or "recording"
    whole = math.floor(start_s)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    start = (f"{h}h" if h else "") + (f"{m:02d}m" if h or m else "") + f"{s:02d}s"
    return f"rank_{rank:02d}_{stem}_{start}{suffix}"


def _read_span(path: Path, start_s: float, end_s: float):
    """Frames [start_s, end_s) of a recording at its own rate, float32 [n, channels],
    plus the soundfile info; raises the cvahash AudioError for missing/damaged files."""
    import soundfile as sf  # lazy: a search that writes no audio does not load libsndfile

    from ..model import audio

    info = audio.probe(path)
    first = max(0, math.floor(start_s * info.sample_rate))
    last = min(info.frames, math.ceil(end_s * info.sample_rate))
    if last <= first:
        raise _gone(path, f"the file is only {info.duration_s:.1f} s long now")
    try:
        frames, _ = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise _gone(path, f"unreadable audio data: {e}") from None
    return frames, info, first


def _gone(path: Path, why: str):
    return AudioError(f"{path}: {why}")


def _problem(hit: Hit, exc: Exception, origins: dict[str, str] | None = None) -> str:
    if not os.path.exists(hit.path):
        came = (origins or {}).get(hit.path)
        if came is not None:
            return f"{hit.path}: audio not on this station: it came in {came}"
        return f"{hit.path}: recording no longer exists (deleted by audio retention or moved)"
    return str(exc)


def write_clips(hits: Sequence[Hit], out_dir: str | os.PathLike, context_s: float = 1.0,
                origins: dict[str, str] | None = None) -> list[Saved]:
    """Write a WAV snippet per hit into ``out_dir`` (created): the hit's span plus
    ``context_s`` either side (clipped at the file's ends), cut from the original
    recording at its own sample rate and channels, 16-bit PCM (24-bit or float when the
    source was). ``origins``: recording path -> the update it came in, for hits whose
    audio never reached this machine. Returns one `Saved` per hit, in order."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for hit in hits:
        try:
            frames, info, _ = _read_span(
                Path(hit.path), hit.start_s - context_s, hit.end_s + context_s
            )
            subtype = "PCM_16"
            if info.subtype in ("PCM_24", "PCM_32"):
                subtype = "PCM_24"
            elif info.subtype in ("FLOAT", "DOUBLE"):
                subtype = "FLOAT"
            target = out / clip_name(hit.rank, hit.path, hit.start_s)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            import soundfile as sf

            sf.write(str(tmp), frames, info.sample_rate, subtype=subtype, format="WAV")
            os.replace(tmp, target)
            saved.append(Saved(hit.rank, path=target))
        except (CvahashError, OSError) as e:
            saved.append(Saved(hit.rank, problem=_problem(hit, e, origins)))
    return saved


def write_spectrograms(
    hits: Sequence[Hit], out_dir: str | os.PathLike, params: FrontendParams,
    origins: dict[str, str] | None = None, query: str | None = None,
) -> list[Saved]:
    """Write ``rank_XX_<recording>_<start>.png`` per hit into ``out_dir``: the log-mel of
    exactly the hit's window (mono, resampled to the model's rate, as indexed), drawn by
    `cvahash.query.plots` with axes, a title and a colour scale. Needs matplotlib (the
    ``[plots]`` extra): raises MissingExtra before writing anything when it is missing."""

    plots.require()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for hit in hits:
        try:
            frames, info, _ = _read_span(Path(hit.path), hit.start_s, hit.end_s)
            if not np.isfinite(frames).all():
                raise _gone(Path(hit.path), "NaN or infinite samples in this window")
            mono = frames.mean(axis=1, dtype=np.float32)
            if info.sample_rate != params.sample_rate:
                import soxr

                mono = soxr.resample(mono, info.sample_rate, params.sample_rate, quality="HQ")
            target = out / clip_name(hit.rank, hit.path, hit.start_s, suffix=".png")
            title, subtitle = plots.hit_title(hit, query)
            plots.spectrogram_png(target, mono, params, start_s=hit.start_s,
                                  capture_time=hit.known_capture_time, title=title,
                                  subtitle=subtitle)
            saved.append(Saved(hit.rank, path=target))
        except (CvahashError, OSError, ValueError) as e:
            saved.append(Saved(hit.rank, problem=_problem(hit, e, origins)))
    return saved


def saved_summary(kind: str, saved: Sequence[Saved], out_dir: str | os.PathLike) -> list[str]:
    """Lines for stderr: how many were written where, and each problem."""
    written = sum(1 for s in saved if s.path is not None)
    lines = [f"wrote {written} of {len(saved)} {kind} to {out_dir}"]
    lines += [f"  rank {s.rank}: {s.problem}" for s in saved if s.problem]
    return lines


def human_bytes(n: int) -> str:
    """A byte count in decimal units (``12.3 MB``)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def format_info(info: dict) -> str:
    """``cvahash info`` as aligned "key: value" lines (see `cvahash.library.library.store_info`)."""
    stations = ", ".join(f"{name} ({n} windows)" for name, n in info["stations"].items()) or "-"
    span = (f"{info['first_capture']} .. {info['last_capture_end']}"
            if info["first_capture"] else "- (empty)")
    rows = [
        ("store", info["store"]),
        ("windows", f"{info['windows']}" + (
            f" ({info['forgotten_windows']} forgotten)" if info["forgotten_windows"] else "")),
        ("recordings", f"{info['recordings']} ({info['audio_hours']:.2f} h of audio)"),
        ("time span (UTC)", span),
        ("stations", stations),
        ("code width", f"{info['bits']} bits"),
        ("fingerprint", info["fingerprint"]),
        ("bundle", info["bundle"] or "- (not recorded; pass --bundle to search)"),
        ("size", (f"{human_bytes(info['bytes'])} (codes {human_bytes(info['code_bytes'])}, "
                  f"metadata {human_bytes(info['metadata_bytes'])})")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)
