"""PyTorch -> ONNX for the two branches of a HashingModel (LoRA merged, heads included).

- text graph:  ``input_ids``, ``attention_mask`` int64 [batch, seq] -> ``logits`` float32
  [batch, bits]; batch and sequence length are dynamic.
- audio graph: ``input_features`` float32 [batch, 1, frames, mels] -> ``logits`` float32
  [batch, bits]; batch is dynamic (HTSAT needs the fixed 1001 x 64 spectrogram).

We use the TorchScript exporter (``dynamo=False``): on these models it gives the same
numbers as the dynamo exporter (docs/architecture.md, measured facts) in a fraction of the
time and writes one
self-contained file (the dynamo exporter writes weights to a side ``.onnx.data`` file,
which would have to be hashed and shipped separately). Graphs under 2 GB only, which the
full-size CLAP (500 MB text fp32) satisfies.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 18
TEXT_INPUTS = ("input_ids", "attention_mask")
AUDIO_INPUTS = ("input_features",)
OUTPUT = "logits"


class TextGraph(nn.Module):
    """input_ids, attention_mask -> (B, bits) logits of a merged HashingModel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.text_logits(input_ids, attention_mask)


class AudioGraph(nn.Module):
    """log-mel (B, 1, frames, mels) -> (B, bits) logits of a merged HashingModel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_features):
        return self.model.audio_logits(input_features)


def _export(module: nn.Module, args: tuple, path: Path, input_names, dynamic_axes,
            opset: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about tracing Python control flow on shapes that
        # are fixed for these models (HTSAT's window partition); the agreement checks in
        # verify.py are what proves the graph right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=list(input_names), output_names=[OUTPUT],
            dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
            dynamo=False)
    module.eval()  # the exporter may flip modes; BatchNorm heads must stay in eval
    return path


def export_text_graph(model, path: str | Path, *, max_length: int = 77,
                      opset: int = OPSET) -> Path:
    """Export ``model``'s text branch (a merged, eval-mode HashingModel) to ``path``.

    The trace uses a batch of two texts of ``max_length`` tokens with some padding, so
    the attention-mask path is exercised; batch and sequence are dynamic in the graph.
    """
    vocab = model.base.config.text_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, max_length), generator=gen)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[1, max_length // 2:] = 0
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}, OUTPUT: {0: "batch"}}
    return _export(TextGraph(model), (ids, mask), path, TEXT_INPUTS, axes, opset)


def export_audio_graph(model, path: str | Path, *, n_frames: int = 1001, n_mels: int = 64,
                       opset: int = OPSET) -> Path:
    """Export ``model``'s audio branch (merged, eval mode) to ``path``; dynamic batch."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 1, n_frames, n_mels, generator=gen) * 20 - 40
    axes = {"input_features": {0: "batch"}, OUTPUT: {0: "batch"}}
    return _export(AudioGraph(model), (feats,), path, AUDIO_INPUTS, axes, opset)


def torch_text_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray,
                      batch_size: int = 32) -> np.ndarray:
    """Reference logits of the PyTorch model, float32 [n, bits], in batches."""
    out = []
    with torch.no_grad():
        for s in range(0, len(input_ids), batch_size):
            ids = torch.as_tensor(input_ids[s:s + batch_size], dtype=torch.long)
            mask = torch.as_tensor(attention_mask[s:s + batch_size], dtype=torch.long)
            out.append(model.text_logits(ids, mask).float().numpy())
    return np.concatenate(out).astype(np.float32)


def torch_audio_logits(model, features: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Reference logits of the PyTorch model for log-mel [n, 1, frames, mels]."""
    out = []
    with torch.no_grad():
        for s in range(0, len(features), batch_size):
            x = torch.as_tensor(np.asarray(features[s:s + batch_size], dtype=np.float32))
            out.append(model.audio_logits(x).float().numpy())
    return np.concatenate(out).astype(np.float32)
