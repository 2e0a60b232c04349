"""`cvahash train`: train CVA-Hash heads (and LoRA) on a CLAP model, on a workstation.

    cvahash train --model ID_OR_DIR --data MANIFEST --bits 64 --objective crovca \
        --lora-rank 8 --epochs 5 --out RUN_DIR

``--model tiny --objective clip`` pretrains a tiny CLAP from scratch (the stand-in
foundation model when no pretrained weights are at hand); its RUN_DIR then works as
``--model RUN_DIR`` for later runs. Running again with the same --out resumes from the
last checkpoint. Needs the [export] extra (torch, transformers, peft).

Without captions: ``--objective lsh`` (no data: random hyperplanes on the shared
projection) and ``--objective itq`` (``--data`` = a folder of recordings or a manifest;
captions optional) make a bundle-ready run from a pretrained CLAP in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train hashing heads (+LoRA) on a CLAP model (workstation)",
        description="Train CVA-Hash heads with LoRA on a CLAP model; see "
                    "docs/benchmarks/quality.md.")
    p.add_argument("--model", default="tiny",
                   help="hub id, local model folder, clip run folder, or 'tiny' (a random "
                        "tiny CLAP) (default: tiny)")
    p.add_argument("--tiny-config", default=None, metavar="JSON",
                   help="--model tiny only: overrides of the tiny ClapConfig, e.g. "
                        "'{\"audio_config\": {\"patch_size\": 16, \"patch_stride\": [16, 16]}}' "
                        "(default: none)")
    p.add_argument("--data", default=None, metavar="MANIFEST",
                   help="JSONL or CSV manifest: audio, caption, labels, split; for itq also a "
                        "folder of recordings (default: none; every objective but lsh needs "
                        "it)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run folder; resumes from its last checkpoint if it exists (required)")
    p.add_argument("--bits", type=int, default=64,
                   help="code width in bits, e.g. 32, 64, 128, 256 (default: 64)")
    p.add_argument("--objective", choices=("crovca", "contrastive", "distill", "clip",
                                           "supclip", "lsh", "itq"), default="crovca",
                   help="crovca: cross-view alignment hashing; contrastive: InfoNCE on the "
                        "codes; distill: codes that rank as the model's continuous "
                        "embeddings rank; clip: pretrain a tiny CLAP; supclip: the same, captions "
                        "sharing a call label count as matches; lsh: random hyperplanes, no "
                        "data; itq: learned from unlabelled audio (default: crovca)")
    p.add_argument("--head", choices=("crovca", "seed"), default="crovca",
                   help="crovca: Linear-ReLU-Linear-BN; seed: Linear-BN-ReLU-Linear "
                        "(default: crovca)")
    p.add_argument("--head-hidden", type=int, default=None, metavar="N",
                   help="width of the heads' hidden layer (default: the larger of the "
                        "model's projection size and --bits)")
    p.add_argument("--lora-rank", type=int, default=8,
                   help="LoRA rank on the encoders; 0 trains the heads only (default: 8)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="head-only epochs before LoRA starts (default: 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="clip-caption pairs per step (default: 32)")
    p.add_argument("--lr-head", type=float, default=1e-3,
                   help="learning rate of the hashing heads (default: 0.001)")
    p.add_argument("--lr-lora", type=float, default=1e-4,
                   help="learning rate of the LoRA adapters (default: 0.0001)")
    p.add_argument("--lr-base", type=float, default=5e-4,
                   help="learning rate of the whole model, clip objective only "
                        "(default: 0.0005)")
    p.add_argument("--max-text-length", type=int, default=77,
                   help="caption tokens kept (default: 77, as CLAP)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to train; auto picks CUDA, then MPS, then CPU (default: auto)")
    p.add_argument("--no-amp", action="store_true",
                   help="no mixed-precision autocast on CUDA (default: autocast on)")
    p.add_argument("--cache-dir", default=None,
                   help="log-mel cache folder (default: .cvahash-cache beside the manifest)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if RUN_DIR has a checkpoint (default: resume)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line (default: a progress line on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .workstation import workstation_extra

    with workstation_extra("train"):
        from ..export.train.loop import TrainOptions, train
        from ..export.train.run import RunConfig
    if args.objective in ("lsh", "itq"):
        return _run_fixed_heads(args)
    if args.data is None:
        print(f"cvahash train: error: --objective {args.objective} needs --data MANIFEST "
              "(captioned clips); without captions use --objective lsh or itq",
              file=sys.stderr)
        return 2
    if args.head_hidden is not None and args.head_hidden < 1:
        print(f"cvahash train: error: --head-hidden must be >= 1, got {args.head_hidden}",
              file=sys.stderr)
        return 2
    if args.objective in ("clip", "supclip") and args.lora_rank:
        args.lora_rank = 0  # clip pretraining trains the whole (tiny) model; LoRA is moot
    try:
        tiny = json.loads(args.tiny_config) if args.tiny_config else {}
        if not isinstance(tiny, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"cvahash train: error: --tiny-config must be a JSON object ({exc})",
              file=sys.stderr)
        return 2
    config = RunConfig(
        model=args.model, tiny_config=tiny, bits=args.bits, objective=args.objective,
        head=args.head, head_hidden=args.head_hidden,
        lora_rank=args.lora_rank, seed=args.seed, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr_head=args.lr_head,
        lr_lora=args.lr_lora, lr_base=args.lr_base, text_max_length=args.max_text_length,
        amp=not args.no_amp)
    return _summarise(lambda: train(config, args.data, args.out, _options(args, TrainOptions)),
                      (ValueError, FloatingPointError))


def _run_fixed_heads(args: argparse.Namespace) -> int:
    """--objective lsh / itq: no gradient training, one pass over the data at most."""
    from ..errors import CvahashError
    from .workstation import workstation_extra

    with workstation_extra("train"):
        from ..export.train.hyperplanes import fit_run
        from ..export.train.loop import TrainOptions
        from ..export.train.run import RunConfig
    config = RunConfig(model=args.model, bits=args.bits, objective=args.objective,
                       head="projection", lora_rank=0, seed=args.seed, epochs=0,
                       warmup_epochs=0, text_max_length=args.max_text_length)
    return _summarise(lambda: fit_run(config, args.out, args.data, _options(args, TrainOptions)),
                      (ValueError, CvahashError))


def _options(args: argparse.Namespace, options_type):
    """The run options both ways of training take from the command line."""
    return options_type(device=args.device, cache_dir=args.cache_dir,
                        resume=not args.no_resume, progress=not args.quiet)


def _summarise(work, errors) -> int:
    """Run ``work``; print its summary as JSON (exit 0) or the expected error (exit 1)."""
    try:
        summary = work()
    except errors as exc:
        print(f"cvahash train: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
