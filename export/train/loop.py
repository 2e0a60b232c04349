"""The training loop: CVA-Hash heads (+ LoRA) on a CLAP model, or ``clip`` pretraining.

``train(config, manifest, run_dir, options)`` runs a whole run and can be interrupted and
resumed: every checkpoint holds the trained weights, the optimiser, the scheduler, every
RNG state and the global step, and batches are a pure function of (seed, epoch), so a
resumed run takes exactly the steps the uninterrupted one would have taken.

Schedules: AdamW with one parameter group per kind (heads ``lr_head``, LoRA ``lr_lora``,
the whole ClapModel ``lr_base`` for ``clip``), cosine decay over the run. LoRA stays frozen
for the first ``warmup_epochs`` (head-only warm-up; its cosine starts after that).

Runs without LoRA train only the heads on a frozen encoder, so the encoders' embeddings
are computed once and the heads train on those (same result, far less compute).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, ClapModel

from ...model.frontend import FrontendParams
from .data import log_mel_features, read_manifest, select_split
from .device import encode_all, pick_device, quiet_transformers
from .losses import PRETRAIN_OBJECTIVES, make_objective
from .model import HashingModel, build_tiny_clap, load_clap
from .progress import Progress
from .run import RunConfig, build_model, load_checkpoint, read_run_config, save_run
from .tokenizer import tokenize, train_caption_tokenizer


@dataclass
class TrainOptions:
    """How to run (not what to train: that is RunConfig)."""

    device: str = "auto"                 # auto | cpu | cuda | mps
    cache_dir: Path | None = None        # log-mel cache; default <manifest folder>/.cvahash-cache
    resume: bool = True                  # continue from RUN_DIR/checkpoint.pt if present
    stop_after_steps: int | None = None  # checkpoint and return after this global step
    progress: bool = True
    tiny_vocab_size: int = 1000
    # Runs without LoRA train heads on frozen-encoder embeddings. Pass one dict to several
    # train() calls (a benchmark grid) and the embeddings are computed once per base model.
    embedding_cache: dict | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cosine(frac: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


@contextlib.contextmanager
def _adapters_off(model: HashingModel):
    """The pretrained encoders: LoRA adapters (if any) switched off inside the block."""
    if model.lora_rank and hasattr(model.clap, "disable_adapter"):
        with model.clap.disable_adapter():
            yield
    else:
        yield


# ---------------------------------------------------------------- setup


def prepare_base(config: RunConfig, train_entries, run_dir: Path, options: TrainOptions):
    """(base ClapModel, tokenizer) for a new run, or the run's own copies when resuming."""
    if (run_dir / "base" / "config.json").exists() and (run_dir / "tokenizer").is_dir():
        base = ClapModel.from_pretrained(str(run_dir / "base"), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"), local_files_only=True)
        return base, tok
    if config.model == "tiny":
        tok = train_caption_tokenizer([e.caption for e in train_entries],
                                      vocab_size=options.tiny_vocab_size,
                                      model_max_length=config.text_max_length)
        overrides = {k: (dict(v) if isinstance(v, dict) else v)
                     for k, v in (config.tiny_config or {}).items()}
        return build_tiny_clap(config.seed, vocab_size=len(tok), **overrides), tok
    return load_clap(config.model)


def make_optimizer(model: HashingModel, config: RunConfig, steps_per_epoch: int, total: int):
    groups, lambdas = [], []
    warm = config.warmup_epochs * steps_per_epoch if model.lora_rank else 0
    if config.objective in PRETRAIN_OBJECTIVES:
        groups.append({"params": [p for p in model.clap.parameters() if p.requires_grad],
                       "lr": config.lr_base, "name": "base"})
        lambdas.append(lambda s: _cosine(s / max(total, 1)))
    else:
        groups.append({"params": model.head_parameters(), "lr": config.lr_head, "name": "heads"})
        lambdas.append(lambda s: _cosine(s / max(total, 1)))
        if model.lora_rank:
            groups.append({"params": model.lora_parameters(), "lr": config.lr_lora,
                           "name": "lora"})
            lambdas.append(
                lambda s: 0.0 if s < warm else _cosine((s - warm) / max(total - warm, 1)))
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    return opt, sched, warm


# ---------------------------------------------------------------- the loop


def train(config: RunConfig, manifest: str | Path, run_dir: str | Path,
          options: TrainOptions | None = None) -> dict:
    """Train (or resume) a run into ``run_dir``; returns a summary dict."""
    options = options or TrainOptions()
    run_dir = Path(run_dir)
    quiet_transformers()
    device = pick_device(options.device)
    params = FrontendParams.from_dict(config.frontend)
    config.frontend = params.to_dict()
    ckpt_state = None
    if options.resume and (run_dir / "checkpoint.pt").exists():
        saved = read_run_config(run_dir)
        if saved.to_dict() != config.to_dict():
            diff = sorted(k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v)
            raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                             "use another --out, or --no-resume to start over")
        ckpt = load_checkpoint(run_dir)
        ckpt_state = ckpt
    elif not options.resume and (run_dir / "checkpoint.pt").exists():
        for name in ("checkpoint.pt", "history.jsonl"):
            (run_dir / name).unlink(missing_ok=True)

    seed_everything(config.seed)
    entries = read_manifest(manifest)
    train_entries = select_split(entries, "train")
    if len(train_entries) < 2:
        raise ValueError(f"{manifest}: need at least 2 training clips, found {len(train_entries)}")
    cache_dir = options.cache_dir or Path(manifest).parent / ".cvahash-cache"
    features = log_mel_features(train_entries, cache_dir, params, seed=config.seed,
                                progress=options.progress)

    base, tokenizer = prepare_base(config, train_entries, run_dir, options)
    input_ids, attention_mask = tokenize(tokenizer, [e.caption for e in train_entries],
                                         config.text_max_length, config.text_padding)
    keeps_base = config.lora_rank and config.objective not in PRETRAIN_OBJECTIVES
    pristine_base = copy.deepcopy(base) if keeps_base else None
    model = build_model(config, base)
    if config.objective in PRETRAIN_OBJECTIVES:
        for p in model.clap.parameters():
            p.requires_grad_(True)
        for p in model.head_parameters():
            p.requires_grad_(False)
    else:
        model.freeze_base()
    if ckpt_state is not None:
        model.load_state_dict(ckpt_state["model"], strict=False)
    model.to(device)
    objective = make_objective(config.objective, **config.loss)
    label_matrix = None
    if getattr(objective, "uses_labels", False):
        names = sorted({lab for e in train_entries for lab in e.labels})
        label_matrix = np.zeros((len(train_entries), max(len(names), 1)), np.float32)
        for i, e in enumerate(train_entries):
            for lab in e.labels:
                label_matrix[i, names.index(lab)] = 1.0

    n = len(train_entries)
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch  # drop the ragged last batch: BN and InfoNCE need a full one
    total = config.epochs * steps_per_epoch
    opt, sched, warm = make_optimizer(model, config, steps_per_epoch, total)
    step = 0
    if ckpt_state is not None and "train" in ckpt_state:
        opt.load_state_dict(ckpt_state["train"]["optimizer"])
        sched.load_state_dict(ckpt_state["train"]["scheduler"])
        step = ckpt_state["train"]["step"]
        set_rng_state(ckpt_state["train"]["rng"])

    # The frozen encoders' embeddings of every training pair: what heads-only runs train
    # on, and the teacher of objectives that distil the continuous ranking (for LoRA runs
    # computed with the adapters switched off, i.e. the pretrained encoders).
    cached = frozen = None
    uses_teacher = getattr(objective, "uses_teacher", False)
    if config.objective not in PRETRAIN_OBJECTIVES and (not config.lora_rank or uses_teacher):
        key = (config.model, str(getattr(features, "filename", id(features))),
               config.text_max_length, config.text_padding, str(device))
        memo = options.embedding_cache if options.embedding_cache is not None else {}
        if key not in memo:
            with _adapters_off(model):
                memo[key] = encode_all(model, features, input_ids, attention_mask, device,
                                       progress=options.progress)
        frozen = memo[key]
        cached = None if config.lora_rank else frozen

    use_amp = device.type == "cuda" and config.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def save(step_now: int) -> None:
        state = {"step": step_now, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "rng": rng_state()}
        save_run(run_dir, model, config, tokenizer, state, base=pristine_base)

    if ckpt_state is None:
        save(0)
    t0 = time.monotonic()
    bar = Progress(total, f"train {config.objective} {config.bits}b", initial=step,
                   enabled=options.progress)
    losses: dict[str, float] = {}
    epoch_sums: dict[str, float] = {}
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        idx = np.sort(order[offset * batch:(offset + 1) * batch])
        model.train()
        if config.objective not in PRETRAIN_OBJECTIVES:
            model.clap.eval()  # frozen encoder: no dropout, BN keeps its statistics
            for p in model.lora_parameters():
                p.requires_grad_(step >= warm)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            if cached is not None:
                ti = torch.from_numpy(idx).to(device)
                out_t = model.text_head(cached[0][ti])
                out_a = model.audio_head(cached[1][ti])
            else:
                ids = input_ids[idx].to(device)
                am = attention_mask[idx].to(device)
                feats = torch.from_numpy(np.asarray(features[idx], dtype=np.float32)).to(device)
                if objective.uses == "embeddings":
                    out_t, out_a = model.text_embed(ids, am), model.audio_embed(feats)
                else:
                    out_t, out_a = model.text_logits(ids, am), model.audio_logits(feats)
        extra = {}
        if uses_teacher:
            ti = torch.from_numpy(idx).to(device)
            extra["teacher"] = (frozen[0][ti], frozen[1][ti])
        if label_matrix is not None:
            y = torch.from_numpy(label_matrix[idx])
            extra["positives"] = (y @ y.T) > 0
        parts = objective(out_t.float(), out_a.float(), **extra)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; "
                                     "lower the learning rates")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        losses = {k: float(v.detach()) for k, v in parts.items()}
        for k, v in losses.items():
            epoch_sums[k] = epoch_sums.get(k, 0.0) + v
        bar.update(1, loss=float(loss.detach()))
        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch:
            with open(run_dir / "history.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, "step": step, **{
                    k: v / steps_per_epoch for k, v in epoch_sums.items()}}) + "\n")
            epoch_sums = {}
        if end_of_epoch or step == total or step == options.stop_after_steps:
            save(step)
        if step == options.stop_after_steps:
            break
    bar.close()
    if config.objective in PRETRAIN_OBJECTIVES and step == total:
        model.base.save_pretrained(str(run_dir / "hf_model"))
        tokenizer.save_pretrained(str(run_dir / "hf_model"))
    return {"run_dir": str(run_dir), "step": step, "total_steps": total, "losses": losses,
            "seconds": time.monotonic() - t0, "device": str(device)}
