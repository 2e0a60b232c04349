"""The network archive (chDB): ingest of signed updates, search, activity, refusals.

Answers are checked against independent references: the station C kernel (`knn`,
`within`) over the same codes in the archive's documented tie order (insertion order:
ingest, then position in the update), and the updates' own rows for what was stored.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chdb")

from cvahash.archive.archive import Archive, recording_id  # noqa: E402
from cvahash.errors import FingerprintMismatch, UpdateRejected  # noqa: E402
from cvahash.kernel.hamming import knn, within  # noqa: E402
from cvahash.store.code_store import CodeStore, Recording, Segment  # noqa: E402
from cvahash.update.apply import build_update  # noqa: E402
from cvahash.update.format import generate_keypair, load_public_key, read_update  # noqa: E402

T0 = 1_743_465_600.0  # 2025-04-01T00:00:00Z
HOSTILE = "x'; DROP TABLE ingests; --\\t\"q\""


def make_store(path, station, *, bits=64, fingerprint="bundle-A", seed=0, days=3, runs=2, n=40,
               shared=None):
    """A station store: ``runs`` recordings a day for ``days`` days, ``n`` windows each
    on a 5 s hop. ``shared`` codes are copied into the first rows so stations tie."""
    rng = np.random.default_rng(seed)
    nbytes = (bits + 7) // 8
    with CodeStore.create(path, bits, fingerprint) as store:
        for d in range(days):
            for r in range(runs):
                start = T0 + d * 86400 + r * 7200 + seed * 60
                rec = Recording(path=f"/data/{d}/{r}.flac", station=station,
                                content_hash=f"h{seed}-{d}-{r}", start_utc=start,
                                sample_rate=48000, duration_s=n * 5.0)
                codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
                if bits % 8:
                    codes[:, -1] &= (0xFF << (8 - bits % 8)) & 0xFF
                if shared is not None and d == 0 and r == 0:
                    codes[:len(shared)] = shared
                store.append(codes, Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                                            capture_start_utc=start, hop_s=5.0, n_rows=n,
                                            clock_source="gps"))
    return Path(path)


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "signing.key")


def reference(update_files, pub):
    """Every window of the updates (deduplicated by identity, first seen kept) in
    insertion order, the archive's tie order: codes, station, capture_us, recording id,
    offset_us."""
    seen, items = set(), []
    for f in update_files:
        u = read_update(f, [load_public_key(pub)])
        for i in range(u.count):
            rec = u.recordings[u.rows["recording"][i]]
            rid = recording_id(rec["station"], rec["path"], rec["content_hash"])
            off = int(round(u.rows["offset_s"][i] * 1e6))
            if (rid, off) in seen:
                continue
            seen.add((rid, off))
            items.append((rec["station"], int(round(u.rows["capture_utc"][i] * 1e6)), rid, off,
                          u.codes[i].tobytes()))
    nbytes = len(items[0][4])
    codes = np.frombuffer(b"".join(t[4] for t in items), np.uint8).reshape(-1, nbytes)
    cols = list(zip(*[t[:4] for t in items], strict=True))
    return {"codes": np.ascontiguousarray(codes), "station": np.array(cols[0], object),
            "capture_us": np.array(cols[1]), "recording": np.array(cols[2], np.uint64),
            "offset_us": np.array(cols[3])}


def identity(hit):
    return (hit.recording.station, round(hit.capture_utc * 1e6),
            recording_id(hit.recording.station, hit.recording.path, hit.recording.content_hash),
            round(hit.offset_s * 1e6))


def content(archive: Archive):
    """Every visible window as sorted (identity, code words) tuples, plus per-station counts."""
    out = []
    for b in archive.bundles().values():
        table = archive.engine.query(
            f"SELECT * FROM {b.table} WHERE batch IN (SELECT batch FROM ingests)").to_pylist()
        out += [(b.fingerprint, r["station"], str(r["capture"]), r["recording"], r["offset_us"],
                 r["clock"], r["length_s"], tuple(r[f"c{i}"] for i in range((b.bits + 63) // 64)))
                for r in table]
    return sorted(out)


@pytest.fixture
def three(tmp_path, keys):
    """Three stations (one with a hostile name), some codes shared so distances tie."""
    shared = np.random.default_rng(99).integers(0, 256, (5, 8), dtype=np.uint8)
    files = []
    for i, name in enumerate(["ridge-2", "marsh", HOSTILE]):
        store = make_store(tmp_path / f"st{i}", name, seed=i + 1, shared=shared)
        files.append(build_update(store, keys[0], tmp_path / f"st{i}.cvaup").path)
    return files, shared


def test_search_equals_the_station_kernel_with_documented_ties(tmp_path, keys, three):
    files, shared = three
    ref = reference(files, keys[1])
    rng = np.random.default_rng(5)
    queries = np.vstack([shared[:2], rng.integers(0, 256, (3, 8), dtype=np.uint8)])
    with Archive.open(tmp_path / "archive") as archive:
        results = archive.ingest(files, [keys[1]])
        assert [r.rows_added for r in results] == [240, 240, 240]
        view = archive.view("bundle-A")
        got = view.search(queries, 12)
        want_d, want_i = knn(queries, ref["codes"], 12)
        for q in range(len(queries)):
            assert [h.distance for h in got[q]] == want_d[q].tolist()
            want = [(ref["station"][i], int(ref["capture_us"][i]), int(ref["recording"][i]),
                     int(ref["offset_us"][i])) for i in want_i[q]]
            assert [identity(h) for h in got[q]] == want
        # the shared code: distance 0 at all three stations, ties in insertion order
        assert [identity(h)[0] for h in got[0][:3]] == ["ridge-2", "marsh", HOSTILE]
        # with a station + time filter (the hostile name is data, not SQL)
        since, until = T0 + 86400, T0 + 2 * 86400
        for station in (HOSTILE, ["marsh", HOSTILE]):
            names = [station] if isinstance(station, str) else station
            allowed = (np.isin(ref["station"], names) & (ref["capture_us"] >= since * 1e6)
                       & (ref["capture_us"] < until * 1e6))
            got = view.search(queries, 7, station=station, since=since, until=until)
            want_d, want_i = knn(queries, ref["codes"], 7, allowed=allowed)
            for q in range(len(queries)):
                assert [h.distance for h in got[q]] == want_d[q].tolist()
                assert [identity(h)[3] for h in got[q]] == ref["offset_us"][want_i[q]].tolist()
                assert {h.recording.station for h in got[q]} <= set(names)
        assert view.search(queries[:1], 5, station="no such station")[0] == []
        assert len(view) == len(ref["codes"]) == 720
        # the archive still has all its tables after the hostile name went through
        assert archive.info()["stations"][HOSTILE] == 240


def test_hits_carry_the_station_metadata(tmp_path, keys, three):
    files, _ = three
    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest(files[:1], [keys[1]])
        hit = archive.view("bundle-A").search(np.zeros(8, np.uint8), 1)[0][0]
    with CodeStore.open(tmp_path / "st0") as store:
        want = store.search(np.zeros(8, np.uint8), 1)[0][0]
    assert hit.distance == want.distance and hit.clock_source == "gps" == want.clock_source
    assert hit.recording.path == want.recording.path.lstrip("/")
    assert (hit.recording.station, hit.recording.content_hash, hit.recording.sample_rate,
            hit.recording.duration_s, hit.recording.start_utc) == (
        want.recording.station, want.recording.content_hash, want.recording.sample_rate,
        want.recording.duration_s, want.recording.start_utc)
    assert hit.offset_s == pytest.approx(want.offset_s, abs=1e-6)
    assert hit.capture_utc == pytest.approx(want.capture_utc, abs=1e-6)


def test_ingest_is_idempotent_for_repeats_and_overlaps(tmp_path, keys):
    store = make_store(tmp_path / "st", "ridge-2", days=2)
    first = build_update(store, keys[0], tmp_path / "first.cvaup").path
    # the station records a third day; the next update carries everything again
    with CodeStore.open(store, "a") as s:
        rec = Recording(path="/data/2/0.flac", station="ridge-2", content_hash="new")
        s.append(np.full((30, 8), 7, np.uint8), Segment(
            recording=rec, first_offset_s=0.0, length_s=10.0, capture_start_utc=T0 + 2 * 86400,
            hop_s=5.0, n_rows=30, clock_source="gps"))
    full = build_update(store, keys[0], tmp_path / "full.cvaup").path
    since = build_update(store, keys[0], tmp_path / "since.cvaup", since="2025-04-02").path
    ref = reference([first, full], keys[1])
    with Archive.open(tmp_path / "a1") as archive:
        r = archive.ingest([first, first, since, full, full], [keys[1]])
        assert [x.rows_added for x in r] == [160, 0, 30, 0, 0]
        assert [x.already_ingested for x in r] == [False, True, False, False, True]
        one = content(archive)
        assert len(one) == len(ref["codes"]) == 190
        assert len({t[:5] for t in one}) == 190  # each window once
    with Archive.open(tmp_path / "a2") as archive:  # other order, same archive content
        archive.ingest([full, since, first], [keys[1]])
        assert content(archive) == one


def snapshot(archive):
    return content(archive), archive.engine.query("SELECT * FROM ingests").num_rows


def test_bad_updates_are_refused_with_nothing_written(tmp_path, keys, three):
    files, _ = three
    data = Path(files[1]).read_bytes()
    bad = {}
    tampered = bytearray(data)
    tampered[-100] ^= 1
    bad["tampered.cvaup"] = bytes(tampered)
    bad["truncated.cvaup"] = data[:len(data) // 2]
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
    other_key = generate_keypair(tmp_path / "other.key")
    foreign = make_store(tmp_path / "foreign", "ridge-2", fingerprint="bundle-B", days=1)
    wide = make_store(tmp_path / "wide", "ridge-2", bits=128, days=1)
    build_update(tmp_path / "st0", other_key[0], tmp_path / "untrusted.cvaup")
    foreign_file = build_update(foreign, keys[0], tmp_path / "foreign.cvaup").path
    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest(files[:1], [keys[1]])
        before = snapshot(archive)
        for name, reason in [("tampered.cvaup", "bad-checksum"), ("truncated.cvaup", "truncated"),
                             ("untrusted.cvaup", "unknown-key")]:
            with pytest.raises(UpdateRejected) as exc:
                # a good file first: the batch is all-or-nothing, verified before writing
                archive.ingest([files[1], tmp_path / name], [keys[1]])
            assert exc.value.reason == reason
            assert snapshot(archive) == before
        with pytest.raises(FingerprintMismatch, match="bundle-B.*--new-bundle"):
            archive.ingest([files[2], foreign_file], [keys[1]])
        assert snapshot(archive) == before
        # the same fingerprint at another width is refused even with --new-bundle
        import cvahash.update.format as fmt
        blob = fmt.read_update(build_update(wide, keys[0], tmp_path / "w.cvaup").path,
                               [load_public_key(keys[1])])
        assert blob.bits == 128
        with pytest.raises(FingerprintMismatch, match="128 bits"):
            archive.ingest([tmp_path / "w.cvaup"], [keys[1]], new_bundle=True)
        assert snapshot(archive) == before
        # a new bundle is taken when asked, in a table of its own; never mixed
        archive.ingest([foreign_file], [keys[1]], new_bundle=True)
        assert set(archive.bundles()) == {"bundle-A", "bundle-B"}
        assert archive.view("bundle-B").search(np.zeros(8, np.uint8), 500)[0].__len__() == 80
        assert len(archive.view("bundle-A").search(np.zeros(8, np.uint8), 500)[0]) == 240
        with pytest.raises(FingerprintMismatch, match="bundle-C.*holds: bundle-A"):
            archive.view("bundle-C")


def test_a_reader_during_ingest_sees_only_whole_updates(tmp_path, keys, three, monkeypatch):
    files, _ = three
    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest(files[:1], [keys[1]])
        view = archive.view("bundle-A")
        seen = []
        insert = type(archive.engine).insert

        def insert_then_look(engine, table, data, settings=None):
            insert(engine, table, data, settings)
            if table.startswith("codes_"):  # rows are in, the ledger row is not yet
                seen.append(len(view.search(np.zeros(8, np.uint8), 10_000)[0]))

        monkeypatch.setattr(type(archive.engine), "insert", insert_then_look)
        # and a reader thread polling all along
        counts, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                counts.append(archive.info()["windows"])

        reader = threading.Thread(target=poll)
        reader.start()
        try:
            archive.ingest(files[1:], [keys[1]])
        finally:
            stop.set()
            reader.join()
        assert seen == [240, 480]
        assert set(counts) <= {240, 480, 720} and counts
        assert archive.info()["windows"] == 720


def test_activity_counts_per_station_and_day_match_the_kernel(tmp_path, keys, three):
    files, shared = three
    ref = reference(files, keys[1])
    query = shared[0]
    day = (ref["capture_us"] // 86_400_000_000) * 86400

    def counts(idx):
        c = Counter((ref["station"][i], int(day[i])) for i in idx)
        return sorted((s, datetime.fromtimestamp(t, timezone.utc), n) for (s, t), n in c.items())

    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest(files, [keys[1]])
        view = archive.view("bundle-A")
        _, idx = within(query, ref["codes"], 26)
        assert view.activity(query, radius=26) == counts(idx)
        _, idx = knn(query, ref["codes"], 50)
        assert view.activity(query, top=50) == counts(idx[0])
        # hours, one station (the hostile name is a value), top 50 among its windows
        day = (ref["capture_us"] // 3_600_000_000) * 3600
        _, idx = knn(query, ref["codes"], 50, allowed=ref["station"] == HOSTILE)
        hours = view.activity(query, by="hour", top=50, station=HOSTILE)
        assert hours == counts(idx[0]) and {s for s, _, _ in hours} == {HOSTILE}


@pytest.mark.parametrize("bits", [12, 96, 200, 256])
def test_every_code_width_gives_the_kernel_distances(tmp_path, keys, bits):
    store = make_store(tmp_path / "st", "ridge-2", bits=bits, days=1, runs=3)
    update = build_update(store, keys[0], tmp_path / "u.cvaup").path
    ref = reference([update], keys[1])
    queries = np.ascontiguousarray(ref["codes"][[0, 5, 50]] ^ np.uint8(3))
    if bits % 8:
        queries[:, -1] &= (0xFF << (8 - bits % 8)) & 0xFF
    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest([update], [keys[1]])
        got = archive.view("bundle-A", bits).search(queries, 15)
    want_d, want_i = knn(queries, ref["codes"], 15)
    for q in range(len(queries)):
        assert [h.distance for h in got[q]] == want_d[q].tolist()
        assert [identity(h)[3] for h in got[q]] == ref["offset_us"][want_i[q]].tolist()


def test_updates_beyond_the_memory_budget_are_read_again(tmp_path, keys, three, monkeypatch):
    import cvahash.archive.archive as archive_module

    files, _ = three
    monkeypatch.setattr(archive_module, "KEEP_VERIFIED_BYTES", 0)
    with Archive.open(tmp_path / "a") as archive:
        results = archive.ingest(files, [keys[1]])
        assert [r.rows_added for r in results] == [240, 240, 240]
        assert archive.info()["windows"] == 720


def test_two_new_bundles_in_one_call_need_the_flag(tmp_path, keys):
    a = build_update(make_store(tmp_path / "a", "s", days=1), keys[0], tmp_path / "a.cvaup")
    b = build_update(make_store(tmp_path / "b", "s", days=1, fingerprint="bundle-B"), keys[0],
                     tmp_path / "b.cvaup")
    with Archive.open(tmp_path / "archive") as archive:
        with pytest.raises(FingerprintMismatch, match="--new-bundle"):
            archive.ingest([a.path, b.path], [keys[1]])
        assert archive.bundles() == {}
        archive.ingest([a.path, b.path], [keys[1]], new_bundle=True)
        assert set(archive.bundles()) == {"bundle-A", "bundle-B"}


@pytest.mark.parametrize("margin", [1, 100])
def test_ties_past_the_margin_are_still_in_key_order(tmp_path, keys, three, monkeypatch,
                                                     margin):
    """15 windows at distance 0 (the shared codes): with a margin of 1 the first scan
    cannot hold them all and the archive asks for the tied windows in SQL."""
    import cvahash.archive.view as view_module

    files, shared = three
    monkeypatch.setattr(view_module, "TIE_MARGIN", margin)
    ref = reference(files, keys[1])
    with Archive.open(tmp_path / "archive") as archive:
        archive.ingest(files, [keys[1]])
        view = archive.view("bundle-A")
        for k in (2, 7, 15, 16):
            got = view.search(shared[:1], k)[0]
            want_d, want_i = knn(shared[:1], ref["codes"], k)
            assert [h.distance for h in got] == want_d[0].tolist()
            assert [identity(h) for h in got] == [
                (ref["station"][i], int(ref["capture_us"][i]), int(ref["recording"][i]),
                 int(ref["offset_us"][i])) for i in want_i[0]]


def test_an_update_spanning_many_years_goes_in_whole(tmp_path, keys):
    """One recording a month for 12 years (and one with its clock reset to 1970): more
    monthly partitions than ClickHouse takes in one insert by default."""
    with CodeStore.create(tmp_path / "st", 64, "bundle-A") as store:
        for m in range(145):
            start = 1_262_304_000.0 + m * 31 * 86400 if m else 3600.0
            rec = Recording(path=f"/data/{m}.flac", station="old-ridge", content_hash=f"m{m}")
            store.append(np.full((4, 8), m % 256, np.uint8), Segment(
                recording=rec, first_offset_s=0.0, length_s=10.0, capture_start_utc=start,
                hop_s=5.0, n_rows=4, clock_source="rtc"))
    update = build_update(tmp_path / "st", keys[0], tmp_path / "u.cvaup").path
    with Archive.open(tmp_path / "archive") as archive:
        assert archive.ingest([update], [keys[1]])[0].rows_added == 580
        info = archive.info()
        assert info["windows"] == 580 and info["first_capture"].startswith("1970-01-01T01:00")
