"""Where and how a trained model runs: the torch device, quiet transformers, embedding
every item of a split. Used by the training loop and by the evaluation, which must not
import the trainer.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from .model import HashingModel
from .progress import Progress

__all__ = ["encode_all", "pick_device", "quiet_transformers"]


def pick_device(name: str = "auto") -> torch.device:
    """cuda if available, else mps, else cpu (``auto``); a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def quiet_transformers() -> None:
    """No HF progress bars or deprecation chatter in our one-line progress output."""
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@torch.no_grad()
def encode_all(model: HashingModel, features, input_ids, attention_mask, device,
               batch_size: int = 64, progress: bool = False):
    """Projected (text, audio) embeddings of every item, float32 on ``device``."""
    model.eval()
    texts, audios = [], []
    bar = Progress(len(input_ids), "embed", enabled=progress)
    for start in range(0, len(input_ids), batch_size):
        sl = slice(start, start + batch_size)
        texts.append(model.text_embed(input_ids[sl].to(device), attention_mask[sl].to(device)))
        feats = torch.from_numpy(np.asarray(features[sl], dtype=np.float32)).to(device)
        audios.append(model.audio_embed(feats))
        bar.update(len(feats))
    bar.close()
    return torch.cat(texts).float(), torch.cat(audios).float()
