"""`cvahash train`: train CVA-Hash heads (and LoRA) on a CLAP model, on a workstation.

    cvahash train --model ID_OR_DIR --data MANIFEST --bits 64 --objective crovca \
        --lora-rank 8 --epochs 5 --out RUN_DIR

``--model tiny --objective clip`` pretrains a tiny CLAP from scratch (the stand-in
foundation model when no pretrained weights are at hand); its RUN_DIR then works as
``--model RUN_DIR`` for later runs. Running again with the same --out resumes from the
last checkpoint. Needs the [export] extra (torch, transformers, peft).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train hashing heads (+LoRA) on a CLAP model (workstation)",
        description="Train CVA-Hash heads with LoRA on a CLAP model; "
                    "see docs/benchmarks/quality.md.")
    p.add_argument("--model", default="tiny",
                   help="hub id, local model folder, clip run folder, or 'tiny' (random tiny "
                        "CLAP; default)")
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="JSONL or CSV manifest: audio, caption, labels, split")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run folder (resumes if it exists)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--objective", choices=("crovca", "contrastive", "clip"), default="crovca")
    p.add_argument("--head", choices=("crovca", "seed"), default="crovca",
                   help="crovca: Linear-ReLU-Linear-BN (default); seed: Linear-BN-ReLU-Linear")
    p.add_argument("--lora-rank", type=int, default=8, help="0 trains the heads only")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--warmup-epochs", type=int, default=1, help="head-only epochs before LoRA")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--lr-lora", type=float, default=1e-4)
    p.add_argument("--lr-base", type=float, default=5e-4, help="clip objective only")
    p.add_argument("--max-text-length", type=int, default=77)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--no-amp", action="store_true", help="no autocast on CUDA")
    p.add_argument("--cache-dir", default=None,
                   help="log-mel cache folder (default: .cvahash-cache beside the manifest)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if RUN_DIR has a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import MissingExtra

    try:
        from ..export.train.loop import TrainOptions, train
        from ..export.train.run import RunConfig
    except ImportError as exc:
        raise MissingExtra(f"cvahash train needs the workstation extra ({exc.name} is missing): "
                           "pip install 'cvahash[export]'") from exc
    if args.objective == "clip" and args.lora_rank:
        args.lora_rank = 0  # clip pretraining trains the whole (tiny) model; LoRA is moot
    config = RunConfig(
        model=args.model, bits=args.bits, objective=args.objective, head=args.head,
        lora_rank=args.lora_rank, seed=args.seed, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr_head=args.lr_head,
        lr_lora=args.lr_lora, lr_base=args.lr_base, text_max_length=args.max_text_length,
        amp=not args.no_amp)
    options = TrainOptions(device=args.device, cache_dir=args.cache_dir,
                           resume=not args.no_resume, progress=not args.quiet)
    try:
        summary = train(config, args.data, args.out, options)
    except (ValueError, FloatingPointError) as exc:
        print(f"cvahash train: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
