"""Hashing heads without captions: random hyperplanes (``lsh``) and ITQ (``itq``).

For a user with a pretrained CLAP and no captioned data. Both heads are one linear map on
the L2-normalised shared projection, the same map for text and audio:

    logits = normalize(embedding) @ W.T + b,   bit i = logit i > 0

- ``lsh`` (no data): W has standard normal rows drawn from ``seed``, b = 0 (hyperplanes
  through the origin; Charikar's sign random projections, which preserve the angle
  between a text and an audio embedding: P[bits differ] = angle / pi).
- ``itq`` (unlabelled audio): the audio embeddings' mean m is removed, PCA keeps the top
  c = min(bits, D, clips - 1) directions, and Iterative Quantisation (Gong and Lazebnik,
  2011; 50 alternations of B = sign(V R) and the orthogonal Procrustes R) rotates them so
  that binarising loses the least. Bits beyond c are random hyperplanes through m.
  b = -m @ W.T centres both branches on the audio mean; when the manifest has captions,
  the text branch is centred on the captions' mean instead (CLAP's text and audio
  embeddings sit apart, "the modality gap", and one shared centre would leave the text
  bits unbalanced).

``fit_run`` writes an ordinary run folder (``run.json``, ``base/``, ``tokenizer/``,
``checkpoint.pt``) with head type ``projection``, so ``cvahash export`` and ``cvahash
eval`` take it like any other run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from ...model.frontend import FrontendParams
from .data import Entry, ManifestError, log_mel_features, read_manifest, select_split
from .device import encode_all, pick_device, quiet_transformers
from .loop import TrainOptions
from .model import HashingModel, ModelLoadError, load_clap
from .run import read_run_config, save_run
from .tokenizer import tokenize

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
ITQ_ITERATIONS = 50


def lsh_weights(dim: int, bits: int, seed: int) -> np.ndarray:
    """(bits, dim) standard normal hyperplane normals, a pure function of ``seed``."""
    return np.random.default_rng([seed, 7]).standard_normal((bits, dim))


def itq_weights(x: np.ndarray, bits: int, seed: int,
                iterations: int = ITQ_ITERATIONS) -> tuple[np.ndarray, np.ndarray, int]:
    """ITQ on rows of ``x`` (n, D), already L2-normalised -> (W (bits, D), mean (D,), c),
    c = the number of ITQ bits (the rest are random hyperplanes through the mean)."""
    n, dim = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    c = max(0, min(bits, dim, n - 1))
    rng = np.random.default_rng([seed, 11])
    weight = np.empty((bits, dim))
    if c:
        # principal directions: eigenvectors of the covariance, largest first
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        pcs = vt[:c].T                                        # (D, c)
        v = xc @ pcs                                          # (n, c)
        rot, _ = np.linalg.qr(rng.standard_normal((c, c)))   # random orthogonal start
        for _ in range(iterations):
            b = np.where(v @ rot > 0, 1.0, -1.0)
            u, _, wt = np.linalg.svd(b.T @ v)                 # Procrustes: R = W U^T
            rot = wt.T @ u.T
        weight[:c] = (pcs @ rot).T
    if bits > c:
        weight[c:] = rng.standard_normal((bits - c, dim))
    return weight, mean, c


def quantisation_loss(x: np.ndarray, weight: np.ndarray, mean: np.ndarray) -> float:
    """Mean squared distance between the projected points and their codes (ITQ's objective,
    on the unit-variance scale of each projection)."""
    z = (x - mean) @ weight.T
    z = z / (np.abs(z).mean(axis=0, keepdims=True) + 1e-12)
    return float(np.mean((np.sign(z) - z) ** 2))


# ---------------------------------------------------------------- unlabelled audio


def audio_entries(data: str | Path):
    """Entries (cvahash.export.train.data.Entry) of ``data``: a folder of audio files (searched
    recursively) or a manifest whose captions may be missing. Returns (entries, has_captions)."""
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ManifestError(f"{path} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); "
                                "pass a folder of recordings or a manifest with --data")
        return [Entry(p, "", (), None, str(p)) for p in files], False
    entries = read_manifest(path, require_caption=False)
    train = select_split(entries, "train") or entries
    return train, all(e.caption for e in train)


# ---------------------------------------------------------------- a whole run


def fit_run(config, run_dir: str | Path, data: str | Path | None = None, options=None) -> dict:
    """Build an ``lsh`` or ``itq`` run into ``run_dir``; returns a summary dict."""
    options = options or TrainOptions()
    run_dir = Path(run_dir)
    t0 = time.monotonic()
    quiet_transformers()
    if config.model == "tiny":
        raise ModelLoadError(f"--objective {config.objective} hashes a pretrained model's "
                             "embeddings: pass --model HUB_ID_OR_FOLDER (a CLAP checkpoint, or a "
                             "`cvahash train --objective clip` run folder)")
    if config.objective == "itq" and data is None:
        raise ValueError("--objective itq learns from unlabelled audio: pass --data FOLDER "
                         "(recordings) or --data MANIFEST; --objective lsh needs no data")
    config.head, config.lora_rank = "projection", 0
    if (run_dir / "checkpoint.pt").exists():
        saved = read_run_config(run_dir)
        if options.resume and saved.to_dict() != config.to_dict() | {
                "frontend": saved.frontend}:
            raise ValueError(f"{run_dir} holds a run with other settings; use another --out, "
                             "or --no-resume to replace it")
        shutil.rmtree(run_dir)
    device = pick_device(options.device)
    params = FrontendParams.from_dict(config.frontend)
    config.frontend = params.to_dict()
    base, tokenizer = load_clap(config.model)
    model = HashingModel(base, config.bits, head="projection")
    dim = base.config.projection_dim
    summary = {"run_dir": str(run_dir), "objective": config.objective, "bits": config.bits,
               "projection_dim": dim}
    if config.objective == "lsh":
        weight = lsh_weights(dim, config.bits, config.seed)
        model.text_head.set(weight, np.zeros(config.bits))
        model.audio_head.set(weight, np.zeros(config.bits))
    else:
        entries, has_captions = audio_entries(data)
        if len(entries) < 2:
            raise ValueError(f"{data}: --objective itq needs at least 2 clips, found "
                             f"{len(entries)}")
        cache_dir = options.cache_dir or (Path(data) if Path(data).is_dir()
                                          else Path(data).parent) / ".cvahash-cache"
        features = log_mel_features(entries, cache_dir, params, seed=config.seed,
                                    progress=options.progress)
        captions = [e.caption or "-" for e in entries]
        ids, mask = tokenize(tokenizer, captions, config.text_max_length, config.text_padding)
        model.to(device)
        text, audio = encode_all(model, features, ids, mask, device, progress=options.progress)
        audio = F.normalize(audio, dim=1).cpu().double().numpy()
        weight, mean, c = itq_weights(audio, config.bits, config.seed)
        text_mean = (F.normalize(text, dim=1).cpu().double().numpy().mean(axis=0)
                     if has_captions else mean)
        model.audio_head.set(weight, -weight @ mean)
        model.text_head.set(weight, -weight @ text_mean)
        rand = lsh_weights(dim, config.bits, config.seed)
        summary.update({
            "clips": len(entries), "itq_bits": c, "text_centre": "captions" if has_captions
            else "audio mean",
            "quantisation_loss": {"itq": round(quantisation_loss(audio, weight, mean), 4),
                                  "random": round(quantisation_loss(audio, rand, mean), 4)}})
    model.to("cpu").eval()
    save_run(run_dir, model, config, tokenizer)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    return summary
