"""Pretrain the stand-in CLAP: a text warm-up on call labels, then label-aware contrastive.

    .venv/bin/python bench/standin_pretrain.py --corpus DIR --out OUT \
        [--text-epochs 40] [--epochs 30] [--more-epochs 60]

The recipe of docs/benchmarks/quality.md run 5, implemented in
``cvahash.export.train.standin`` (see its docstring; ``make demo ARGS=--retrain`` runs the
same recipe for the shipped demo bundle). Only the train split is used; val/test
(held-out background and phrasings) stay unseen. Evaluate with
``bench/standin_probe.py --corpus DIR clip-run OUT/supclip-more`` or use it as
``bench/quality.py --pretrained OUT/supclip-more``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


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
    from cvahash.export.train.standin import pretrain_standin

    quiet_transformers()
    source, timings = pretrain_standin(args.corpus / "manifest.jsonl", args.out,
                                       text_epochs=args.text_epochs, epochs=args.epochs,
                                       more_epochs=args.more_epochs, seed=args.seed)
    print(json.dumps({"model": str(source), "timings": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
