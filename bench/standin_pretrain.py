"""Pretrain the stand-in CLAP: augmented label-anchored + label-aware contrastive, then text.

    .venv/bin/python bench/standin_pretrain.py --corpus DIR --out OUT \
        [--epochs 40] [--extra 2000] [--noise 400] [--text-steps 5000] [--eval-every 0]

The recipe of docs/benchmarks/quality.md runs 7 and 10, implemented in
``cvahash.export.train.standin`` (see its docstring; ``make demo ARGS=--retrain`` runs the
same recipe for the shipped demo bundle). Only the corpus's train split (and ``--extra``
new train-split clips of the same generator) is used; val/test (held-out background and
phrasings) stay unseen. ``--eval-every N`` prints val mAP@10 every N epochs (monitoring
only; it does not steer training). Evaluate with
``bench/standin_probe.py --corpus DIR clip-run OUT/model`` or use it as
``bench/quality.py --pretrained OUT/model``.
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
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--extra", type=int, default=2000,
                    help="new train-split clips rendered beside the corpus's own")
    ap.add_argument("--noise", type=int, default=400, help="training-only backgrounds")
    ap.add_argument("--text-steps", type=int, default=5000,
                    help="step 5: text-tower steps against the frozen audio tower")
    ap.add_argument("--from-model", type=Path,
                    help="run only step 5 on this step-4 model folder (written with "
                         "--text-steps 0)")
    ap.add_argument("--no-lexicon", action="store_true",
                    help="step 5 without WordNet synonyms (run 7's recipe)")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cvahash.export.train.device import quiet_transformers
    from cvahash.export.train.standin import pretrain_standin

    quiet_transformers()
    source, timings = pretrain_standin(args.corpus / "manifest.jsonl", args.out,
                                       epochs=args.epochs, extra=args.extra, noise=args.noise,
                                       text_steps=args.text_steps, from_model=args.from_model,
                                       eval_every=args.eval_every, seed=args.seed,
                                       lexicon=not args.no_lexicon)
    print(json.dumps({"model": str(source), "timings": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
