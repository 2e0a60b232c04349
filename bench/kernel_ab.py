"""A/B of the C Hamming kernel: a git revision against the working tree, with faiss.

Builds csrc/ as it is at ``--base`` (default HEAD) and as it is in the working tree into
two throw-away cffi modules, then times ``cvh_knn`` of both and faiss
``IndexBinaryFlat`` on the same random codes, interleaved (the order rotates every
repeat, so cache warmth and the machine's drift hit them alike); medians. Every
method's distances (and both kernels' ids) are checked equal first.

    .venv/bin/python bench/kernel_ab.py                       # 1M x 64 bits, 1 query
    .venv/bin/python bench/kernel_ab.py --base main --n 10000000 --nq 64 --k 100

Results: docs/benchmarks/search.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("hamming.c", "hamming.h", "hamming_simd.h")


def build(name: str, src: Path, out: Path):
    sys.path.insert(0, str(ROOT / "csrc"))
    from build_hamming import CDEF
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, '#include "hamming.h"', sources=[str(src / "hamming.c")],
                   include_dirs=[str(src)], libraries=["pthread"],
                   extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function"])
    ffi.compile(tmpdir=str(out))
    sys.path.insert(0, str(out))
    return importlib.import_module(name)


def knn_fn(mod, codes, queries, k, threads):
    ffi, lib = mod.ffi, mod.lib
    isa = lib.cvh_best_isa()
    n, nbytes = codes.shape
    nq = len(queries)
    d = np.empty((nq, k), np.int32)
    i = np.empty((nq, k), np.int64)
    cq, cc = ffi.from_buffer(queries), ffi.from_buffer(codes)
    pd = ffi.cast("int32_t *", ffi.from_buffer(d))
    pi = ffi.cast("int64_t *", ffi.from_buffer(i))

    def run():
        rc = lib.cvh_knn(isa, cq, nq, cc, n, nbytes, k, threads, 0, ffi.NULL, ffi.NULL, 0, pd, pi)
        if rc != 0:
            raise RuntimeError(f"cvh_knn returned {rc}")
        return d, i

    return run, ffi.string(lib.cvh_isa_name(isa)).decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the baseline kernel")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--nq", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=61)
    args = ap.parse_args()
    import faiss

    work = Path(tempfile.mkdtemp(prefix="kernel-ab-"))
    base_src = work / "base"
    base_src.mkdir()
    for f in SOURCES:
        text = subprocess.run(["git", "show", f"{args.base}:csrc/{f}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (base_src / f).write_text(text)
    tag = str(os.getpid())
    base = build(f"_kab_base_{tag}", base_src, work / "mods")
    new = build(f"_kab_new_{tag}", ROOT / "csrc", work / "mods")

    rng = np.random.default_rng(0)
    nbytes = args.bits // 8
    codes = rng.integers(0, 256, (args.n, nbytes), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.nq, nbytes), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(args.bits)
    index.add(codes)
    faiss.omp_set_num_threads(args.threads)
    fns = {}
    fns["base"], isa = knn_fn(base, codes, queries, args.k, args.threads)
    fns["new"], _ = knn_fn(new, codes, queries, args.k, args.threads)

    def faiss_with(threads):
        def run():
            faiss.omp_set_num_threads(threads)
            return index.search(queries, args.k)
        return run

    fns["faiss"] = faiss_with(args.threads)
    if args.threads != 1:
        # OpenMP threads spin and yield badly on a loaded machine: faiss on one thread
        # is often faster there, and the fairer (harder) reference.
        fns["faiss-1t"] = faiss_with(1)

    (bd, bi), (nd, ni) = [tuple(a.copy() for a in fns[m]()) for m in ("base", "new")]
    fd, _ = fns["faiss"]()
    assert (bd == nd).all() and (bi == ni).all() and (fd == nd).all(), "results differ"

    names = list(fns)
    times: dict[str, list[float]] = {m: [] for m in names}
    for r in range(args.repeats):
        for m in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[m]()
            times[m].append(time.perf_counter() - t0)
    med = {m: 1e3 * float(np.median(t)) for m, t in times.items()}
    best_faiss = min(v for m, v in med.items() if m.startswith("faiss"))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {isa}, load average "
          f"{os.getloadavg()[0]:.1f}, base = {args.base}")
    print(f"N={args.n} bits={args.bits} nq={args.nq} k={args.k} threads={args.threads}: "
          + ", ".join(f"{m} {v:.3f} ms" for m, v in med.items())
          + f"; new/base {med['new'] / med['base']:.3f}; x faiss (same threads): base "
          f"{med['base'] / med['faiss']:.3f}, new {med['new'] / med['faiss']:.3f}; x faiss (its "
          f"faster thread count): base {med['base'] / best_faiss:.3f}, new "
          f"{med['new'] / best_faiss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
