"""Prove that a bundle computes the codes the trained PyTorch model computes.

``verify_bundle(bundle, run_dir, data)`` checks the bundle's files (sha256, format,
fingerprint) and, given the run it came from and a corpus manifest, encodes held-out
clips and captions twice: with PyTorch (transformers tokenizer, merged model) and with the
bundle through ``cvahash.model.bundle.ModelBundle`` (tokenizers + ONNX Runtime, exactly what the
device runs). It reports bit agreement per branch and text->audio mAP@10 of both code
sets, and fails when agreement is below ``min_agreement`` (0.98) or when mAP@10 is worse
by more than ``max_map_drop`` (2 %, relative) *with confidence*: the relative change
(bundle - torch) / torch gets a paired bootstrap interval over the queries (95 %, 2000
resamples, seeded), and only an interval that lies wholly below ``-max_map_drop`` fails.
With fewer than ``min_queries`` (30) queries the mAP change is reported but not judged:
the bundle is judged by bit agreement alone. A few dozen near-chance queries move mAP@10
by 10-15 % when a handful of bits flip; that is noise, not a worse bundle.

Also here: reading probe inputs (``load_probe`` for a corpus manifest, ``builtin_probe``
for synthetic calls when there is none) shared with the exporter.

mAP@10: for each caption, the clips ranked by Hamming distance to its code (ties by
manifest order); a clip is relevant when it shares a label with the caption's clip;
AP@10 = sum over relevant ranks k <= 10 of precision@k, divided by min(relevant, 10);
queries without any relevant clip are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import AudioError, CvahashError
from ...model.audio import load
from ...model.bundle import ModelBundle, check_bundle, pack_codes
from ...model.frontend import log_mel
from ..train.data import ManifestError, read_manifest

# The mAP change statistics live with the other retrieval metrics (training evaluates
# with them too); re-exported here for the bundle check.
from ..train.metrics import BOOTSTRAP_RESAMPLES as BOOTSTRAP_RESAMPLES
from ..train.metrics import CONFIDENCE as CONFIDENCE
from ..train.metrics import MapChange as MapChange
from ..train.metrics import map_change_interval as map_change_interval

DEFAULT_MIN_AGREEMENT = 0.98
DEFAULT_MAX_MAP_DROP = 0.02
DEFAULT_MIN_QUERIES = 30


class DataError(CvahashError, ValueError):
    """A corpus manifest line or audio file that cannot be used."""


# ---------------------------------------------------------------- probe inputs


@dataclass
class Probe:
    """Captions, their label sets, and log-mel windows of the same clips (row i = clip i)."""

    captions: list[str]
    labels: list[frozenset]
    features: np.ndarray  # float32 [n, 1, frames, mels]
    source: str = ""


def load_probe(manifest: str | Path, frontend, *, splits: Sequence[str] = ("val", "test"),
               limit: int = 200) -> Probe:
    """Up to ``limit`` clips of the manifest (JSONL or CSV, read by
    ``cvahash.export.train.data.read_manifest``) whose split is one of ``splits`` (the held-out
    ones by default); a manifest with none of them is used whole. Audio is read with
    ``cvahash.model.audio.load`` (mono, resampled) and turned into log-mel with ``frontend``.
    Errors name the manifest line."""
    try:
        entries = read_manifest(manifest, check_files=False)
    except ManifestError as exc:
        raise DataError(str(exc)) from exc
    chosen = [e for e in entries if e.split in splits]
    split = "+".join(s for s in splits if any(e.split == s for e in chosen))
    entries = (chosen or entries)[:limit]
    audio = []
    for e in entries:
        try:
            audio.append(load(e.audio, frontend.sample_rate))
        except AudioError as exc:
            raise DataError(f"{e.where}: cannot read audio {e.audio} ({exc})") from exc
    labels = [frozenset(e.labels or (e.caption,)) for e in entries]
    features = log_mel(audio, frontend)
    name = f"{manifest} (split {split})" if split else str(manifest)
    return Probe([e.caption for e in entries], labels, features, name)


# A few call shapes for when no corpus is given: (label, caption, synthesiser).
def _whistle(t, rng, up):
    f0, f1 = (2000, 5000) if up else (5000, 2000)
    f = f0 + (f1 - f0) * t / t[-1]
    return np.sin(2 * np.pi * np.cumsum(f) / 48000) * (t < 0.6 * t[-1])


def _trill(t, rng, rate):
    return np.sin(2 * np.pi * 3500 * t) * (np.sin(2 * np.pi * rate * t) > 0)


def _hoot(t, rng):
    return np.sin(2 * np.pi * 400 * t) * np.exp(-((t % 1.0) - 0.3) ** 2 / 0.02)


def _drum(t, rng):
    pulses = (np.mod(t, 0.06) < 0.004).astype(float)
    return pulses * rng.standard_normal(t.size)


def _buzz(t, rng):
    return rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 30 * t))


_CALLS = [
    ("whistle-up", "a rising whistle", lambda t, r: _whistle(t, r, True)),
    ("whistle-down", "a falling whistle", lambda t, r: _whistle(t, r, False)),
    ("trill-fast", "a fast trill", lambda t, r: _trill(t, r, 25)),
    ("trill-slow", "a slow trill", lambda t, r: _trill(t, r, 6)),
    ("hoot", "low hooting of an owl", _hoot),
    ("drum", "woodpecker drumming on dead wood", _drum),
    ("buzz", "insect buzzing stridulation", _buzz),
]


def builtin_probe(frontend, n: int = 21, seed: int = 0) -> Probe:
    """``n`` synthetic calls (whistles, trills, hoots, drumming, buzz) in pink-ish noise,
    2-6 s long, with captions; for exports without a corpus. Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    sr = frontend.sample_rate
    audio, captions, labels = [], [], []
    for i in range(n):
        label, caption, synth = _CALLS[i % len(_CALLS)]
        t = np.arange(int(sr * rng.uniform(2, 6))) / sr
        call = synth(t, rng)
        noise = np.cumsum(rng.standard_normal(t.size)) * 1e-3
        noise -= np.convolve(noise, np.ones(256) / 256, mode="same")
        audio.append((0.3 * call / (np.abs(call).max() + 1e-9) + noise).astype(np.float32))
        captions.append(f"{caption} ({['near', 'distant', 'faint'][i % 3]})")
        labels.append(frozenset([label]))
    return Probe(captions, labels, log_mel(audio, frontend), "built-in synthetic probe")


# ---------------------------------------------------------------- metrics


def hamming_matrix(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distances int [nq, n] between packed uint8 codes (numpy reference)."""
    x = np.bitwise_xor(queries[:, None, :], codes[None, :, :])
    return np.unpackbits(x, axis=2).sum(axis=2)


def ap_at_k(query_codes: np.ndarray, db_codes: np.ndarray, labels: Sequence[frozenset],
            k: int = 10) -> np.ndarray:
    """Text->audio AP@k per query (module docstring); NaN for a query without any relevant
    clip. Query i is the caption of clip i."""
    dist = hamming_matrix(query_codes, db_codes)
    aps = np.full(len(query_codes), np.nan)
    for i in range(len(query_codes)):
        relevant = np.array([bool(labels[i] & lab) for lab in labels])
        n_rel = int(relevant.sum())
        if n_rel == 0:
            continue
        order = np.argsort(dist[i], kind="stable")[:k]
        hits = relevant[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps[i] = float((precision * hits).sum() / min(n_rel, k))
    return aps


def map_at_k(query_codes: np.ndarray, db_codes: np.ndarray, labels: Sequence[frozenset],
             k: int = 10) -> float:
    """Text->audio mAP@k (module docstring); query i is the caption of clip i."""
    aps = ap_at_k(query_codes, db_codes, labels, k)
    aps = aps[np.isfinite(aps)]
    return float(aps.mean()) if aps.size else float("nan")


def judge_map_change(ap_reference: np.ndarray, ap_candidate: np.ndarray, *,
                     max_map_drop: float = DEFAULT_MAX_MAP_DROP,
                     min_queries: int = DEFAULT_MIN_QUERIES,
                     seed: int = 0) -> tuple[MapChange | None, str | None, str | None]:
    """(interval, failure or None, note or None). Fails only when the whole interval lies
    below ``-max_map_drop``; with fewer than ``min_queries`` scored queries it never fails
    and the note says that bit agreement alone judges the bundle."""
    result = map_change_interval(ap_reference, ap_candidate, seed=seed)
    if result is None:
        return None, None, ("mAP@10 of the reference is 0 or no query has a relevant clip: "
                            "the change is undefined; judged by bit agreement alone")
    if result.queries < min_queries:
        return result, None, (f"too few queries ({result.queries} < {min_queries}) to judge "
                              "mAP@10; judged by bit agreement alone (pass --data with more "
                              "held-out clips, or --limit)")
    if result.high < -max_map_drop:
        return result, (f"mAP@10 is {quality_change(-result.change)} (torch "
                        f"{result.reference:.4f}, bundle {result.candidate:.4f}; "
                        f"{result.confidence:.0%} interval {result.low:+.1%} .. "
                        f"{result.high:+.1%}: all of it more than {max_map_drop:.0%} "
                        "worse)"), None
    return result, None, None


# ---------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    bundle: str
    fingerprint: str
    precision: str
    bits: int
    files: dict
    against: str | None = None
    data: str | None = None
    n_texts: int = 0
    n_windows: int = 0
    bit_agreement: dict = field(default_factory=dict)   # branch -> fraction
    map10: dict = field(default_factory=dict)            # "torch"/"bundle" -> mAP@10
    map_drop: float | None = None                        # (torch - bundle) / torch
    # bootstrap interval of the change (bundle - torch) / torch = -map_drop, > 0 better
    map_change_interval: list | None = None              # [low, high]
    map_queries: int = 0
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    min_queries: int = DEFAULT_MIN_QUERIES
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["passed"] = self.passed
        # The same number with the sign people read: positive = the bundle is better.
        d["map_change"] = None if self.map_drop is None else round(-self.map_drop, 6)
        return d

    def format(self) -> str:
        lines = [f"bundle      {self.bundle}",
                 f"            fingerprint {self.fingerprint}, {self.precision}, {self.bits} bits"]
        for name, info in self.files.items():
            lines.append(f"file        {name:<15} {info['bytes'] / 1e6:9.2f} MB  sha256 ok")
        if self.against:
            lines.append(f"against     {self.against}")
            lines.append(f"data        {self.data}: {self.n_texts} captions, "
                         f"{self.n_windows} audio windows")
            for branch, value in self.bit_agreement.items():
                lines.append(f"agreement   {branch:<6} {value:.4f}  (min {self.min_agreement})")
            if self.map10:
                limit = (f"fails when the whole interval is more than {self.max_map_drop:.0%} "
                         "worse" if self.map_change_interval is not None else
                         f"fails when more than {self.max_map_drop:.0%} worse")
                lines.append(f"mAP@10      torch {self.map10['torch']:.4f}  bundle "
                             f"{self.map10['bundle']:.4f}  "
                             f"{quality_change(self.map_drop)} ({limit})")
                if self.map_change_interval is not None:
                    low, high = self.map_change_interval
                    lines.append(f"            {CONFIDENCE:.0%} interval {low:+.1%} .. "
                                 f"{high:+.1%} over {self.map_queries} queries (paired "
                                 "bootstrap)")
        else:
            lines.append("against     (no run given: files and hashes only)")
        for note in self.notes:
            lines.append(f"note        {note}")
        for f in self.failures:
            lines.append(f"FAIL        {f}")
        lines.append("result      " + ("PASS" if self.passed else "FAIL"))
        return "\n".join(lines)


def quality_change(map_drop: float | None) -> str:
    """The bundle's mAP@10 against PyTorch's, in words with the sign explained:
    ``"+10.7% better than torch"``, ``"-3.0% worse than torch"``, never a negative drop."""
    if map_drop is None:
        return "change n/a (torch mAP@10 is 0)"
    change = -map_drop
    if abs(change) < 5e-4:
        return "same as torch"
    return f"{change:+.1%} {'better' if change > 0 else 'worse'} than torch"


def verify_bundle(bundle_dir: str | Path, run_dir: str | Path | None = None,
                  data: str | Path | None = None, *,
                  min_agreement: float = DEFAULT_MIN_AGREEMENT,
                  max_map_drop: float = DEFAULT_MAX_MAP_DROP,
                  min_queries: int = DEFAULT_MIN_QUERIES, limit: int = 200,
                  threads: int = 0) -> VerifyReport:
    """Check ``bundle_dir``; with ``run_dir``, compare it with PyTorch on ``data`` (held-out
    split of a corpus manifest; the built-in probe without one). Raises BundleError for a
    tampered or incomplete bundle; returns a report whose ``failures`` say what fell short."""
    manifest = check_bundle(bundle_dir)
    report = VerifyReport(str(bundle_dir), manifest["fingerprint"], str(manifest["precision"]),
                          int(manifest["bits"]), manifest["files"],
                          min_agreement=min_agreement, max_map_drop=max_map_drop,
                          min_queries=min_queries)
    if run_dir is None:
        return report

    # torch: only comparing with a training run needs it (a bundle check does not)
    from ..train.run import load_run
    from ..train.tokenizer import tokenize
    from .convert import torch_audio_logits, torch_text_logits

    model, _config, tokenizer = load_run(run_dir)
    merged = model.merged()
    bundle = ModelBundle.open(bundle_dir, threads=threads)
    if bundle.bits != model.bits:
        report.failures.append(f"the bundle has {bundle.bits} bits, the run {model.bits}")
        return report
    probe = (load_probe(data, bundle.frontend_params, limit=limit) if data is not None
             else builtin_probe(bundle.frontend_params))
    report.against, report.data = str(run_dir), probe.source
    report.n_texts, report.n_windows = len(probe.captions), len(probe.features)

    settings = bundle.manifest["tokenizer"]
    ids, mask = tokenize(tokenizer, probe.captions, settings["max_length"], settings["padding"])
    tokens = bundle.tokenize(probe.captions)
    if not np.array_equal(tokens.input_ids, ids.numpy()):
        report.failures.append("tokenizer.json gives other token ids than the run's tokenizer")
    text_torch = torch_text_logits(merged, ids.numpy(), mask.numpy())
    text_bundle = bundle.text_logits(probe.captions)
    audio_torch = torch_audio_logits(merged, probe.features)
    audio_bundle = bundle.audio_logits(probe.features)

    for branch, a, b in (("text", text_torch, text_bundle), ("audio", audio_torch, audio_bundle)):
        value = float(np.mean((a > 0) == (b > 0)))
        report.bit_agreement[branch] = round(value, 6)
        if value < min_agreement:
            report.failures.append(f"{branch} bit agreement {value:.4f} is below {min_agreement}")

    ap_torch = ap_at_k(pack_codes(text_torch), pack_codes(audio_torch), probe.labels)
    ap_bundle = ap_at_k(pack_codes(text_bundle), pack_codes(audio_bundle), probe.labels)
    scored = np.isfinite(ap_torch) & np.isfinite(ap_bundle)
    m_torch = float(ap_torch[scored].mean()) if scored.any() else float("nan")
    m_bundle = float(ap_bundle[scored].mean()) if scored.any() else float("nan")
    report.map10 = {"torch": round(m_torch, 6), "bundle": round(m_bundle, 6)}
    result, failure, note = judge_map_change(ap_torch, ap_bundle, max_map_drop=max_map_drop,
                                             min_queries=min_queries)
    report.map_queries = int(scored.sum())
    if result is not None:
        report.map_drop = round(-result.change, 6)
        report.map_change_interval = [round(result.low, 6), round(result.high, 6)]
    if failure:
        report.failures.append(failure)
    if note:
        report.notes.append(note)
    return report
