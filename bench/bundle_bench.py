"""Bundle benchmark: full-size CLAP (clap-htsat-unfused shape, random weights) to ONNX.

    .venv/bin/python bench/bundle_bench.py [--out DIR] [--bits 64] [--repeats 20]

Exports the text and audio branches (with a 64-bit CroVCA head) in fp32, quantises them
with each int8 method, and reports per graph: file size, ONNX Runtime latency of one
text query (77 tokens) and of one 10 s audio window at 1 and 2 threads (median of
``--repeats`` after warm-up), peak resident memory of a process holding the session
(measured in a fresh subprocess, minus the process before the session), and bit
agreement with PyTorch on the built-in synthetic probe. Targets (issue 5): int8 text
<= 130 MB, int8 audio <= 35 MB, int8 >= 1.8x faster than fp32 for each branch.

Takes minutes and a few GB; not part of the tests. Results: docs/benchmarks/bundle.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_MEASURE = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, branch, threads, repeats, seq = sys.argv[1:6]
threads, repeats, seq = int(threads), int(repeats), int(seq)

def hwm_mb():
    # VmHWM is per address space, so (unlike ru_maxrss) it is not inherited from the
    # benchmark process that started us.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

if branch == "text":  # a 10-token query: <s> 8 words </s>, padded to `seq`
    ids = np.full((1, seq), 1, np.int64); ids[0, :10] = np.arange(10) + 100; ids[0, 0] = 0
    ids[0, 9] = 2; mask = (ids != 1).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
else:
    feeds = {"input_features": (np.random.default_rng(0).standard_normal((1, 1, 1001, 64))
                                * 20 - 50).astype(np.float32)}
before = hwm_mb()
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
t0 = time.perf_counter()
s = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - t0
for _ in range(3):
    s.run(None, feeds)
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); s.run(None, feeds); times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "load_s": load_s, "peak_mb": hwm_mb() - before,
                  "hwm_mb": hwm_mb()}))
"""


def measure(path: Path, branch: str, threads: int, repeats: int, seq: int = 77) -> dict:
    """Latency and session memory of one graph, in a fresh process (clean peak RSS)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), branch, str(threads),
                          str(repeats), str(seq)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"median_ms": 1000 * statistics.median(r["times"]),
            "min_ms": 1000 * min(r["times"]), "peak_mb": r["peak_mb"], "load_s": r["load_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for the graphs (default: a temp dir)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tiny", action="store_true", help="tiny model: a smoke test of the script")
    ap.add_argument("--reuse", action="store_true",
                    help="keep graphs already in --out (same seed, same weights) instead of "
                         "exporting and quantising again")
    args = ap.parse_args()

    import torch
    from transformers import ClapModel

    from cvahash.export.onnx.convert import (
        export_audio_graph,
        export_text_graph,
        torch_audio_logits,
        torch_text_logits,
    )
    from cvahash.export.onnx.quantize import agreement, quantize_graph, run_graph
    from cvahash.export.onnx.verify import builtin_probe
    from cvahash.export.train.model import HashingModel, build_tiny_clap, full_size_clap_config
    from cvahash.model.frontend import FrontendParams

    torch.manual_seed(0)
    out = Path(args.out or tempfile.mkdtemp(prefix="bundle-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    clap = build_tiny_clap(0) if args.tiny else ClapModel(full_size_clap_config())
    model = HashingModel(clap, args.bits).eval()
    vocab = clap.config.text_config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters; graphs in {out}", flush=True)

    t0 = time.perf_counter()
    if not (args.reuse and (out / "text-fp32.onnx").exists()):
        export_text_graph(model, out / "text-fp32.onnx")
    t_text = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (args.reuse and (out / "audio-fp32.onnx").exists()):
        export_audio_graph(model, out / "audio-fp32.onnx")
    t_audio = time.perf_counter() - t0
    print(f"fp32 export: text {t_text:.0f} s, audio {t_audio:.0f} s", flush=True)

    # Agreement with PyTorch on the synthetic probe (random weights: pessimistic, logits
    # cluster near 0; the tokens are arbitrary ids since there is no trained tokenizer).
    probe = builtin_probe(FrontendParams(), n=8)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, (8, 77)).astype(np.int64)
    ids[:, 0], ids[:, 20] = 0, 2
    ids[:, 21:] = 1
    mask = (ids != 1).astype(np.int64)
    text_feeds = [{"input_ids": ids, "attention_mask": mask}]
    audio_feeds = [{"input_features": probe.features[i:i + 2]} for i in range(0, 8, 2)]
    ref = {"text": torch_text_logits(model, ids, mask),
           "audio": torch_audio_logits(model, probe.features)}
    feeds = {"text": text_feeds, "audio": audio_feeds}
    del model

    methods = {"text": ["fp32", "dynamic-qint8", "dynamic-quint8", "dynamic-qint8-per-channel"],
               "audio": ["fp32", "dynamic-qint8", "dynamic-quint8", "dynamic-qint8-per-channel",
                         "static-qdq"]}
    calib = [{"input_features": probe.features[i:i + 1]} for i in range(8)]
    results = {"machine": f"{platform.machine()}, {platform.processor() or '?'}",
               "params_m": n_params / 1e6, "rows": []}
    for branch in ("text", "audio"):
        for method in methods[branch]:
            path = out / f"{branch}-{method}.onnx"
            t0 = time.perf_counter()
            if method != "fp32" and not (args.reuse and path.exists()):
                try:
                    quantize_graph(out / f"{branch}-fp32.onnx", path, method, calib)
                except Exception as exc:  # noqa: BLE001  (report and go on)
                    print(f"{branch} {method}: failed: {exc}", flush=True)
                    continue
            q_s = time.perf_counter() - t0
            agree = agreement(run_graph(path, feeds[branch]), ref[branch])
            row = {"branch": branch, "method": method, "mb": path.stat().st_size / 1e6,
                   "quantize_s": q_s, "bit_agreement": agree}
            for threads in (1, 2):
                m = measure(path, branch, threads, args.repeats)
                row[f"ms_{threads}t"] = m["median_ms"]
                row[f"peak_mb_{threads}t"] = m["peak_mb"]
                if branch == "text":  # the same query without padding to 77 tokens
                    row[f"ms_{threads}t_seq10"] = measure(path, branch, threads,
                                                          args.repeats, seq=10)["median_ms"]
            results["rows"].append(row)
            print(f"{branch:5} {method:26} {row['mb']:7.1f} MB  1t {row['ms_1t']:7.1f} ms  "
                  f"2t {row['ms_2t']:7.1f} ms  peak {row['peak_mb_1t']:6.0f} MB  "
                  + (f"seq10 1t {row['ms_1t_seq10']:6.1f} 2t {row['ms_2t_seq10']:6.1f} ms  "
                     if branch == "text" else "") +
                  f"agree {agree:.3f}", flush=True)
    for branch in ("text", "audio"):
        rows = {r["method"]: r for r in results["rows"] if r["branch"] == branch}
        for method, r in rows.items():
            if method != "fp32":
                print(f"{branch} {method}: speed-up vs fp32 1t "
                      f"{rows['fp32']['ms_1t'] / r['ms_1t']:.2f}x, 2t "
                      f"{rows['fp32']['ms_2t'] / r['ms_2t']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
