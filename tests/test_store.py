"""Code store behaviour: appending, metadata, filters against a brute-force reference,
tags, retention, mismatches, the writer lock, and a reader racing a writer."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import hamming_matrix, knn_reference
from test_store_support import BASE, BITS, FP, check_rows, row_codes, windows_for

from cvahash.errors import FingerprintMismatch, InvalidArgument, InvalidCodes, StoreError
from cvahash.store.code_store import CodeStore, Recording, Segment, Window
from cvahash.store.metadata import first_at_or_after, segment_crc, segment_hashes


@pytest.fixture
def store(tmp_path):
    with CodeStore.create(tmp_path / "store", BITS, FP) as s:
        yield s


def test_create_open_and_header_facts(tmp_path):
    path = tmp_path / "s"
    s = CodeStore.create(path, 72, "abc123")
    assert (s.bits, s.nbytes, s.fingerprint, len(s), s.durable_rows) == (72, 9, "abc123", 0, 0)
    s.close()
    with CodeStore.open(path) as r:
        assert (r.bits, r.fingerprint, len(r)) == (72, "abc123", 0)
        assert r.search(np.zeros((1, 9), np.uint8), 5) == [[]]
    with pytest.raises(StoreError, match="already exists"):
        CodeStore.create(path, 64, "x")
    with pytest.raises(StoreError, match="not a code store"):
        CodeStore.open(tmp_path / "nowhere")
    # no half-made store is left behind by create
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_regular_windows_cost_one_segment(store):
    for first in range(0, 37, 5):          # a daemon appending a few windows at a time
        n = min(5, 37 - first)
        store.append(row_codes(range(first, first + n)), windows_for(first, n, per_window=True))
    assert store.stats()["segments"] == 1 and len(store) == 37
    store.append(row_codes(range(37, 100)), windows_for(37, 63, per_window=False))
    assert store.stats()["segments"] == 3      # recordings 1 and 2 (0 was 37 rows)
    check_rows(store)
    segs = list(store.iter_segments())
    assert [s.n_rows for s, _ in segs] == [37, 37, 26]
    np.testing.assert_array_equal(np.concatenate([c for _, c in segs]), row_codes(range(100)))


def test_irregular_windows_stay_exact(store):
    rec = Recording(path="odd.flac", station="x", content_hash="z")
    times = [0.0, 1.5, 2.0, 7.25, 7.5, 30.0]
    wins = [Window(recording=rec, offset_s=t, length_s=2.0, capture_utc=BASE + 2 * t,
                   clock_source="rtc") for t in times]
    store.append(row_codes(range(6)), wins)
    _, got = store.read(range(6))
    assert [w.offset_s for w in got] == times
    assert [w.capture_utc for w in got] == [BASE + 2 * t for t in times]


def test_batching_and_flush(tmp_path):
    path = tmp_path / "s"
    CodeStore.create(path, BITS, FP).close()
    with CodeStore.open(path, "a", commit_every_windows=10) as w, CodeStore.open(path) as r:
        w.append(row_codes(range(4)), windows_for(0, 4, False))
        assert (w.pending_rows, w.durable_rows, len(r)) == (4, 0, 0)
        w.append(row_codes(range(4, 12)), windows_for(4, 8, False))
        assert (w.pending_rows, w.durable_rows, len(r)) == (0, 12, 12)
        w.append(row_codes(range(12, 13)), windows_for(12, 1, False))
        assert w.flush() == 13 and len(r) == 13
        w.append(row_codes(range(13, 14)), windows_for(13, 1, False), commit=True)
        assert len(r) == 14
        w.append(row_codes(range(14, 15)), windows_for(14, 1, False))
    with CodeStore.open(path) as r:            # close() commits what was buffered
        assert len(r) == 15
        check_rows(r)


def test_tags_apply_once(store):
    got = store.append(row_codes(range(10)), windows_for(0, 10, False), tag="update-7")
    assert got == range(10) and store.has_tag("update-7") and not store.has_tag("other")
    again = store.append(row_codes(range(10)), windows_for(0, 10, False), tag="update-7")
    assert len(again) == 0 and len(store) == 10


def test_has_recording(store):
    store.append(row_codes(range(3)), windows_for(0, 3, False))
    assert store.has_recording("rec-00000.wav", "h0")
    assert not store.has_recording("rec-00000.wav", "other-hash")
    assert not store.has_recording("rec-00001.wav", "h1")


def test_mismatched_codes_are_refused_showing_both(store, tmp_path):
    with pytest.raises(FingerprintMismatch, match=r"f00dfeed.*not 'other'"):
        store.append(row_codes(range(1)), windows_for(0, 1, False), fingerprint="other")
    with pytest.raises(FingerprintMismatch, match=r"16 bytes per code.*64-bit"):
        store.append(row_codes(range(1), 16), windows_for(0, 1, False))
    with pytest.raises(FingerprintMismatch, match="64-bit"):
        store.search(row_codes(range(1), 4), 3)
    with pytest.raises(InvalidCodes, match="uint8"):
        store.append(np.zeros((1, 8), np.int32), windows_for(0, 1, False))
    with pytest.raises(InvalidArgument, match="describe 2 rows but 1"):
        store.append(row_codes(range(1)), windows_for(0, 2, False))
    with pytest.raises(FingerprintMismatch, match="not 'zzz'"):
        CodeStore.open(store.directory, fingerprint="zzz")
    with pytest.raises(FingerprintMismatch, match="not 128-bit"):
        CodeStore.open(store.directory, bits=128)
    s60 = CodeStore.create(tmp_path / "s60", 60, "fp")
    with pytest.raises(FingerprintMismatch, match="past bit 60"):
        s60.append(np.full((1, 8), 255, np.uint8), windows_for(0, 1, False))
    s60.close()
    with pytest.raises(InvalidArgument, match="naive datetime"):
        store.search(row_codes(range(1)), 3, since=datetime(2024, 1, 1))
    assert len(store) == 0


def test_one_writer_at_a_time(store):
    with pytest.raises(StoreError, match=r"another process \(pid \d+\) is writing"):
        CodeStore.open(store.directory, "a")
    with CodeStore.open(store.directory) as reader, \
            pytest.raises(StoreError, match="read-only"):
            reader.append(row_codes(range(1)), windows_for(0, 1, False))


def test_forget_and_compact(store):
    store.append(row_codes(range(111)), windows_for(0, 111, False))
    with CodeStore.open(store.directory) as reader:
        assert store.forget("rec-00001.wav") == 37
        assert len(store) == 74 and len(reader) == 74 and store.durable_rows == 111
        assert not store.has_recording("rec-00001.wav", "h1")
        _, rows = reader.search_rows(row_codes([40]), 200)
        assert not np.isin(rows, np.arange(37, 74)).any() and rows.shape[1] == 74
        assert store.compact() == 37
        assert store.durable_rows == 74 and reader.durable_rows == 74
        codes, wins = reader.read(range(74))
        kept = np.r_[0:37, 74:111]
        np.testing.assert_array_equal(codes, row_codes(kept))
        assert [w.recording.path for w in wins[36:38]] == ["rec-00000.wav", "rec-00002.wav"]
        assert store.stats()["forgotten_rows"] == 0
    assert len(list(store.directory.glob("codes-*.bin"))) == 1


def test_stats(store):
    store.append(row_codes(range(50)), windows_for(0, 50, False))
    st = store.stats()
    assert st["rows"] == 50 and st["stations"] == {"st0": 37, "st1": 13}
    assert st["first_capture_utc"] == BASE and st["last_capture_end_utc"] == BASE + 5 * 49 + 10
    assert st["code_bytes"] == 128 + 50 * 8 and st["metadata_bytes"] > 0


# ----------------------------------------------------------------------- search vs reference
def _varied_store(path, rng):
    """Stations interleaved in time, regular and irregular windows, a forgotten recording.
    Returns the store and per-row expected metadata built without the store's arithmetic."""
    store = CodeStore.create(path, BITS, FP, commit_every_windows=50)
    meta = []           # per row: (path, station, capture_utc, alive)
    codes = []
    for i in range(24):
        rec = Recording(path=f"r{i}.wav", station=f"s{i % 4}", content_hash=str(i))
        cap0 = BASE + float(rng.integers(0, 3)) * 3600 + float(rng.integers(0, 3600))
        n = int(rng.integers(1, 60))
        c = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        if i % 3 == 2:      # irregular
            gaps = np.cumsum(rng.uniform(0.1, 20, n))
            store.append(c, [Window(recording=rec, offset_s=float(g), length_s=3.0,
                                    capture_utc=cap0 + float(g)) for g in gaps])
            meta += [(rec.path, rec.station, cap0 + float(g)) for g in gaps]
        else:
            hop = float(rng.choice([1.0, 2.5, 5.0]))
            store.append(c, Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                                    capture_start_utc=cap0, hop_s=hop))
            meta += [(rec.path, rec.station, cap0 + j * hop) for j in range(n)]
        codes.append(c)
    store.flush()
    store.forget("r5.wav")
    alive = np.array([m[0] != "r5.wav" for m in meta])
    return store, meta, np.concatenate(codes), alive


def test_search_matches_brute_force_with_every_filter(tmp_path):
    rng = np.random.default_rng(7)
    store, meta, codes, alive = _varied_store(tmp_path / "s", rng)
    caps = np.array([m[2] for m in meta])
    utc = timezone.utc
    cases = [{}, {"station": "s1"}, {"station": ["s0", "s3"]}, {"recording": "r7.wav"},
             {"recording": ["r2.wav", "r5.wav", "r9.wav"]},
             {"recording": Recording(path="r4.wav", station="s0", content_hash="4")},
             {"station": "nowhere"}]
    for _ in range(12):
        a, b = np.sort(rng.choice(caps, 2))
        cases.append({"since": float(a), "until": float(b)})
        cases.append({"since": float(a), "station": "s2"})
        cases.append({"until": datetime.fromtimestamp(float(b), utc), "recording": "r8.wav"})
    queries = np.concatenate([codes[rng.integers(0, len(codes), 3)],
                              rng.integers(0, 256, (2, 8), dtype=np.uint8)])
    with CodeStore.open(store.directory) as reader:
        for f in cases:
            ok = alive.copy()
            if "station" in f:
                st = {f["station"]} if isinstance(f["station"], str) else set(f["station"])
                ok &= [m[1] in st for m in meta]
            if "recording" in f:
                r = f["recording"]
                r = [r] if isinstance(r, (str, Recording)) else r
                paths = {x.path if isinstance(x, Recording) else x for x in r}
                ok &= [m[0] in paths for m in meta]
            if "since" in f:
                ok &= caps >= f["since"]
            if "until" in f:
                u = f["until"]
                ok &= caps < (u.timestamp() if isinstance(u, datetime) else u)
            for k in (1, 7, 1000):
                d_ref, i_ref = knn_reference(queries, codes, k, allowed=ok)
                d, i = reader.search_rows(queries, k, **f)
                np.testing.assert_array_equal(i, i_ref, err_msg=str(f))
                np.testing.assert_array_equal(d, d_ref, err_msg=str(f))
            hits = reader.search(queries, 7, **f)
            for q, qhits in enumerate(hits):
                for h in qhits:
                    assert (h.recording.path, h.recording.station) == meta[h.row][:2]
                    assert abs(h.capture_utc - caps[h.row]) < 1e-4
                    assert h.distance == hamming_matrix(queries[q:q + 1],
                                                        codes[h.row:h.row + 1])[0, 0]
    store.close()


def test_time_filter_boundaries_are_half_open(store):
    store.append(row_codes(range(37)), windows_for(0, 37, False))
    _, rows = store.search_rows(row_codes([0]), 100, since=BASE + 5 * 10, until=BASE + 5 * 20)
    assert sorted(rows[0].tolist()) == list(range(10, 20))
    _, rows = store.search_rows(row_codes([0]), 100, since=BASE + 5 * 10 + 1e-3)
    assert rows[0].min() == 11


# ----------------------------------------------------------------------- concurrency
def test_reader_never_sees_a_torn_row(tmp_path):
    path = tmp_path / "s"
    writer = CodeStore.create(path, BITS, FP, commit_every_windows=7)
    stop = threading.Event()
    problems = []

    def read_loop():
        with CodeStore.open(path) as reader:
            seen = 0
            while not stop.is_set() or seen < 2000:
                n = reader.durable_rows
                if n < seen:
                    problems.append(f"rows went back from {seen} to {n}")
                seen = max(seen, n)
                if n == 0:
                    continue
                target = int(np.random.default_rng(n).integers(0, n))
                d, rows = reader.search_rows(row_codes([target]), 5)
                if d[0, 0] != 0:
                    problems.append(f"row {target} not found exactly among {n} rows")
                codes, wins = reader.read(rows[0])
                if not np.array_equal(codes, row_codes(rows[0])):
                    problems.append(f"torn rows among {rows[0].tolist()}")
                if any(abs(w.capture_utc - (BASE + 5.0 * w.row)) > 1e-4 for w in wins):
                    problems.append("metadata does not match its rows")
                if stop.is_set() and n >= 2000:
                    break

    t = threading.Thread(target=read_loop)
    t.start()
    rng = np.random.default_rng(1)
    row = 0
    while row < 2000:
        n = int(rng.integers(1, 30))
        writer.append(row_codes(range(row, row + n)), windows_for(row, n, bool(rng.random() < .3)))
        row += n
    writer.flush()
    stop.set()
    t.join(timeout=60)
    writer.close()
    assert not t.is_alive() and problems == []


@settings(max_examples=300, deadline=None)
@given(cap0=st.floats(1e9, 2e9), hop=st.sampled_from([0.1, 0.5, 1 / 3, 2.5, 5.0, 7.3]),
       n=st.integers(1, 400), frac=st.floats(-0.1, 1.1), nudge=st.sampled_from([0, 1e-7, -1e-7]))
def test_first_window_at_or_after_matches_per_window_times(cap0, hop, n, frac, nudge):
    times = [cap0 + j * hop for j in range(n)]
    t = cap0 + frac * n * hop + nudge
    if 0 <= frac <= 1:      # also hit exact window times
        t = times[min(n - 1, int(frac * (n - 1)))] + nudge
    expected = next((j for j, c in enumerate(times) if c >= t), n)
    assert first_at_or_after(cap0, hop, n, t) == expected


def test_merging_stations_through_iter_segments(tmp_path):
    a = CodeStore.create(tmp_path / "a", BITS, FP)
    b = CodeStore.create(tmp_path / "b", BITS, FP)
    a.append(row_codes(range(50)), windows_for(0, 50, False))
    b.append(row_codes(range(50, 90)), windows_for(50, 40, True))
    with CodeStore.create(tmp_path / "merged", BITS, FP, commit_every_windows=1000) as m:
        for src in (a, b):
            for seg, codes in src.iter_segments():
                m.append(codes, seg)
        m.flush()
        # recording 1 spans both stores and continues its grid: one segment again
        assert m.stats()["segments"] == 3 and len(m) == 90
        check_rows(m)
        q = row_codes([3, 70])
        np.testing.assert_array_equal(m.search_rows(q, 5)[1], knn_reference(
            q, row_codes(range(90)), 5)[1])
    a.close()
    b.close()


def test_schema_versions_are_explicit(tmp_path):
    import sqlite3
    path = tmp_path / "s"
    CodeStore.create(path, BITS, FP).close()
    # schema 0 never existed, so there is no upgrade path: the message says to re-index
    for version, message in ((0, r"cannot upgrade; index the recordings again"),
                             (99, "upgrade cvahash")):
        conn = sqlite3.connect(path / "meta.sqlite")
        conn.execute("UPDATE store_info SET value = ? WHERE key = 'schema_version'", (version,))
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match=message):
            CodeStore.open(path)


def test_lost_rows_forget_their_tags(tmp_path):
    path = tmp_path / "s"
    with CodeStore.create(path, BITS, FP) as s:
        s.append(row_codes(range(10)), windows_for(0, 10, False), tag="u1")
        s.append(row_codes(range(10, 20)), windows_for(10, 10, False), tag="u2")
    import os
    os.truncate(path / "codes-000000.bin", 128 + 15 * 8)   # the card lost rows 15..19
    with CodeStore.open(path, "a") as s:
        # rows 0..19 are one recording: it lost windows, so it is retired whole, and so
        # is every batch with windows of it; applying both again restores everything
        assert s.durable_rows == 15 and len(s) == 0
        assert not s.has_tag("u1") and not s.has_tag("u2")
        assert not s.has_recording("rec-00000.wav", "h0")
        assert s.append(row_codes(range(10)), windows_for(0, 10, False), tag="u1")
        assert s.append(row_codes(range(10, 20)), windows_for(10, 10, False), tag="u2")
        assert len(s) == 20 and s.has_tag("u1") and s.has_tag("u2")
        codes, wins = s.read(range(15, 35))
        np.testing.assert_array_equal(codes, row_codes(range(20)))
        assert [round((w.capture_utc - BASE) / 5.0) for w in wins] == list(range(20))


def test_reader_follows_forget_and_compact(tmp_path):
    path = tmp_path / "s"
    writer = CodeStore.create(path, BITS, FP)
    writer.append(row_codes(range(1000)), windows_for(0, 1000, False))
    stop = threading.Event()
    problems, searches = [], [0]

    def read_loop():
        with CodeStore.open(path) as reader:
            while not stop.is_set():
                try:
                    _, rows = reader.search_rows(row_codes([searches[0] % 1000]), 8)
                    codes, wins = reader.read(rows[0])
                except Exception as e:      # noqa: BLE001 - report any failure
                    if "holds no window" in str(e):     # compacted between search and read
                        continue
                    problems.append(repr(e))
                    return
                # the code of each row must be the one written with its capture time
                orig = [round((w.capture_utc - BASE) / 5.0) for w in wins]
                if not np.array_equal(codes, row_codes(orig)):
                    problems.append(f"codes and metadata disagree at rows {rows[0].tolist()}")
                searches[0] += 1

    t = threading.Thread(target=read_loop)
    t.start()
    for i in range(0, 20, 2):
        writer.forget(f"rec-{i:05d}.wav")
        writer.compact()
    stop.set()
    t.join(timeout=60)
    assert not t.is_alive() and problems == [] and searches[0] > 0
    assert len(writer) == 1000 - 10 * 37
    writer.close()


@settings(max_examples=200, deadline=None)
@given(first=st.integers(0, 2**62), n=st.integers(1, 2**31), rec=st.integers(1, 2**62),
       floats=st.lists(st.floats(-1e12, 1e12), min_size=4, max_size=4),
       clock=st.sampled_from(["gps", "rtc", "unknown", "audiomoth"]))
def test_one_row_and_vectorised_segment_checks_agree(first, n, rec, floats, clock):
    fields = (first, n, rec, *floats, clock)
    assert segment_crc(*fields) == int(segment_hashes(*fields)[0])


def test_sqlite_failures_are_told_apart():
    import sqlite3

    from cvahash.errors import StoreCorrupt
    from cvahash.store.metadata import db_failure
    busy = db_failure(sqlite3.OperationalError("database is locked"), "m.sqlite", "commit")
    assert type(busy) is StoreError and "m.sqlite" in str(busy)
    for damage in (sqlite3.DatabaseError("database disk image is malformed"),
                   sqlite3.OperationalError("no such column: hop_s")):
        assert isinstance(db_failure(damage, "m.sqlite", "read"), StoreCorrupt)


def _resident_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        first = line.split()[0] if line.strip() else ""
        if "-" in first and ":" not in first:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_release_pages_gives_back_memory_and_keeps_results(tmp_path):
    n = 200_000  # 1.6 MB of codes: several hundred pages
    with CodeStore.create(tmp_path / "s", BITS, FP) as s:
        s.append(row_codes(range(n)), windows_for(0, n, per_window=False), commit=True)
    queries = row_codes([5, 77_777, n - 1])
    with CodeStore.open(tmp_path / "s") as r:
        before = r.search_rows(queries, 10)
        code_file = next((tmp_path / "s").glob("codes-*.bin")).resolve()
        assert _resident_kib(code_file) > 1000  # the scan read the whole file
        r.release_pages()
        assert _resident_kib(code_file) < 100
        after = r.search_rows(queries, 10)  # the next search maps the pages again
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
