"""Cold `cvahash search`: process start to printed hits, with a full-size audio graph.

A text search loads only the text graph; this measures what a fresh process pays
before the hits appear when the bundle also carries a big audio graph (a full-size
HTSAT int8 graph is about 157 MB). The stand-in bundle is the shipped tiny demo bundle
with ``--pad-mb`` MB of unused weights added to audio.onnx (same text graph, so the
search itself is unchanged); a few seconds of noise are indexed into a store and
``cvahash search`` runs ``--runs`` times, each in a new process.

    .venv/bin/python bench/cold_search.py --out /tmp/cold --runs 7

With ``--bundle DIR --db STORE`` it times that bundle and store instead (the full-size
int8 bundle over a 10M-window store, docs/benchmarks/runtime.md run 8); ``--base DIR``
adds the code in DIR (a folder holding a ``cvahash`` package, e.g. an older commit's
``runtime/`` extracted as ``DIR/cvahash``) run through the same command, alternating
with this checkout, so both see the same machine load. ``--split`` prints where one
cold search spends its time, phase by phase, in one process of this checkout.

Prints the median and range of wall time, CPU time (user + system) and peak RSS, and the
load average before and after. The stand-in bundle needs the [export] extra (onnx).

Bytecode: each timed package is compiled to ``__pycache__`` first, as ``pip install``
does on a station. A checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (as on the shared
build machine) otherwise compiles every cvahash module from source at every start, about
80 CPU-ms of a cold search; ``--no-compile`` times that case.
"""

from __future__ import annotations

import argparse
import json
import os
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


SPLIT = r"""
import os, resource, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `cvahash search` sets it
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
marks = [("start", time.perf_counter(), cpu())]
def mark(name):
    marks.append((name, time.perf_counter(), cpu()))
import numpy; mark("import numpy")
import onnxruntime; mark("import onnxruntime")
from cvahash.cli import build_parser; build_parser(["search"]); mark("import cvahash.cli, parser")
from cvahash.library.library import Library
from cvahash.query import report
from cvahash.query.search import search_text, text_query_code
mark("import the query layer")
db, bundle_dir, text = sys.argv[1:4]
lib = Library.open(db, bundle_dir, mode="r", graphs=("text",))
lib.bundle.one_shot_text = True
mark("open store + bundle (hash check)")
lib.bundle.tokenize([text]); mark("load tokenizer, tokenize")
lib.bundle._session("text"); mark("text session")
_, codes, _, _ = text_query_code(lib.bundle, text); mark("encode the query")
lib.store.stats(); mark("store stats")
hits = lib.store.search(codes, 10)[0]; mark("search (cold pages)")
for name, w, c in [(n, w - pw, c - pc) for (n, w, c), (_, pw, pc) in zip(marks[1:], marks)]:
    print(f"{name:34s} {w * 1e3:7.1f} ms wall {c * 1e3:7.1f} ms CPU")
"""


WARM = r"""
import json, statistics, sys, time
from cvahash.model.bundle import ModelBundle
from cvahash.store.code_store import CodeStore
db, bundle_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
bundle = ModelBundle.open(bundle_dir, threads=threads, graphs=("text",))
texts = [f"woodpecker drumming on a dead tree {i}" for i in range(22)]
enc, srch, again = [], [], []
with CodeStore.open(db, "r") as store:
    for i, text in enumerate(texts):
        t = time.perf_counter()
        q = bundle.encode_text([text])
        t1 = time.perf_counter()
        store.search(q, 20, threads=threads)
        if i >= 2:  # the first calls load the graph and fault in the code file
            enc.append(t1 - t)
            srch.append(time.perf_counter() - t1)
    for text in texts[2:]:
        t = time.perf_counter()
        store.search(bundle.encode_text([text]), 20, threads=threads)
        again.append(time.perf_counter() - t)
print(json.dumps({k: 1e3 * statistics.median(v) for k, v in
                  (("encode", enc), ("search", srch), ("again", again))}))
"""


def compile_package(env: dict) -> str:
    """Compile the `cvahash` package that ``env`` imports to bytecode; its folder."""
    code = ("import compileall, os, cvahash\n"
            "folder = os.path.dirname(cvahash.__file__)\n"
            "compileall.compile_dir(folder, quiet=1)\n"
            "print(folder)")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MiB) of one run of ``cmd`` in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def summary(name: str, runs: list[tuple[float, float, int]]) -> str:
    walls, cpus, rss = zip(*runs, strict=True)
    return (f"  {name:5s} wall median {statistics.median(walls) * 1e3:4.0f} ms "
            f"(min {min(walls) * 1e3:.0f}, max {max(walls) * 1e3:.0f}); "
            f"CPU median {statistics.median(cpus) * 1e3:4.0f} ms "
            f"(min {min(cpus) * 1e3:.0f}, max {max(cpus) * 1e3:.0f}); "
            f"peak RSS {statistics.median(rss):.0f} MiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="work folder for the stand-in bundle and store")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--pad-mb", type=float, default=157.0)
    ap.add_argument("--bundle", type=Path, help="a bundle to time instead of the stand-in")
    ap.add_argument("--db", type=Path, help="the store made with --bundle")
    ap.add_argument("--base", type=Path, help="folder with an older `cvahash` package to "
                    "time alternately with this checkout")
    ap.add_argument("--text", default="owl hooting")
    ap.add_argument("--split", action="store_true", help="time one search phase by phase")
    ap.add_argument("--warm", type=int, metavar="THREADS", help="instead: warm queries in "
                    "one process per variant and round (new texts, then the same again), "
                    "with THREADS threads (0: one per core)")
    ap.add_argument("--no-compile", action="store_true", help="do not compile the packages "
                    "to bytecode first")
    args = ap.parse_args(argv)
    if args.bundle is not None:
        if args.db is None:
            ap.error("--bundle needs --db (a store made with that bundle)")
        bundle, db = args.bundle, args.db
    else:
        if args.out is None:
            ap.error("give --out (stand-in bundle) or --bundle and --db")
        args.out.mkdir(parents=True, exist_ok=True)
        bundle = args.out / "bundle"
        if not (bundle / "manifest.json").is_file():
            # In a child: a parent that held the 157 MB graph would pass its peak RSS on to
            # every timed process (Linux keeps the larger of the two across fork + exec).
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import cold_search as c; from pathlib import Path; "
                            "c.stand_in_bundle(Path(sys.argv[2]), float(sys.argv[3]))",
                            str(Path(__file__).parent), str(args.out), str(args.pad_mb)],
                           check=True)
        db = args.out / "store"
        if not db.exists():
            rec = args.out / "rec.wav"
            rng = np.random.default_rng(1)
            sf.write(rec, (rng.standard_normal(48000 * 30) * 0.1).astype(np.float32), 48000)
            subprocess.run(cli("index", str(rec), "--db", str(db), "--bundle", str(bundle),
                               "--quiet", "--threads", "1"), check=True)
    variants = {"new": dict(os.environ)}
    if args.base is not None:
        variants = {"base": {**os.environ, "PYTHONPATH": str(args.base.resolve())}, **variants}
    if not args.no_compile:
        for name, env in variants.items():
            print(f"{name}: bytecode compiled in {compile_package(env)}")
    if args.split:
        subprocess.run([sys.executable, "-c", SPLIT, str(db), str(bundle), args.text],
                       check=True)
        return 0
    if args.warm is not None:
        return warm(variants, db, bundle, args.warm, args.runs)
    search = cli("search", args.text, "--db", str(db), "--bundle", str(bundle), "-k", "10")
    for env in variants.values():  # warm the page cache (and make the mapped text graph)
        subprocess.run(search, check=True, capture_output=True, env=env)
    load_before = os.getloadavg()
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, env in variants.items():
            runs[name].append(timed(search, env))
    load_after = os.getloadavg()
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.suffix == ".onnx") / 1e6
    print(f"cold search, bundle {bundle} ({size:.0f} MB of graphs), store {db}, "
          f"{args.runs} runs each, interleaved")
    for name, xs in runs.items():
        print(summary(name, xs))
    if "base" in runs:
        ratio = (statistics.median(r[0] for r in runs["new"])
                 / statistics.median(r[0] for r in runs["base"]))
        cpu = (statistics.median(r[1] for r in runs["new"])
               / statistics.median(r[1] for r in runs["base"]))
        print(f"  new / base: wall {ratio:.2f}x, CPU {cpu:.2f}x")
    print(f"  load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")
    return 0


def warm(variants: dict, db: Path, bundle: Path, threads: int, rounds: int) -> int:
    """Median warm latencies (ms) per variant: encode a new text, search 10M rows, and
    the same texts asked again; one fresh process per variant and round, alternating."""
    load = os.getloadavg()[0]
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, env in variants.items():
            out = subprocess.run([sys.executable, "-c", WARM, str(db), str(bundle),
                                  str(threads)], env=env, check=True, capture_output=True,
                                 text=True).stdout
            rows[name].append(json.loads(out.splitlines()[-1]))
    print(f"warm queries, {threads or 'default'} threads, {rounds} rounds (20 queries each), "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, rs in rows.items():
        cells = ", ".join(f"{k} {min(r[k] for r in rs):.1f}-{max(r[k] for r in rs):.1f}"
                          for k in ("encode", "search", "again"))
        print(f"  {name:5s} ms per query (range of the rounds' medians): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
