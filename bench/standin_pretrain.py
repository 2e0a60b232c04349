"""Pretrain the stand-in CLAP: a text warm-up on call labels, then label-aware contrastive.

    .venv/bin/python bench/standin_pretrain.py --corpus DIR --out OUT \
        [--text-epochs 40] [--epochs 30] [--more-epochs 60]

The recipe of docs/benchmarks/quality.md run 5 (the tiny CLAP trained here stands in for a
pretrained foundation model; no weights can be downloaded):

1. ``OUT/text-warm``: a tiny ClapModel (``build_tiny_clap`` with 16 x 16 audio patches,
   so the second HTSAT stage attends over the whole window) and a caption tokenizer
   trained on the train split; its *text* tower and text projection alone learn the train
   captions' call labels (multi-label cross-entropy through a linear layer on the
   normalised projection, ``--text-epochs`` epochs of 64, AdamW lr 2e-3). A randomly
   initialised text tower gives every caption nearly the same embedding (mean pairwise
   cosine 0.994, the pooled first token sees little of the rest), and contrastive
   training from there sits at ln(batch) for hundreds of steps; after the warm-up the
   captions' mean cosine is about 0.3. The audio tower is untouched.
2. ``OUT/supclip``: ``cvahash train --model OUT/text-warm --objective supclip`` (captions
   sharing a call label are positives), ``--epochs`` epochs, batch 64, lr 2e-3,
   temperature 0.07;
3. ``OUT/supclip-more`` (when ``--more-epochs`` > 0): the same objective again from step
   2's model for ``--more-epochs`` epochs (a fresh cosine schedule).

Only the train split is used; val/test (held-out background and phrasings) stay unseen.
Evaluate with ``bench/standin_probe.py --corpus DIR clip-run OUT/supclip-more`` or use it
as ``bench/quality.py --pretrained OUT/supclip-more``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TINY = {"audio_config": {"patch_size": 16, "patch_stride": [16, 16]}}


def text_warmup(manifest: Path, out: Path, epochs: int, seed: int = 0) -> dict:
    from cvahash.export.train.data import read_manifest, select_split
    from cvahash.export.train.model import HashingModel, build_tiny_clap
    from cvahash.export.train.tokenizer import tokenize, train_caption_tokenizer

    torch.manual_seed(seed)
    entries = select_split(read_manifest(manifest), "train")
    names = sorted({lab for e in entries for lab in e.labels})
    if not names:
        raise SystemExit(f"{manifest}: the train split has no labels; the warm-up needs them")
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
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(len(entries))
        total = 0.0
        for start in range(0, len(entries) - 63, 64):
            idx = perm[start:start + 64]
            z = F.normalize(model.text_embed(ids[idx], mask[idx]), dim=1)
            loss = F.binary_cross_entropy_with_logits(classifier(z) * 10, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        with torch.no_grad():
            z = F.normalize(model.text_embed(ids[:256], mask[:256]), dim=1)
            n = len(z)
            mean_cos = float(((z @ z.T).sum() - n) / (n * (n - 1)))
        history.append({"epoch": epoch + 1, "loss": total, "caption_mean_cosine": mean_cos})
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)
    clap.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"labels": len(names), "history": history}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder with manifest.jsonl")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--text-epochs", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--more-epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cvahash.export.train.device import quiet_transformers
    from cvahash.export.train.loop import TrainOptions, train
    from cvahash.export.train.run import RunConfig

    quiet_transformers()
    manifest = args.corpus / "manifest.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.monotonic()
    text_warmup(manifest, args.out / "text-warm", args.text_epochs, args.seed)
    timings["text_warmup_s"] = time.monotonic() - t0
    source = args.out / "text-warm"
    for name, epochs in (("supclip", args.epochs), ("supclip-more", args.more_epochs)):
        if epochs <= 0:
            continue
        t0 = time.monotonic()
        config = RunConfig(model=str(source), objective="supclip", lora_rank=0, epochs=epochs,
                           batch_size=64, lr_base=2e-3, text_max_length=32, seed=args.seed,
                           loss={"temperature": 0.07})
        summary = train(config, manifest, args.out / name,
                        TrainOptions(progress=False, resume=False))
        timings[f"{name}_s"] = time.monotonic() - t0
        print(json.dumps(summary), file=sys.stderr, flush=True)
        source = args.out / name
    print(json.dumps({"model": str(source), "timings": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
