"""Quantise an fp32 ONNX graph and pick the method that keeps the codes.

We do not guess which quantisation suits a branch: every candidate is built, run with
ONNX Runtime on real inputs, and scored by *code agreement* (the fraction of bits whose
sign matches the PyTorch model's). The best one wins (within a small tolerance the
faster method is preferred); the whole table goes into the manifest so a reviewer sees
what was tried. Methods are listed fastest first: on the AVX2 workstation int8 weights
with uint8 activations (u8s8) ran 1.5-2x faster than uint8 weights (bench/bundle_bench.py).

Methods (``METHODS``):

- ``dynamic-qint8`` / ``dynamic-quint8``: weights int8/uint8 per tensor, activations
  quantised on the fly (MatMul, Gemm, Gather: the embeddings dominate the text graph).
- ``...-per-channel``: the same with one scale per output channel.
- ``static-qdq``: QDQ graph with activation ranges calibrated on real log-mel windows
  (audio only: it was measured costing the text graph 20-30 % of its bits; docs/architecture.md).
  Slower than dynamic int8 for the audio graph on AVX2 (1.05x of fp32's speed) and on
  AVX-512 VNNI (1.12x dynamic int8's CPU time; docs/benchmarks/runtime.md, run 8b), so it
  is listed last and wins only by agreeing better on the real corpus.
- ``fp16``: float16 weights and compute, float32 inputs/outputs (for a Jetson GPU).

Conv layers are left in float: ORT's CPU ConvInteger takes uint8 only, and HTSAT's only
Conv is the small patch embedding.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DYNAMIC_METHODS = ("dynamic-qint8", "dynamic-qint8-per-channel", "dynamic-quint8",
                   "dynamic-quint8-per-channel")
STATIC_METHODS = ("static-qdq",)
METHODS = DYNAMIC_METHODS + STATIC_METHODS + ("fp16", "fp32")
DYNAMIC_OP_TYPES = ["MatMul", "Gemm", "Gather"]
# Agreement differences below this are measurement noise on a few hundred bits; within
# it the earlier (faster) method wins.
AGREEMENT_TOLERANCE = 0.002


@dataclass
class Candidate:
    """One quantisation tried: its method, file size, and agreement with PyTorch."""

    method: str
    bytes: int | None = None
    bit_agreement: float | None = None
    max_abs_diff: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Choice:
    """The chosen method for one branch and every candidate measured."""

    method: str
    bit_agreement: float
    path: Path
    candidates: list[Candidate] = field(default_factory=list)
    tolerance: float = AGREEMENT_TOLERANCE

    def to_dict(self) -> dict:
        return {"method": self.method, "bit_agreement": round(self.bit_agreement, 6),
                "tolerance": self.tolerance,
                "candidates": [c.to_dict() for c in self.candidates]}


class _Feeds:
    """An onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: Sequence[dict]):
        self._it = iter(list(feeds))

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some ORT versions call it between calibration passes
        pass


class _PreProcessAdvice(logging.Filter):
    """Drops ONNX Runtime's "Please consider (to run) pre-processing before quantization"
    (logged twice per call on the root logger, with a URL): the static method does run
    pre-processing, and every method's codes are scored against PyTorch anyway. Its
    first sighting becomes one INFO line of ours."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Please consider"):
            return True
        if not _PreProcessAdvice.said:
            _PreProcessAdvice.said = True
            log.info("ONNX Runtime suggests pre-processing before quantisation; each method "
                     "is scored by bit agreement with PyTorch instead")
        return False


@contextmanager
def _ort_advice_muted():
    root = logging.getLogger()
    muted = _PreProcessAdvice()
    root.addFilter(muted)
    try:
        yield
    finally:
        root.removeFilter(muted)


def quantize_graph(fp32_path: str | Path, out_path: str | Path, method: str,
                   calibration: Sequence[dict] | None = None) -> Path:
    """Write ``fp32_path`` quantised with ``method`` to ``out_path``.

    ``calibration``: feed dicts (input name -> array) of real inputs; required for
    ``static-qdq``.
    """
    with _ort_advice_muted():
        return _quantize_graph(fp32_path, out_path, method, calibration)


def _quantize_graph(fp32_path: str | Path, out_path: str | Path, method: str,
                    calibration: Sequence[dict] | None = None) -> Path:
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if method == "fp32":
        shutil.copyfile(fp32_path, out_path)
        return out_path
    if method == "fp16":
        import onnx  # lazy: slow to import
        from onnxruntime.transformers.float16 import (
            convert_float_to_float16,  # lazy: slow to import
        )

        model = onnx.load(str(fp32_path))
        # keep_io_types: the device feeds float32 log-mel and reads float32 logits.
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        onnx.save(model, str(out_path))
        return out_path
    from onnxruntime.quantization import (  # lazy: slow to import
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method in DYNAMIC_METHODS:
        weight = QuantType.QUInt8 if "quint8" in method else QuantType.QInt8
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=weight,
                         per_channel=method.endswith("per-channel"),
                         op_types_to_quantize=DYNAMIC_OP_TYPES)
        return out_path
    if method == "static-qdq":
        if not calibration:
            raise ValueError("static-qdq needs calibration inputs (real log-mel windows)")
        with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
            source = fp32_path
            try:  # shape inference + graph optimisation give QDQ better-placed nodes
                from onnxruntime.quantization.shape_inference import (
                    quant_pre_process,  # lazy: slow to import
                )

                pre = Path(tmp) / "pre.onnx"
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
                source = pre
            except Exception as exc:  # noqa: BLE001  (pre-processing is an optimisation)
                log.info("quant_pre_process skipped: %s", exc)
            quantize_static(str(source), str(out_path), _Feeds(calibration),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=["MatMul", "Gemm", "Conv", "Add", "Mul"])
        return out_path
    raise ValueError(f"unknown quantisation method {method!r}; choose one of {', '.join(METHODS)}")


def run_graph(path: str | Path, feeds: Sequence[dict], threads: int = 0) -> np.ndarray:
    """Run an ONNX graph on each feed dict with ONNX Runtime (CPU); concatenated logits."""
    import onnxruntime as ort  # lazy: slow to import

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds]).astype(np.float32)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of bits with the same code (logit > 0) in two logit arrays."""
    return float(np.mean((np.asarray(a) > 0) == (np.asarray(b) > 0)))


def choose_quantization(fp32_path: str | Path, out_path: str | Path, methods: Sequence[str],
                        feeds: Sequence[dict], reference: np.ndarray,
                        calibration: Sequence[dict] | None = None,
                        tolerance: float = AGREEMENT_TOLERANCE) -> Choice:
    """Build every method in ``methods``, score it on ``feeds`` against ``reference``
    logits (PyTorch), and keep the winner at ``out_path``.

    The winner is the *first* method in ``methods`` whose agreement is within
    ``tolerance`` of the best one: list methods in order of preference (fastest first;
    on x86 and ARM the signed-int8-weight kernels are the fast ones), so a method that
    is slower for a difference below measurement noise is not picked. A method that
    fails to build or run is recorded with its error and skipped.
    """
    out_path = Path(out_path)
    candidates = []
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quant-") as tmp:
        for method in methods:
            cand = Candidate(method)
            candidates.append(cand)
            path = Path(tmp) / f"{method}.onnx"
            try:
                quantize_graph(fp32_path, path, method, calibration)
                logits = run_graph(path, feeds)
            except Exception as exc:  # noqa: BLE001  (ORT cannot build or run it: record, go on)
                cand.error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("quantisation %s failed: %s", method, cand.error)
                continue
            cand.bytes = path.stat().st_size
            cand.bit_agreement = round(agreement(logits, reference), 6)
            cand.max_abs_diff = round(float(np.max(np.abs(logits - reference))), 6)
            log.info("%s: %s agreement %.4f, %d bytes", Path(fp32_path).name, method,
                     cand.bit_agreement, cand.bytes)
            paths[method] = path
        measured = [c for c in candidates if c.bit_agreement is not None]
        if not measured:
            errors = "; ".join(f"{c.method}: {c.error}" for c in candidates)
            raise RuntimeError(f"no quantisation of {fp32_path} could be built: {errors}")
        best = max(c.bit_agreement for c in measured)
        winner = next(c for c in measured if c.bit_agreement >= best - tolerance)
        os.replace(paths[winner.method], out_path)
    return Choice(winner.method, winner.bit_agreement, out_path, candidates, tolerance)
