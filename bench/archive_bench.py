"""Network archive figures: ingest rate, exact top-10 vs the station C kernel, bytes/window.

    python bench/archive_bench.py --rows 10000000 --bits 64 128 --threads 1 \\
        --work /tmp/archive-bench --json bench-archive.json

For each code width: writes signed update files (random codes, 50 stations, one-hour
recordings of 720 windows on a 5 s hop spread over a year), ingests them into a chDB
archive folder with `Archive.ingest` (signature check, dedupe query and insert
included), then times exact top-10 queries with and without a station + month filter
against `cvahash.kernel.hamming.knn` over the same codes in the same run (the filter as
the one contiguous row range a station store would hand the kernel), checks both give
the same distances, and measures bytes per window on disk (after merges) and the codec
choice for the code columns. Prints a 1B-window cluster projection from the measured
per-core scan rate. Random codes are the worst case for compression (trained codes are
correlated), so the bytes per window are an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from cvahash.archive.archive import Archive, code_table_ddl
from cvahash.kernel.hamming import active_isa, knn
from cvahash.update.format import (
    ROW_DTYPE,
    generate_keypair,
    load_private_key,
    pack_update,
    write_update,
)

STATIONS = 50
PER_RECORDING = 720  # one hour of 10 s windows on a 5 s hop
HOP = 5.0
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
YEAR = 365 * 86400.0
APRIL = (1_743_465_600.0, 1_746_057_600.0)  # 2025-04-01 .. 2025-05-01


def layout(rows: int):
    """Per station: recording start times spread over a year (station-major order)."""
    per_station = rows // STATIONS
    recs = max(1, per_station // PER_RECORDING)
    return per_station, recs


def make_updates(work: Path, key, rows: int, bits: int, per_file: int, seed: int):
    """Signed update files, station-major; returns (files, codes in archive sort order)."""
    rng = np.random.default_rng(seed)
    nbytes = (bits + 7) // 8
    per_station, recs = layout(rows)
    stations = [f"site-{i:03d}" for i in range(STATIONS)]
    files, all_codes, pending = [], [], []
    private = load_private_key(key)

    def flush():
        nonlocal pending
        if not pending:
            return
        codes = np.concatenate([p[0] for p in pending])
        recordings, fixed = [], []
        for _, p_rows, p_meta in pending:
            r = p_rows.copy()
            r["recording"] += len(recordings)  # recording numbers are per file
            recordings += p_meta
            fixed.append(r)
        path = work / f"u{bits}-{len(files):03d}.cvaup"
        write_update(path, pack_update(private_key=private, fingerprint=f"bench-{bits}",
                                       bits=bits, codes=codes, rows=np.concatenate(fixed),
                                       recordings=recordings, clocks=["gps"],
                                       created="2025-06-01T00:00:00+00:00"))
        files.append(path)
        pending = []

    in_file = 0
    for s in stations:
        n = per_station
        codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        all_codes.append(codes)
        rec_idx = np.minimum(np.arange(n) // PER_RECORDING, recs - 1)
        j = np.arange(n) - rec_idx * PER_RECORDING
        starts = T0 + np.arange(recs) * (YEAR / recs)
        r = np.zeros(n, ROW_DTYPE)
        r["recording"] = rec_idx
        r["offset_s"] = j * HOP
        r["length_s"] = 10.0
        r["capture_utc"] = starts[rec_idx] + j * HOP
        meta = [{"path": f"{s}/{k:05d}.flac", "station": s, "content_hash": f"{s}-{k}",
                 "start_utc": float(starts[k]), "sample_rate": 48000,
                 "duration_s": PER_RECORDING * HOP} for k in range(recs)]
        pending.append((codes, r, meta))
        in_file += n
        if in_file >= per_file:
            flush()
            in_file = 0
    flush()
    return files, np.ascontiguousarray(np.concatenate(all_codes)), per_station


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), out


def codec_trial(archive: Archive, codes: np.ndarray, bits: int, threads: int) -> dict:
    """Bytes and top-10 time of the code columns under NONE, LZ4 and ZSTD(1) (2M rows)."""
    from cvahash.archive.archive import code_words

    n = min(len(codes), 2_000_000)
    words = code_words(codes[:n], bits)
    import pyarrow as pa

    out = {}
    for codec in ("NONE", "LZ4", "ZSTD(1)"):
        table = "codec_trial"
        archive.engine.command(f"DROP TABLE IF EXISTS {table}")
        # wide parts whatever the size, so system.columns reports per-column bytes
        archive.engine.command(code_table_ddl(table, bits, codec=codec, partition=False)
                               + " SETTINGS min_bytes_for_wide_part = 0")
        data = {"station": pa.array(["s"] * n).dictionary_encode(),
                "capture": pa.array(np.arange(n, dtype=np.int64) * 5_000_000,
                                    pa.int64()).cast(pa.timestamp("us", "UTC")),
                "recording": pa.array(np.arange(n, dtype=np.uint64) // 720),
                "offset_us": pa.array(np.arange(n, dtype=np.int64) % 720 * 5_000_000),
                "length_s": pa.array(np.full(n, 10.0)),
                "clock": pa.array(["gps"] * n).dictionary_encode(),
                "batch": pa.array(np.ones(n, np.uint32)),
                "seq": pa.array(np.arange(n, dtype=np.uint32))}
        for i in range(words.shape[1]):
            data[f"c{i}"] = pa.array(words[:, i])
        archive.engine.insert(table, pa.table(data))
        archive.engine.command(f"OPTIMIZE TABLE {table} FINAL")
        code_bytes = archive.engine.query(
            "SELECT sum(data_compressed_bytes) AS b FROM system.columns WHERE table = "
            "{t:String} AND database = currentDatabase() AND name LIKE 'c%' AND name != "
            "'clock' AND name != 'capture'", {"t": table}).to_pylist()[0]["b"]
        q = " + ".join(f"bitCount(bitXor(c{i}, {int(words[0, i])}))"
                       for i in range(words.shape[1]))
        med, _, _ = timed(lambda q=q, table=table: archive.engine.query(
            f"SELECT {q} AS d FROM {table} ORDER BY d LIMIT 10 "
            f"SETTINGS max_threads = {threads}"), 3)
        out[codec] = {"code_bytes_per_window": code_bytes / n, "top10_ms": med * 1e3}
    archive.engine.command("DROP TABLE IF EXISTS codec_trial")
    return out


def run_width(work: Path, key, pub, rows: int, bits: int, threads: int, repeat: int,
              per_file: int) -> dict:
    print(f"--- {rows:,} windows x {bits} bits", flush=True)
    t = time.perf_counter()
    files, codes, per_station = make_updates(work, key, rows, bits, per_file, seed=bits)
    print(f"wrote {len(files)} update files in {time.perf_counter() - t:.1f} s "
          f"({sum(f.stat().st_size for f in files) / 1e6:.0f} MB)", flush=True)
    folder = work / f"archive-{bits}"
    shutil.rmtree(folder, ignore_errors=True)
    result: dict = {"bits": bits, "rows": len(codes), "update_files": len(files)}
    with Archive.open(folder) as archive:
        archive.engine.command(f"SET max_threads = {threads}")
        archive.engine.command(f"SET max_insert_threads = {threads}")
        t, cpu = time.perf_counter(), time.process_time()
        archive.ingest(files, [pub])
        took, cpu = time.perf_counter() - t, time.process_time() - cpu
        result["ingest_s"] = took
        result["ingest_windows_per_s"] = len(codes) / took
        # CPU seconds of this process (Python and chDB's threads): what the ingest costs
        # whatever else the machine runs
        result["ingest_cpu_s"] = cpu
        result["ingest_windows_per_cpu_s"] = len(codes) / cpu
        print(f"ingest: {len(codes) / took:,.0f} windows/s ({took:.1f} s wall, {cpu:.1f} s "
              f"CPU: {len(codes) / cpu:,.0f} windows per CPU-second)", flush=True)
        for f in files:
            f.unlink()
        view = archive.view(f"bench-{bits}")
        bytes_before = archive.bytes_on_disk(view.table)
        archive.engine.command(f"OPTIMIZE TABLE {view.table} FINAL")
        bytes_after = archive.bytes_on_disk(view.table)
        result["bytes_per_window_after_ingest"] = bytes_before / len(codes)
        result["bytes_per_window_merged"] = bytes_after / len(codes)
        result["bytes_total_archive"] = archive.bytes_on_disk()
        print(f"bytes/window: {bytes_before / len(codes):.2f} after ingest, "
              f"{bytes_after / len(codes):.2f} merged", flush=True)

        rng = np.random.default_rng(1)
        queries = rng.integers(0, 256, (repeat, (bits + 7) // 8), dtype=np.uint8)
        station = "site-007"
        first = 7 * per_station
        # the station's April rows: one contiguous range of the station-major array
        cap = archive.engine.query(
            f"SELECT count() AS n FROM {view.table} WHERE station = {{s:String}} AND capture "
            "< fromUnixTimestamp64Micro({t:Int64}, 'UTC')",
            {"s": station, "t": int(APRIL[0] * 1e6)}).to_pylist()[0]["n"]
        inside = archive.engine.query(
            f"SELECT count() AS n FROM {view.table} WHERE station = {{s:String}} AND capture "
            ">= fromUnixTimestamp64Micro({a:Int64}, 'UTC') AND capture < "
            "fromUnixTimestamp64Micro({b:Int64}, 'UTC')",
            {"s": station, "a": int(APRIL[0] * 1e6), "b": int(APRIL[1] * 1e6)}
        ).to_pylist()[0]["n"]
        ranges = np.array([[first + cap, first + cap + inside]], np.int64)
        result["filtered_rows"] = int(inside)
        for name, filt, allowed in (("unfiltered", {}, None),
                                    ("station+month", {"station": station, "since": APRIL[0],
                                                       "until": APRIL[1]}, ranges)):
            arch_t, kern_t = [], []
            for q in queries:
                med, _, got = timed(lambda q=q, filt=filt: view.search_rows(q, 10, **filt), 1)
                arch_t.append(med)
                kmed, _, (kd, _) = timed(lambda q=q, allowed=allowed: knn(
                    q, codes, 10, threads=threads, allowed=allowed), 1)
                kern_t.append(kmed)
                assert [r["distance"] for r in got[0]] == kd[0].tolist(), "archive != kernel"
            a, k = statistics.median(arch_t), statistics.median(kern_t)
            result[f"top10_{name}_ms"] = a * 1e3
            result[f"kernel_{name}_ms"] = k * 1e3
            result[f"ratio_{name}"] = a / k
            print(f"top-10 {name}: archive {a * 1e3:.1f} ms, kernel {k * 1e3:.2f} ms, "
                  f"ratio {a / k:.1f}x (median of {len(queries)})", flush=True)
        result["scan_rows_per_s_per_core"] = len(codes) / (
            result["top10_unfiltered_ms"] / 1e3) / threads
        result["codecs"] = codec_trial(archive, codes, bits, threads)
        print("codecs:", json.dumps(result["codecs"]), flush=True)
    return result


def projection(results: list[dict]) -> list[dict]:
    """1B windows on N nodes x 16 cores from the measured per-core scan rate (unfiltered
    exact top-10, each node scans its shard, the initiator merges N x 10 rows)."""
    out = []
    for r in results:
        rate = r["scan_rows_per_s_per_core"]
        for nodes in (1, 4, 16):
            seconds = 1e9 / (nodes * 16 * rate)
            out.append({"bits": r["bits"], "nodes": nodes, "cores_per_node": 16,
                        "top10_s": seconds,
                        "disk_gb_per_replica": 1e9 * r["bytes_per_window_merged"] / 1e9})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5, help="queries per configuration")
    ap.add_argument("--per-file", type=int, default=1_000_000, help="windows per update")
    ap.add_argument("--work", default="/tmp/cvahash-archive-bench")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key, pub = generate_keypair(work / "bench.key")
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, kernel "
          f"{active_isa()}, load average {load[0]:.2f} at start, {args.threads} thread(s)")
    results = [run_width(work, key, pub, args.rows, b, args.threads, args.repeat,
                         args.per_file) for b in args.bits]
    proj = projection(results)
    for p in proj:
        print(f"1B x {p['bits']} bits on {p['nodes']} node(s) x 16 cores: top-10 "
              f"~{p['top10_s'] * 1e3:.0f} ms, {p['disk_gb_per_replica']:.1f} GB per replica")
    doc = {"machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "kernel_isa": active_isa(),
                       "load_start": load, "load_end": os.getloadavg(),
                       "threads": args.threads},
           "results": results, "projection": proj}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
