"""A procedural bioacoustic corpus: labelled clips and long soundscapes, numpy only.

There are no datasets on a build machine, so training, evaluation, the demo and the
daemon tests all run on audio made here. Needs only numpy and soundfile (no torch),
so device-side tests can use it too.

- `generate_corpus(out_dir, n, seed)`: n clips of 3-15 s, each 1-3 calls from
  `CALL_TYPES` (35 types, see synth_calls.py) at random onsets over a background
  (pink, rain, wind, stream, quiet) at a given SNR, a caption (synth_captions.py), and
  a line in ``manifest.jsonl``. Splits: 80/10/10 train/val/test; the test split alone
  has the "stream" background and the held-out phrasings.
- `make_soundscape(path, duration_s, events_per_minute, seed)`: a long recording with
  known events, written block by block (memory does not grow with length), and a JSON
  sidecar of the events.
- `queries_for(label)`: natural text queries per call type.

SNR of a clip is measured over the union of the source windows (onset to offset):
10*log10(sum of the calls' energy / sum of the background's energy) inside those
windows, so a short call in a long clip is not drowned by the definition.

Everything is deterministic for a seed: each clip and each soundscape event draws from
its own generator seeded with (seed, index), so the bytes do not depend on `workers`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ...errors import InvalidArgument
from .backgrounds import (
    BACKGROUNDS,
    HELDOUT_BACKGROUNDS,
    SNR_RANGE_DB,
    BackgroundStream,
    render_background,
)
from .calls import CALL_TYPES, CALLS, CallType, call_type
from .captions import SourceWords, attributes_for, caption, heldout_markers, queries_for

__all__ = [
    "BACKGROUNDS",
    "CALLS",
    "CALL_TYPES",
    "DEFAULT_SAMPLE_RATE",
    "FORMATS",
    "HELDOUT_BACKGROUNDS",
    "CallType",
    "call_type",
    "events_path",
    "generate_corpus",
    "heldout_markers",
    "make_soundscape",
    "queries_for",
    "render_clip",
]

# Content stops at 14 kHz, so 32 kHz loses nothing and makes the corpus a third smaller
# than 48 kHz; the pipeline resamples to 48 kHz like any field recording.
DEFAULT_SAMPLE_RATE = 32000
FORMATS = {"flac": "FLAC", "wav": "WAV"}
CLIP_SECONDS = (3.0, 15.0)
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}
# Share of test clips captioned with held-out phrasings (the rest use seen ones, so the
# test split also measures in-distribution wording).
HELDOUT_PHRASING_SHARE = 0.6
_TRAIN_BG_WEIGHTS = {"pink": 0.3, "rain": 0.25, "wind": 0.25, "quiet": 0.2}
_TEST_BG_WEIGHTS = {"stream": 0.4, "pink": 0.15, "rain": 0.15, "wind": 0.15, "quiet": 0.15}


def _check_rate(sample_rate: int) -> int:
    if not isinstance(sample_rate, (int, np.integer)) or not 16000 <= sample_rate <= 192000:
        raise InvalidArgument(
            f"sample rate {sample_rate!r} Hz is not supported: use 16000-192000 "
            f"(32000 keeps all synthetic content, which stops at 14 kHz)")
    return int(sample_rate)


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _trim(x: np.ndarray, floor: float = 1e-3) -> tuple[int, int]:
    """First and one-past-last sample above `floor` times the peak (whole if silent)."""
    idx = np.flatnonzero(np.abs(x) > floor * (np.max(np.abs(x)) if len(x) else 0))
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(x))


def assign_splits(n: int, seed: int) -> list[str]:
    """Split of each clip index: a seeded permutation, 10% val, 10% test (at least one
    each once n >= 3)."""
    counts = {k: round(f * n) for k, f in SPLIT_FRACTIONS.items()}
    if n >= 3:
        counts = {k: max(1, c) for k, c in counts.items()}
    order = np.random.default_rng([seed, 5]).permutation(n)
    splits = ["train"] * n
    for i in order[: counts["test"]]:
        splits[int(i)] = "test"
    for i in order[counts["test"]: counts["test"] + counts["val"]]:
        splits[int(i)] = "val"
    return splits


@dataclass
class Clip:
    """A rendered clip: the mixture as written, its parts, and its manifest record."""

    audio: np.ndarray        # float32, what goes into the file
    calls: np.ndarray        # float64, sum of the sources, same scale as `audio`
    background: np.ndarray   # float64, the background, same scale as `audio`
    record: dict


def render_clip(index: int, seed: int, split: str, sample_rate: int = DEFAULT_SAMPLE_RATE,
                *, audio_path: str = "") -> Clip:
    """Clip `index` of the corpus for `seed` (deterministic), already in `split`."""
    sr = _check_rate(sample_rate)
    rng = np.random.default_rng([seed, 1, index])
    duration = float(np.round(rng.uniform(*CLIP_SECONDS), 2))
    n = round(duration * sr)
    heldout = split == "test" and rng.random() < HELDOUT_PHRASING_SHARE
    background = _choice(rng, _TEST_BG_WEIGHTS if split == "test" else _TRAIN_BG_WEIGHTS)
    snr_db = float(np.round(rng.uniform(*SNR_RANGE_DB[background]), 2))

    n_sources = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    chosen = rng.choice(len(CALL_TYPES), size=n_sources, replace=False)
    calls = np.zeros(n)
    active = np.zeros(n, dtype=bool)
    sources = []
    for k, ci in enumerate(chosen):
        call = CALL_TYPES[int(ci)]
        pitch, tempo = (float(v) for v in np.round(rng.uniform(-1, 1, 2), 3))
        ev = min(duration, rng.uniform(*call.duration))
        start = int(rng.uniform(0, duration - ev) * sr)
        level_db = 0.0 if k == 0 else float(np.round(rng.uniform(-6, 0), 2))
        x = call.render(np.random.default_rng([seed, 1, index, k]), sr, ev, pitch, tempo)
        a, b = _trim(x)
        x = x[a:b].astype(np.float64)
        x *= 10 ** (level_db / 20) / (np.sqrt(np.mean(x * x)) + 1e-12)
        s0 = min(n, start + a)
        s1 = min(n, s0 + len(x))
        calls[s0:s1] += x[: s1 - s0]
        active[s0:s1] = True
        sources.append({"label": call.label, "onset_s": round(s0 / sr, 4),
                        "offset_s": round(s1 / sr, 4), "level_db": level_db,
                        "pitch": pitch, "tempo": tempo,
                        "attributes": list(attributes_for(call, pitch, tempo,
                                                          snr_db + level_db))})
    sources.sort(key=lambda s: (s["onset_s"], s["label"]))

    bg = render_background(background, rng, n, sr)
    p_calls = np.mean(calls[active] ** 2)
    p_bg = np.mean(bg[active] ** 2)
    bg *= np.sqrt(p_calls / (p_bg * 10 ** (snr_db / 10)))
    mix = calls + bg
    peak_dbfs = rng.uniform(-6.0, -1.0)
    gain = 10 ** (peak_dbfs / 20) / np.max(np.abs(mix))

    words = [SourceWords(s["label"], s["onset_s"], s["offset_s"], tuple(s["attributes"]))
             for s in sources]
    text = caption(rng, words, background, heldout)
    record = {
        "id": f"{index:06d}",
        "audio": audio_path,
        "caption": text,
        "labels": [s["label"] for s in sources],
        "split": split,
        "duration_s": duration,
        "sample_rate": sr,
        "background": background,
        "snr_db": snr_db,
        "sources": sources,
        "heldout_phrasing": bool(heldout),
        "heldout_background": background in HELDOUT_BACKGROUNDS,
    }
    return Clip((mix * gain).astype(np.float32), calls * gain, bg * gain, record)


def _write_clip(job: tuple) -> dict:
    index, seed, split, sr, fmt, out_dir = job
    rel = f"audio/{split}/{index:06d}.{fmt}"
    clip = render_clip(index, seed, split, sr, audio_path=rel)
    sf.write(os.path.join(out_dir, rel), clip.audio, sr, subtype="PCM_16", format=FORMATS[fmt])
    return clip.record


def generate_corpus(out_dir, n: int = 3000, seed: int = 0, *,
                    sample_rate: int = DEFAULT_SAMPLE_RATE, fmt: str = "flac",
                    workers: int = 1,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write n clips under out_dir/audio/<split>/ and out_dir/manifest.jsonl.

    Each manifest line: {"id", "audio" (path relative to out_dir), "caption", "labels"
    (call types present, in onset order), "split", "duration_s", "sample_rate",
    "background", "snr_db", "sources" [{"label", "onset_s", "offset_s", "level_db",
    "pitch", "tempo", "attributes"}], "heldout_phrasing", "heldout_background"}.
    Also writes out_dir/corpus.json (parameters and vocabulary). Same seed, same bytes,
    whatever `workers`. Files already in out_dir are overwritten, others left alone;
    the manifest is written last, atomically, and is the list of record.
    Returns the manifest's path. `progress(done, n)` is called as clips finish.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgument(f"number of clips must be a positive integer, got {n!r}")
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown audio format {fmt!r}; use one of {', '.join(FORMATS)}")
    if workers < 1:
        raise InvalidArgument(f"workers must be >= 1, got {workers}")
    sr = _check_rate(sample_rate)
    out = Path(out_dir)
    for split in ("train", "val", "test"):
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    splits = assign_splits(int(n), seed)
    jobs = [(i, seed, splits[i], sr, fmt, str(out)) for i in range(int(n))]

    records: list[dict] = []

    def collect(results: Iterable[dict]) -> None:
        for rec in results:
            records.append(rec)
            if progress:
                progress(len(records), len(jobs))

    if workers == 1:
        collect(map(_write_clip, jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(_write_clip, jobs, chunksize=8))

    info = {
        "generator": "cvahash.export.synth.corpus", "version": 1, "seed": seed, "n": int(n),
        "sample_rate": sr, "format": fmt, "clip_seconds": list(CLIP_SECONDS),
        "splits": {s: splits.count(s) for s in ("train", "val", "test")},
        "backgrounds": list(BACKGROUNDS), "heldout_backgrounds": list(HELDOUT_BACKGROUNDS),
        "snr_range_db": SNR_RANGE_DB, "heldout_markers": heldout_markers(),
        "call_types": [{"label": c.label, "name": c.name, "family": c.family,
                        "band_hz": list(c.band), "phrases": list(c.phrases),
                        "heldout_phrases": list(c.heldout_phrases)} for c in CALL_TYPES],
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    manifest = out / "manifest.jsonl"
    tmp = out / "manifest.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    os.replace(tmp, manifest)
    return manifest


EXTRA_DIR = "train-extra"


def extend_train_split(corpus_dir, extra: int, *, workers: int = 1,
                       name: str = "manifest-extended.jsonl") -> Path:
    """Write ``extra`` more *train-split* clips beside a corpus and a manifest listing the
    corpus's clips and them (``corpus_dir/name``; the corpus's own manifest is untouched).

    The clips are the ones the stand-in's training pool renders (index ``0..extra-1`` of
    seed ``corpus seed + 1``, split ``train``): training backgrounds and seen phrasings
    only, so the corpus's val and test splits stay unseen. Files go to
    ``audio/train-extra/`` in the corpus's format; their ids are prefixed ``x`` so they never
    collide with the corpus's. Files already written are reused (same seed, same bytes),
    and a manifest that already lists these clips is kept as it is.
    """
    out = Path(corpus_dir)
    info_path, manifest = out / "corpus.json", out / "manifest.jsonl"
    if not info_path.is_file() or not manifest.is_file():
        raise InvalidArgument(f"{out} is not a `cvahash synth` corpus (no corpus.json or "
                              "manifest.jsonl); make one with `cvahash synth --out DIR`")
    if not isinstance(extra, (int, np.integer)) or extra < 0:
        raise InvalidArgument(f"number of extra clips must be >= 0, got {extra!r}")
    info = json.loads(info_path.read_text())
    seed, sr, fmt = int(info["seed"]) + 1, int(info["sample_rate"]), info.get("format", "flac")
    target = out / name
    own = manifest.read_text(encoding="utf-8")
    if _extension_done(target, own, int(extra), out):
        return target
    (out / "audio" / EXTRA_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, sr, fmt, str(out)) for i in range(int(extra))]
    if workers == 1:
        records = list(map(_write_extra_clip, jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(_write_extra_clip, jobs, chunksize=8))
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(own)
        f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    os.replace(tmp, target)
    return target


def _extension_done(target: Path, own: str, extra: int, out: Path) -> bool:
    """Whether ``target`` already lists the corpus's manifest ``own`` and exactly the
    ``extra`` clips asked for, every file present (then nothing is rendered again)."""
    if not target.is_file():
        return False
    text = target.read_text(encoding="utf-8")
    if not text.startswith(own):
        return False
    rows = [json.loads(line) for line in text[len(own):].splitlines() if line.strip()]
    return ([r.get("id") for r in rows] == [f"x{i:06d}" for i in range(extra)]
            and all((out / r["audio"]).is_file() for r in rows))


def _write_extra_clip(job: tuple) -> dict:
    index, seed, sr, fmt, out_dir = job
    rel = f"audio/{EXTRA_DIR}/{index:06d}.{fmt}"
    path = os.path.join(out_dir, rel)
    clip = render_clip(index, seed, "train", sr, audio_path=rel)
    if not os.path.exists(path):
        sf.write(path, clip.audio, sr, subtype="PCM_16", format=FORMATS[fmt])
    return {**clip.record, "id": f"x{index:06d}"}


# ------------------------------------------------------------------ soundscapes

_EVENT_PEAK = 0.8  # highest sample of a soundscape event, so calls never clip


def events_path(path) -> Path:
    """Where make_soundscape writes the event list of `path` (NAME.events.json)."""
    p = Path(path)
    return p.with_name(p.stem + ".events.json")


@dataclass
class _Planned:
    index: int
    call: CallType
    start: int           # sample where the rendered event begins (before trimming)
    length_s: float
    pitch: float
    tempo: float
    snr_db: float
    trim: tuple[int, int]
    gain: float          # applied to the trimmed rendering


def _render_event(ev: _Planned, seed: int, sr: int) -> np.ndarray:
    x = ev.call.render(np.random.default_rng([seed, 3, ev.index]), sr, ev.length_s,
                       ev.pitch, ev.tempo)[ev.trim[0]: ev.trim[1]].astype(np.float64)
    return x * ev.gain


def make_soundscape(path, duration_s: float, events_per_minute: float, seed: int, *,
                    call_types: Iterable[str] | None = None, background: str = "pink",
                    sample_rate: int = 48000, snr_db: tuple[float, float] = (0.0, 20.0),
                    background_dbfs: float = -40.0,
                    progress: Callable[[float, float], None] | None = None) -> list[dict]:
    """Write a long mono recording with known events; return and save the event list.

    Events are calls from `call_types` (default: all) starting as a Poisson process of
    about `events_per_minute`, never overlapping (at least 0.5 s apart), each at an SNR
    drawn from `snr_db` relative to the background's long-term RMS (`background_dbfs`;
    lowered for a spiky call that would otherwise pass a 0.8 peak).
    The format follows the suffix (.flac or .wav, 16-bit). Audio is generated and
    written in 4 s blocks, so memory stays flat for hours-long files. The event list
    [{"label", "start_s", "end_s", "snr_db"}] is also written to events_path(path).
    """
    sr = _check_rate(sample_rate)
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InvalidArgument(f"{path}: soundscape must end in .flac or .wav")
    if not duration_s > 0:
        raise InvalidArgument(f"soundscape duration must be positive, got {duration_s!r} s")
    if events_per_minute < 0:
        raise InvalidArgument(f"events per minute must be >= 0, got {events_per_minute!r}")
    if background not in BACKGROUNDS:
        raise InvalidArgument(f"unknown background {background!r}; "
                              f"choose one of {', '.join(BACKGROUNDS)}")
    labels = list(call_types) if call_types is not None else list(CALLS)
    unknown = [lab for lab in labels if lab not in CALLS]
    if unknown or not labels:
        raise InvalidArgument(f"unknown call types {unknown or '(none given)'}; "
                              f"known: {', '.join(CALLS)}")

    total = round(duration_s * sr)
    bg_rms = 10 ** (background_dbfs / 20)
    plan = _plan_events(labels, total, sr, events_per_minute, seed, snr_db, bg_rms)
    events = [{"label": ev.call.label,
               "start_s": round((ev.start + ev.trim[0]) / sr, 4),
               "end_s": round((ev.start + ev.trim[1]) / sr, 4),
               "snr_db": ev.snr_db} for ev in plan]

    hop = 4 * sr
    stream = BackgroundStream(background, seed, sr, hop)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under a temporary name and renamed when complete: an interrupted run never
    # leaves a truncated file that looks finished
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    live: list[tuple[int, np.ndarray]] = []  # (first sample, signal) of rendered events
    upcoming = iter(plan)
    nxt = next(upcoming, None)
    with sf.SoundFile(partial, "w", sr, 1, subtype="PCM_16", format=FORMATS[fmt]) as f:
        pos = 0
        while pos < total:
            m = min(hop, total - pos)
            block = stream.next_block()[:m] * bg_rms
            while nxt is not None and nxt.start + nxt.trim[0] < pos + m:
                live.append((nxt.start + nxt.trim[0], _render_event(nxt, seed, sr)))
                nxt = next(upcoming, None)
            for first, sig in live:
                a, b = max(pos, first), min(pos + m, first + len(sig))
                if a < b:
                    block[a - pos: b - pos] += sig[a - first: b - first]
            live = [(s, x) for s, x in live if s + len(x) > pos + m]
            f.write(np.clip(block, -1.0, 1.0).astype(np.float32))
            pos += m
            if progress:
                progress(pos / sr, total / sr)

    sidecar = {"audio": path.name, "sample_rate": sr, "duration_s": total / sr, "seed": seed,
               "background": background, "background_dbfs": background_dbfs,
               "events_per_minute": events_per_minute, "events": events}
    tmp = events_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1) + "\n")
    os.replace(partial, path)
    os.replace(tmp, events_path(path))
    return events


def _plan_events(labels, total, sr, per_minute, seed, snr_range, bg_rms) -> list[_Planned]:
    """Event schedule; each event is rendered once here (and dropped) to learn where its
    sound starts and ends, so the labels are tight, and its gain. A spiky call (sparse
    knocks) at a high SNR would clip: its gain is capped at a 0.8 peak and its snr_db
    records what it really got."""
    if per_minute <= 0:
        return []
    rng = np.random.default_rng([seed, 4])
    mean_gap = 60.0 / per_minute
    plan: list[_Planned] = []
    t = rng.exponential(mean_gap)
    while True:
        call = CALLS[labels[int(rng.integers(len(labels)))]]
        length = float(rng.uniform(*call.duration))
        start = int(t * sr)
        if start + int(length * sr) > total:
            break
        pitch, tempo = (float(v) for v in rng.uniform(-1, 1, 2))
        snr = float(np.round(rng.uniform(*snr_range), 2))
        index = len(plan)
        x = call.render(np.random.default_rng([seed, 3, index]), sr, length, pitch, tempo)
        trim = _trim(x)
        body = x[trim[0]: trim[1]].astype(np.float64)
        rms = np.sqrt(np.mean(body * body)) + 1e-12
        gain = bg_rms * 10 ** (snr / 20) / rms
        if gain * np.max(np.abs(body)) > _EVENT_PEAK:
            gain = _EVENT_PEAK / np.max(np.abs(body))
            snr = float(np.round(20 * np.log10(gain * rms / bg_rms), 2))
        plan.append(_Planned(index, call, start, length, pitch, tempo, snr, trim, float(gain)))
        end_s = (start + trim[1]) / sr
        t = max(end_s + 0.5, t + rng.exponential(mean_gap))
    return plan
