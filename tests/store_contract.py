"""The storage contract (cvahash.store.interface.CodeStorage) as tests, for any
implementation.

``tests/test_store_contract.py`` runs every ``check_*`` function here against every
implementation through a factory ``make(directory, bits, fingerprint) -> store`` that
returns an open, empty, writable store. Answers are compared with independent numpy
references (tests/oracle.py), never with another implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracle import knn_reference

from cvahash.errors import CvahashError, FingerprintMismatch
from cvahash.store.interface import CodeStorage
from cvahash.store.records import Recording, Segment, Window

BITS = 64
FP = "contract" * 4
BASE = 1_700_000_000.0
HOP = 5.0


def codes_for(rows, nbytes=BITS // 8) -> np.ndarray:
    rng = np.random.default_rng(12345)
    table = rng.integers(0, 256, (max(rows) + 1 if len(rows) else 0, nbytes), np.uint8)
    return table[list(rows)]


def segment(i: int, first: int, n: int, station: str) -> Segment:
    rec = Recording(path=f"rec{i}.wav", station=station, start_utc=BASE + 1000 * i,
                    sample_rate=48000, duration_s=HOP * n, content_hash=f"h{i}")
    return Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                   capture_start_utc=BASE + 1000 * i, hop_s=HOP, n_rows=n,
                   clock_source="gps")


def filled(make, tmp_path, sizes=(30, 12, 25)):
    """A store holding recordings of the given sizes, stations st0/st1 alternating."""
    store = make(tmp_path / "store", BITS, FP)
    n = sum(sizes)
    codes = codes_for(range(n))
    first = 0
    for i, size in enumerate(sizes):
        store.append(codes[first:first + size], segment(i, first, size, f"st{i % 2}"))
        first += size
    store.flush()
    return store, codes


def window_time(sizes, row):
    first = 0
    for i, size in enumerate(sizes):
        if row < first + size:
            return i, BASE + 1000 * i + HOP * (row - first)
        first += size
    raise AssertionError(row)


def check_is_a_code_storage(make, tmp_path):
    store = make(tmp_path / "s", BITS, FP)
    try:
        assert isinstance(store, CodeStorage)
        assert (store.bits, store.fingerprint, len(store)) == (BITS, FP, 0)
        assert store.search(np.zeros((2, BITS // 8), np.uint8), 3) == [[], []]
    finally:
        store.close()


def check_search_matches_reference(make, tmp_path):
    sizes = (30, 12, 25)
    store, codes = filled(make, tmp_path, sizes)
    try:
        assert len(store) == sum(sizes)
        q = codes_for(range(sum(sizes) + 4))[-4:] ^ np.uint8(3)
        for k in (1, 5, 100):
            hits = store.search(q, k)
            d_ref, i_ref = knn_reference(q, codes, k)
            assert [[h.distance for h in hs] for hs in hits] == d_ref.tolist()
            for hs, rows in zip(hits, i_ref.tolist(), strict=True):
                for h, row in zip(hs, rows, strict=True):
                    rec, cap = window_time(sizes, row)
                    assert h.recording.path == f"rec{rec}.wav"
                    assert abs(h.capture_utc - cap) < 1e-4
        assert store.search_one(q[0], 5) == store.search(q[:1], 5)[0]
    finally:
        store.close()


def check_filters_match_reference(make, tmp_path):
    sizes = (30, 12, 25)
    store, codes = filled(make, tmp_path, sizes)
    try:
        q = codes[[3, 40]]
        times = np.array([window_time(sizes, r)[1] for r in range(len(codes))])
        recs = np.array([window_time(sizes, r)[0] for r in range(len(codes))])
        since, until = BASE + 50.0, BASE + 1000 * 2 + 40.0
        cases = [({"since": since}, times >= since),
                 ({"until": until}, times < until),
                 ({"since": since, "until": until}, (times >= since) & (times < until)),
                 ({"station": "st1"}, recs % 2 == 1),
                 ({"station": ["st0", "st1"]}, np.ones(len(codes), bool))]
        for filters, mask in cases:
            d_ref, i_ref = knn_reference(q, codes, 7, allowed=mask)
            hits = store.search(q, 7, **filters)
            assert [[h.distance for h in hs] for hs in hits] == d_ref.tolist(), filters
            got = [[h.capture_utc for h in hs] for hs in hits]
            want = [[times[r] for r in rows] for rows in i_ref.tolist()]
            np.testing.assert_allclose(np.array(got, float).ravel(),
                                       np.array(want, float).ravel(), atol=1e-4)
    finally:
        store.close()


def check_tags_apply_once(make, tmp_path):
    store = make(tmp_path / "s", BITS, FP)
    try:
        codes = codes_for(range(10))
        assert not store.has_tag("batch-1")
        store.append(codes, segment(0, 0, 10, "a"), tag="batch-1")
        assert store.has_tag("batch-1") and len(store) == 10
        store.append(codes, segment(0, 0, 10, "a"), tag="batch-1")
        assert len(store) == 10
        assert store.has_recording("rec0.wav", "h0")
        assert not store.has_recording("rec0.wav", "other")
    finally:
        store.close()


def check_other_bundles_are_refused(make, tmp_path):
    store = make(tmp_path / "s", BITS, FP)
    try:
        with pytest.raises(FingerprintMismatch):
            store.append(codes_for(range(3), 16), segment(0, 0, 3, "a"))
        with pytest.raises(FingerprintMismatch):
            store.search(np.zeros((1, 8), np.uint8), 3, fingerprint="another")
        with pytest.raises(CvahashError):
            store.append(codes_for(range(3)), [Window(
                recording=Recording(path="x"), offset_s=0.0, length_s=1.0,
                capture_utc=BASE)])                 # 3 codes, 1 window
        assert len(store) == 0
    finally:
        store.close()


def check_stats_describe_the_content(make, tmp_path):
    sizes = (30, 12, 25)
    store, _ = filled(make, tmp_path, sizes)
    try:
        s = store.stats()
        assert s["rows"] == 67 and s["recordings"] == 3
        assert (s["bits"], s["fingerprint"]) == (BITS, FP)
        assert s["stations"] == {"st0": 55, "st1": 12}
        assert s["first_capture_utc"] == BASE
        assert abs(s["last_capture_end_utc"] - (BASE + 2000 + HOP * 24 + 10.0)) < 1e-6
        assert "67 windows of 64-bit codes" in store.describe()
    finally:
        store.close()


CHECKS = [check_is_a_code_storage, check_search_matches_reference,
          check_filters_match_reference, check_tags_apply_once,
          check_other_bundles_are_refused, check_stats_describe_the_content]
