"""Training objectives. Each is a small nn.Module returning a dict of named, weighted losses.

The training loop sums the dict and never knows which terms exist (open_clip's ClipLoss
style). ``uses`` says what the objective consumes: ``"logits"`` (the heads' (B, bits)
outputs of both views) or ``"embeddings"`` (the encoders' projected features).

- ``crovca``: Cross-View Alignment. Each view's logits are pushed by BCE-with-logits toward
  the hard codes of the *other* view (targets carry no gradient), plus a coding-rate (MCR)
  regulariser on the L2-normalised logits of each view that keeps the codes spread out.
  The rate is multiplied by ``(n + d) / (n d)`` (batch n, bits d), as in the method's
  reference implementation: ``logdet`` of a d x d matrix grows about linearly with d, while
  the BCE is a mean over bits, so without it the regulariser outweighs the alignment more
  the more bits there are (the factor is 1/13 at 16 bits, 1/32 at 64, 1/43 at 128 with
  batch 64). Unscaled, at 64 bits, text and audio codes of the same pair agreed on 57 % of
  their bits (chance 50 %), every clip's code was near-orthogonal to every other's, and
  binary mAP@10 fell to 0.34x continuous (docs/benchmarks/quality.md run 8).
  ``rate_scale="none"`` keeps the unscaled term.
- ``contrastive``: symmetric InfoNCE on straight-through sign codes, plus a quantisation
  loss pulling |logits| to 1 and a bit-balance loss pushing each bit's mean to 0.
- ``distill``: similarity distillation. The frozen encoders' continuous embeddings are the
  teacher: for a batch, each caption's softmax over the clips by cosine (temperature
  ``teacher_temperature``) is the target of the same caption's softmax over the clips by
  code agreement (sign codes with a straight-through gradient, temperature
  ``temperature``), and the same for each clip over the captions (KL divergence), plus
  ``contrastive``'s quantisation loss. The codes learn to rank as the continuous model
  ranks, related clips included, where ``contrastive`` treats every other clip in the
  batch as a mismatch. It needs no labels; the loop passes the teacher embeddings.
- ``clip``: the ordinary continuous contrastive loss on normalised embeddings, used to
  pretrain a tiny CLAP from scratch as a stand-in foundation model.
- ``supclip``: ``clip`` with label-aware (multi-positive) targets: every audio clip in the
  batch that shares a call label with a caption's clip is a positive for that caption
  (SupCon's mean over positives, both directions). Clips without labels have only their own
  caption as a positive, which is ``clip``. Used to pretrain the stand-in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import sign_ste

OBJECTIVES = ("crovca", "contrastive", "distill", "clip", "supclip")
# Objectives that train the whole (tiny) ClapModel: the stand-in's pretraining.
PRETRAIN_OBJECTIVES = ("clip", "supclip")


def coding_rate(z: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """MCR coding rate ``1/2 logdet(I + d/(n eps) Z^T Z)`` of rows of ``z`` (n, d),
    L2-normalised first. Larger = codes spread over more directions."""
    z = F.normalize(z.float(), dim=1)
    n, d = z.shape
    gram = z.T @ z  # (d, d)
    eye = torch.eye(d, device=z.device, dtype=z.dtype)
    return 0.5 * torch.logdet(eye + (d / (n * eps)) * gram)


def _symmetric_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = (a @ b.T) / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class CroVCALoss(nn.Module):
    """Cross-View Alignment: BCE toward the other view's hard codes + coding-rate term.

    ``rate_scale``: ``"balanced"`` (default) multiplies the coding rate by
    ``(n + d) / (n d)`` so that its pull does not grow with the bits; ``"none"`` is the
    unscaled term (collapses above 16 bits: see the module docstring)."""

    uses = "logits"

    def __init__(self, align_weight: float = 1.0, rate_weight: float = 0.1, eps: float = 0.05,
                 rate_scale: str = "balanced"):
        super().__init__()
        if rate_scale not in ("balanced", "none"):
            raise ValueError(f"rate_scale must be 'balanced' or 'none', not {rate_scale!r}")
        self.align_weight, self.rate_weight, self.eps = align_weight, rate_weight, eps
        self.rate_scale = rate_scale

    def alignment(self, text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        # Targets are the other view's bits (logit > 0), detached: each view follows the
        # other's current code, never drags it.
        text_bits = (text > 0).to(text.dtype).detach()
        audio_bits = (audio > 0).to(audio.dtype).detach()
        return 0.5 * (F.binary_cross_entropy_with_logits(text, audio_bits)
                      + F.binary_cross_entropy_with_logits(audio, text_bits))

    def rate(self, text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        # Negative: we maximise the coding rate.
        r = 0.5 * (coding_rate(text, self.eps) + coding_rate(audio, self.eps))
        if self.rate_scale == "balanced":
            n, d = text.shape
            r = r * (n + d) / (n * d)
        return -r

    def forward(self, text: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"align": self.align_weight * self.alignment(text, audio),
                "coding_rate": self.rate_weight * self.rate(text, audio)}


class ContrastiveHashLoss(nn.Module):
    """Symmetric InfoNCE on sign codes (STE) + quantisation + bit balance."""

    uses = "logits"

    def __init__(self, temperature: float = 0.2, alpha: float = 0.1, beta: float = 0.01):
        super().__init__()
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def forward(self, text: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        bits = text.shape[1]
        tc, ac = sign_ste(text.float()), sign_ste(audio.float())
        # codes / sqrt(bits) have unit norm: the dot product is 1 - 2 * hamming / bits.
        scale = bits ** -0.5
        info = _symmetric_infonce(tc * scale, ac * scale, self.temperature)
        quant = 0.5 * ((text.float().abs() - 1).abs().mean()
                       + (audio.float().abs() - 1).abs().mean())
        balance = 0.5 * (tc.mean(0).abs().mean() + ac.mean(0).abs().mean())
        return {"infonce": info, "quantization": self.alpha * quant,
                "bit_balance": self.beta * balance}


class DistillHashLoss(nn.Module):
    """Codes that rank as the teacher's continuous embeddings rank (see the module docstring).

    ``teacher`` is a pair (text, audio) of the frozen encoders' projected features for the
    batch's captions and clips (B, D) each. ``pair_weight`` > 0 adds ``contrastive``'s
    InfoNCE on the codes (each caption's own clip the positive), weighted. Defaults chosen
    on the val split of the synthetic corpus (docs/benchmarks/quality.md run 10)."""

    uses = "logits"
    uses_teacher = True

    def __init__(self, teacher_temperature: float = 0.05, temperature: float = 0.2,
                 alpha: float = 0.1, pair_weight: float = 0.0):
        super().__init__()
        if teacher_temperature <= 0 or temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.teacher_temperature, self.temperature = teacher_temperature, temperature
        self.alpha, self.pair_weight = alpha, pair_weight

    @staticmethod
    def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, dim=1),
                        reduction="batchmean")

    def forward(self, text: torch.Tensor, audio: torch.Tensor,
                teacher: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("the distill objective needs the teacher embeddings of the batch")
        tt, ta = (F.normalize(x.float(), dim=1) for x in teacher)
        target = (tt @ ta.T) / self.teacher_temperature
        scale = text.shape[1] ** -0.5
        tc, ac = sign_ste(text.float()) * scale, sign_ste(audio.float()) * scale
        student = (tc @ ac.T) / self.temperature
        quant = 0.5 * ((text.float().abs() - 1).abs().mean()
                       + (audio.float().abs() - 1).abs().mean())
        parts = {"distill": self._kl(student, target) + self._kl(student.T, target.T),
                 "quantization": self.alpha * quant}
        if self.pair_weight:  # optional: each caption's own clip as in `contrastive`
            parts["pairs"] = self.pair_weight * _symmetric_infonce(tc, ac, self.temperature)
        return parts


class ClipLoss(nn.Module):
    """Continuous symmetric InfoNCE on L2-normalised embeddings (CLIP/CLAP pretraining)."""

    uses = "embeddings"

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(self, text: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        t, a = F.normalize(text.float(), dim=1), F.normalize(audio.float(), dim=1)
        return {"clip": _symmetric_infonce(t, a, self.temperature)}


class SupClipLoss(nn.Module):
    """Multi-positive continuous InfoNCE: ``positives[i, j]`` marks audio j as a match of
    text i (shared call label; the diagonal always). Each row's loss is the mean over its
    positives of -log softmax, symmetric over text->audio and audio->text."""

    uses = "embeddings"
    uses_labels = True

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    @staticmethod
    def _side(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1)
        pos = positives.to(logp.dtype)
        return (-(logp * pos).sum(1) / pos.sum(1)).mean()

    def forward(self, text: torch.Tensor, audio: torch.Tensor,
                positives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        t, a = F.normalize(text.float(), dim=1), F.normalize(audio.float(), dim=1)
        logits = (t @ a.T) / self.temperature
        eye = torch.eye(len(t), dtype=torch.bool, device=t.device)
        pos = eye if positives is None else (positives.to(t.device).bool() | eye)
        return {"supclip": 0.5 * (self._side(logits, pos) + self._side(logits.T, pos.T))}


def make_objective(name: str, **kwargs) -> nn.Module:
    """The objective called ``name`` with keyword overrides (weights, temperature...)."""
    classes = {"crovca": CroVCALoss, "contrastive": ContrastiveHashLoss,
               "distill": DistillHashLoss, "clip": ClipLoss,
               "supclip": SupClipLoss}
    if name not in classes:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    try:
        return classes[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"objective {name!r}: bad loss settings {kwargs}: {exc}") from exc
