"""Daemon benchmark: CPU cost per second of audio and memory over a long replay.

    .venv/bin/python bench/daemon_bench.py [--cache /var/tmp/cvahash-bench] [--minutes 60]

Runs `cvahash daemon --source file:REC --fast` with the full-size int8 audio graph
(random weights; built and cached by bench/runtime_bench.py's `build_full_bundle`),
10 s windows and a 5 s hop, on a recording of `--minutes` (cached too). While it runs,
samples the daemon's RSS every 0.5 s. Reports:

- CPU seconds (user + sys of the daemon process) per second of audio, as a share of one
  core: the issue's target is at most 5% of one core for 10 s windows, 5 s hop;
- steady RSS (median of the second half of the run) and growth (last quarter's median
  minus the second quarter's): no growth is the target for a one-hour replay.

Results: docs/benchmarks/daemon.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runtime_bench import build_full_bundle, build_recording


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def write_config(path: Path, bundle: Path, work: Path, threads: int) -> Path:
    path.write_text(f"""
[device]
name = "bench"
[runtime]
bundle = "{bundle}"
threads = {threads}
precision = "int8"
[windows]
window_s = 10.0
hop_s = 5.0
[store]
path = "{work / 'store'}"
commit_every_windows = 60
commit_every_s = 300
[retention]
enabled = false
[status]
path = "{work / 'status.json'}"
interval_s = 5
""")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/var/tmp/cvahash-bench")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    bundle = cache / "bundle-full-int8-64"  # the same cache as bench/runtime_bench.py
    if not (bundle / "manifest.json").exists():
        build_full_bundle(bundle, 64)
    rec = cache / f"recording-{args.minutes:g}min.wav"
    if not rec.exists():
        build_recording(rec, args.minutes)
    work = cache / "daemon-run"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir()
    cfg = write_config(work / "bench.toml", bundle, work, args.threads)

    cmd = [sys.executable, "-m", "cvahash", "daemon", "--config", str(cfg),
           "--source", f"file:{rec}", "--fast"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, last_cpu = [], 0.0
    while proc.poll() is None:
        r, c = rss_mb(proc.pid), cpu_s(proc.pid)
        if r is not None:
            samples.append((time.monotonic() - t0, r))
        if c is not None:
            last_cpu = c
        time.sleep(0.5)
    wall = time.monotonic() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return 1
    audio_s = args.minutes * 60
    status = json.loads((work / "status.json").read_text())
    rss = [r for _, r in samples]
    q = max(len(rss) // 4, 1)
    res = {
        "minutes": args.minutes, "threads": args.threads, "windows": status["windows_total"],
        "wall_s": round(wall, 1), "cpu_s": round(last_cpu, 1),
        "cpu_share_of_one_core": round(last_cpu / audio_s, 4),
        "cpu_ms_per_window": round(1e3 * last_cpu / max(status["windows_total"], 1), 1),
        "rss_steady_mb": round(statistics.median(rss[len(rss) // 2:]), 1) if rss else None,
        "rss_growth_mb": round(statistics.median(rss[-q:]) - statistics.median(rss[q:2 * q]), 1)
        if len(rss) >= 8 else None,
        "rss_peak_mb": round(max(rss), 1) if rss else None,
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(res, indent=1))
    print(f"\nCPU per second of audio: {100 * res['cpu_share_of_one_core']:.2f}% of one core "
          f"(target <= 5%); {res['cpu_ms_per_window']} ms CPU per window; steady RSS "
          f"{res['rss_steady_mb']} MB, growth {res['rss_growth_mb']} MB over the run")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
