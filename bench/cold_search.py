"""Cold `cvahash search`: process start to printed hits, with a full-size audio graph.

A text search loads only the text graph; this measures what a fresh process pays
before the hits appear when the bundle also carries a big audio graph (a full-size
HTSAT int8 graph is about 157 MB). The stand-in bundle is the shipped tiny demo bundle
with ``--pad-mb`` MB of unused weights added to audio.onnx (same text graph, so the
search itself is unchanged); a few seconds of noise are indexed into a store and
``cvahash search`` runs ``--runs`` times, each in a new process.

    .venv/bin/python bench/cold_search.py --out /tmp/cold --runs 7

Prints the median and range of wall time and of CPU time (user + system). Needs the
[export] extra (onnx) to write the stand-in graph.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "tests" / "data" / "demo-bundle"


def stand_in_bundle(out: Path, pad_mb: float) -> Path:
    import onnx
    from onnx import numpy_helper

    from cvahash.model.bundle import fingerprint_of, sha256_file

    dst = out / "bundle"
    if (dst / "manifest.json").is_file():
        return dst
    shutil.copytree(DEMO, dst)
    model = onnx.load(str(DEMO / "audio.onnx"))
    pad = np.random.default_rng(0).standard_normal(int(pad_mb * 1e6) // 4).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "stand_in_padding"))
    onnx.save(model, str(dst / "audio.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry["sha256"] = sha256_file(dst / name)
        entry["bytes"] = (dst / name).stat().st_size
    manifest["fingerprint"] = fingerprint_of(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cvahash", *args]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--pad-mb", type=float, default=157.0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = stand_in_bundle(args.out, args.pad_mb)
    db = args.out / "store"
    if not db.exists():
        rec = args.out / "rec.wav"
        rng = np.random.default_rng(1)
        sf.write(rec, (rng.standard_normal(48000 * 30) * 0.1).astype(np.float32), 48000)
        subprocess.run(cli("index", str(rec), "--db", str(db), "--bundle", str(bundle),
                           "--quiet", "--threads", "1"), check=True)
    search = cli("search", "owl hooting", "--db", str(db), "-k", "3", "--threads", "1")
    subprocess.run(search, check=True, capture_output=True)  # warm the page cache
    walls, cpus = [], []
    for _ in range(args.runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(search, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    size = (bundle / "audio.onnx").stat().st_size / 1e6
    print(f"cold search, audio.onnx {size:.0f} MB, {args.runs} runs")
    for name, xs in (("wall", walls), ("cpu", cpus)):
        print(f"  {name}: median {statistics.median(xs) * 1e3:.0f} ms "
              f"(min {min(xs) * 1e3:.0f}, max {max(xs) * 1e3:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
