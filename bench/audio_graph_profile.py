"""Where the audio graph spends its time, fp32 against int8, and how windows scale.

    .venv/bin/python bench/audio_graph_profile.py compare FP32.onnx INT8.onnx
    .venv/bin/python bench/audio_graph_profile.py parallel GRAPH.onnx [GRAPH.onnx ...]
    .venv/bin/python bench/audio_graph_profile.py interleaved --threads 1 FP32.onnx INT8.onnx
    .venv/bin/python bench/audio_graph_profile.py ops --rounds 3 GRAPH.onnx [GRAPH.onnx ...]

``compare``: ONNX Runtime's profiler on one 10 s window (1 thread, 6 runs, medians per
node); each fp32 MatMul is matched with the int8 nodes made from it (the dynamic
quantiser keeps the node name as a prefix) and the table lists the largest ones, then
totals for matrix products and for everything else.

``parallel``: per-window time of running windows one after another on 1 thread, one after
another on 2 intra-op threads, and 2 at once on one single-threaded session (what
`cvahash.model.bundle.ModelBundle` does for graphs that run one window per call).

``interleaved``: wall-clock and process CPU time per window of several graphs, run in
turn (graph A, B, A, B, ...) so that the machine's drift from one minute to the next hits
them alike; medians of ``--runs`` runs each, CPU time also as a ratio to the first graph.
The fair way to compare graphs on a shared VM.

``ops``: ONNX Runtime's profiler per op type (1 thread), each graph profiled in turn for
``--rounds`` rounds (medians over rounds), with the int8 matrix products (integer MatMul
kernels and the quantisation of their inputs) apart from the float products (attention)
and everything else, and the whole graph's process CPU time per window measured without
the profiler in the same rounds; the shares are what a projection to another CPU uses.

Graphs: the files ``bench/bundle_bench.py --out DIR`` writes (audio-fp32.onnx,
audio-dynamic-qint8.onnx, ...) or a bundle's audio.onnx. Results: docs/benchmarks/bundle.md,
run 4; docs/benchmarks/runtime.md, run 8b.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort


def _window() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((1, 1, 1001, 64)) * 20 - 40).astype(np.float32)


def _session(path: str, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    if profile:  # the profile's JSON goes to the temp folder, not the working directory
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "cvahash-audio-profile")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _kernel_events(path: str, runs: int) -> list[dict]:
    """ONNX Runtime's profiler events of every node kernel over ``runs`` runs of one
    window on one thread (the profile file is removed)."""
    session = _session(path, 1, profile=True)
    feed = {session.get_inputs()[0].name: _window()}
    for _ in range(runs):
        session.run(None, feed)
    profile = session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.unlink(profile)
    return [e for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def node_times(path: str, runs: int = 6) -> dict[tuple[str, str], float]:
    """Median ms per (node name, op type) over ``runs`` runs on one thread."""
    times = collections.defaultdict(list)
    for e in _kernel_events(path, runs):
        times[(e["name"][: -len("_kernel_time")], e["args"]["op_name"])].append(e["dur"])
    return {k: float(np.median(v)) / 1000 for k, v in times.items()}


def _is_product(op: str) -> bool:
    return "MatMul" in op or "Gemm" in op or "Quantize" in op


def _origin(name: str) -> str:
    return re.sub(r"(_quant|_MatMulIntegerToFloat.*|_fused.*)$", "", name)


def compare(fp32: str, int8: str, top: int = 25) -> None:
    a, b = node_times(fp32), node_times(int8)
    base = {_origin(n): t for (n, op), t in a.items() if "MatMul" in op or "Gemm" in op}
    quant = collections.defaultdict(float)
    for (n, op), t in b.items():
        if _is_product(op):
            quant[_origin(n)] += t
    print(f"{'node':70s} {'fp32 ms':>8s} {'int8 ms':>8s} {'x':>6s}")
    for name, t in sorted(base.items(), key=lambda kv: -kv[1])[:top]:
        q = quant.get(name, float("nan"))
        print(f"{name[-70:]:70s} {t:8.2f} {q:8.2f} {t / q:6.2f}")
    prod_a, prod_b = sum(base.values()), sum(quant.values())
    all_a, all_b = sum(a.values()), sum(b.values())
    print(f"matrix products: fp32 {prod_a:.1f} ms, int8 {prod_b:.1f} ms ({prod_a / prod_b:.2f}x)")
    print(f"everything else: fp32 {all_a - prod_a:.1f} ms, int8 {all_b - prod_b:.1f} ms")
    print(f"whole graph:     fp32 {all_a:.1f} ms, int8 {all_b:.1f} ms ({all_a / all_b:.2f}x)")


def parallel(path: str, n: int = 12, series: int = 2) -> dict[str, float]:
    one, two = _session(path, 1), _session(path, 2)
    feed = {one.get_inputs()[0].name: _window()}
    for s in (one, two):
        s.run(None, feed)
        s.run(None, feed)
    best: dict[str, float] = {}

    def keep(label, seconds, count):
        best[label] = min(best.get(label, float("inf")), 1000 * seconds / count)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(series):
            t = time.perf_counter()
            for _ in range(n // 2):
                one.run(None, feed)
            keep("1 thread", time.perf_counter() - t, n // 2)
            t = time.perf_counter()
            for _ in range(n):
                two.run(None, feed)
            keep("2 intra-op threads", time.perf_counter() - t, n)
            t = time.perf_counter()
            list(pool.map(lambda _: one.run(None, feed), range(n)))
            keep("2 windows at once, 1 thread each", time.perf_counter() - t, n)
    print(path)
    for label, ms in best.items():
        print(f"  {label:34s} {ms:7.1f} ms/window")
    return best


def interleaved(paths: list[str], threads: int, runs: int = 15) -> dict[str, float]:
    sessions = [_session(p, threads) for p in paths]
    feed = {sessions[0].get_inputs()[0].name: _window()}
    for s in sessions:
        s.run(None, feed)
        s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t, c = time.perf_counter(), time.process_time()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    out = {}
    base = 1000 * float(np.median(cpu[0]))
    for path, ts, cs in zip(paths, times, cpu, strict=True):
        out[path] = 1000 * float(np.median(ts))
        mc = 1000 * float(np.median(cs))
        print(f"{path}: {threads} thread(s), median {out[path]:.1f} ms "
              f"(min {1000 * min(ts):.1f}, max {1000 * max(ts):.1f}); process CPU "
              f"{mc:.1f} ms, {mc / base:.3f}x the first graph's")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return out


INT8_PRODUCTS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear")
FLOAT_PRODUCTS = ("MatMul", "FusedMatMul", "Gemm")


def op_times(path: str, runs: int = 6) -> dict[str, float]:
    """Mean ms per run and op type on one thread (ONNX Runtime's profiler)."""
    per = collections.defaultdict(float)
    for e in _kernel_events(path, runs + 1):
        per[e["args"]["op_name"]] += e["dur"] / 1000 / (runs + 1)
    return dict(per)


def cpu_ms_per_window(path: str, runs: int = 8) -> float:
    session = _session(path, 1)
    feed = {session.get_inputs()[0].name: _window()}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.process_time()
        session.run(None, feed)
        times.append(1000 * (time.process_time() - t))
    return float(np.median(times))


def ops(paths: list[str], rounds: int = 3, top: int = 12) -> dict:
    per: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            per[p].append(op_times(p))
            cpu[p].append(cpu_ms_per_window(p))
    out = {}
    for p in paths:
        kinds = sorted({k for r in per[p] for k in r})
        med = {k: float(np.median([r.get(k, 0.0) for r in per[p]])) for k in kinds}
        total = sum(med.values())
        int8 = sum(v for k, v in med.items() if k in INT8_PRODUCTS)
        flt = sum(v for k, v in med.items() if k in FLOAT_PRODUCTS)
        out[p] = {"cpu_ms_per_window": float(np.median(cpu[p])), "profiled_ms": total,
                  "int8_products_share": int8 / total, "float_products_share": flt / total,
                  "other_share": 1 - (int8 + flt) / total, "ops": med}
        print(f"{p}: {out[p]['cpu_ms_per_window']:.1f} CPU-ms per window (profiler off), "
              f"profiled {total:.1f} ms; int8 products {100 * int8 / total:.1f} %, float "
              f"products {100 * flt / total:.1f} %, other {100 * out[p]['other_share']:.1f} %")
        for k, v in sorted(med.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {k:28s} {v:7.2f} ms {100 * v / total:5.1f} %")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare", help="per-node fp32 vs int8 profile")
    c.add_argument("fp32")
    c.add_argument("int8")
    p = sub.add_parser("parallel", help="sequential vs intra-op vs concurrent windows")
    p.add_argument("graphs", nargs="+")
    i = sub.add_parser("interleaved", help="graphs run in turn, medians")
    i.add_argument("graphs", nargs="+")
    i.add_argument("--threads", type=int, default=1)
    i.add_argument("--runs", type=int, default=15)
    o = sub.add_parser("ops", help="per op type profile, int8 products apart")
    o.add_argument("graphs", nargs="+")
    o.add_argument("--rounds", type=int, default=3)
    o.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.mode == "compare":
        compare(args.fp32, args.int8)
    elif args.mode == "ops":
        res = ops(args.graphs, args.rounds)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
    elif args.mode == "interleaved":
        interleaved(args.graphs, args.threads, args.runs)
    else:
        for g in args.graphs:
            parallel(g)
    return 0


if __name__ == "__main__":
    sys.exit(main())
