"""How the text graph's ONNX Runtime session is made: creation and first query, per variant.

Each variant runs in a fresh process (a cold session), variants alternating, ``--runs``
rounds; prints medians of session creation and of the first and later queries (wall and
CPU), the page faults of the creation and the process's peak RSS, and whether each
variant's logits equal the first variant's bit for bit.

    .venv/bin/python bench/text_session.py --bundle BUNDLE --work /tmp/ts --runs 5

Variants (the levers of docs/benchmarks/runtime.md, run 8):

- ``onnx-basic``: the bundle's text.onnx at the basic level (what `ModelBundle` did);
- ``onnx-none``: text.onnx with no optimisation at all (the file is pre-optimised);
- ``onnx-none-nopack``: ... and no pre-packed weights;
- ``ort-format``: the graph converted to ONNX Runtime's own format, loaded from its path;
- ``mapped``: the external-data copy `cvahash.model.mapped` makes (weights mapped);
- ``mapped-nopack``: ... without pre-packing (what `cvahash search` uses);
- ``mapped-nopack-1t``: ... on one intra-op thread;
- ``mapped-nopack-nospin``: ... threads that do not spin (`one_shot_text`).

An ORT-format model handed over as bytes with ``session.use_ort_model_bytes_directly``
is not a variant: onnxruntime 1.32's Python binding passes a temporary copy of the bytes,
and the session crashes (segmentation fault) when it later reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
path, variant, out = sys.argv[1:4]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
o = ort.SessionOptions()
o.inter_op_num_threads = 1
o.log_severity_level = 3
o.intra_op_num_threads = 1 if variant.endswith("-1t") else 0
level = ort.GraphOptimizationLevel
o.graph_optimization_level = level.ORT_ENABLE_BASIC if variant == "onnx-basic" \
    else level.ORT_DISABLE_ALL
if "nopack" in variant:
    o.add_session_config_entry("session.disable_prepacking", "1")
if variant.endswith("nospin"):
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
ids = np.array([[0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 2]], dtype=np.int64)
feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t, c = time.perf_counter(), cpu()
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
create = (time.perf_counter() - t, cpu() - c)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
t, c = time.perf_counter(), cpu()
logits = s.run(None, feed)[0]
first = (time.perf_counter() - t, cpu() - c)
later = []
for _ in range(10):
    t = time.perf_counter()
    s.run(None, feed)
    later.append(time.perf_counter() - t)
np.save(out, logits)
print(json.dumps({"create": create, "first": first, "later": sorted(later)[5],
                  "faults": faults,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""

VARIANTS = ("onnx-basic", "onnx-none", "onnx-none-nopack", "ort-format", "mapped",
            "mapped-nopack", "mapped-nopack-1t", "mapped-nopack-nospin")


def prepare(bundle: Path, work: Path) -> dict[str, Path]:
    """The files the variants load: text.onnx, an ORT-format copy, the mapped copy."""
    import onnxruntime as ort

    work.mkdir(parents=True, exist_ok=True)
    ort_file = work / "text.ort"
    if not ort_file.is_file():
        o = ort.SessionOptions()
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        o.optimized_model_filepath = str(ort_file)
        o.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(bundle / "text.onnx"), o, providers=["CPUExecutionProvider"])
    os.environ["CVAHASH_CACHE_DIR"] = str(work / "cache")
    from cvahash.model import mapped
    from cvahash.model.bundle import ModelBundle

    b = ModelBundle.open(bundle, graphs=("text",))
    b.encode_text(["owl"])  # makes the mapped copy
    digest = b.manifest["files"]["text.onnx"]["sha256"]
    copy = mapped.find(digest, ort.__version__)
    if copy is None:
        raise SystemExit(f"{bundle}: no mapped copy was made (is graphs.text.ort_optimized "
                         "set in its manifest?)")
    return {"onnx": bundle / "text.onnx", "ort": ort_file, "mapped": copy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the copies")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare_only:
        print(json.dumps({k: str(v) for k, v in prepare(args.bundle, args.work).items()}))
        return 0
    # In a child: a parent that held a session would pass its peak RSS on to every
    # variant's process (Linux keeps the larger of the two across fork + exec).
    made = subprocess.run([sys.executable, __file__, "--bundle", str(args.bundle), "--work",
                           str(args.work), "--prepare-only"], check=True,
                          capture_output=True, text=True)
    files = {k: Path(v) for k, v in json.loads(made.stdout.splitlines()[-1]).items()}
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        for v in args.variants:
            path = files["ort" if v == "ort-format" else v.split("-")[0]]
            out = args.work / f"logits-{v}.npy"
            p = subprocess.run([sys.executable, "-c", CHILD, str(path), v, str(out)],
                               check=True, capture_output=True, text=True)
            results[v].append(json.loads(p.stdout.splitlines()[-1]))
    import numpy as np

    ref = np.load(args.work / f"logits-{args.variants[0]}.npy")
    print(f"text session variants, {args.bundle}, {args.runs} fresh processes each, "
          f"alternating; medians (load average {load:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs)")
    print("| variant | create wall / CPU ms | first query wall / CPU ms | later query ms "
          "| page faults at create | peak RSS MiB | logits = first variant |")
    print("|---|---|---|---|---|---|---|")
    for v, rs in results.items():
        def med(key, i=None, rs=rs):
            return statistics.median(r[key] if i is None else r[key][i] for r in rs)
        same = np.array_equal(np.load(args.work / f"logits-{v}.npy"), ref)
        print(f"| {v} | {med('create', 0) * 1e3:.0f} / {med('create', 1) * 1e3:.0f} | "
              f"{med('first', 0) * 1e3:.0f} / {med('first', 1) * 1e3:.0f} | "
              f"{med('later') * 1e3:.1f} | {med('faults'):.0f} | {med('rss'):.0f} | "
              f"{'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
