"""Turn a training run into a model bundle (the directory a Pi or Jetson loads).

``export_run(run_dir, out_dir, precision)`` is what ``cvahash export`` runs:

1. load the run, merge LoRA (``HashingModel.merged()``);
2. export the text and audio graphs in fp32 and check them against PyTorch;
3. for int8, build every quantisation candidate per branch and keep the one whose codes
   agree best with PyTorch on real corpus inputs (``--data``; a built-in probe of
   synthetic calls otherwise); for fp16 convert once and measure;
4. copy tokenizer.json and prove that the ``tokenizers`` package alone, with the
   manifest's padding/truncation, gives the ids transformers gave in training;
4b. estimate how precision falls with Hamming distance on the held-out probe pairs
   (``calibration``, see cvahash.model.calibration) from the exported model's codes;
5. write manifest.json (sha256 of every file, fingerprint) and move the finished
   directory into place in one rename, so a crash never leaves a half bundle at OUT.

The bundle format is documented in docs/bundle.md; the reader is ``cvahash.model.bundle``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import __version__
from ...errors import CvahashError
from ...model.bundle import (
    AUDIO_GRAPH,
    BUNDLE_FILES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    TEXT_GRAPH,
    TOKENIZER_FILE,
    check_bundle,
    fingerprint_of,
    sha256_file,
)
from ...model.frontend import FrontendParams

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16", "fp32")
# fp32 ONNX must reproduce PyTorch's codes; below this the export itself is wrong.
FP32_MIN_AGREEMENT = 0.999


class ExportError(CvahashError, RuntimeError):
    """The export could not produce a bundle that reproduces the trained model."""


@dataclass
class ExportResult:
    path: Path
    manifest: dict


# ---------------------------------------------------------------- writing a bundle


def estimate_calibration(text_logits: np.ndarray, audio_logits: np.ndarray, labels,
                         bits: int, source: str) -> dict:
    """Precision vs Hamming distance over every (held-out caption, held-out clip) pair; a
    pair is relevant when the two clips share a label (the manifest's ``calibration``)."""
    from ...model.bundle import pack_codes
    from ...model.calibration import fit_curves
    from .verify import hamming_matrix

    dist = hamming_matrix(pack_codes(text_logits), pack_codes(audio_logits))
    relevant = np.array([[bool(a & b) for b in labels] for a in labels])
    curves = fit_curves(dist, relevant, bits)
    return {"source": source, "queries": len(labels), "method": "isotonic", **curves}


def write_manifest(root: str | Path, fields: dict) -> dict:
    """Hash every bundle file in ``root``, add ``files``, ``format_version`` and
    ``fingerprint`` to ``fields``, and write ``root/manifest.json``; returns the manifest."""
    root = Path(root)
    manifest = {"format_version": FORMAT_VERSION, **fields}
    manifest["files"] = {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
        for name in BUNDLE_FILES
    }
    manifest["fingerprint"] = fingerprint_of(manifest)
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def _install(tmp_dir: Path, out_dir: Path, force: bool) -> None:
    """Move a finished bundle into place; an old bundle is replaced only with ``force``."""
    if out_dir.exists():
        if not force:
            raise ExportError(f"{out_dir} already exists; choose another --out or pass --force")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)


def batch_invariant(method: str) -> bool:
    """Dynamic quantisation takes activation scales over the whole batch, so a row's
    result depends on its batch companions; every other method computes rows apart."""
    return not method.startswith("dynamic-")


# ---------------------------------------------------------------- tokenizer


def tokenizer_settings(config, tokenizer) -> dict:
    """The padding/truncation the run trained with, as the manifest stores them, and
    whether the runtime may trim padding (``trim_padding``)."""
    return {
        "max_length": int(config.text_max_length),
        "padding": str(config.text_padding),
        "truncation": True,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        # The text head reads CLAP's pooled first token, which attends only to unmasked
        # positions: the runtime may cut padding nobody attends to (same codes, faster).
        "trim_padding": True,
    }


def check_tokenizer_file(path: Path, settings: dict, tokenizer, texts: list[str]) -> None:
    """Raise ExportError unless ``tokenizers`` alone, configured from ``settings``, gives
    the same ids and mask as the transformers ``tokenizer`` for every text."""
    from tokenizers import Tokenizer  # lazy: only when checking a tokenizer file

    from ..train.tokenizer import tokenize  # lazy: writing a manifest needs no torch

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=settings["max_length"])
    if settings["padding"] == "max_length":
        tok.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"],
                           length=settings["max_length"])
    else:
        tok.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"])
    ids, mask = tokenize(tokenizer, texts, settings["max_length"], settings["padding"])
    enc = tok.encode_batch(texts)
    got_ids = np.array([e.ids for e in enc])
    got_mask = np.array([e.attention_mask for e in enc])
    if got_ids.shape != tuple(ids.shape) or not (np.array_equal(got_ids, ids.numpy())
                                                  and np.array_equal(got_mask, mask.numpy())):
        bad = next((i for i in range(len(texts)) if i >= len(got_ids)
                    or not np.array_equal(got_ids[i], ids[i].numpy())), 0)
        raise ExportError(f"{path}: the tokenizers package gives other ids than transformers "
                          f"for {texts[bad]!r}; the bundle would search with wrong codes")


# ---------------------------------------------------------------- export


def _text_feeds(tokenizer, settings, texts):
    """Training-style ids and mask (for PyTorch), and the feeds the device runs: one
    text at a time with its padding trimmed (``ModelBundle.text_logits``), so candidates
    are scored on exactly what the station computes."""
    from ..train.tokenizer import tokenize  # lazy: writing a manifest needs no torch

    ids, mask = tokenize(tokenizer, texts, settings["max_length"], settings["padding"])
    ids, mask = ids.numpy(), mask.numpy()
    feeds = []
    for i in range(len(texts)):
        used = int(mask[i].sum()) if settings.get("trim_padding") else ids.shape[1]
        feeds.append({"input_ids": ids[i:i + 1, :used], "attention_mask": mask[i:i + 1, :used]})
    return ids, mask, feeds


def _audio_feeds(features, batch=4):
    return [{"input_features": np.ascontiguousarray(features[s:s + batch])}
            for s in range(0, len(features), batch)]


def export_run(run_dir: str | Path, out_dir: str | Path, precision: str = "int8", *,
               data: str | Path | None = None, force: bool = False, probe_limit: int = 48,
               opset: int = 18, text_methods=None, audio_methods=None) -> ExportResult:
    """Export the run at ``run_dir`` to a bundle at ``out_dir`` (see module docstring).

    ``data``: a corpus manifest (JSONL: audio, caption, labels, split). Its train split
    calibrates static quantisation; its val/test split scores the candidates. Without it
    a built-in probe of synthetic calls and captions is used (recorded in the manifest).
    """
    from ..train.run import load_run  # lazy: writing a manifest needs no torch
    from .convert import (  # lazy: writing a manifest needs no torch
        export_audio_graph,
        export_text_graph,
        torch_audio_logits,
        torch_text_logits,
    )
    from .graph_passes import (  # lazy: onnx loads only for an export
        SAVED_ORT_LEVEL,
        fold_batch_independent,
        replace_cubic_resize,
        save_ort_optimized,
    )
    from .quantize import (  # lazy: onnxruntime.quantization is slow to import
        DYNAMIC_METHODS,
        STATIC_METHODS,
        agreement,
        choose_quantization,
        run_graph,
    )
    from .verify import builtin_probe, load_probe  # lazy: writing a manifest needs no torch

    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists; choose another --out or pass --force")
    model, config, tokenizer = load_run(run_dir)
    merged = model.merged()
    frontend = FrontendParams.from_dict(config.frontend or {})
    settings = tokenizer_settings(config, tokenizer)

    if data is not None:
        probe = load_probe(data, frontend, splits=("val", "test"), limit=probe_limit)
        calib = load_probe(data, frontend, splits=("train",), limit=probe_limit // 2)
        probe_source = str(data)
    else:
        probe = builtin_probe(frontend, n=min(probe_limit, 24))
        calib = probe
        probe_source = "built-in synthetic probe"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        work = tmp_dir / ".fp32"
        work.mkdir()
        log.info("exporting fp32 graphs of %s", run_dir)
        text_fp32 = export_text_graph(merged, work / TEXT_GRAPH,
                                      max_length=settings["max_length"], opset=opset)
        audio_fp32 = export_audio_graph(merged, work / AUDIO_GRAPH, n_frames=frontend.n_frames,
                                        n_mels=frontend.n_mels, opset=opset)
        # HTSAT's bicubic frame stretch as a fixed 4-tap filter (checked against the
        # graph's own Resize here and against PyTorch by the fp32 check below).
        resize_taps = replace_cubic_resize(audio_fp32, probe.features[:2])
        # Shape arithmetic, shifted-window masks and zero pads as constants (checked at
        # batch 1 and 3 against the graph before the pass).
        shape_fold = fold_batch_independent(audio_fp32, probe.features[:1])

        ids, mask, text_feeds = _text_feeds(tokenizer, settings, probe.captions)
        text_ref = torch_text_logits(merged, ids, mask)
        audio_feeds = _audio_feeds(probe.features)
        audio_ref = torch_audio_logits(merged, probe.features)
        fp32_check = {}
        for branch, path, feeds, ref in (("text", text_fp32, text_feeds, text_ref),
                                         ("audio", audio_fp32, audio_feeds, audio_ref)):
            got = run_graph(path, feeds)
            agree = agreement(got, ref)
            fp32_check[branch] = {"bit_agreement": round(agree, 6),
                                  "max_abs_diff": float(np.max(np.abs(got - ref)))}
            if agree < FP32_MIN_AGREEMENT:
                raise ExportError(f"the fp32 ONNX {branch} graph disagrees with PyTorch on "
                                  f"{1 - agree:.2%} of bits; the export is broken")

        if precision == "int8":
            text_methods = text_methods or DYNAMIC_METHODS
            audio_methods = audio_methods or DYNAMIC_METHODS + STATIC_METHODS
        else:
            text_methods = audio_methods = (precision,)
        calib_feeds = [{"input_features": calib.features[i:i + 1]}
                       for i in range(len(calib.features))]
        text_choice = choose_quantization(text_fp32, tmp_dir / TEXT_GRAPH, text_methods,
                                          text_feeds, text_ref)
        audio_choice = choose_quantization(audio_fp32, tmp_dir / AUDIO_GRAPH, audio_methods,
                                           audio_feeds, audio_ref, calibration=calib_feeds)
        # ONNX Runtime's CPU fusions saved into int8 graphs (checked bit-identical on the
        # probe feeds). Only for int8, which runs on the CPU provider: fp16/fp32 bundles
        # may run on a GPU provider, for which CPU fusions and casts would be wrong.
        ort_saved = {"text": False, "audio": False}
        if precision == "int8":
            ort_saved = {"text": save_ort_optimized(tmp_dir / TEXT_GRAPH, text_feeds),
                         "audio": save_ort_optimized(tmp_dir / AUDIO_GRAPH, audio_feeds)}
        shutil.rmtree(work)

        tok_src = run_dir / "tokenizer" / TOKENIZER_FILE
        if not tok_src.is_file():
            raise ExportError(f"{tok_src} is missing: the run's tokenizer was not saved with "
                              "save_pretrained (a fast tokenizer is needed)")
        shutil.copyfile(tok_src, tmp_dir / TOKENIZER_FILE)
        long_text = " ".join(probe.captions) or "a long text"
        check_tokenizer_file(tmp_dir / TOKENIZER_FILE, settings, tokenizer,
                             list(probe.captions[:16]) + [long_text])

        calibration = estimate_calibration(text_ref, audio_ref, probe.labels, int(model.bits),
                                           probe_source)
        fields = {
            "bits": int(model.bits),
            "source_model": str(config.model),
            "frontend": frontend.to_dict(),
            "tokenizer": settings,
            "precision": precision,
            "quantization": {"text": text_choice.to_dict(), "audio": audio_choice.to_dict(),
                             "fp32_check": fp32_check, "probe": probe_source,
                             "graph_passes": {"audio": {"cubic_resize_as_taps": resize_taps,
                                                        "shape_fold": shape_fold}},
                             "probe_texts": len(probe.captions),
                             "probe_windows": len(probe.features)},
            "graphs": {"text": {"file": TEXT_GRAPH, "inputs": ["input_ids", "attention_mask"],
                                "output": "logits",
                                "batch_invariant": batch_invariant(text_choice.method),
                                **({"ort_optimized": SAVED_ORT_LEVEL} if ort_saved["text"]
                                   else {})},
                       "audio": {"file": AUDIO_GRAPH, "inputs": ["input_features"],
                                 "output": "logits",
                                 "batch_invariant": batch_invariant(audio_choice.method),
                                 **({"ort_optimized": SAVED_ORT_LEVEL} if ort_saved["audio"]
                                    else {})},
                       "opset": opset},
            "calibration": calibration,
            "run": {"objective": config.objective, "head": config.head,
                    "lora_rank": config.lora_rank, "seed": config.seed},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cvahash_version": __version__,
        }
        manifest = write_manifest(tmp_dir, fields)
        check_bundle(tmp_dir)
        _install(tmp_dir, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("bundle %s written to %s (text %s, audio %s)", manifest["fingerprint"], out_dir,
             text_choice.method, audio_choice.method)
    return ExportResult(out_dir, manifest)
