"""Hostile input outside the code store: every case goes through the CLI (or the daemon
as a subprocess) and must end in a message naming what and where, with the exit code
documented for the command; never a traceback, never a write through a link or onto a
device, never a stale or duplicate window.

Cases: bundle manifests and graphs (values out of range, bits not the graph's width,
symlinked or device files, ONNX external data outside the bundle, /dev/zero and deep
JSON as manifest), device configs (/dev/zero, deep TOML, status path on a device or a
link), status files (malformed, out-of-range times, /dev/zero), command-line values
(--threads, --hop, --until, --db with '..'), folders (dangling links, link loops,
FIFOs, devices, unlistable folders), file times in year 9999 and update records with
capture times outside 1970-2200, and recording identity (rewritten, copied, replayed,
changed while read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.cli import main
from cvahash.library.index import content_hash, index_recordings
from cvahash.model.bundle import fingerprint_of
from cvahash.safeio import UnsafeFile, open_new_or_regular, read_capped
from cvahash.station.health import read_status, write_status
from cvahash.store.code_store import CodeStore

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "tests" / "data" / "demo-bundle"
PY = sys.executable

sys.path.insert(0, str(Path(__file__).parent))


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stdout+stderr of ``cvahash ARGV``; argparse exits count as codes."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return rc, text


def tone(seconds: float, freq: float = 1000.0, sr: int = 48000) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, seconds: float = 12.0, freq: float = 1000.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, freq), 48000, subtype="PCM_16")
    return path


def rows_of(db: Path) -> int:
    with CodeStore.open(db) as store:
        return sum(seg.n_rows for seg, _ in store.iter_segments())


# ---------------------------------------------------------------- bundles


def tampered_bundle(tmp_path: Path, edit=None, files=None) -> Path:
    """A copy of the demo bundle, ``edit(manifest)`` applied, the sha256 and size of the
    files ``files`` recomputed and the fingerprint redone: a bundle whose hashes all
    match, as a hostile or careless exporter would make it."""
    root = tmp_path / "bundle"
    if not root.exists():
        shutil.copytree(DEMO, root)
    manifest = json.loads((root / "manifest.json").read_text())
    if edit:
        edit(manifest)
    for name in files or ():
        data = (root / name).read_bytes()
        manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        manifest["files"][name]["bytes"] = len(data)
    manifest["fingerprint"] = fingerprint_of(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def verify(capsys, root: Path) -> tuple[int, str]:
    return cli(capsys, "bundle", "verify", root)


def test_the_demo_bundle_passes(capsys):
    rc, text = verify(capsys, DEMO)
    assert rc == 0, text


@pytest.mark.parametrize("key,value,words", [
    ("tokenizer.max_length", 10**9, "tokenizer.max_length 1000000000 is outside 1..4096"),
    ("tokenizer.pad_id", -1, "tokenizer.pad_id -1 is outside"),
    ("frontend.n_mels", 100000, "frontend.n_mels 100000 is outside 1..512"),
    ("frontend.hop_length", 1, "frontend.hop_length 1 is outside 16.."),
    ("frontend.max_length_s", 1e9, "frontend.max_length_s 1000000000.0 is outside 0..600"),
    ("frontend.sample_rate", 10**9, "frontend.sample_rate 1000000000 is outside 1000.."),
    ("bits", 100000, "bits 100000 is outside 1..256"),
    ("tokenizer.padding", "everything", "tokenizer.padding 'everything' is not one of"),
])
def test_manifest_values_out_of_range_are_refused(tmp_path, capsys, key, value, words):
    def edit(m):
        where, _, leaf = key.rpartition(".")
        (m[where] if where else m)[leaf] = value

    rc, text = verify(capsys, tampered_bundle(tmp_path, edit))
    assert rc == 1 and "FAIL" in text and words in text, text
    assert "manifest.json" in text


def test_bits_not_the_graphs_output_width_is_refused(tmp_path, capsys):
    root = tampered_bundle(tmp_path, lambda m: m.update(bits=32))
    rc, text = verify(capsys, root)
    assert rc == 1 and "outputs 64 values per input" in text, text
    assert "manifest.json says bits = 32" in text
    # and searching with it says so instead of a numpy broadcast error
    db = tmp_path / "db"
    rc, text = cli(capsys, "search", "bird", "--db", db, "--bundle", root)
    assert rc == 1 and "bits" in text, text


def test_a_graph_symlinked_to_the_other_graph_is_refused(tmp_path, capsys):
    root = tampered_bundle(tmp_path)
    (root / "text.onnx").unlink()
    (root / "text.onnx").symlink_to(root / "audio.onnx")
    tampered_bundle(tmp_path, files=["text.onnx"])
    rc, text = verify(capsys, root)
    words = "must be a regular file inside the bundle, not a link"
    assert rc == 1 and f"{root / 'text.onnx'}: {words}" in text, text


def test_a_graph_hard_linked_to_the_other_is_refused(tmp_path, capsys):
    root = tampered_bundle(tmp_path)
    (root / "text.onnx").unlink()
    os.link(root / "audio.onnx", root / "text.onnx")
    tampered_bundle(tmp_path, files=["text.onnx"])
    rc, text = verify(capsys, root)
    assert rc == 1 and "is the same file as" in text, text


def test_onnx_external_data_outside_the_bundle_is_refused_before_onnxruntime(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    root = tampered_bundle(tmp_path)
    model = onnx.load(str(root / "audio.onnx"))
    tensor = next(t for t in model.graph.initializer if t.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "/etc/passwd"), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(root / "audio.onnx"))
    tampered_bundle(tmp_path, files=["audio.onnx"])
    rc, text = verify(capsys, root)
    assert rc == 1 and "external data '/etc/passwd' is not a regular file inside" in text, text
    # A relative escape is refused the same way.
    entry = next(e for e in tensor.external_data if e.key == "location")
    entry.value = "../outside.bin"
    onnx.save(model, str(root / "audio.onnx"))
    tampered_bundle(tmp_path, files=["audio.onnx"])
    rc, text = verify(capsys, root)
    assert rc == 1 and "external data '../outside.bin' is not a regular file inside" in text


def test_a_graph_that_is_not_onnx_is_refused_with_a_message(tmp_path, capsys):
    root = tampered_bundle(tmp_path)
    data = (root / "audio.onnx").read_bytes()
    (root / "audio.onnx").write_bytes(data[: len(data) // 3])
    tampered_bundle(tmp_path, files=["audio.onnx"])
    rc, text = verify(capsys, root)
    assert rc == 1 and "is not a valid ONNX model" in text, text


def test_dev_zero_and_deep_json_as_manifest_are_refused(tmp_path, capsys):
    root = tampered_bundle(tmp_path)
    (root / "manifest.json").unlink()
    (root / "manifest.json").symlink_to("/dev/zero")
    rc, text = verify(capsys, root)
    assert rc == 1 and "manifest.json: cannot be read as a regular file" in text, text
    (root / "manifest.json").unlink()
    (root / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    rc, text = verify(capsys, root)
    assert rc == 1 and "not valid JSON (nested too deeply)" in text, text
    (root / "manifest.json").write_text(json.dumps({"format_version": 1}) + " " * (2 << 20))
    rc, text = verify(capsys, root)
    assert rc == 1 and "larger than 1048576 bytes; not a manifest" in text, text


def test_deeply_nested_manifest_values_are_refused(tmp_path, capsys):
    def edit(m):
        deep: dict = {}
        for _ in range(40):
            deep = {"x": deep}
        m["quantization"] = deep

    rc, text = verify(capsys, tampered_bundle(tmp_path, edit))
    assert rc == 1 and "nested more than 16 levels deep" in text, text


# ---------------------------------------------------------------- command-line values


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    rec = write_wav(d / "rec" / "20240612_053000.wav")
    assert main(["index", str(rec), "--db", str(d / "db"), "--bundle", str(DEMO),
                 "--quiet"]) == 0
    return d


@pytest.mark.parametrize("argv,words", [
    (["search", "bird", "--threads", "100000"],
     "--threads 100000: must be 0 (one per core) to 256"),
    (["search", "bird", "--until", "9999-12-31"], "'9999-12-31' is outside 1970-2199"),
    (["search", "bird", "--since", "0001-01-01"], "'0001-01-01' is outside 1970-2199"),
])
def test_search_values_out_of_range(small_store, capsys, argv, words):
    rc, text = cli(capsys, *argv, "--db", small_store / "db", "--bundle", DEMO)
    assert rc in (1, 2) and words in text, text


@pytest.mark.parametrize("argv,words", [
    (["--hop", "1e308"], "--hop 1e+308: the seconds between windows must be above 0 and at "
                         "most 60"),
    (["--threads", "100000"], "--threads 100000: must be 0 (one per core) to 256"),
])
def test_index_values_out_of_range_make_no_store(tmp_path, small_store, capsys, argv, words):
    rc, text = cli(capsys, "index", small_store / "rec", "--db", tmp_path / "db", "--bundle",
                   DEMO, *argv)
    assert rc == 2 and words in text, text
    assert not (tmp_path / "db").exists()


def test_db_through_a_missing_folder_is_refused(tmp_path, small_store, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    rc, text = cli(capsys, "index", small_store / "rec", "--db", "a/missing/../b",
                   "--bundle", DEMO)
    assert rc == 2 and "a/missing does not exist" in text and "--db a/b" in text, text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]


def test_bundle_verify_threads_bound(capsys):
    rc, text = cli(capsys, "bundle", "verify", DEMO, "--threads", "100000")
    assert rc == 2 and "--threads 100000" in text, text


# ---------------------------------------------------------------- times


def test_file_time_in_year_9999_is_not_a_capture_time(tmp_path, capsys):
    rec = write_wav(tmp_path / "rec" / "clip.wav")
    far = 253402300799  # 9999-12-31T23:59:59Z
    try:
        os.utime(rec, (far, far))
    except OverflowError:
        pytest.skip("this file system cannot hold year 9999")
    if os.stat(rec).st_mtime < 7258118400:
        # ext4 holds times up to 2446: still beyond 2200
        assert os.stat(rec).st_mtime >= 7258118400
    rc, text = cli(capsys, "index", rec, "--db", tmp_path / "db", "--bundle", DEMO, "--quiet")
    assert rc == 0, text
    rc, text = cli(capsys, "info", "--db", tmp_path / "db")
    assert rc == 0, text
    rc, text = cli(capsys, "search", "bird", "--db", tmp_path / "db", "--bundle", DEMO,
                   "--json")
    assert rc == 0, text
    hits = json.loads(text[text.index("{"):])["hits"]
    assert hits and all(h.get("clock_source") in (None, "unknown") for h in hits), hits


def test_update_records_outside_1970_2200_are_refused():
    from cvahash.update.format import UpdateRejected, _check_rows, _check_tables

    rows = np.zeros(1, dtype=[("recording", "<u4"), ("clock", "<u2"), ("offset_s", "<f8"),
                              ("length_s", "<f8"), ("capture_utc", "<f8")])
    rows["length_s"] = 10.0
    for bad in (1e300, -1.0, 7258118400.0):
        rows["capture_utc"] = bad
        with pytest.raises(UpdateRejected, match="outside 1970-2200"):
            _check_rows(rows, 1, 1)
    rows["capture_utc"] = 1.7e9
    _check_rows(rows, 1, 1)
    rec = {"path": "a.wav", "station": "", "content_hash": "s256:00", "start_utc": 1e300,
           "duration_s": 1.0, "sample_rate": 48000}
    with pytest.raises(UpdateRejected, match="start_utc 1e\\+300 is outside 1970-2200"):
        _check_tables({"recordings": [rec], "clocks": ["gps"]}, 1)


# ---------------------------------------------------------------- configs and status files

CONFIG = """
[device]
name = "test"
[runtime]
bundle = "{bundle}"
precision = "int8"
threads = 1
[store]
path = "{store}"
[status]
path = "{status}"
"""


def config_file(tmp_path: Path, status: Path | str) -> Path:
    cfg = tmp_path / "station.toml"
    cfg.write_text(CONFIG.format(bundle=DEMO, store=tmp_path / "store", status=status))
    return cfg


def test_config_check_passes_a_plain_status_path(tmp_path, capsys):
    rc, text = cli(capsys, "config", "check", config_file(tmp_path, tmp_path / "status.json"))
    assert rc == 0 and text.startswith("OK"), text


@pytest.mark.parametrize("target", ["device", "link-to-device", "fifo", "dangling-link",
                                    "folder"])
def test_config_check_refuses_a_status_path_the_daemon_would_not_write(tmp_path, capsys,
                                                                       target):
    status = tmp_path / "status.json"
    if target == "device":
        status = Path("/dev/zero")
    elif target == "link-to-device":
        status.symlink_to("/dev/zero")
    elif target == "fifo":
        os.mkfifo(status)
    elif target == "dangling-link":
        status.symlink_to(tmp_path / "nowhere" / "x.json")
    else:
        status.mkdir()
    rc, text = cli(capsys, "config", "check", config_file(tmp_path, status))
    assert rc == 1 and f"[status] path: {status}: is " in text, text
    assert "cvahash writes only regular files it creates" in text or "not a" in text


def test_config_check_refuses_a_retention_path_that_is_a_link_or_a_file(tmp_path, capsys):
    cfg = config_file(tmp_path, tmp_path / "status.json")
    audio = tmp_path / "audio"
    audio.symlink_to("/dev")
    cfg.write_text(cfg.read_text() + f'[retention]\nenabled = true\npath = "{audio}"\n')
    rc, text = cli(capsys, "config", "check", cfg)
    assert rc == 1 and f"[retention] path: {audio}: is a symbolic link, not a folder" in text
    audio.unlink()
    audio.write_text("")
    rc, text = cli(capsys, "config", "check", cfg)
    assert rc == 1 and f"{audio}" in text and "not a folder" in text, text


def test_config_file_that_is_a_device_or_nested_too_deeply(tmp_path, capsys):
    rc, text = cli(capsys, "config", "check", "/dev/zero")
    assert rc == 1 and "/dev/zero: is a device, not a regular config file" in text, text
    cfg = tmp_path / "deep.toml"
    cfg.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    rc, text = cli(capsys, "config", "check", cfg)
    assert rc == 1 and "nest more than 16 deep" in text, text
    cfg.write_text("a = " + "[" * 20 + "]" * 20 + "\n")
    rc, text = cli(capsys, "config", "check", "--file-only", cfg)
    assert rc == 1 and "nest more than 16 deep" in text, text
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(3 << 20)
    rc, text = cli(capsys, "config", "check", big)
    assert rc == 1 and "too large for a config file" in text, text


GOOD_STATUS = {"written_utc": "2024-06-12T05:30:00+00:00", "interval_s": 10, "state": "running",
               "last_audio_utc": "2024-06-12T05:29:59+00:00", "lag_s": 0.5}


@pytest.mark.parametrize("doc,words", [
    ("not json {", "unreadable status file"),
    ("[1, 2]", "expected a JSON object"),
    ({}, "written_utc is missing"),
    ({**GOOD_STATUS, "written_utc": "yesterday"}, "is not an ISO-8601 time"),
    ({**GOOD_STATUS, "written_utc": "9999-12-31T00:00:00"}, "is outside 1970-2200"),
    ({**GOOD_STATUS, "last_audio_utc": 5}, "last_audio_utc is not a time"),
    ({**GOOD_STATUS, "lag_s": "slow"}, "lag_s is not a number"),
    ({**GOOD_STATUS, "interval_s": 0}, "interval_s 0 is not within"),
    ({**GOOD_STATUS, "gaps": 3}, "gaps is not a list"),
    ("[" * 100_000, "unreadable status file"),
])
def test_malformed_status_files_are_messages(tmp_path, capsys, doc, words):
    path = tmp_path / "status.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    rc, text = cli(capsys, "status", "--file", path)
    assert rc == 1 and str(path) in text and words in text, text


def test_status_from_dev_zero_fifo_or_huge_file(tmp_path, capsys):
    rc, text = cli(capsys, "status", "--file", "/dev/zero")
    assert rc == 1 and "is a device" in text, text
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    rc, text = cli(capsys, "status", "--file", fifo)  # would block forever if opened plainly
    assert rc == 1 and "is a FIFO" in text, text
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(10 << 20)
    rc, text = cli(capsys, "status", "--file", huge)
    assert rc == 1 and "too large for a status file" in text, text


def test_a_good_status_file_still_reads(tmp_path):
    path = tmp_path / "s.json"
    write_status(path, GOOD_STATUS)
    assert read_status(path)["state"] == "running"
    assert stat.S_ISREG(os.lstat(path).st_mode)


def test_write_status_never_replaces_or_follows_what_is_not_a_regular_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "status.json"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="is a symbolic link"):
        write_status(link, GOOD_STATUS)
    assert link.is_symlink() and victim.read_text() == "keep me"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFile, match="is a FIFO"):
        write_status(fifo, GOOD_STATUS)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A link planted at the temporary name is not written through either.
    plain = tmp_path / "plain.json"
    (tmp_path / "plain.json.tmp").symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        write_status(plain, GOOD_STATUS)
    assert victim.read_text() == "keep me"


def test_open_new_or_regular_and_read_capped(tmp_path):
    dev = Path("/dev/null")
    with pytest.raises(UnsafeFile, match="is a device"):
        open_new_or_regular(dev, os.O_WRONLY | os.O_APPEND)
    with pytest.raises(UnsafeFile, match="is a device"):
        read_capped("/dev/zero", 100)
    f = tmp_path / "f"
    fd = open_new_or_regular(f, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"abc")
    os.close(fd)
    assert read_capped(f, 3) == b"abc"
    with pytest.raises(UnsafeFile, match="too large"):
        read_capped(f, 2)


def test_alerts_are_not_appended_through_a_link(tmp_path, caplog):
    from cvahash.station.watchlist import Watch, Watchlist

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    log = tmp_path / "alerts.jsonl"
    log.symlink_to(victim)
    w = Watchlist([Watch(name="owl", query="owl", code=np.zeros(8, np.uint8), radius=64,
                         cooldown_s=0.0, command=None)], log)
    alerts = w.check(np.zeros((1, 8), np.uint8), [{"capture_s": 1.7e9, "row": 0}])
    assert len(alerts) == 1
    assert victim.read_text() == "keep me"
    assert "cannot append the alert" in caplog.text


def test_retention_never_writes_through_a_planted_link(tmp_path):
    from datetime import datetime, timezone

    from cvahash.station.retention import AudioRetention

    folder = tmp_path / "audio"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    start = datetime(2024, 6, 12, 5, 30, tzinfo=timezone.utc)
    (folder / "20240612_053000.flac").symlink_to(victim)
    (folder / "20240612_053000_1.flac").symlink_to(tmp_path / "dangling")
    r = AudioRetention(folder, quota_mb=50, min_free_mb=0)
    path = r.open(start)
    r.write(tone(1.0))
    r.close()
    assert path == folder / "20240612_053000_2.flac"
    assert victim.read_text() == "keep me" and not (tmp_path / "dangling").exists()
    assert sf.info(str(path)).frames == 48000


# ---------------------------------------------------------------- folders


def test_odd_entries_in_a_folder_are_skipped_each_with_its_reason(tmp_path, capsys):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", freq=800)
    write_wav(rec / "sub" / "b.wav", freq=1600)
    (rec / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (rec / "loop.wav").symlink_to("loop.wav")
    os.mkfifo(rec / "fifo.wav")
    (rec / "device.wav").symlink_to("/dev/null")
    (rec / "linked.wav").symlink_to(rec / "sub" / "b.wav")  # a link to a file is fine
    rc, text = cli(capsys, "index", rec, "--db", tmp_path / "db", "--bundle", DEMO)
    assert rc == 3, text
    assert f"{rec / 'dangling.wav'}: a dangling symbolic link" in text
    assert f"{rec / 'loop.wav'}: a symbolic link loop" in text
    assert f"{rec / 'fifo.wav'}: a FIFO (named pipe), not a recording file" in text
    assert f"{rec / 'device.wav'}: a device, not a recording file" in text
    assert "indexed 2 files" in text  # a.wav, sub/b.wav
    assert "already in the store: 1" in text  # linked.wav: sub/b.wav itself
    assert rows_of(tmp_path / "db") == 4


def test_a_folder_that_cannot_be_listed_is_skipped(tmp_path, capsys, monkeypatch):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav")
    write_wav(rec / "locked" / "c.wav", freq=3000)
    real_scandir, real_listdir = os.scandir, os.listdir

    def refuse(real):
        def call(path="."):
            if Path(path).name == "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        return call

    # as root, chmod 0 would not stop us
    monkeypatch.setattr(os, "scandir", refuse(real_scandir))
    monkeypatch.setattr(os, "listdir", refuse(real_listdir))
    rc, text = cli(capsys, "index", rec, "--db", tmp_path / "db", "--bundle", DEMO)
    assert rc == 3, text
    assert f"{rec / 'locked'}: a folder that cannot be read (Permission denied)" in text
    assert "indexed 1 file" in text and rows_of(tmp_path / "db") == 2


def test_a_folder_of_only_odd_entries_makes_no_store(tmp_path, capsys):
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    rc, text = cli(capsys, "index", rec, "--db", tmp_path / "db", "--bundle", DEMO)
    assert rc == 1 and "nothing to index" in text and "dangling.wav" in text, text
    assert not (tmp_path / "db").exists()


# ---------------------------------------------------------------- recording identity


def test_a_rewritten_file_is_reindexed_and_its_old_windows_retired(tmp_path, capsys):
    rec = write_wav(tmp_path / "rec" / "x.wav", seconds=30.0, freq=800)
    db = tmp_path / "db"
    assert cli(capsys, "index", rec, "--db", db, "--bundle", DEMO)[0] == 0
    assert rows_of(db) == 3
    write_wav(rec, seconds=20.0, freq=2400)
    rc, text = cli(capsys, "index", rec, "--db", db, "--bundle", DEMO)
    assert rc == 0 and "changed since indexed: 1 re-indexed, 3 windows" in text, text
    assert rows_of(db) == 2
    with CodeStore.open(db) as store:
        assert [r.content_hash for r in store.recordings()] == [content_hash(rec)]


def test_the_same_audio_under_another_name_adds_nothing(tmp_path, capsys):
    rec = write_wav(tmp_path / "rec" / "x.wav")
    db = tmp_path / "db"
    assert cli(capsys, "index", rec, "--db", db, "--bundle", DEMO)[0] == 0
    copy = tmp_path / "backup" / "x-copy.wav"
    copy.parent.mkdir()
    shutil.copy(rec, copy)
    rc, text = cli(capsys, "index", copy, "--db", db, "--bundle", DEMO)
    assert rc == 0 and f"same audio as {rec.resolve()}" in text, text
    assert rows_of(db) == 2


def test_a_file_changed_while_it_is_read_is_not_committed(tmp_path):
    from test_index import StandInBundle

    rec = write_wav(tmp_path / "rec" / "x.wav", seconds=30.0)

    class Truncating(StandInBundle):
        def encode_audio(self, features):
            if self.calls == 0:
                with open(rec, "r+b") as f:
                    f.truncate(os.path.getsize(rec) // 2)
            return super().encode_audio(features)

    with CodeStore.create(tmp_path / "db", 64, StandInBundle.fingerprint) as store:
        report = index_recordings([rec], store, Truncating(), batch=1)
        assert report.indexed == [] and len(report.skipped) == 1
        assert "changed while it was being read" in report.skipped[0].reason
        assert store.recordings() == [] and len(store) == 0
        again = index_recordings([rec], store, StandInBundle())  # complete now: goes in
        assert [p.name for p in again.indexed] == ["x.wav"]


def test_the_daemon_replaying_a_file_twice_adds_nothing(tmp_path):
    from band_bundle import make_band_bundle, tone_scene
    from test_daemon import write_config

    bundle = make_band_bundle(tmp_path / "bundle" / "b")
    rec = tmp_path / "20240612_053000.wav"
    sf.write(rec, tone_scene(22.0, [(2, 3, 6)]), 48000)
    cfg = write_config(tmp_path / "station.toml", bundle, retention=False, watch=())
    runs = []
    for _ in range(2):
        res = subprocess.run([PY, "-m", "cvahash", "daemon", "--config", str(cfg), "--source",
                              f"file:{rec}", "--fast"], capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        runs.append((res.stderr, rows_of(tmp_path / "store")))
    assert runs[0][1] > 0 and runs[1][1] == runs[0][1]
    assert "is in the store already; its windows are not added again" in runs[1][0]


def test_bits_not_the_width_of_a_graph_with_a_symbolic_output_is_refused_on_use(tmp_path,
                                                                               capsys):
    onnx = pytest.importorskip("onnx")
    root = tampered_bundle(tmp_path)
    for name in ("text.onnx", "audio.onnx"):
        model = onnx.load(str(root / name))
        dim = model.graph.output[0].type.tensor_type.shape.dim[1]
        dim.ClearField("dim_value")
        dim.dim_param = "width"
        onnx.save(model, str(root / name))
    tampered_bundle(tmp_path, lambda m: m.update(bits=32), files=["text.onnx", "audio.onnx"])
    rec = write_wav(tmp_path / "rec" / "x.wav")
    rc, text = cli(capsys, "index", rec, "--db", tmp_path / "db", "--bundle", root)
    assert rc == 1 and "returned logits of shape (1, 64), not [n, 32]" in text, text
