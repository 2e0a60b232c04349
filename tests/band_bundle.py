"""An analytic model bundle whose codes mean something, for end-to-end runtime tests.

The audio graph looks at which of 8 groups of mel bins holds a spectral peak: logit k
(k < 8) is (the loudest time-averaged mel bin of group k) minus (the mean over all bins)
minus a margin, and logits 8..15 are their negatives. The text graph maps the word
``bandK`` to the code of "a tone in group K": bit K set, the other seven clear.

So a window holding a tone in group K (over quiet white noise) gets exactly the code
of the text query "bandK": a deterministic stand-in for a trained model that lets a
test check capture -> windows -> codes -> store -> search/alerts end to end, without
depending on how well a tiny model trained. Built with the onnx helper only (no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvahash.model.frontend import FrontendParams, mel_filterbank

GROUPS = 8
BITS = 2 * GROUPS
MARGIN_DB = 3.0
MAX_LEN = 6
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = [f"band{k}" for k in range(GROUPS)]
PARAMS = FrontendParams()


def band_frequency(k: int) -> float:
    """A tone frequency (Hz) at the centre of mel bin 8k+4, inside group k."""
    fb = mel_filterbank(PARAMS)  # [513 fft bins, 64 mels]
    fft_bin = int(np.argmax(fb[:, GROUPS * k + 4]))
    return fft_bin * PARAMS.sample_rate / PARAMS.n_fft


def _audio_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_mels = PARAMS.n_mels
    per = n_mels // GROUPS
    nodes = [
        helper.make_node("ReduceMean", ["input_features", "ax_time"], ["m"], keepdims=0),  # (B, 64)
        helper.make_node("Reshape", ["m", "shape"], ["g"]),  # (B, 8, 8)
        helper.make_node("ReduceMax", ["g", "ax2"], ["peak"], keepdims=0),  # (B, 8)
        helper.make_node("ReduceMean", ["m", "ax1"], ["avg"], keepdims=1),  # (B, 1)
        helper.make_node("Sub", ["peak", "avg"], ["d"]),
        helper.make_node("Sub", ["d", "margin"], ["pos"]),
        helper.make_node("Neg", ["pos"], ["neg"]),
        helper.make_node("Concat", ["pos", "neg"], ["logits"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "ax_time"),
        numpy_helper.from_array(np.array([-1, GROUPS, per], np.int64), "shape"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array(MARGIN_DB, np.float32), "margin"),
    ]
    graph = helper.make_graph(
        nodes, "band_audio",
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT,
                                       ["b", 1, PARAMS.n_frames, n_mels])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", BITS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _text_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = np.zeros((len(SPECIALS) + GROUPS, GROUPS), np.float32)
    for k in range(GROUPS):
        emb[len(SPECIALS) + k] = -1.0
        emb[len(SPECIALS) + k, k] = 1.0
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "ax1"], ["pos"], keepdims=0),
        helper.make_node("Neg", ["pos"], ["neg"]),
        helper.make_node("Concat", ["pos", "neg"], ["logits"], axis=1),
    ]
    inits = [numpy_helper.from_array(emb, "emb"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    graph = helper.make_graph(
        nodes, "band_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", BITS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def word_tokenizer(path: Path, words: list[str], specials: list[str] = SPECIALS) -> None:
    """A word-level `tokenizers` file: ids are the position in specials + words, and
    every text becomes <s> words </s> (a stand-in for CLAP's RoBERTa tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))


def make_band_bundle(root: Path) -> Path:
    """Write the bundle into the new directory `root` and return it."""
    from cvahash.export.onnx.bundle_writer import write_manifest

    root = Path(root)
    root.mkdir(parents=True)
    _audio_graph(root / "audio.onnx")
    _text_graph(root / "text.onnx")
    word_tokenizer(root / "tokenizer.json", WORDS)
    write_manifest(root, {
        "bits": BITS, "source_model": "analytic band-peak test graphs",
        "frontend": PARAMS.to_dict(),
        "tokenizer": {"max_length": MAX_LEN, "padding": "max_length", "truncation": True,
                      "pad_id": 1, "pad_token": "<pad>"},
        "precision": "fp32"})
    return root


def tone_scene(duration_s: float, events: list[tuple[int, float, float]], sr: int = 48000,
               noise_dbfs: float = -50.0, tone_dbfs: float = -12.0, seed: int = 0) -> np.ndarray:
    """Quiet white noise with tone bursts: events are (group k, start_s, end_s)."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * sr)
    x = rng.standard_normal(n).astype(np.float32) * np.float32(10 ** (noise_dbfs / 20))
    t = np.arange(n) / sr
    for k, a, b in events:
        sel = (t >= a) & (t < b)
        ramp = np.clip(np.minimum(t[sel] - a, b - t[sel]) / 0.02, 0, 1)
        x[sel] += (10 ** (tone_dbfs / 20) * ramp
                   * np.sin(2 * np.pi * band_frequency(k) * t[sel])).astype(np.float32)
    return x
