"""The CLAP encoders with hashing heads: building, loading, LoRA, merging.

Public API (the ONNX exporter codes against these names):

- ``tiny_clap_config(vocab_size, **overrides)`` / ``build_tiny_clap(seed, ...)``: a small
  random ClapModel whose outputs depend on its input (for tests and the stand-in model).
- ``full_size_clap_config()``: the laion/clap-htsat-unfused shape with random weights.
- ``load_clap(id_or_dir, local_files_only=None) -> (ClapModel, tokenizer)``.
- ``HashingModel``: ClapModel (optionally LoRA-wrapped by peft) + ``text_head`` +
  ``audio_head``; ``text_embed``/``audio_embed`` give the unnormalised projected features
  (B, D); ``text_logits``/``audio_logits`` give (B, bits) logits, code bit i = logit i > 0;
  ``merged()`` gives an eval-mode copy with LoRA folded into the base weights.

Saving and loading whole runs lives in ``cvahash.export.train.run`` (``save_run``/``load_run``,
re-exported here).

We compute the projected features ourselves (``text_model -> pooler_output ->
text_projection``) instead of calling ``get_*_features``: those normalise, and their return
type changed between transformers 4 and 5.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, ClapConfig, ClapModel

from ...errors import CvahashError

HEAD_TYPES = ("crovca", "seed", "projection")
LORA_TARGETS = ("query", "value")


class ModelLoadError(FileNotFoundError, CvahashError):
    """A CLAP checkpoint or run directory could not be loaded."""


# ---------------------------------------------------------------- configs and models


def tiny_clap_config(vocab_size: int = 1000, **overrides) -> ClapConfig:
    """A ClapConfig small enough for tests and CPU benchmarks (about 0.1M parameters).

    Patches of 8 x 8 (not HTSAT's 4 x 4) make the audio branch about 10x cheaper on a CPU.

    ``overrides`` may hold ``text_config``/``audio_config`` dicts, merged into the tiny
    defaults, and any other ClapConfig field (``projection_dim``...). HTSAT needs
    ``spec_size`` 256 for 1001 x 64 log-mel input; the audio input stays (B, 1, 1001, 64).
    """
    text = {
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 130,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }
    audio = {
        "spec_size": 256, "num_mel_bins": 64, "window_size": 8, "patch_size": 8,
        "patch_stride": (8, 8), "patch_embeds_hidden_size": 16, "depths": (1, 1),
        "num_attention_heads": (2, 2), "hidden_size": 32, "enable_fusion": False,
        "hidden_dropout_prob": 0.0,
    }
    text.update(overrides.pop("text_config", None) or {})
    audio.update(overrides.pop("audio_config", None) or {})
    # HTSAT's final width is patch_embeds_hidden_size * 2**(stages-1); keep them in step.
    audio["hidden_size"] = audio["patch_embeds_hidden_size"] * 2 ** (len(audio["depths"]) - 1)
    overrides.setdefault("projection_dim", 32)
    return ClapConfig(text_config=text, audio_config=audio, **overrides)


def full_size_clap_config() -> ClapConfig:
    """The laion/clap-htsat-unfused shape (153.5M parameters), for timing with random weights."""
    return ClapConfig(audio_config={"enable_fusion": False})


def reinit_weights(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise Linear/Conv/Embedding layers with PyTorch defaults, seeded.

    HF's CLAP init (std 0.02) makes a random tiny model's outputs nearly independent of
    its input (docs/architecture.md, measured facts); PyTorch's default init does not.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.reset_parameters()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def build_tiny_clap(seed: int = 0, vocab_size: int = 1000, **overrides) -> ClapModel:
    """A tiny random ClapModel (see ``tiny_clap_config``), re-initialised from ``seed``."""
    model = ClapModel(tiny_clap_config(vocab_size=vocab_size, **overrides))
    return reinit_weights(model, seed).eval()


def load_clap(id_or_dir: str | Path, *, local_files_only: bool | None = None):
    """Load a ClapModel and its tokenizer from a hub id or a local directory.

    A local directory (a ``save_pretrained`` folder, or a ``clip`` run directory holding
    one in ``hf_model/``) loads offline. ``local_files_only=None`` means "True when the
    argument is an existing directory". Raises ModelLoadError naming what is missing.
    """
    src = Path(id_or_dir)
    if src.is_dir() and not (src / "config.json").exists() and (src / "hf_model").is_dir():
        src = src / "hf_model"  # a `cvahash train --objective clip` run directory
    is_local = src.is_dir()
    if local_files_only is None:
        local_files_only = is_local
    where = str(src) if is_local else str(id_or_dir)
    try:
        model = ClapModel.from_pretrained(where, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        hint = ("the directory needs config.json and model.safetensors (save_pretrained)"
                if is_local else "check the hub id, or download it first and pass the folder")
        raise ModelLoadError(f"cannot load a CLAP model from {where!r}: {exc}; {hint}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {where!r}: {exc}; the folder needs tokenizer.json "
            "(tokenizer.save_pretrained)") from exc
    return model.eval(), tokenizer


# ---------------------------------------------------------------- hashing heads


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        # +1 where x > 0, else -1: the same rule as "bit i = logit i > 0".
        return torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign_ste(logits: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, +1} (+1 where logit > 0) with a straight-through gradient."""
    return _SignSTE.apply(logits)


class CroVCAHead(nn.Module):
    """CroVCA's head: Linear-ReLU-Linear-BatchNorm. BN last centres each bit (balance)."""

    def __init__(self, in_dim: int, bits: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(in_dim, bits)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits), nn.BatchNorm1d(bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SeedHead(nn.Module):
    """The seed project's head: Linear-BatchNorm-ReLU-Linear."""

    def __init__(self, in_dim: int, bits: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(in_dim, bits)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """``linear(normalize(x))``: one hyperplane per bit on the unit sphere of the projection
    (the ``lsh`` and ``itq`` heads; export/train/hyperplanes.py sets the weights)."""

    def __init__(self, in_dim: int, bits: int, hidden: int | None = None):
        super().__init__()
        self.linear = nn.Linear(in_dim, bits)
        nn.init.zeros_(self.linear.bias)

    def set(self, weight: np.ndarray, bias: np.ndarray) -> None:
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(x, dim=-1))


def make_head(kind: str, in_dim: int, bits: int, hidden: int | None = None) -> nn.Module:
    if kind == "crovca":
        return CroVCAHead(in_dim, bits, hidden)
    if kind == "seed":
        return SeedHead(in_dim, bits, hidden)
    if kind == "projection":  # lsh / itq: fixed hyperplanes (export/train/hyperplanes.py)
        return ProjectionHead(in_dim, bits)
    raise ValueError(f"unknown head type {kind!r}; choose one of {', '.join(HEAD_TYPES)}")


# ---------------------------------------------------------------- the hashing model


class HashingModel(nn.Module):
    """A ClapModel with a hashing head per branch.

    ``clap`` is a plain ClapModel or, after ``add_lora``, a peft PeftModel around one.
    """

    def __init__(self, clap: ClapModel, bits: int, head: str = "crovca",
                 hidden: int | None = None):
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.clap = clap
        self.bits = bits
        self.head_type = head
        dim = clap.config.projection_dim
        self.text_head = make_head(head, dim, bits, hidden)
        self.audio_head = make_head(head, dim, bits, hidden)
        self.lora_rank = 0

    # -- structure
    @property
    def base(self) -> ClapModel:
        """The ClapModel itself (LoRA layers, if any, are injected in place)."""
        return self.clap.get_base_model() if hasattr(self.clap, "get_base_model") else self.clap

    def add_lora(self, rank: int = 8, alpha: int | None = None, dropout: float = 0.0,
                 targets: tuple[str, ...] = LORA_TARGETS) -> None:
        """Wrap the ClapModel with peft LoRA on ``targets`` of both branches; freezes the rest
        of the ClapModel."""
        from peft import LoraConfig, get_peft_model  # slow: only LoRA runs load peft

        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout,
                            target_modules=list(targets), bias="none")
        self.clap = get_peft_model(self.clap, config)
        self.lora_rank = rank

    def freeze_base(self) -> None:
        """Freeze every ClapModel parameter except LoRA adapters."""
        for name, p in self.clap.named_parameters():
            p.requires_grad_("lora_" in name)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.clap.named_parameters() if "lora_" in n]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.text_head.parameters()) + list(self.audio_head.parameters())

    # -- encoders
    def text_embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised projected text features (B, D)."""
        base = self.base
        out = base.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return base.text_projection(out.pooler_output)

    def audio_embed(self, input_features: torch.Tensor) -> torch.Tensor:
        """Unnormalised projected audio features (B, D) from log-mel (B, 1, 1001, 64)."""
        base = self.base
        out = base.audio_model(input_features=input_features)
        return base.audio_projection(out.pooler_output)

    def text_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_head(self.text_embed(input_ids, attention_mask))

    def audio_logits(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_embed(input_features))

    def forward(self, input_ids, attention_mask, input_features):
        """(text_logits, audio_logits); handy for tracing both branches at once."""
        return self.text_logits(input_ids, attention_mask), self.audio_logits(input_features)

    # -- export
    def merged(self) -> HashingModel:
        """An eval-mode deep copy with LoRA merged into the base weights (no peft inside)."""
        twin = copy.deepcopy(self)
        if hasattr(twin.clap, "merge_and_unload"):
            twin.clap = twin.clap.merge_and_unload()
        twin.lora_rank = 0
        for p in twin.parameters():
            p.requires_grad_(False)
        return twin.eval()

