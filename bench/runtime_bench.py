"""Field-station runtime benchmark: search and indexing with the full-size int8 bundle.

What it measures (results go in docs/benchmarks/runtime.md):

1. ``cvahash search`` cold: wall time from process start to printed results, and the
   process's peak RSS (a fresh ``python -m cvahash search ...`` each time);
2. warm query latency in one process: text encoding and the store search apart;
3. indexing speed as a multiple of real time (``cvahash index`` on a long synthetic
   recording, pinned to 2 cores with ``taskset`` where available), with the split
   front-end / ONNX / store, and the index process's peak RSS.

Inputs, cached under ``--cache`` because they take minutes to build:

- the full-size bundle (the clap-htsat-unfused shape, 153.5M parameters) with RANDOM
  weights, exported to int8 by the workstation toolchain (needs torch; timing only,
  its codes mean nothing);
- a store of ``--rows`` windows (default 10M) of random codes bound to that bundle,
  appended through the CodeStore API as 24 h recordings of 10 s windows;
- a ``--index-minutes`` long (default 120) synthetic recording.

Usage::

    python bench/runtime_bench.py --cache /var/tmp/cvahash-bench            # everything
    python bench/runtime_bench.py --cache DIR --rows 1000000 --index-minutes 10   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

QUERY = "woodpecker drumming on a dead tree"
WINDOW_S = 10.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------------


def build_full_bundle(out: Path, bits: int) -> Path:
    """Full-size random CLAP + hashing heads -> int8 bundle (dynamic quantisation only:
    with random weights the static/QDQ candidates cost minutes and prove nothing)."""
    from transformers import ClapModel

    from cvahash.export.onnx.bundle_writer import export_run
    from cvahash.export.train.model import HashingModel, full_size_clap_config, reinit_weights
    from cvahash.export.train.run import RunConfig, save_run
    from cvahash.export.train.tokenizer import train_caption_tokenizer

    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    captions = [f"{a} {b} {c}" for a in ("a woodpecker", "an owl", "a frog", "a wren", "rain")
                for b in ("drumming", "hooting", "calling", "singing", "falling")
                for c in ("at night", "on a dead tree", "by the pond", "in the rain")]
    tokenizer = train_caption_tokenizer(captions * 3, vocab_size=1000)
    log("building the full-size random CLAP")
    base = reinit_weights(ClapModel(full_size_clap_config()), seed=0)
    model = HashingModel(base, bits)
    save_run(work / "run", model, RunConfig(model="full-size-random", bits=bits, lora_rank=0),
             tokenizer)
    del model, base
    log("exporting int8 (fp32 export, dynamic int8, checks) -- takes minutes")
    export_run(work / "run", out, "int8", probe_limit=8,
               text_methods=("dynamic-qint8",), audio_methods=("dynamic-qint8",))
    shutil.rmtree(work, ignore_errors=True)
    return out


def build_store(out: Path, rows: int, bits: int, fingerprint: str, seed: int = 0) -> Path:
    """``rows`` random codes as 24 h recordings of 10 s windows across 3 stations."""
    from cvahash.store.code_store import CodeStore, Recording, Segment

    per_rec = int(24 * 3600 / WINDOW_S)
    nbytes = (bits + 7) // 8
    rng = np.random.default_rng(seed)
    tmp = out.parent / (out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp()
    with CodeStore.create(tmp, bits, fingerprint, commit_every_windows=2_000_000) as store:
        done, i = 0, 0
        while done < rows:
            n = min(per_rec, rows - done)
            rec = Recording(path=f"/data/station-{i % 3}/day-{i:05d}.flac",
                            station=f"station-{i % 3}", start_utc=t0 + i * 86400,
                            sample_rate=48000, duration_s=n * WINDOW_S, content_hash=f"bench-{i}")
            seg = Segment(recording=rec, first_offset_s=0.0, length_s=WINDOW_S,
                          capture_start_utc=t0 + i * 86400, hop_s=WINDOW_S, n_rows=n,
                          clock_source="gps")
            store.append(rng.integers(0, 256, (n, nbytes), dtype=np.uint8), [seg])
            done += n
            i += 1
            if i % 200 == 0:
                log(f"  store: {done}/{rows} windows")
    os.replace(tmp, out)
    return out


def build_recording(path: Path, minutes: float, seed: int = 0) -> Path:
    """White noise with a chirp every 10 s, 48 kHz 16-bit WAV, written in blocks."""
    import soundfile as sf

    sr = 48000
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.wav")
    with sf.SoundFile(tmp, "w", sr, 1, subtype="PCM_16") as f:
        for _ in range(int(minutes * 6)):  # 10 s blocks
            x = 0.02 * rng.standard_normal(10 * sr)
            t = np.arange(sr // 2) / sr
            at = int(rng.integers(0, 9 * sr))
            x[at:at + t.size] += 0.3 * np.sin(2 * np.pi * (rng.uniform(1e3, 6e3) * t + 3e3 * t * t))
            f.write(np.clip(x, -1, 1).astype(np.float32))
    os.replace(tmp, path)
    return path


# --- measurements ---------------------------------------------------------------------


def measure_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` through a fresh Python parent so RUSAGE_CHILDREN is that command's alone."""
    helper = (
        "import json,resource,subprocess,sys,time,os\n"
        "cmd=json.loads(sys.argv[1]); t=time.perf_counter()\n"
        "p=subprocess.run(cmd,capture_output=True,text=True)\n"
        "w=time.perf_counter()-t\n"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'wall':w,'rss':u.ru_maxrss*1024,'cpu':u.ru_utime+u.ru_stime,\n"
        "                  'rc':p.returncode,'out':p.stdout,'err':p.stderr}))\n"
    )
    p = subprocess.run([sys.executable, "-c", helper, json.dumps(cmd)], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, check=False)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout)


def pin(cmd: list[str], cores: str) -> list[str]:
    return (["taskset", "-c", cores] + cmd) if shutil.which("taskset") and cores else cmd


def cold_search(store: Path, bundle: Path, repeats: int, cores: str) -> dict:
    cmd = pin([sys.executable, "-m", "cvahash", "search", QUERY, "--db", str(store), "--bundle",
               str(bundle), "-k", "20"], cores)
    runs = []
    # One untimed run first: the page cache, and the mapped text graph copy a station
    # makes on its first text search (cvahash.model.mapped), are then in place.
    measure_child(cmd)
    for _ in range(repeats):
        r = measure_child(cmd)
        if r["rc"] != 0:
            raise RuntimeError(f"search failed: {r['err'][-2000:]}")
        runs.append(r)
    return {"wall_s": [r["wall"] for r in runs], "rss": [r["rss"] for r in runs],
            "cpu_s": [r["cpu"] for r in runs],
            "table": runs[-1]["out"]}


def warm_latency(store: Path, bundle_dir: Path, repeats: int, threads: int) -> dict:
    """Text encode and store search of new queries in one process (medians, the first
    two calls left out), then the same queries again: the bundle remembers their logits,
    so a repeated query costs the tokenizer and the search only."""
    from cvahash.model.bundle import ModelBundle
    from cvahash.store.code_store import CodeStore

    bundle = ModelBundle.open(bundle_dir, threads=threads)
    enc, srch, again = [], [], []
    with CodeStore.open(store, "r") as s:
        for i in range(repeats + 2):
            t = time.perf_counter()
            q = bundle.encode_text([f"{QUERY} {i}"])
            t1 = time.perf_counter()
            s.search(q, 20, threads=threads)
            t2 = time.perf_counter()
            if i >= 2:  # the first calls load the graph and fault in the code file
                enc.append(t1 - t)
                srch.append(t2 - t1)
        for i in range(2, repeats + 2):
            t = time.perf_counter()
            s.search(bundle.encode_text([f"{QUERY} {i}"]), 20, threads=threads)
            again.append(time.perf_counter() - t)
        stats = s.stats()
    return {"encode_ms": 1e3 * statistics.median(enc), "search_ms": 1e3 * statistics.median(srch),
            "total_ms": 1e3 * statistics.median([a + b for a, b in zip(enc, srch, strict=True)]),
            "repeated_ms": 1e3 * statistics.median(again), "threads": threads,
            "rows": stats["rows"], "bits": stats["bits"]}


def index_speed(recording: Path, bundle: Path, cores: str, minutes: float) -> dict:
    import re

    with tempfile.TemporaryDirectory(prefix="cvahash-bench-") as tmp:
        cmd = pin([sys.executable, "-m", "cvahash", "index", str(recording), "--db",
                   str(Path(tmp) / "db"), "--bundle", str(bundle), "--quiet"], cores)
        r = measure_child(cmd, env={"CVAHASH_TIMINGS": "1"})
    if r["rc"] != 0:
        raise RuntimeError(f"index failed: {r['err'][-2000:]}")
    m = re.search(r"front-end ([\d.]+) s, encode ([\d.]+) s, store ([\d.]+) s", r["err"])
    names = ("frontend_s", "encode_s", "store_s")
    split = dict(zip(names, map(float, m.groups()), strict=True)) if m else {}
    audio_s = minutes * 60
    # Wall time counts what other processes on a shared machine take from us; CPU time
    # does not: audio / (CPU seconds / cores) is the speed with the cores to ourselves
    # (an upper bound: it assumes the two cores are kept busy the whole time).
    n_cores = len(cores.split(",")) if cores else os.cpu_count()
    return {"wall_s": r["wall"], "rss": r["rss"], "x_realtime": audio_s / r["wall"],
            "cpu_s": r["cpu"], "x_realtime_cpu": audio_s / (r["cpu"] / n_cores),
            "windows": int(audio_s / WINDOW_S), **split, "summary": r["err"].strip()}


def query_map(bundle_dir: Path, corpus: Path, splits=("val", "test"), k: int = 10) -> dict:
    """mAP@k of text queries and of query by example, through the runtime path.

    The clips of ``splits`` of a synthetic corpus (cvahash.export.synth.corpus, manifest.jsonl)
    are indexed into a fresh store with `cvahash.library.index`; a window's labels are the calls
    that sound inside it. Text: one query per call type present, in its seen phrasing
    and (where it has one) its held-out phrasing; a window is relevant when it holds that
    call. By example: every window queries the others (its own row left out), relevant
    when they share a call. The query code of a window is its stored code, which is what
    ``search --like FILE@OFFSET`` computes (tests/test_cli_runtime.py checks distance 0).
    Ties are ranked by row, as the kernel does.
    """
    from cvahash.export.synth.corpus import queries_for
    from cvahash.export.train.metrics import average_precision_at_k
    from cvahash.library.index import index_recordings
    from cvahash.model.bundle import ModelBundle
    from cvahash.store.code_store import CodeStore

    entries = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()
               if line.strip()]
    entries = [e for e in entries if e["split"] in splits]
    by_path = {str((corpus / e["audio"]).resolve()): e for e in entries}
    bundle = ModelBundle.open(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="cvahash-map-") as tmp, \
            CodeStore.create(Path(tmp) / "db", bundle.bits, bundle.fingerprint) as store:
        report = index_recordings(list(by_path), store, bundle)
        codes = store.codes.copy()
        windows = store.read(np.arange(len(codes)))[1]
    labels = []
    for w in windows:
        e = by_path[w.recording.path]
        lo, hi = w.offset_s, w.offset_s + w.length_s
        labels.append({src["label"] for src in e["sources"]
                       if src["onset_s"] < hi and src["offset_s"] > lo})
    bits = np.unpackbits(codes, axis=1).astype(np.int32)

    def ranking(query_codes: np.ndarray) -> np.ndarray:
        q = np.unpackbits(query_codes, axis=1).astype(np.int32)
        d = q.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * q @ bits.T
        return np.argsort(d, axis=1, kind="stable")

    out = {"windows": len(codes), "clips": len(entries), "skipped": len(report.skipped), "k": k}
    present = sorted(set().union(*labels))
    for heldout in (False, True):
        texts, rel = [], []
        for label in present:
            phrases = queries_for(label, heldout=heldout)
            if phrases:
                texts.append(phrases[0])
                rel.append([label in ls for ls in labels])
        if texts:
            r = ranking(bundle.encode_text(texts))
            ap = average_precision_at_k(r, np.array(rel), k)
            out["text_heldout" if heldout else "text_seen"] = {
                "mAP": float(np.nanmean(ap)), "queries": int(np.isfinite(ap).sum())}
            out["chance_text"] = float(np.mean(np.array(rel).mean(axis=1)))
    r = ranking(codes)
    n = len(codes)
    # Leave each window's own row out: move it to the end of its ranking.
    own = r == np.arange(n)[:, None]
    r = np.stack([np.concatenate([row[~m], row[m]]) for row, m in zip(r, own, strict=True)])
    rel = np.array([[bool(labels[i] & labels[j]) and i != j for j in range(n)] for i in range(n)])
    keep = np.array([bool(ls) for ls in labels])
    ap = average_precision_at_k(r[keep], rel[keep], k)
    out["like"] = {"mAP": float(np.nanmean(ap)), "queries": int(np.isfinite(ap).sum())}
    # Chance level: a random ranking's expected AP@k is about the fraction relevant.
    out["chance_like"] = float(np.mean(rel[keep].sum(1) / max(n - 1, 1)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, type=Path, help="where the bundle, store and "
                    "recording are kept between runs")
    ap.add_argument("--rows", type=int, default=10_000_000, help="windows in the store")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--index-minutes", type=float, default=120.0)
    ap.add_argument("--cores", default="0,1", help="taskset core list for the timed commands")
    ap.add_argument("--threads", type=int, default=2, help="threads for the warm latency")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--map-bundle", type=Path, help="also (or with --map-only, only) report "
                    "mAP@10 of text queries vs query by example with this (trained) bundle")
    ap.add_argument("--map-corpus", type=Path, help="synthetic corpus folder (manifest.jsonl) "
                    "for --map-bundle; its val and test clips are searched")
    ap.add_argument("--map-only", action="store_true", help="skip the speed measurements")
    ap.add_argument("--no-index", action="store_true", help="skip the indexing measurement")
    args = ap.parse_args()
    if args.map_bundle:
        if not args.map_corpus:
            ap.error("--map-bundle needs --map-corpus")
        log(f"mAP with {args.map_bundle} on {args.map_corpus}")
        m = query_map(args.map_bundle, args.map_corpus)
        print(f"mAP@{m['k']} over {m['windows']} windows of {m['clips']} clips "
              f"(val+test of {args.map_corpus}), bundle {args.map_bundle}:")
        print("| query | mAP@10 | queries |")
        print("|---|---|---|")
        for key, name in (("text_seen", "text, seen phrasing"),
                          ("text_heldout", "text, held-out phrasing"),
                          ("like", "by example (--like), leave-one-out")):
            if key in m:
                print(f"| {name} | {m[key]['mAP']:.3f} | {m[key]['queries']} |")
        print(f"(chance level, the fraction of windows relevant to a query: text about "
              f"{m.get('chance_text', float('nan')):.3f}, by example about {m['chance_like']:.3f})")
        if args.map_only:
            return 0

    args.cache.mkdir(parents=True, exist_ok=True)
    bundle = args.cache / f"bundle-full-int8-{args.bits}"
    if not (bundle / "manifest.json").is_file():
        log(f"building {bundle}")
        build_full_bundle(bundle, args.bits)
    from cvahash.model.bundle import ModelBundle

    fingerprint = ModelBundle.open(bundle).fingerprint
    store = args.cache / f"store-{args.rows}-{args.bits}-{fingerprint}"
    if not store.is_dir():
        log(f"building {store}")
        build_store(store, args.rows, args.bits, fingerprint)
    recording = args.cache / f"recording-{args.index_minutes:g}min.wav"
    if not recording.is_file():
        log(f"writing {recording}")
        build_recording(recording, args.index_minutes)

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or ''}"
                   f" {_cpu_model()}, Python {platform.python_version()}",
        "bundle": str(bundle), "bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir()),
        "rows": args.rows, "bits": args.bits, "cores": args.cores,
    }
    results["load_before"] = os.getloadavg()
    log("cold search")
    results["cold_search"] = cold_search(store, bundle, args.repeats, args.cores)
    log("warm latency")
    results["warm"] = warm_latency(store, bundle, 20, args.threads)
    if args.no_index:
        results["index"] = None
    else:
        log("indexing")
        results["index"] = index_speed(recording, bundle, args.cores, args.index_minutes)

    results["load_after"] = os.getloadavg()
    c, w, ix = results["cold_search"], results["warm"], results["index"]
    print(f"machine: {results['machine']}")
    print(f"load average before/after (other work on the machine): "
          f"{results['load_before'][0]:.1f} / {results['load_after'][0]:.1f}")
    print(f"store: {args.rows} windows x {args.bits} bits; "
          f"bundle {results['bundle_bytes'] / 1e6:.0f}"
          f" MB int8 (random weights); timed commands pinned to cores {args.cores}")
    print("| measurement | result | target |")
    print("|---|---|---|")
    print(f"| `cvahash search` cold, process start to printed results | median "
          f"{statistics.median(c['wall_s']):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in c['wall_s'])}) | - |")
    print(f"| warm query latency (text encode + search) | {w['total_ms']:.1f} ms "
          f"({w['encode_ms']:.1f} + {w['search_ms']:.1f}) | - |")
    print(f"| warm query asked again (remembered logits + search) | "
          f"{w['repeated_ms']:.1f} ms | - |")
    print(f"| `cvahash search` cold, CPU time (user+sys) | median "
          f"{statistics.median(c['cpu_s']):.2f} s | - |")
    print(f"| peak RSS of `search` | {max(c['rss']) / 2**20:.0f} MiB | <= 350 MB |")
    if ix is None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    print(f"| indexing speed ({args.index_minutes:g} min file, {ix['windows']} windows) | "
          f"{ix['x_realtime']:.0f}x real time ({ix['wall_s']:.0f} s; front-end "
          f"{ix.get('frontend_s', float('nan')):.0f} s, ONNX {ix.get('encode_s', float('nan')):.0f}"
          f" s, store {ix.get('store_s', float('nan')):.1f} s) | >= 200x |")
    print(f"| indexing speed from CPU time ({ix['cpu_s']:.0f} CPU-s on {args.cores}) | "
          f"{ix['x_realtime_cpu']:.0f}x real time | >= 200x |")
    print(f"| peak RSS of `index` | {ix['rss'] / 2**20:.0f} MiB | - |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())
