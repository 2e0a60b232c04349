"""The stand-in CLAP: a tiny ClapModel pretrained here, in place of a downloaded checkpoint.

No pretrained CLAP weights reach the machines this project is built on, so a tiny one is
trained on synthetic audio (`cvahash synth`); it stands in for a foundation model.
The recipe (docs/benchmarks/quality.md runs 7 and 10), from the corpus's *train* split
only:

1. **Training pool.** Every train clip of the corpus, re-rendered from the corpus's seed
   as two parts (`synth.corpus.render_clip`: the calls alone and the background alone),
   plus ``extra`` new train-split clips of the same generator (seed ``corpus seed + 1``,
   so train-split backgrounds and seen phrasings only). Each part becomes a log-mel of
   its first 10 s (the audio tower's window); a clip's audio labels are the calls that
   start inside that window. A manifest that is not a ``cvahash synth`` corpus has no
   parts: its clips' log-mels serve as the "calls" and no own background is kept.
2. **Noise bank.** ``noise_bank`` 10 s training-only backgrounds
   (`synth.backgrounds.render_augment_background`: coloured noise of random slope and
   band, band-passed bursts, modulated noise bands, filtered clicks, the four training
   backgrounds; never "stream").
3. **Augmentation, every step.** A batch's calls are mixed, in the power domain of the
   log-mel, with the clip's own background (probability ``own_background``) or a random
   noise from the bank with a random spectral tilt (+-12 dB across the bands) and time
   shift, at a random SNR over the frames that hold calls (uniform in [low, 25] dB, where
   ``low`` falls linearly from +10 to -5 dB over the first half of the steps: clean calls
   first), then shifted by a random gain (+-10 dB) and a random circular time shift.
   Captions lose each word with probability 0.15 (at least two words are kept).
4. **One loss, both towers from scratch.** A tiny CLAP (``build_tiny_clap`` with 16 x 16
   audio patches, so the second HTSAT stage attends over the whole window) and a
   caption tokenizer trained on the pool's captions. Per batch of 64: for the text
   projection and for the audio projection, cross-entropy of 10 x cosine to one shared
   set of learnt call-type prototypes against the clip's labels spread evenly (so both
   towers put a call type in the same direction), plus the ``supclip`` loss (captions
   whose clips share a call label are positives; temperature 0.07). AdamW, lr 2e-3 for
   the text side and 5e-3 for the audio tower, audio projection and prototypes; cosine
   schedule with a 5 % warm-up; ``epochs`` passes over the pool.
5. **Text stage.** The audio tower frozen, the text tower and text projection alone
   train ``text_steps`` steps (batch 64, AdamW lr 1e-3 constant) with ``supclip``
   against the pool's audio embeddings, on captions perturbed by `perturb_captions`
   (each word swapped for one of its WordNet synonyms with probability 0.3
   (`lexicon.synonyms`: general word knowledge a foundation model would have), word
   dropout, inserted random words and letter strings, changed word forms, joined
   words): step 4's text tower reads seen captions well but new wording badly.
   ``lexicon=False`` is run 7's stage, without synonyms.

The folder written (``OUT/model``) is a ``save_pretrained`` ClapModel with its tokenizer,
usable as ``cvahash train --model OUT/model`` and ``bench/quality.py --pretrained``.
Used by ``bench/standin_pretrain.py`` and ``python -m cvahash.export.demo --retrain``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Overrides of the tiny ClapConfig: 16 x 16 patches, one attention window over 10 s.
TINY = {"audio_config": {"patch_size": 16, "patch_stride": [16, 16]}}
BATCH = 64
WORD_DROPOUT = 0.15
SNR_DB = (-5.0, 25.0)
GAIN_DB = 10.0
TILT_DB = 12.0
LABEL_SCALE = 10.0
CLEAN_START_DB = 10.0
LR_TEXT, LR_AUDIO = 2e-3, 5e-3
TEXT_STAGE_LR = 1e-3
SYNONYM_SWAP = 0.3


@dataclass
class Pool:
    """Training material: log-mel (dB) of each clip's calls and own background."""

    calls: np.ndarray            # (N, frames, mels) float16
    backgrounds: np.ndarray | None  # (N, frames, mels) float16, or None
    captions: list[str]
    text_labels: np.ndarray      # (N, L) float32: labels the caption names
    audio_labels: np.ndarray     # (N, L) float32: labels audible in the 10 s window
    names: list[str]


def _read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _logmel_db(samples: np.ndarray, sr: int, params) -> np.ndarray:
    import soxr

    from ...model.frontend import log_mel

    if sr != params.sample_rate:
        samples = soxr.resample(samples, sr, params.sample_rate, quality="HQ")
    if not np.any(samples):
        samples = np.full(len(samples), 1e-9)
    return log_mel(np.asarray(samples, np.float64), params)[0, 0].astype(np.float16)


def build_pool(manifest: Path, extra: int, cache: Path, log=sys.stderr) -> Pool:
    """Step 1 (cached in ``cache``): the corpus's train clips (+ ``extra`` new ones)."""
    from ...model.frontend import FrontendParams
    from ..synth.corpus import render_clip
    from .data import load_audio, read_manifest, select_split

    params = FrontendParams()
    manifest = Path(manifest)
    info_path = manifest.parent / "corpus.json"
    rows = [r for r in _read_rows(manifest) if r.get("split", "train") == "train"]
    synth = info_path.is_file() and all("sources" in r and "id" in r for r in rows)
    key = f"pool-{'synth' if synth else 'plain'}-{len(rows)}-{extra if synth else 0}"
    if cache is not None and (cache / f"{key}.npz").exists():
        z = np.load(cache / f"{key}.npz", allow_pickle=False)
        meta = json.loads((cache / f"{key}.json").read_text())
        bgs = z["backgrounds"] if "backgrounds" in z.files else None
        return Pool(z["calls"], bgs, meta["captions"], z["text_labels"], z["audio_labels"],
                    meta["names"])
    t0 = time.monotonic()
    window_s = params.max_length_s
    records, calls, bgs = [], [], []
    if synth:
        info = json.loads(info_path.read_text())
        seed, sr = int(info["seed"]), int(info["sample_rate"])
        jobs = [(int(r["id"]), seed) for r in rows] + [(i, seed + 1) for i in range(extra)]
        for k, (index, s) in enumerate(jobs):
            clip = render_clip(index, s, "train", sr)
            records.append(clip.record)
            calls.append(_logmel_db(clip.calls, sr, params))
            bgs.append(_logmel_db(clip.background, sr, params))
            if log is not None and (k + 1) % 500 == 0:
                print(json.dumps({"pool": k + 1, "of": len(jobs),
                                  "s": round(time.monotonic() - t0, 1)}), file=log, flush=True)
    else:
        entries = select_split(read_manifest(manifest), "train")
        for e in entries:
            x = load_audio(e, params.sample_rate)
            calls.append(_logmel_db(x, params.sample_rate, params))
            records.append({"caption": e.caption, "labels": list(e.labels)})
    names = sorted({lab for r in records for lab in r["labels"]})
    text_y = np.zeros((len(records), max(len(names), 1)), np.float32)
    audio_y = np.zeros_like(text_y)
    for i, r in enumerate(records):
        for lab in r["labels"]:
            text_y[i, names.index(lab)] = 1
        # audible: the call starts inside the first window (clips shorter than the
        # window are tiled by the front-end, so every call is audible)
        sources = r.get("sources") or [{"label": lab, "onset_s": 0.0} for lab in r["labels"]]
        for src in sources:
            if src["onset_s"] < window_s:
                audio_y[i, names.index(src["label"])] = 1
    pool = Pool(np.stack(calls), np.stack(bgs) if bgs else None,
                [r["caption"] for r in records], text_y, audio_y, names)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        arrays = {"calls": pool.calls, "text_labels": text_y, "audio_labels": audio_y}
        if pool.backgrounds is not None:
            arrays["backgrounds"] = pool.backgrounds
        np.savez(cache / f"{key}.npz", **arrays)
        (cache / f"{key}.json").write_text(json.dumps({"captions": pool.captions,
                                                       "names": names}))
    if log is not None:
        print(json.dumps({"pool_clips": len(records), "synth_parts": synth,
                          "s": round(time.monotonic() - t0, 1)}), file=log, flush=True)
    return pool


def noise_bank(n: int, seed: int, cache: Path | None, log=sys.stderr) -> np.ndarray:
    """Step 2 (cached): ``n`` training-only backgrounds as log-mel (dB), (n, frames, mels)."""
    from ...model.frontend import FrontendParams
    from ..synth.backgrounds import render_augment_background

    path = None if cache is None else cache / f"noise-{n}-{seed}.npy"
    if path is not None and path.exists():
        return np.load(path)
    params = FrontendParams()
    sr = 32000
    rng = np.random.default_rng([seed, 77])
    bank = np.stack([_logmel_db(render_augment_background(rng, round(params.max_length_s * sr),
                                                          sr)[1], sr, params)
                     for _ in range(n)])
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, bank)
    return bank


def augment(calls: torch.Tensor, own_bg: torch.Tensor | None, bank: torch.Tensor,
            gen: torch.Generator, own_background: float = 0.3,
            snr_db: tuple[float, float] = SNR_DB) -> torch.Tensor:
    """Step 3: calls (B, T, M) in dB mixed over a background at a random SNR, gain, shift."""
    b, t, m = calls.shape

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    noise = bank[torch.randint(len(bank), (b,), generator=gen)].float()
    noise = noise + u(-TILT_DB, TILT_DB, b, 1, 1) * torch.linspace(-0.5, 0.5, m)
    shift = torch.randint(t, (b,), generator=gen)
    noise = torch.stack([torch.roll(noise[i], int(shift[i]), 0) for i in range(b)])
    if own_bg is not None:
        use_own = torch.rand(b, generator=gen) < own_background
        noise = torch.where(use_own[:, None, None], own_bg.float(), noise)
    pc = torch.pow(10.0, calls.float() / 10)
    pn = torch.pow(10.0, noise / 10)
    frame_c = pc.sum(2)
    active = frame_c > 1e-3 * frame_c.amax(1, keepdim=True)
    mean_c = (frame_c * active).sum(1) / active.sum(1).clamp(min=1)
    mean_n = (pn.sum(2) * active).sum(1) / active.sum(1).clamp(min=1)
    snr = u(*snr_db, b)
    g = mean_c / (mean_n * torch.pow(10.0, snr / 10)).clamp(min=1e-20)
    x = 10 * torch.log10((pc + g[:, None, None] * pn).clamp(min=1e-10))
    x = x + u(-GAIN_DB, GAIN_DB, b, 1, 1)
    shift = torch.randint(t, (b,), generator=gen)
    return torch.stack([torch.roll(x[i], int(shift[i]), 0) for i in range(b)])


def drop_words(captions: list[str], rng: np.random.Generator, p: float = WORD_DROPOUT):
    out = []
    for c in captions:
        words = c.split()
        keep = rng.random(len(words)) >= p
        if keep.sum() < min(2, len(words)):
            keep[rng.choice(len(words), min(2, len(words)), replace=False)] = True
        out.append(" ".join(w for w, k in zip(words, keep, strict=True) if k))
    return out


def label_loss(z: torch.Tensor, prototypes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of cosine-to-prototype logits (scale ``LABEL_SCALE``) against the
    clip's labels spread evenly (a multi-label target distribution); rows without labels
    are skipped."""
    logits = LABEL_SCALE * F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T
    has = y.sum(1) > 0
    if not has.any():
        return logits.sum() * 0
    target = y[has] / y[has].sum(1, keepdim=True)
    return -(target * F.log_softmax(logits[has], dim=1)).sum(1).mean()


def perturb_captions(captions: list[str], vocab: list[str], rng: np.random.Generator,
                     lexicon: dict[str, list[str]] | None = None):
    """Step 5's caption noise: each word with a WordNet alternative in ``lexicon`` swapped
    for a random one of them with probability ``SYNONYM_SWAP`` (`lexicon.synonyms`), word
    dropout, then 0-3 inserted words (a random word of the training captions or a random
    3-8 letter string), plural/truncated word forms and two neighbours joined, so the text
    tower learns to read a caption's call words through words and word forms it has never
    seen in a caption."""
    out = []
    if lexicon:
        swapped = []
        for c in captions:
            words = c.split()
            for j, word in enumerate(words):
                alternatives = lexicon.get(word.lower())
                if alternatives and rng.random() < SYNONYM_SWAP:
                    words[j] = alternatives[int(rng.integers(len(alternatives)))]
            swapped.append(" ".join(words))
        captions = swapped
    for c in drop_words(captions, rng):
        w = c.split()
        for _ in range(int(rng.integers(0, 4))):
            if rng.random() < 0.5:
                letters = rng.integers(0, 26, int(rng.integers(3, 9)))
                new = "".join(chr(97 + int(k)) for k in letters)
            else:
                new = vocab[int(rng.integers(len(vocab)))]
            w.insert(int(rng.integers(0, len(w) + 1)), new)
        for j in range(len(w)):
            r = rng.random()
            if r < 0.1 and len(w[j]) > 4:
                w[j] = w[j][:-1] if w[j].endswith("s") else w[j] + "s"
            elif r < 0.15 and len(w[j]) > 5:
                w[j] = w[j][: int(rng.integers(3, len(w[j])))]
        if len(w) > 2 and rng.random() < 0.2:
            j = int(rng.integers(len(w) - 1))
            w[j:j + 2] = [w[j] + w[j + 1]]
        out.append(" ".join(w))
    return out


def text_stage(clap, tok, pool: Pool, bank: torch.Tensor, steps: int, seed: int = 0,
               lexicon: bool = True, log=sys.stderr) -> list[dict]:
    """Step 5: the text tower (and text projection) alone, ``supclip`` against the frozen
    audio embeddings of the pool (one augmented rendering each: own background at
    probability 0.5, SNR 0-25 dB), captions perturbed by `perturb_captions` (with
    ``lexicon``, also WordNet synonyms of the captions' words: `lexicon.synonyms`); batch
    64, AdamW lr 1e-3 constant."""
    from .losses import make_objective
    from .tokenizer import tokenize

    gen = torch.Generator().manual_seed(seed + 5)
    rng = np.random.default_rng([seed, 5])
    calls = torch.from_numpy(pool.calls)
    bgs = None if pool.backgrounds is None else torch.from_numpy(pool.backgrounds)
    clap.eval()
    with torch.no_grad():
        audio = torch.cat([clap.audio_projection(clap.audio_model(input_features=augment(
            calls[i:i + 64], None if bgs is None else bgs[i:i + 64], bank, gen, 0.5,
            (0.0, SNR_DB[1]))[:, None]).pooler_output) for i in range(0, len(calls), 64)])
    audio = F.normalize(audio, dim=1)
    vocab = sorted({w for c in pool.captions for w in c.split()})
    table = None
    if lexicon:
        from .lexicon import synonyms

        table = synonyms(vocab)
    supclip = make_objective("supclip", temperature=0.07)
    params = [*clap.text_model.parameters(), *clap.text_projection.parameters()]
    opt = torch.optim.AdamW(params, lr=TEXT_STAGE_LR)
    ty, ay = torch.from_numpy(pool.text_labels), torch.from_numpy(pool.audio_labels)
    batch = min(BATCH, len(calls))
    clap.text_model.train()
    history, total, t0 = [], 0.0, time.monotonic()
    for step in range(steps):
        idx = torch.randint(len(calls), (batch,), generator=gen)
        ids, mask = tokenize(tok, perturb_captions([pool.captions[i] for i in idx], vocab,
                                                   rng, table), 32)
        t = clap.text_projection(clap.text_model(input_ids=ids, attention_mask=mask)
                                 .pooler_output)
        loss = supclip(t, audio[idx], positives=(ty[idx] @ ay[idx].T) > 0)["supclip"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        if (step + 1) % 250 == 0 or step + 1 == steps:
            history.append({"text_step": step + 1, "supclip": round(total / 250, 4),
                            "s": round(time.monotonic() - t0, 1)})
            total = 0.0
            if log is not None:
                print(json.dumps(history[-1]), file=log, flush=True)
    clap.eval()
    return history


def _eval_split(clap, tok, manifest: Path, split: str, cache: dict) -> float:
    """Text->audio call-label mAP@10 (continuous) on a split of the corpus (first 200)."""
    from . import metrics
    from .data import load_audio, read_manifest, select_split
    from .tokenizer import tokenize

    if split not in cache:
        from ...model.frontend import FrontendParams, log_mel

        params = FrontendParams()
        es = select_split(read_manifest(manifest), split)[:200]
        feats = np.stack([log_mel(load_audio(e, params.sample_rate), params)[0]
                          for e in es]).astype(np.float32)
        cache[split] = (es, torch.from_numpy(feats))
    es, feats = cache[split]
    ids, mask = tokenize(tok, [e.caption for e in es], 32)
    clap.eval()
    with torch.no_grad():
        t = clap.text_projection(clap.text_model(input_ids=ids, attention_mask=mask)
                                 .pooler_output)
        a = torch.cat([clap.audio_projection(clap.audio_model(input_features=feats[i:i + 64])
                                             .pooler_output) for i in range(0, len(es), 64)])
    clap.train()
    ranking = metrics.rank_by_similarity(metrics.cosine_similarities(t.numpy(), a.numpy()))
    rel = metrics.relevance_matrix([e.labels for e in es], [e.labels for e in es])
    return float(metrics.retrieval_scores(ranking, rel, (10,))["mAP@10"])


def pretrain_standin(manifest: Path, out: Path, *, epochs: int = 40, extra: int = 2000,
                     noise: int = 400, own_background: float = 0.3, supclip_weight: float = 1.0,
                     seed: int = 0, batch: int = BATCH, eval_every: int = 0, eval_splits=("val",),
                     tiny: dict | None = None, text_steps: int = 5000,
                     from_model: Path | None = None, lexicon: bool = True,
                     log=sys.stderr) -> tuple[Path, dict]:
    """Steps 1-5; returns the model folder (``OUT/model``) and the timings.

    ``from_model``: skip steps 1-4's training and run step 5 on that model folder (a
    step-4 model written with ``text_steps=0``)."""
    from .device import quiet_transformers

    quiet_transformers()
    manifest, out = Path(manifest), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.monotonic()
    pool = build_pool(manifest, extra, out / "cache", log=log)
    timings["pool_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    bank = torch.from_numpy(noise_bank(noise, seed, out / "cache", log=log))
    timings["noise_bank_s"] = time.monotonic() - t0

    if from_model is not None:
        from .model import load_clap

        clap, tok = load_clap(from_model)
        history = []
    else:
        clap, tok, history, timings["train_s"] = _joint(
            pool, bank, manifest, epochs=epochs, own_background=own_background,
            supclip_weight=supclip_weight, seed=seed, batch=batch, eval_every=eval_every,
            eval_splits=eval_splits, tiny=tiny, log=log)
    if text_steps:
        t0 = time.monotonic()
        history += text_stage(clap, tok, pool, bank, text_steps, seed, lexicon=lexicon,
                              log=log)
        timings["text_stage_s"] = time.monotonic() - t0
        if eval_every:
            row = {f"{split}_mAP@10": round(_eval_split(clap, tok, manifest, split, {}), 4)
                   for split in eval_splits}
            history.append({"after": "text stage", **row})
            if log is not None:
                print(json.dumps(history[-1]), file=log, flush=True)
    model_dir = out / "model"
    clap.eval().save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return model_dir, timings


def _joint(pool: Pool, bank: torch.Tensor, manifest: Path, *, epochs, own_background,
           supclip_weight, seed, batch, eval_every, eval_splits, tiny, log):
    """Step 4: both towers from scratch; returns (clap, tokenizer, history, seconds)."""
    from .losses import make_objective
    from .model import build_tiny_clap
    from .tokenizer import tokenize, train_caption_tokenizer

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    tok = train_caption_tokenizer(pool.captions, 1000, 32)
    cfg = json.loads(json.dumps(tiny if tiny is not None else TINY))
    clap = build_tiny_clap(seed, vocab_size=len(tok), **cfg).train()
    classifier = torch.nn.Parameter(torch.randn(len(pool.names), clap.config.projection_dim))
    supclip = make_objective("supclip", temperature=0.07)
    audio = [*clap.audio_model.parameters(), *clap.audio_projection.parameters(), classifier]
    ids_audio = {id(p) for p in audio}
    rest = [p for p in clap.parameters() if id(p) not in ids_audio]
    opt = torch.optim.AdamW([{"params": rest, "lr": LR_TEXT}, {"params": audio, "lr": LR_AUDIO}])
    n = len(pool.captions)
    batch = min(batch, n)
    per_epoch = n // batch
    total = max(1, epochs * per_epoch)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                     / total)))
    calls = torch.from_numpy(pool.calls)
    bgs = None if pool.backgrounds is None else torch.from_numpy(pool.backgrounds)
    ty, ay = torch.from_numpy(pool.text_labels), torch.from_numpy(pool.audio_labels)
    history, evals, step = [], {}, 0
    t0 = time.monotonic()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        sums = {}
        for b0 in range(0, per_epoch * batch, batch):
            idx = perm[b0:b0 + batch]
            # curriculum: the lowest SNR falls from CLEAN_START_DB to SNR_DB[0] over the
            # first half of the steps
            low = SNR_DB[0] + (CLEAN_START_DB - SNR_DB[0]) * max(0.0, 1 - 2 * step / total)
            feats = augment(calls[idx], None if bgs is None else bgs[idx], bank, gen,
                            own_background, (low, SNR_DB[1]))
            ids, mask = tokenize(tok, drop_words([pool.captions[i] for i in idx], rng), 32)
            t = clap.text_projection(clap.text_model(input_ids=ids, attention_mask=mask)
                                     .pooler_output)
            a = clap.audio_projection(clap.audio_model(input_features=feats[:, None])
                                      .pooler_output)
            parts = {"text_labels": label_loss(t, classifier, ty[idx]),
                     "audio_labels": label_loss(a, classifier, ay[idx])}
            if supclip_weight:
                pos = (ty[idx] @ ay[idx].T) > 0
                parts["supclip"] = supclip_weight * supclip(t, a, positives=pos)["supclip"]
            loss = sum(parts.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / per_epoch
        row = {"epoch": epoch + 1, "step": step, **{k: round(v, 4) for k, v in sums.items()},
               "s": round(time.monotonic() - t0, 1)}
        if eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            for split in eval_splits:
                row[f"{split}_mAP@10"] = round(_eval_split(clap, tok, manifest, split, evals), 4)
        history.append(row)
        if log is not None:
            print(json.dumps(row), file=log, flush=True)
    return clap.eval(), tok, history, time.monotonic() - t0
