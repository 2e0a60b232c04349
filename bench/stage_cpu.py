"""CPU time per 10 s window of each indexing stage, on one thread.

On a shared machine wall time measures the neighbours; CPU time of one thread doing one
stage does not (much), and the sum over stages is what a window costs on the station:

- ``read``: decode + downmix + resample + cut windows (`cvahash.model.audio.iter_windows`);
- ``frontend``: log-mel (`cvahash.model.frontend.log_mel`, batches of 8 windows);
- ``graph``: the bundle's audio graph, one window per run on a single-threaded ONNX
  Runtime session (what `ModelBundle` runs side by side on each core);

medians over ``--repeats`` passes (each pass times ``--windows`` windows). Indexing speed
on C cores is then at most ``C * 10 s / (sum of the stages)``.

    .venv/bin/python bench/stage_cpu.py --bundle BUNDLE --recording REC.wav
    PYTHONPATH=OTHER_CHECKOUT_PKG .venv/bin/python bench/stage_cpu.py ...   # another version

Results: docs/benchmarks/runtime.md (runs 6 and 8b).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def cpu_ms(fn) -> float:
    t = time.process_time()
    fn()
    return 1e3 * (time.process_time() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--recording", required=True, type=Path)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stages", default="read,frontend,graph")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime as ort

    from cvahash.model import frontend
    from cvahash.model.audio import iter_windows
    from cvahash.model.bundle import ModelBundle

    bundle = ModelBundle.open(args.bundle)
    params = bundle.frontend_params
    stages = args.stages.split(",")
    n = args.windows

    def read():
        out = []
        for w in iter_windows(args.recording, params.max_length_s, params.max_length_s,
                              params.sample_rate):
            out.append(w.samples)
            if len(out) == n:
                break
        return out

    samples = read()
    if len(samples) < n:
        raise SystemExit(f"{args.recording}: only {len(samples)} windows; pass --windows")
    feats = frontend.log_mel(samples, params)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(args.bundle / "audio.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: feats[:1]})

    def graph():
        for i in range(n):
            session.run(None, {name: feats[i:i + 1]})

    fns = {"read": read, "frontend": lambda: [frontend.log_mel(samples[i:i + 8], params)
                                              for i in range(0, n, 8)], "graph": graph}
    res: dict[str, list[float]] = {s: [] for s in stages}
    for _ in range(args.repeats):
        for s in stages:
            res[s].append(cpu_ms(fns[s]) / n)
    out = {s: statistics.median(v) for s, v in res.items()}
    out["total"] = sum(out.values())
    out["x_realtime_2_cores"] = 2 * params.max_length_s * 1e3 / out["total"]
    out["frontend_module"] = frontend.__file__
    out["bundle"] = str(args.bundle)
    out["load"] = os.getloadavg()[0]
    out["features_checksum"] = float(np.float64(feats.sum()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
