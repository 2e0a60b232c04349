"""The stand-in CLAP: a tiny ClapModel pretrained here, in place of a downloaded checkpoint.

No pretrained CLAP weights reach the machines this project is built on, so a tiny one is
trained on the synthetic corpus (`cvahash synth`); it stands in for a foundation model.
The recipe (docs/benchmarks/quality.md run 5), on the manifest's train split only:

1. ``OUT/text-warm``: a tiny ClapModel (``build_tiny_clap`` with 16 x 16 audio patches,
   so the second HTSAT stage attends over the whole window) and a caption tokenizer
   trained on the train captions; its *text* tower and text projection alone learn the
   captions' call labels (multi-label cross-entropy through a linear layer on the
   normalised projection, ``text_epochs`` epochs of 64, AdamW lr 2e-3). A randomly
   initialised text tower gives every caption nearly the same embedding (mean pairwise
   cosine 0.994), and contrastive training from there sits at ln(batch) for hundreds of
   steps; after the warm-up the captions' mean cosine is about 0.3. The audio tower is
   untouched.
2. ``OUT/supclip``: the ``supclip`` objective (captions sharing a call label are
   positives) from step 1's model, ``epochs`` epochs, batch 64, lr 2e-3, temperature 0.07;
3. ``OUT/supclip-more`` (when ``more_epochs`` > 0): the same again from step 2's model
   (a fresh cosine schedule).

Used by ``bench/standin_pretrain.py`` and ``python -m cvahash.export.demo --retrain``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Overrides of the tiny ClapConfig: 16 x 16 patches, one attention window over 10 s.
TINY = {"audio_config": {"patch_size": 16, "patch_stride": [16, 16]}}
BATCH = 64


def text_warmup(manifest: Path, out: Path, epochs: int, seed: int = 0, log=sys.stderr) -> dict:
    """Step 1: a tiny CLAP whose text tower has learnt the train captions' call labels."""
    from .data import read_manifest, select_split
    from .model import HashingModel, build_tiny_clap
    from .tokenizer import tokenize, train_caption_tokenizer

    torch.manual_seed(seed)
    entries = select_split(read_manifest(manifest), "train")
    names = sorted({lab for e in entries for lab in e.labels})
    if not names:
        raise SystemExit(f"{manifest}: the train split has no labels; the text warm-up "
                         "needs them (make the corpus with `cvahash synth --out DIR`)")
    y = torch.zeros(len(entries), len(names))
    for i, e in enumerate(entries):
        for lab in e.labels:
            y[i, names.index(lab)] = 1
    tok = train_caption_tokenizer([e.caption for e in entries], 1000, 32)
    clap = build_tiny_clap(seed, vocab_size=len(tok), **json.loads(json.dumps(TINY)))
    model = HashingModel(clap, 16)
    ids, mask = tokenize(tok, [e.caption for e in entries], 32)
    classifier = torch.nn.Linear(clap.config.projection_dim, len(names))
    params = (list(clap.text_model.parameters()) + list(clap.text_projection.parameters())
              + list(classifier.parameters()))
    opt = torch.optim.AdamW(params, lr=2e-3)
    batch = min(BATCH, len(entries))
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(len(entries))
        total = 0.0
        for start in range(0, len(entries) - batch + 1, batch):
            idx = perm[start:start + batch]
            z = F.normalize(model.text_embed(ids[idx], mask[idx]), dim=1)
            loss = F.binary_cross_entropy_with_logits(classifier(z) * 10, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        with torch.no_grad():
            z = F.normalize(model.text_embed(ids[:256], mask[:256]), dim=1)
            n = len(z)
            mean_cos = float(((z @ z.T).sum() - n) / max(n * (n - 1), 1))
        history.append({"epoch": epoch + 1, "loss": total, "caption_mean_cosine": mean_cos})
        if log is not None:
            print(json.dumps(history[-1]), file=log, flush=True)
    clap.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"labels": len(names), "history": history}


def pretrain_standin(manifest: Path, out: Path, *, text_epochs: int = 40, epochs: int = 30,
                     more_epochs: int = 60, seed: int = 0, log=sys.stderr) -> tuple[Path, dict]:
    """Steps 1-3; returns the final model folder (a clip run folder) and the timings."""
    from .device import quiet_transformers
    from .loop import TrainOptions, train
    from .run import RunConfig

    quiet_transformers()
    manifest, out = Path(manifest), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.monotonic()
    text_warmup(manifest, out / "text-warm", text_epochs, seed, log=log)
    timings["text_warmup_s"] = time.monotonic() - t0
    source = out / "text-warm"
    for name, n_epochs in (("supclip", epochs), ("supclip-more", more_epochs)):
        if n_epochs <= 0:
            continue
        t0 = time.monotonic()
        config = RunConfig(model=str(source), objective="supclip", lora_rank=0,
                           epochs=n_epochs, batch_size=BATCH, lr_base=2e-3,
                           text_max_length=32, seed=seed, loss={"temperature": 0.07})
        summary = train(config, manifest, out / name, TrainOptions(progress=False, resume=False))
        timings[f"{name}_s"] = time.monotonic() - t0
        if log is not None:
            print(json.dumps(summary), file=log, flush=True)
        source = out / name
    return source, timings
