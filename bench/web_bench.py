"""Station web page benchmark: server memory, warm search page, 20 phones at once.

    .venv/bin/python bench/web_bench.py [--bundle DIR] [--rows 10000000] [--clients 20]

Builds a store of ``--rows`` windows (random codes of the bundle's width; every window
points into one real 10-minute WAV file, so every hit can be played and drawn), starts
``cvahash serve`` on a free loopback port as its own process, then measures:

- the search page (HTML, k=10) alone, and with its 10 spectrograms fetched as a browser
  does (6 at a time), uncached (a new query each time) and cached (the same query again);
- ``--clients`` concurrent clients each loading ``--per-client`` search pages with their
  spectrograms: errors, median and p95 latency of one page with its pictures;
- the server's resident memory (VmRSS now, VmHWM peak) after all of it.

Prints a markdown table; results and the machine go in docs/benchmarks/web.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tests" / "data" / "demo-bundle"
HOP, LENGTH = 5.0, 10.0
FILE_S = 600  # one real recording, 10 minutes
PER_REC = int((FILE_S - LENGTH) // HOP) + 1
START = 1_717_200_000.0  # 2024-06-01
WORDS = ["owl", "woodpecker", "frog", "wren", "rain", "wind", "crow", "cricket", "chorus",
         "drumming", "hooting", "trill", "call", "song", "night", "dawn", "pond", "tree"]


def make_store(root: Path, bundle_dir: Path, rows: int, sr: int = 16000) -> Path:
    from cvahash.library.library import record_bundle
    from cvahash.model.bundle import ModelBundle
    from cvahash.store.code_store import CodeStore, Recording, Segment

    bundle = ModelBundle.open(bundle_dir, threads=1)
    wav = root / "audio" / "20240601_000000.wav"
    wav.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(FILE_S * sr) / sr
    x = 0.02 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * (2000 + 800 * np.sin(
        2 * np.pi * 0.3 * t)) * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.6)
    sf.write(str(wav), x.astype(np.float32), sr, subtype="PCM_16")
    store_dir = root / "store"
    store = CodeStore.create(store_dir, bundle.bits, bundle.fingerprint,
                             commit_every_windows=10**9, commit_every_s=10**9)
    batch = 200_000
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        segs, r = [], done
        while r < done + n:
            i = r // PER_REC
            end = min(done + n, (i + 1) * PER_REC)
            rec = Recording(path=str(wav), station=f"station-{i % 4}",
                            start_utc=START + i * FILE_S, sample_rate=sr, duration_s=FILE_S,
                            content_hash=f"{i:016x}")
            segs.append(Segment(recording=rec, first_offset_s=(r - i * PER_REC) * HOP,
                                length_s=LENGTH, capture_start_utc=START + i * FILE_S
                                + (r - i * PER_REC) * HOP, hop_s=HOP, n_rows=end - r,
                                clock_source="gps"))
            r = end
        codes = rng.integers(0, 256, (n, bundle.bits // 8), dtype=np.uint8)
        store.append(codes, segs, commit=True)
        done += n
        print(f"\rstore: {done}/{rows} windows", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    store.close()
    record_bundle(store_dir, bundle)
    return store_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        return r.read()


def page_with_pictures(base: str, query: str, pool: ThreadPoolExecutor) -> tuple[float, float]:
    """(seconds for the HTML, seconds for HTML + its spectrograms)."""
    t0 = time.perf_counter()
    html = get(f"{base}/search?q={urllib.request.quote(query)}&k=10").decode()
    t1 = time.perf_counter()
    pics = re.findall(r'src="(/strip/\d+\.png)"', html)
    if len(pics) != 10:
        raise RuntimeError(f"expected 10 hits, the page has {len(pics)}")
    list(pool.map(lambda p: get(base + p), pics))
    return t1 - t0, time.perf_counter() - t0


def vm(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (a loaded machine inflates wall
    time far more than this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values, p):
    return float(np.percentile(np.asarray(values) * 1000, p))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEMO, help="model bundle (default: demo)")
    ap.add_argument("--rows", type=int, default=100_000, help="windows in the store")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--per-client", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="serve --threads")
    ap.add_argument("--dir", type=Path, help="work folder (default: a temp dir, removed)")
    args = ap.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="web-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = root / "store"
    if not (store / "meta.sqlite").exists():
        store = make_store(root, args.bundle, args.rows)
    print(f"store ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "cvahash", "serve", "--db", str(store),
                             "--bundle", str(args.bundle), "--port", str(port), "--threads",
                             str(args.threads)], stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MALLOC_ARENA_MAX="2"))  # as the unit sets
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        idle = vm(proc.pid)
        rng = np.random.default_rng(1)

        def query():
            return " ".join(rng.choice(WORDS, 3))

        pool = ThreadPoolExecutor(6)
        t = time.perf_counter()
        get(f"{base}/api/search?q=warm+up&k=10")
        first = time.perf_counter() - t
        html_s, uncached_s, cached_s, api_s, page_cpu = [], [], [], [], []
        for _ in range(args.repeats):
            q = query()
            c = cpu_s(proc.pid)
            h, full = page_with_pictures(base, q, pool)
            page_cpu.append(cpu_s(proc.pid) - c)
            html_s.append(h)
            uncached_s.append(full)
            cached_s.append(page_with_pictures(base, q, pool)[1])
            t = time.perf_counter()
            get(f"{base}/api/search?q={urllib.request.quote(query())}&k=10")
            api_s.append(time.perf_counter() - t)
        pool.shutdown()

        errors, latencies = [], []

        def client(i):
            own = ThreadPoolExecutor(6)
            local = np.random.default_rng(100 + i)
            for _ in range(args.per_client):
                q = " ".join(local.choice(WORDS, 3))
                try:
                    latencies.append(page_with_pictures(base, q, own)[1])
                except Exception as exc:  # counted, reported
                    errors.append(repr(exc))
            own.shutdown()

        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            list(ex.map(client, range(args.clients)))
        wall = time.perf_counter() - t
        mem = vm(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    import onnxruntime

    from cvahash.kernel.hamming import active_isa

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, kernel ISA "
          f"{active_isa()}, onnxruntime {onnxruntime.__version__}, python "
          f"{platform.python_version()}")
    print(f"bundle: {args.bundle} ({sum(f.stat().st_size for f in args.bundle.iterdir()) / 1e6:.0f}"
          f" MB); store: {args.rows} windows; serve --threads {args.threads}\n")
    print("| measure | value |\n|---|---|")
    print(f"| server RSS idle (store and bundle not yet opened) | {idle['VmRSS']:.0f} MB |")
    print(f"| server RSS after the runs / peak (VmHWM) | {mem['VmRSS']:.0f} MB / "
          f"{mem['VmHWM']:.0f} MB |")
    print(f"| ... of which anonymous / file-backed (code file, libraries) | "
          f"{mem['RssAnon']:.0f} MB / {mem['RssFile']:.0f} MB |")
    print(f"| first search (opens store and bundle) | {first * 1000:.0f} ms |")
    print(f"| warm /api/search k=10, median | {statistics.median(api_s) * 1000:.0f} ms |")
    print(f"| warm search page HTML k=10, median | {statistics.median(html_s) * 1000:.0f} ms |")
    print(f"| warm page + 10 spectrograms (new query), median / max | "
          f"{statistics.median(uncached_s) * 1000:.0f} / {max(uncached_s) * 1000:.0f} ms |")
    print(f"| ... server CPU time for that page + 10 spectrograms, median | "
          f"{statistics.median(page_cpu) * 1000:.0f} ms |")
    print(f"| same page again (spectrograms cached), median | "
          f"{statistics.median(cached_s) * 1000:.0f} ms |")
    print(f"| {args.clients} clients x {args.per_client} pages with pictures: errors | "
          f"{len(errors)} |")
    print(f"| ... page + pictures latency median / p95 | {pct(latencies, 50):.0f} / "
          f"{pct(latencies, 95):.0f} ms |")
    print(f"| ... throughput | {len(latencies) / wall:.1f} pages/s |")
    if errors:
        print("errors:", *sorted(set(errors))[:5], sep="\n  ")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
