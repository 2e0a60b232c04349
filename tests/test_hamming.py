"""cvahash.kernel.hamming: every kernel this CPU has, against serial, against numpy
(tests/oracle.py).

Codes are random with planted near-duplicates of the queries and many exact ties, so
the (distance, id) order and the top-k threshold are exercised at every width.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import hamming_matrix, knn_reference

from cvahash.errors import InvalidArgument, InvalidCodes
from cvahash.kernel import hamming

ISAS = hamming.available_isas()
WIDTHS = [1, 3, 8, 9, 16, 32, 64, 100]


def make_codes(rng, n, nbytes, queries=None, dup_every=7):
    """Random codes with planted exact and near duplicates (ties at small distances)."""
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    if n and queries is not None:
        for j, row in enumerate(range(0, n, dup_every)):
            q = queries[j % len(queries)]
            flipped = np.unpackbits(q.copy())
            nflip = j % 4  # 0..3 bits away: many rows share each small distance
            if nflip:
                pos = rng.choice(flipped.size, size=min(nflip, flipped.size), replace=False)
                flipped[pos] ^= 1
            codes[row] = np.packbits(flipped)[:nbytes]
    return codes


def ranges_to_mask(ranges, n):
    mask = np.zeros(n, dtype=bool)
    for a, b in ranges:
        mask[a:b] = True
    return mask


def make_allowed(kind, rng, n):
    """(allowed argument, equivalent boolean mask for the reference)."""
    if kind is None:
        return None, None
    if kind == "mask":
        mask = rng.random(n) < 0.6
        return mask, mask
    cuts = np.sort(rng.choice(n + 1, size=min(6, n + 1), replace=False)) if n else np.array([0])
    ranges = np.array([[cuts[i], cuts[i + 1]] for i in range(0, len(cuts) - 1, 2)], dtype=np.int64)
    ranges = ranges.reshape(-1, 2)
    return ranges, ranges_to_mask(ranges, n)


def assert_same(got, want):
    gd, gi = got
    wd, wi = want
    assert gd.dtype == np.int32 and gi.dtype == np.int64
    assert gd.shape == wd.shape and gi.shape == wi.shape
    np.testing.assert_array_equal(gd, wd)
    np.testing.assert_array_equal(gi, wi)


def test_serial_is_always_there_and_active_is_available():
    assert ISAS[0] == "serial"
    assert hamming.active_isa() in ISAS


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nbytes", WIDTHS + [2, 7, 15, 17, 31, 33, 63, 65, 128, 1024])
def test_distances_match_numpy(isa, nbytes):
    rng = np.random.default_rng(nbytes)
    for n in (1, 15, 17, 257, 1000):  # tails after the 8/16-row vector steps
        q = rng.integers(0, 256, size=(1, nbytes), dtype=np.uint8)
        codes = make_codes(rng, n, nbytes, q)
        codes[-1] = ~q[0]  # the maximum distance, 8 * nbytes
        np.testing.assert_array_equal(
            hamming._distances_with(isa, q, codes), hamming_matrix(q, codes)[0]
        )


@pytest.mark.parametrize("nbytes", WIDTHS)
@pytest.mark.parametrize("allowed_kind", [None, "mask", "ranges"])
def test_knn_every_isa_matches_reference(nbytes, allowed_kind):
    rng = np.random.default_rng(100 + nbytes)
    n = 3000
    queries = rng.integers(0, 256, size=(3, nbytes), dtype=np.uint8)
    codes = make_codes(rng, n, nbytes, queries)
    allowed, mask = make_allowed(allowed_kind, rng, n)
    for k in (1, 10, 1000, n + 5):
        want = knn_reference(queries, codes, k, allowed=mask)
        for isa in ISAS:
            for threads in (1, 2):
                got = hamming._knn_with(isa, queries, codes, k, threads=threads, allowed=allowed)
                assert_same(got, want)
                got1 = hamming._knn_with(isa, queries[:1], codes, k, threads=threads,
                                         allowed=allowed)
                assert_same(got1, (want[0][:1], want[1][:1]))


@pytest.mark.parametrize("nbytes", [8, 32])
@pytest.mark.parametrize("allowed_kind", [None, "ranges"])
def test_knn_100k_rows(nbytes, allowed_kind):
    rng = np.random.default_rng(7)
    n = 100_000
    queries = rng.integers(0, 256, size=(2, nbytes), dtype=np.uint8)
    codes = make_codes(rng, n, nbytes, queries, dup_every=101)
    allowed, mask = make_allowed(allowed_kind, rng, n)
    for k in (10, 1000):
        want = knn_reference(queries, codes, k, allowed=mask)
        for isa in ISAS:
            for threads in (1, 2):
                assert_same(
                    hamming._knn_with(isa, queries, codes, k, threads=threads, allowed=allowed),
                    want
                )


def test_many_queries_span_groups_and_tiles():
    # 70 queries (> one group of 64) over 20k rows of 16 bytes (several tiles).
    rng = np.random.default_rng(3)
    queries = rng.integers(0, 256, size=(70, 16), dtype=np.uint8)
    codes = make_codes(rng, 20_000, 16, queries, dup_every=3)
    want = knn_reference(queries, codes, 5)
    for isa in ISAS:
        for threads in (1, 2, 3):
            assert_same(hamming._knn_with(isa, queries, codes, 5, threads=threads), want)


def test_all_identical_rows_tie_by_id():
    codes = np.zeros((5000, 8), dtype=np.uint8)
    q = np.zeros((1, 8), dtype=np.uint8)
    for isa in ISAS:
        for threads in (1, 2, 4):
            d, i = hamming._knn_with(isa, q, codes, 10, threads=threads)
            np.testing.assert_array_equal(i[0], np.arange(10))
            np.testing.assert_array_equal(d[0], np.zeros(10))


def test_same_result_for_every_thread_count():
    rng = np.random.default_rng(11)
    queries = rng.integers(0, 256, size=(4, 8), dtype=np.uint8)
    codes = make_codes(rng, 50_000, 8, queries, dup_every=5)
    first = hamming.knn(queries, codes, 50, threads=1)
    for threads in (0, 2, 3, 8):
        assert_same(hamming.knn(queries, codes, 50, threads=threads), first)


def test_empty_and_small_inputs():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, size=(2, 8), dtype=np.uint8)
    empty = np.zeros((0, 8), dtype=np.uint8)
    d, i = hamming.knn(q, empty, 10)
    assert d.shape == (2, 0) and i.shape == (2, 0) and d.dtype == np.int32 and i.dtype == np.int64
    codes = make_codes(rng, 3, 8, q)
    assert_same(hamming.knn(q, codes, 10), knn_reference(q, codes, 10))
    none = np.zeros(3, dtype=bool)
    assert hamming.knn(q, codes, 10, allowed=none)[0].shape == (2, 0)
    no_ranges = np.zeros((0, 2), dtype=np.int64)
    assert hamming.knn(q, codes, 10, allowed=no_ranges)[0].shape == (2, 0)
    d, i = hamming.knn(q[0], codes, 2)  # one query as a 1-D array
    assert d.shape == (1, 2)
    d, i = hamming.knn(np.zeros((0, 8), dtype=np.uint8), codes, 2)
    assert d.shape == (0, 2)


@pytest.mark.parametrize("nbytes", [8, 16])
@pytest.mark.parametrize("allowed_kind", [None, "mask", "ranges"])
def test_one_query_marking_path_matches_reference(nbytes, allowed_kind):
    """One query at 8/16 bytes takes the marking scan (AVX-512): a row count that is
    not a multiple of the span or of a vector, ranges cutting spans, and radii that
    mark almost nothing or almost everything."""
    rng = np.random.default_rng(300 + nbytes)
    n = 70_003
    q = rng.integers(0, 256, size=(1, nbytes), dtype=np.uint8)
    codes = make_codes(rng, n, nbytes, q, dup_every=997)
    allowed, mask = make_allowed(allowed_kind, rng, n)
    dist = hamming_matrix(q, codes)[0]
    rows = np.arange(n) if mask is None else np.flatnonzero(mask)
    for k in (1, 10, 100, 5000):
        want = knn_reference(q, codes, k, allowed=mask)
        for isa in ISAS:
            for threads in (1, 2):
                got = hamming._knn_with(isa, q, codes, k, threads=threads, allowed=allowed)
                assert_same(got, want)
    for radius in (3, 8 * nbytes // 2, 8 * nbytes):
        sel = rows[dist[rows] <= radius]
        order = np.lexsort((sel, dist[sel]))
        want = (dist[sel][order].astype(np.int32), sel[order].astype(np.int64))
        for isa in ISAS:
            got = hamming._within_with(isa, q, codes, radius, threads=2, allowed=allowed)
            assert_same(got, want)


@pytest.mark.parametrize("nbytes", [1, 8, 9, 32, 100])
def test_within_every_isa_matches_reference(nbytes):
    rng = np.random.default_rng(200 + nbytes)
    n = 20_000
    q = rng.integers(0, 256, size=(1, nbytes), dtype=np.uint8)
    codes = make_codes(rng, n, nbytes, q, dup_every=5)
    dist = hamming_matrix(q, codes)[0]
    for allowed_kind in (None, "mask", "ranges"):
        allowed, mask = make_allowed(allowed_kind, rng, n)
        rows = np.arange(n) if mask is None else np.flatnonzero(mask)
        for radius in (0, 2, 8 * nbytes // 2, 8 * nbytes, 10_000):
            sel = rows[dist[rows] <= radius]
            order = np.lexsort((sel, dist[sel]))
            want = (dist[sel][order].astype(np.int32), sel[order].astype(np.int64))
            for isa in ISAS:
                for threads in (1, 2):
                    got = hamming._within_with(
                        isa, q, codes, radius, threads=threads, allowed=allowed
                    )
                    assert_same(got, want)


def test_within_public_and_empty():
    codes = np.zeros((10, 4), dtype=np.uint8)
    q = np.full(4, 255, dtype=np.uint8)
    d, i = hamming.within(q, codes, 31)
    assert d.shape == (0,) and i.shape == (0,) and d.dtype == np.int32 and i.dtype == np.int64
    d, i = hamming.within(q, codes, 32)
    np.testing.assert_array_equal(i, np.arange(10))
    np.testing.assert_array_equal(d, np.full(10, 32))
    assert hamming.within(q, codes[:0], 5)[0].shape == (0,)


def test_memmap_codes(tmp_path):
    rng = np.random.default_rng(9)
    q = rng.integers(0, 256, size=(3, 16), dtype=np.uint8)
    codes = make_codes(rng, 10_000, 16, q)
    path = tmp_path / "codes.u8"
    codes.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=codes.shape)
    assert_same(hamming.knn(q, mm, 20), knn_reference(q, codes, 20))
    d, i = hamming.within(q[0], mm, 3)
    assert np.all(d <= 3) and np.all(hamming_matrix(q[:1], codes)[0][i] == d)


def test_concurrent_searches_from_python_threads():
    # The GIL is released during the C call; results must not mix between callers.
    rng = np.random.default_rng(13)
    codes = rng.integers(0, 256, size=(60_000, 32), dtype=np.uint8)
    queries = [rng.integers(0, 256, size=(3, 32), dtype=np.uint8) for _ in range(8)]
    want = [knn_reference(q, codes, 25) for q in queries]
    results = [None] * len(queries)
    errors = []

    def worker(j):
        try:
            for _ in range(5):
                results[j] = hamming.knn(queries[j], codes, 25, threads=2)
                assert_same(results[j], want[j])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, exp in zip(results, want, strict=True):
        assert_same(got, exp)


# --------------------------------------------------------------- input checks


def test_bad_inputs_raise_clear_value_errors():
    codes = np.zeros((100, 8), dtype=np.uint8)
    q = np.zeros((1, 8), dtype=np.uint8)
    cases = [
        (lambda: hamming.knn(q, codes.astype(np.int8), 5), InvalidCodes, "uint8"),
        (lambda: hamming.knn(q.astype(np.uint16), codes, 5), InvalidCodes, "uint8"),
        (lambda: hamming.knn(q, codes.tolist(), 5), InvalidCodes, "numpy"),
        (lambda: hamming.knn(q, np.zeros((100, 16), np.uint8)[:, ::2], 5), InvalidCodes,
         "contiguous"),
        (lambda: hamming.knn(np.zeros((2, 16), np.uint8)[:, ::2], codes, 5), InvalidCodes,
         "contiguous"),
        (lambda: hamming.knn(np.zeros((1, 4), np.uint8), codes, 5), InvalidCodes, "wide"),
        (lambda: hamming.knn(q, np.zeros((10, 0), np.uint8), 5), InvalidCodes, "width"),
        (lambda: hamming.knn(q, np.zeros((10, 1025), np.uint8), 5), InvalidCodes, "width"),
        (lambda: hamming.knn(q, np.zeros(800, np.uint8), 5), InvalidCodes, "2-D"),
        (lambda: hamming.knn(q, codes, 0), InvalidArgument, "k must be >= 1"),
        (lambda: hamming.knn(q, codes, -3), InvalidArgument, "k must be >= 1"),
        (lambda: hamming.knn(q, codes, 2.5), InvalidArgument, "integer"),
        (lambda: hamming.knn(q, codes, True), InvalidArgument, "integer"),
        (lambda: hamming.knn(q, codes, 5, threads=-1), InvalidArgument, "threads"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.ones(99, bool)), InvalidArgument,
         "one entry per code row"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.ones(100, np.float32)), InvalidArgument,
         "allowed"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.array([[0, 101]])), InvalidArgument,
         "within"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.array([[-1, 5]])), InvalidArgument,
         "within"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.array([[5, 3]])), InvalidArgument,
         "start <= end"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.array([[0, 10], [5, 20]])),
         InvalidArgument, "non-overlapping"),
        (lambda: hamming.knn(q, codes, 5, allowed=np.array([0, 10])), InvalidArgument,
         "(r, 2)"),
        (lambda: hamming.within(q, codes, -1), InvalidArgument, "radius must be >= 0"),
        (lambda: hamming.within(np.zeros((2, 8), np.uint8), codes, 3), InvalidCodes,
         "one query"),
    ]
    for call, exc, text in cases:
        with pytest.raises(exc, match=None) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert text in str(info.value), (text, str(info.value))


def test_unknown_or_unavailable_kernel_is_an_error():
    with pytest.raises(hamming.KernelUnavailable, match="unknown"):
        hamming._knn_with("sse9", np.zeros((1, 8), np.uint8), np.zeros((4, 8), np.uint8), 1)
    missing = [name for name in ("avx2", "avx512", "neon") if name not in ISAS]
    for name in missing:
        with pytest.raises(hamming.KernelUnavailable, match="not supported"):
            hamming._knn_with(name, np.zeros((1, 8), np.uint8), np.zeros((4, 8), np.uint8), 1)


def _run_with_env(value):
    env = dict(os.environ, CVAHASH_SIMD=value)
    return subprocess.run(
        [sys.executable, "-c", "from cvahash.kernel import hamming; print(hamming.active_isa())"],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cvahash_simd_forces_a_kernel_once_at_import():
    for isa in ISAS:
        proc = _run_with_env(isa)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == isa
    for bad in ["bogus"] + [name for name in ("avx2", "avx512", "neon") if name not in ISAS]:
        proc = _run_with_env(bad)
        assert proc.returncode != 0
        assert "KernelUnavailable" in proc.stderr and "CVAHASH_SIMD" not in proc.stdout


# ---------------------------------------------------------- property tests


@st.composite
def search_cases(draw):
    nbytes = draw(st.integers(1, 40))
    n = draw(st.integers(0, 300))
    nq = draw(st.integers(1, 3))
    # few distinct rows: heavy ties
    palette = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(palette, nbytes), dtype=np.uint8)
    codes = base[rng.integers(0, palette, size=n)] if n else np.zeros((0, nbytes), np.uint8)
    codes = np.ascontiguousarray(codes)
    queries = np.ascontiguousarray(base[rng.integers(0, palette, size=nq)])
    k = draw(st.integers(1, 60))
    kind = draw(st.sampled_from([None, "mask", "ranges"]))
    allowed, mask = make_allowed(kind, rng, n)
    threads = draw(st.integers(1, 3))
    return queries, codes, k, allowed, mask, threads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_cases())
def test_property_knn_equals_reference_for_every_isa(case):
    queries, codes, k, allowed, mask, threads = case
    want = knn_reference(queries, codes, k, allowed=mask)
    for isa in ISAS:
        assert_same(hamming._knn_with(isa, queries, codes, k, threads=threads, allowed=allowed),
                    want)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_cases(), st.integers(0, 330))
def test_property_within_equals_reference_for_every_isa(case, radius):
    queries, codes, _, allowed, mask, threads = case
    q = queries[:1]
    dist = hamming_matrix(q, codes)[0]
    rows = np.arange(len(codes)) if mask is None else np.flatnonzero(mask)
    sel = rows[dist[rows] <= radius]
    order = np.lexsort((sel, dist[sel]))
    want = (dist[sel][order].astype(np.int32), sel[order].astype(np.int64))
    for isa in ISAS:
        assert_same(hamming._within_with(isa, q, codes, radius, threads=threads, allowed=allowed),
                    want)


@pytest.mark.parametrize("isa", hamming.available_isas())
def test_import_self_check_passes_for_every_kernel_here(isa):
    """The import-time check that guards kernels never run on a build machine."""
    assert hamming._agrees_with_serial(hamming._ISA_IDS[isa])
