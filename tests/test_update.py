"""SD-card updates end to end: build, apply (all or nothing, exactly once), refusals, merge."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cvahash.cli import main
from cvahash.errors import FingerprintMismatch, StoreError, UpdateRejected
from cvahash.store.code_store import CodeStore, Recording, Segment
from cvahash.update.apply import apply_update, build_update, segments_of
from cvahash.update.format import (
    ROW_DTYPE,
    UpdateForOtherBundle,
    UpdatePackage,
    generate_keypair,
    load_private_key,
    pack_update,
    sign_raw,
    write_update,
)
from cvahash.update.merge import merge_stores

FP = "bundle-A"
T0 = 1_780_000_000.0


def make_store(path, station="ridge-2", bits=64, fingerprint=FP, seed=0, runs=3, n=20):
    """A store with ``runs`` recordings of ``n`` windows each, hop 5 s, plus one odd window."""
    rng = np.random.default_rng(seed)
    nbytes = (bits + 7) // 8
    with CodeStore.create(path, bits, fingerprint) as store:
        for r in range(runs):
            rec = Recording(path=f"/data/{station}/rec{r}.flac", station=station,
                            content_hash=f"h{seed}-{r}", start_utc=T0 + r * 3600,
                            sample_rate=48000, duration_s=3600.0)
            codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
            if bits % 8:
                codes[:, -1] &= (0xFF << (8 - bits % 8)) & 0xFF
            store.append(codes, Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                                        capture_start_utc=T0 + r * 3600, hop_s=5.0, n_rows=n,
                                        clock_source="gps"))
        store.append(rng.integers(0, 256, (1, nbytes), dtype=np.uint8) & (
            0 if bits % 8 else 255), Segment(recording=Recording(path="capture:odd",
                                                                 station=station),
                                             first_offset_s=3.0, length_s=10.0,
                                             capture_start_utc=T0 + 99_999, n_rows=1,
                                             clock_source="rtc"))
    return Path(path)


def content(path):
    """Everything a store says: codes, windows (path, station, times, clock), per row."""
    with CodeStore.open(path, "r") as store:
        n = len(store)
        codes, windows = store.read(np.arange(n)) if n else (np.zeros((0, store.nbytes)), [])
        return codes.tobytes(), [(w.recording.path, w.recording.station,
                                  w.recording.content_hash, round(w.offset_s, 6),
                                  round(w.capture_utc, 6), w.length_s, w.clock_source)
                                 for w in windows]


def file_bytes(folder):
    """sha256 of every file in a store folder: "store bytes unchanged" means this.

    Left out: SQLite's shared-memory index (-shm) and an empty write-ahead log, which
    appear as soon as any reader opens a WAL database and hold no data."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).iterdir())
            if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "signing.key")


@pytest.fixture
def update_file(tmp_path, keys):
    src = make_store(tmp_path / "src")
    out = tmp_path / "june.cvaup"
    build_update(src, keys[0], out)
    return out


def test_build_then_apply_reproduces_the_store(tmp_path, keys, update_file):
    result = apply_update(update_file, tmp_path / "dst", [keys[1]], create=True)
    assert result.rows == 61 and not result.already_applied and result.created_store
    src_codes, src_windows = content(tmp_path / "src")
    dst_codes, dst_windows = content(tmp_path / "dst")
    assert dst_codes == src_codes
    # Paths become relative (no leading /); everything else is kept exactly.
    assert [(p.lstrip("/"),) + tuple(w) for p, *w in src_windows] == \
        [(p,) + tuple(w) for p, *w in dst_windows]
    with CodeStore.open(tmp_path / "dst") as dst:
        assert dst.stats()["segments"] == 4  # regular runs stay one segment each


def test_applying_twice_changes_nothing(tmp_path, keys, update_file):
    dst = make_store(tmp_path / "dst", station="other", seed=5)
    first = apply_update(update_file, dst, [keys[1]])
    assert first.rows == 61
    before = content(dst), file_bytes(dst)["codes-000000.bin"]
    again = apply_update(update_file, dst, [keys[1]])
    assert again.already_applied and again.rows == 0
    assert (content(dst), file_bytes(dst)["codes-000000.bin"]) == before


def test_a_rebuilt_update_of_the_same_codes_is_the_same_update(tmp_path, keys, update_file):
    second = tmp_path / "again.cvaup"
    build_update(tmp_path / "src", keys[0], second)
    apply_update(update_file, tmp_path / "dst", [keys[1]], create=True)
    assert apply_update(second, tmp_path / "dst", [keys[1]]).already_applied


def test_since_keeps_later_windows_only(tmp_path, keys):
    src = make_store(tmp_path / "src")
    out = tmp_path / "late.cvaup"
    since = "2026-05-28T21:33:20+00:00"   # T0 + 2 h: the third recording and the odd window
    assert build_update(src, keys[0], out, since=since).rows == 21
    with pytest.raises(Exception, match="nothing to put in an update"):
        build_update(src, keys[0], tmp_path / "none.cvaup", since="2099-01-01")


def hostile_variants(update_file: Path, keys, tmp_path):
    data = update_file.read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    other_key = generate_keypair(tmp_path / "stranger.key")[0]
    stranger = tmp_path / "stranger.cvaup"
    build_update(tmp_path / "src", other_key, stranger)
    evil = load_private_key(keys[0])
    rows = np.zeros(1, ROW_DTYPE)
    rows["length_s"] = 10.0
    rows["capture_utc"] = T0
    tables = json.dumps({"recordings": [{"path": "../../etc/cron.d/x", "station": "s",
                                         "content_hash": "", "start_utc": None,
                                         "sample_rate": None, "duration_s": None}],
                         "clocks": ["gps"]}).encode()
    body = np.zeros((1, 8), np.uint8).tobytes() + rows.tobytes() + tables
    sha = hashlib.sha256(body).hexdigest()
    header = {"update_id": "0" * 32, "created": "2026-11-26", "fingerprint": FP, "bits": 64,
              "rows": 1, "since": None, "source": {},
              "sections": {"codes": 8, "rows": 30, "tables": len(tables)}, "body_sha256": sha}
    return {
        "truncated": data[: len(data) // 2],
        "flipped": bytes(flipped),
        "unknown-key": stranger.read_bytes(),
        "path-traversal": sign_raw(evil, json.dumps(header).encode(), body),
        "other-fingerprint": pack_update(
            private_key=evil, fingerprint="bundle-B", bits=64, codes=np.zeros((1, 8), np.uint8),
            rows=rows, recordings=[{"path": "a.flac", "station": "s", "content_hash": "",
                                    "start_utc": None, "sample_rate": None,
                                    "duration_s": None}], clocks=["gps"], created="2026-11-26"),
        "other-bits": pack_update(
            private_key=evil, fingerprint=FP, bits=128, codes=np.zeros((1, 16), np.uint8),
            rows=rows, recordings=[{"path": "a.flac", "station": "s", "content_hash": "",
                                    "start_utc": None, "sample_rate": None,
                                    "duration_s": None}], clocks=["gps"], created="2026-11-26"),
        "empty": b"",
        "garbage": os.urandom(5000),
    }


def test_hostile_updates_leave_the_store_bytes_unchanged(tmp_path, keys, update_file):
    dst = make_store(tmp_path / "dst", station="other", seed=5)
    before = file_bytes(dst)
    reasons = {}
    for name, data in hostile_variants(update_file, keys, tmp_path).items():
        path = write_update(tmp_path / f"{name}.cvaup", data)
        with pytest.raises(UpdateRejected) as info:
            apply_update(path, dst, [keys[1]])
        reasons[name] = info.value.reason
        assert file_bytes(dst) == before, name
    assert reasons == {"truncated": "truncated", "flipped": "bad-checksum",
                       "unknown-key": "unknown-key", "path-traversal": "unsafe-path",
                       "other-fingerprint": "other-bundle", "other-bits": "other-bundle",
                       "empty": "truncated", "garbage": "not-an-update"}


def test_other_bundle_is_refused_with_advice(tmp_path, keys, update_file):
    dst = make_store(tmp_path / "dst", fingerprint="bundle-B")
    with pytest.raises(UpdateForOtherBundle) as info:
        apply_update(update_file, dst, [keys[1]])
    assert isinstance(info.value, FingerprintMismatch)
    assert str(info.value) == (
        "this update was made for bundle bundle-A (64 bits), this store holds codes of "
        "bundle bundle-B (64 bits): re-index with the new bundle into a new store "
        "(cvahash index ... --db NEW_DIR) or keep one store per bundle")


def test_no_store_without_create(tmp_path, keys, update_file):
    with pytest.raises(StoreError, match="pass --create"):
        apply_update(update_file, tmp_path / "nothing", [keys[1]])
    assert not (tmp_path / "nothing").exists()


def test_segments_of_joins_regular_rows_only():
    rows = np.zeros(7, ROW_DTYPE)
    rows["offset_s"] = [0, 5, 10, 15, 40, 45, 45]
    rows["capture_utc"] = T0 + rows["offset_s"]
    rows["length_s"] = 10.0
    rows["recording"] = [0, 0, 0, 0, 0, 0, 1]
    rec = {"path": "a", "station": "s", "content_hash": "", "start_utc": None,
           "sample_rate": None, "duration_s": None}
    update = UpdatePackage("0" * 32, "2026", FP, 64, None, {}, "k",
                           np.zeros((7, 8), np.uint8), rows, [rec, {**rec, "path": "b"}],
                           ["gps"])
    segs = segments_of(update)
    assert [(s.recording.path, s.first_offset_s, s.n_rows, s.hop_s) for s in segs] == [
        ("a", 0.0, 4, 5.0), ("a", 40.0, 2, 5.0), ("b", 45.0, 1, 0.0)]


def test_merge_keeps_stations_apart(tmp_path):
    a = make_store(tmp_path / "a", station="ridge-2", seed=1)
    b = make_store(tmp_path / "b", station="marsh-1", seed=2, runs=2)
    result = merge_stores([a, b, a], tmp_path / "all")  # a twice: merged once
    assert result.rows == 61 + 41
    assert result.stations == {"ridge-2": 61, "marsh-1": 41}
    with CodeStore.open(tmp_path / "all") as merged:
        assert merged.stats()["stations"] == {"ridge-2": 61, "marsh-1": 41}
        probe = content(b)[0][:8]
        hits = merged.search(np.frombuffer(probe, np.uint8), 1, station="marsh-1")[0]
        assert hits[0].distance == 0 and hits[0].recording.station == "marsh-1"
    # Both stations have a window "capture:odd" with no content hash: kept apart.
    paths = {w[0]: w[1] for w in content(tmp_path / "all")[1]}
    assert paths["capture:odd"] == "ridge-2" and paths["marsh-1/capture:odd"] == "marsh-1"
    assert sorted(content(tmp_path / "all")[1]) == sorted(
        content(a)[1] + [w if w[0] != "capture:odd" else ("marsh-1/capture:odd",) + w[1:]
                         for w in content(b)[1]])


def test_merge_refuses_mixed_bundles_and_existing_output(tmp_path):
    a = make_store(tmp_path / "a")
    b = make_store(tmp_path / "b", fingerprint="bundle-B")
    with pytest.raises(FingerprintMismatch, match="merge stores of one bundle only"):
        merge_stores([a, b], tmp_path / "all")
    assert not (tmp_path / "all").exists()
    assert not [p for p in tmp_path.iterdir() if "merging" in p.name]
    with pytest.raises(StoreError, match="not empty"):
        merge_stores([a], b)


def test_cli(tmp_path, capsys):
    src = make_store(tmp_path / "src")
    key = tmp_path / "k"
    assert main(["keygen", "--out", str(key)]) == 0
    out = tmp_path / "u.cvaup"
    assert main(["update", "build", "--db", str(src), "--key", str(key), "--out", str(out)]) == 0
    assert "61 windows" in capsys.readouterr().out
    args = ["update", "apply", str(out), "--db", str(tmp_path / "dst"), "--trust", f"{key}.pub"]
    assert main(args) == 1
    assert "pass --create" in capsys.readouterr().err
    assert main(args + ["--create"]) == 0
    assert "61 windows added" in capsys.readouterr().out
    assert main(args) == 0
    assert "already applied" in capsys.readouterr().out
    (tmp_path / "bad.cvaup").write_bytes(out.read_bytes()[:-1])
    assert main(["update", "apply", str(tmp_path / "bad.cvaup"), "--db", str(tmp_path / "dst"),
                 "--trust", f"{key}.pub"]) == 1
    assert "cut short" in capsys.readouterr().err
    assert main(["merge", str(src), str(tmp_path / "dst"), "--out", str(tmp_path / "m")]) == 0
    assert "merged 2 stores" in capsys.readouterr().out


def test_overlapping_updates_apply_as_one(tmp_path, keys):
    """Two updates of the same windows (same station, content hash and offset) store them
    once, even when the second names the recordings differently (--root)."""
    src = make_store(tmp_path / "src", runs=2)
    first = tmp_path / "first.cvaup"
    build_update(src, keys[0], first)
    with CodeStore.open(src, "a") as store:  # the station records on
        rec = Recording(path="/data/ridge-2/rec9.flac", station="ridge-2", content_hash="h9",
                        start_utc=T0 + 9 * 3600)
        store.append(np.full((4, 8), 7, np.uint8), Segment(
            recording=rec, first_offset_s=0.0, length_s=10.0, capture_start_utc=T0 + 9 * 3600,
            hop_s=5.0, n_rows=4, clock_source="gps"))
    second = tmp_path / "second.cvaup"
    build_update(src, keys[0], second, root="/data")  # other path strings, same windows
    dst = tmp_path / "dst"
    a = apply_update(first, dst, [keys[1]], create=True)
    assert a.rows == 41 and a.already_present == 0
    b = apply_update(second, dst, [keys[1]])
    assert b.rows == 4 and b.already_present == 41 and not b.already_applied
    codes, windows = content(dst)
    identities = {(st, h or p, off) for p, st, h, off, *_ in windows}
    assert len(windows) == len(identities) == 45
    assert apply_update(second, dst, [keys[1]]).already_applied  # and the tag was recorded
    assert len(content(dst)[1]) == 45

    # The command says how many were already there.
    again = tmp_path / "again"
    apply_update(first, again, [keys[1]], create=True)
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["update", "apply", str(second), "--db", str(again), "--trust",
                     str(keys[1])]) == 0
    assert "4 windows added" in buf.getvalue() and "41 of its windows were already there" \
        in buf.getvalue()


def test_a_store_made_from_an_update_is_searchable_and_explains_missing_audio(tmp_path, keys):
    """`update apply --create --bundle` records the bundle, so `search` needs no --bundle;
    a clip of a hit whose audio stayed at the sending station says where it came from."""
    import shutil
    import subprocess
    import sys

    import soundfile as sf

    demo = Path(__file__).parent / "data" / "demo-bundle"
    rec = tmp_path / "sender" / "20240612_053000.wav"
    rec.parent.mkdir()
    sf.write(rec, np.random.default_rng(0).standard_normal(48000 * 21).astype(np.float32)
             * 0.1, 48000)
    env = {k: v for k, v in os.environ.items() if k != "CVAHASH_BUNDLE"}

    def cli(*args, ok=True):
        res = subprocess.run([sys.executable, "-m", "cvahash", *map(str, args)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
        return res

    cli("index", rec, "--db", tmp_path / "src", "--bundle", demo, "--station", "ridge-2",
        "--quiet")
    cli("update", "build", "--db", tmp_path / "src", "--key", keys[0], "--out",
        tmp_path / "u.cvaup")
    shutil.rmtree(rec.parent)  # the audio stays at the sending station
    wrong = tmp_path / "other-bundle"
    shutil.copytree(demo, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["bits"] = 128
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    res = cli("update", "apply", tmp_path / "u.cvaup", "--db", tmp_path / "dst", "--trust",
              keys[1], "--create", "--bundle", wrong, ok=False)
    assert str(wrong) in res.stderr and not (tmp_path / "dst").exists()
    res = cli("update", "apply", tmp_path / "u.cvaup", "--db", tmp_path / "dst", "--trust",
              keys[1], "--create", "--bundle", demo, "--json")
    applied = json.loads(res.stdout)
    assert applied["created_store"] and applied["bundle"] == str(demo.resolve())
    res = cli("search", "birds at dawn", "--db", tmp_path / "dst", "--json", "-k", "2",
              "--clips", tmp_path / "clips")
    hits = json.loads(res.stdout)["hits"]
    assert len(hits) == 2 and hits[0]["station"] == "ridge-2"
    line = f"audio not on this station: it came in update {applied['update_id']} from " \
           "station ridge-2"
    assert res.stderr.count(line) == 2, res.stderr
    assert "deleted by audio retention" not in res.stderr


def _segments_reference(update, keep=None):
    """segments_of as a plain row-by-row loop (the implementation before it took runs in
    numpy blocks): the same grouping rule, written the obvious way."""
    from cvahash.store.records import GRID_TOLERANCE_S as tol
    rows = update.rows if keep is None else update.rows[keep]
    runs, start, n, hop = [], 0, 0, 0.0
    for i in range(len(rows)):
        r, s = rows[i], rows[start] if n else None
        if n:
            same = (r["recording"] == s["recording"] and r["clock"] == s["clock"]
                    and abs(r["length_s"] - s["length_s"]) <= tol)
            if same and n == 1:
                step = float(r["offset_s"] - s["offset_s"])
                same = step > tol and abs(r["capture_utc"] - s["capture_utc"] - step) <= tol
                hop = step if same else hop
            elif same:
                same = (abs(s["offset_s"] + n * hop - r["offset_s"]) <= tol
                        and abs(s["capture_utc"] + n * hop - r["capture_utc"]) <= tol)
            if same:
                n += 1
                continue
            runs.append((start, n, hop if n > 1 else 0.0))
        start, n, hop = i, 1, 0.0
    if n:
        runs.append((start, n, hop if n > 1 else 0.0))
    return [(int(rows[a]["recording"]), float(rows[a]["offset_s"]), b, h) for a, b, h in runs]


@pytest.mark.parametrize("seed", range(6))
def test_segments_and_duplicate_windows_match_a_plain_loop(seed):
    """Rows in long regular runs broken at random (a gap, a jitter beyond the tolerance, a
    new recording or clock), grouped as the plain loop groups them; and the duplicate check
    finds exactly the windows a set of (station, content, offset) tuples finds."""
    from cvahash.update.apply import _new_windows, segments_of, window_identity
    rng = np.random.default_rng(seed)
    n = 5000
    rec = np.repeat(rng.integers(0, 4, 40), rng.integers(1, 250, 40))[:n]
    n = len(rec)
    hop = np.where(rng.random(n) < 0.5, 5.0, 2.5)
    offset = np.cumsum(hop) + np.where(rng.random(n) < 0.01, rng.choice([0.0001, 0.3, 7.0], n), 0)
    rows = np.zeros(n, ROW_DTYPE)
    rows["recording"], rows["offset_s"], rows["length_s"] = rec, offset, 10.0
    rows["clock"] = (rng.random(n) < 0.005).astype(int)
    rows["capture_utc"] = T0 + offset + np.where(rng.random(n) < 0.005, 0.5, 0.0)
    recordings = [{"path": f"r{i}.flac", "station": "s" if i < 3 else "t",
                   "content_hash": f"h{i % 3}" if i < 3 else "", "start_utc": T0,
                   "sample_rate": 48000, "duration_s": 9e5} for i in range(4)]
    update = UpdatePackage(update_id="u", created="", fingerprint=FP, bits=64, since=None,
                           source={}, key_id="k", codes=np.zeros((n, 8), np.uint8), rows=rows,
                           recordings=recordings, clocks=["gps", "rtc"])
    keep = rng.random(n) < 0.9
    for k in (None, keep):
        paths = [r["path"] for r in recordings]
        got = [(paths.index(s.recording.path), s.first_offset_s, s.n_rows, s.hop_s)
               for s in segments_of(update, k)]
        assert got == _segments_reference(update, k) and len(got) > 60  # runs broken often

    class Held:  # a store holding the update's rows where `keep` is True
        def iter_segments(self):
            for s in segments_of(update, keep):
                yield s, None
    held = {(*window_identity(recordings[r]["station"], recordings[r]["content_hash"],
                              recordings[r]["path"], 0)[:2], round(float(o), 3))
            for r, o in zip(rec[keep], offset[keep], strict=True)}
    want = np.array([(*window_identity(recordings[r]["station"], recordings[r]["content_hash"],
                                       recordings[r]["path"], 0)[:2], round(float(o), 3))
                     not in held for r, o in zip(rec, offset, strict=True)])
    np.testing.assert_array_equal(_new_windows(Held(), update), want)
