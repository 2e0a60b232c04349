"""Can the stand-in model learn the synthetic corpus's call types at all? Supervised probes.

    .venv/bin/python bench/standin_probe.py --corpus DIR band-stats
    .venv/bin/python bench/standin_probe.py --corpus DIR htsat --epochs 24
    .venv/bin/python bench/standin_probe.py --corpus DIR text --epochs 30
    .venv/bin/python bench/standin_probe.py --corpus DIR clip-run RUN_DIR|MODEL_DIR

Diagnostics for bench/quality.py, whose tiny CLAP (pretrained from scratch with the
``clip`` objective) retrieves call types at chance. Each probe says where learning fails:

- ``band-stats``: an MLP on hand-made log-mel statistics per mel band (mean, max, spread,
  mean absolute frame difference): is the call type in the features at all?
- ``htsat``: the tiny CLAP's audio tower (``build_tiny_clap``, HTSAT) trained *supervised*
  (cross-entropy on each clip's first call label): can that architecture learn it, and how
  fast?
- ``text``: the tiny text tower trained supervised on the captions: can it read the call?
- ``clip-run``: a ``--objective clip`` run's (or a stand-in model folder's) continuous
  retrieval on train / val / test,
  with two relevance definitions (the clip's own caption; any shared call label): does it
  generalise or memorise?

Scores are top-1 "hit" rates (the arg-max class is one of the clip's labels) or mAP@10.
Results: docs/benchmarks/quality.md, run 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def load(corpus: Path, splits=("train", "test")):
    from cvahash.export.train.data import log_mel_features, read_manifest, select_split
    from cvahash.model.frontend import FrontendParams

    manifest = corpus / "manifest.jsonl"
    entries = read_manifest(manifest)
    labels = sorted({lab for e in entries for lab in e.labels})
    out = {}
    for split in splits:
        es = select_split(entries, split)
        feats = log_mel_features(es, corpus / ".cvahash-cache", FrontendParams(), seed=0,
                                 progress=False)
        y = np.zeros((len(es), len(labels)), np.float32)
        for i, e in enumerate(es):
            for lab in e.labels:
                y[i, labels.index(lab)] = 1
        out[split] = (es, feats, torch.from_numpy(y))
    return out, labels


def hit_rate(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float(y[torch.arange(len(y)), scores.argmax(1)].mean())


def band_stats(data, labels, epochs: int) -> None:
    def stats(f):
        f = np.asarray(f, dtype=np.float32)[:, 0]
        dev = f - np.median(f, axis=1, keepdims=True)
        return np.concatenate([f.mean(1), f.max(1), dev.std(1),
                               np.abs(np.diff(f, axis=1)).mean(1)], 1)

    (_, ftr, ytr), (_, fte, yte) = data["train"], data["test"]
    xtr, xte = stats(ftr), stats(fte)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = torch.from_numpy((xtr - mu) / sd), torch.from_numpy((xte - mu) / sd)
    mlp = nn.Sequential(nn.Linear(xtr.shape[1], 256), nn.ReLU(), nn.Linear(256, len(labels)))
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=1e-2)
    for ep in range(epochs):
        loss = nn.functional.binary_cross_entropy_with_logits(mlp(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (ep + 1) % max(1, epochs // 6) == 0:
            with torch.no_grad():
                print(f"step {ep + 1}: train hit {hit_rate(mlp(xtr), ytr):.3f} "
                      f"test hit {hit_rate(mlp(xte), yte):.3f}", flush=True)


def htsat(data, labels, epochs: int, lr: float, overrides: dict) -> None:
    from cvahash.export.train.model import build_tiny_clap

    clap = build_tiny_clap(0, audio_config=overrides)
    tower, proj = clap.audio_model, clap.audio_projection
    clf = nn.Linear(clap.config.projection_dim, len(labels))
    params = [*tower.parameters(), *proj.parameters(), *clf.parameters()]
    print(f"audio tower: {sum(p.numel() for p in tower.parameters())} parameters", flush=True)
    opt = torch.optim.Adam(params, lr=lr)

    def forward(f):
        x = torch.from_numpy(np.asarray(f, np.float32))
        return clf(proj(tower(input_features=x).pooler_output))

    def score(split):
        _, f, y = data[split]
        tower.eval()
        with torch.no_grad():
            s = torch.cat([forward(f[i:i + 64]) for i in range(0, len(f), 64)])
        tower.train()
        return hit_rate(s, y)

    _, ftr, ytr = data["train"]
    t0 = time.monotonic()
    tower.train()
    for ep in range(epochs):
        order = np.random.default_rng(ep).permutation(len(ftr))
        for b in range(0, len(order) - 31, 32):
            i = np.sort(order[b:b + 32])
            loss = nn.functional.cross_entropy(forward(ftr[i]), ytr[i].argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (ep + 1) % 3 == 0 or ep + 1 == epochs:
            print(f"epoch {ep + 1}: loss {loss.item():.3f} train hit {score('train'):.3f} "
                  f"test hit {score('test'):.3f} ({time.monotonic() - t0:.0f} s)", flush=True)


def text(data, labels, epochs: int) -> None:
    from cvahash.export.train.model import build_tiny_clap
    from cvahash.export.train.tokenizer import tokenize, train_caption_tokenizer

    (etr, _, ytr), (ete, _, yte) = data["train"], data["test"]
    tok = train_caption_tokenizer([e.caption for e in etr], vocab_size=1000, model_max_length=32)
    itr, mtr = tokenize(tok, [e.caption for e in etr], 32)
    ite, mte = tokenize(tok, [e.caption for e in ete], 32)
    clap = build_tiny_clap(0, vocab_size=len(tok)).train()
    clf = nn.Linear(clap.config.projection_dim, len(labels))
    opt = torch.optim.Adam([*clap.text_model.parameters(), *clap.text_projection.parameters(),
                            *clf.parameters()], lr=1e-3)

    def forward(ids, mask):
        pooled = clap.text_model(input_ids=ids, attention_mask=mask).pooler_output
        return clf(clap.text_projection(pooled))

    target = ytr.argmax(1)
    for ep in range(epochs):
        order = torch.randperm(len(itr))
        for b in range(0, len(order) - 31, 32):
            i = order[b:b + 32]
            loss = nn.functional.cross_entropy(forward(itr[i], mtr[i]), target[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (ep + 1) % 5 == 0:
            with torch.no_grad():
                print(f"epoch {ep + 1}: train hit {hit_rate(forward(itr, mtr), ytr):.3f} "
                      f"test hit {hit_rate(forward(ite, mte), yte):.3f}", flush=True)


def clip_run(corpus: Path, run_dir: Path, limit: int = 200) -> None:
    from cvahash.export.train import metrics
    from cvahash.export.train.loop import encode_all
    from cvahash.export.train.run import load_run
    from cvahash.export.train.tokenizer import tokenize

    if (run_dir / "config.json").is_file() and not (run_dir / "run.json").is_file():
        # a save_pretrained model folder (bench/standin_pretrain.py's OUT/model)
        from cvahash.export.train.model import HashingModel, load_clap
        from cvahash.export.train.run import RunConfig

        clap, tok = load_clap(run_dir)
        model = HashingModel(clap, 16).eval()
        config = RunConfig(model=str(run_dir), text_max_length=32)
    else:
        model, config, tok = load_run(run_dir)
    data, _ = load(corpus, ("train", "val", "test"))
    for split, (es, feats, _) in data.items():
        es, feats = es[:limit], feats[:limit]
        ids, mask = tokenize(tok, [e.caption for e in es], config.text_max_length,
                             config.text_padding)
        t, a = encode_all(model, feats, ids, mask, torch.device("cpu"))
        ranking = metrics.rank_by_similarity(metrics.cosine_similarities(t.numpy(), a.numpy()))
        for name, rel in (("own caption", np.eye(len(es), dtype=bool)),
                          ("shared call label",
                           metrics.relevance_matrix([e.labels for e in es],
                                                    [e.labels for e in es]))):
            s = metrics.retrieval_scores(ranking, rel, (1, 10))
            print(f"{split:5s} {len(es):4d} clips, relevance = {name:17s}: "
                  f"mAP@10 {s['mAP@10']:.3f}  P@1 {s['P@1']:.3f}  P@10 {s['P@10']:.3f} "
                  f"(fraction relevant {rel.mean():.3f})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder with manifest.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="probe", required=True)
    sub.add_parser("band-stats").add_argument("--epochs", type=int, default=300)
    h = sub.add_parser("htsat")
    h.add_argument("--epochs", type=int, default=24)
    h.add_argument("--lr", type=float, default=1e-3)
    h.add_argument("--audio-config", type=json.loads, default={},
                   help="JSON overrides of the tiny audio config, "
                        "e.g. '{\"patch_embeds_hidden_size\": 32}'")
    sub.add_parser("text").add_argument("--epochs", type=int, default=30)
    sub.add_parser("clip-run").add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from cvahash.export.train.loop import quiet_transformers

    quiet_transformers()
    if args.probe == "clip-run":
        clip_run(args.corpus, args.run_dir)
        return 0
    data, labels = load(args.corpus)
    if args.probe == "band-stats":
        band_stats(data, labels, args.epochs)
    elif args.probe == "htsat":
        htsat(data, labels, args.epochs, args.lr, args.audio_config)
    else:
        text(data, labels, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
