"""Unit tests of the station's parts without the daemon loop: the watchlist, the health
status, audio retention and the capture sources (file replay, the ring buffer).

The daemon end to end (real PulseAudio capture, SIGTERM, SIGKILL) is in test_daemon.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import soundfile as sf

from cvahash.errors import AudioError, CvahashError
from cvahash.station.capture import CaptureError, FileSource, RingBuffer
from cvahash.station.health import Health, format_status, read_status, verdict, write_status
from cvahash.station.retention import AudioRetention
from cvahash.station.watchlist import Watch, Watchlist

NOW = datetime(2024, 6, 12, 5, 30, tzinfo=timezone.utc)

# --- watchlist ------------------------------------------------------------------------


def _bits_apart(code: np.ndarray, d: int) -> np.ndarray:
    """``code`` with its first ``d`` bits flipped (MSB-first, as numpy.packbits)."""
    bits = np.unpackbits(code)
    bits[:d] ^= 1
    return np.packbits(bits)


def _distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def _windows(n: int, step_s: float = 10.0) -> list[dict]:
    base = NOW.timestamp()
    return [{"recording": "capture:test", "offset_s": i * step_s, "capture_s": base + i * step_s,
             "row": i} for i in range(n)]


def test_watch_alerts_on_windows_within_its_radius_only(tmp_path):
    rng = np.random.default_rng(0)
    code = rng.integers(0, 256, 8, dtype=np.uint8)
    flips = [0, 3, 4, 5, 20, 64]
    codes = np.stack([_bits_apart(code, d) for d in flips])
    wl = Watchlist([Watch("wren", "a wren singing", 4, code, cooldown_s=0.0)],
                   tmp_path / "alerts.jsonl")
    alerts = wl.check(codes, _windows(len(flips)))
    want = [i for i, c in enumerate(codes) if _distance(c, code) <= 4]
    assert [a["row"] for a in alerts] == want == [0, 1, 2]
    assert [a["distance"] for a in alerts] == [_distance(codes[i], code) for i in want]
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert lines == alerts and wl.total == 3
    assert all(a["watch"] == "wren" and a["query"] == "a wren singing" and a["radius"] == 4
               for a in lines)


def test_cooldown_keeps_one_long_chorus_from_alerting_every_window(tmp_path):
    code = np.full(8, 0b10101010, np.uint8)
    wl = Watchlist([Watch("frogs", "frog chorus", 0, code, cooldown_s=25.0)],
                   tmp_path / "alerts.jsonl")
    first = wl.check(np.stack([code] * 4), _windows(4))  # windows at 0, 10, 20, 30 s
    assert [a["offset_s"] for a in first] == [0.0, 30.0]
    later = wl.check(np.stack([code]), [{"capture_s": NOW.timestamp() + 40, "row": 9}])
    assert later == []  # 10 s after the last alert: still cooling down
    again = wl.check(np.stack([code]), [{"capture_s": NOW.timestamp() + 60, "row": 10}])
    assert [a["row"] for a in again] == [10]


def test_from_entries_encodes_every_query_once(tmp_path):
    class Entry:
        def __init__(self, name, query, radius):
            self.name, self.query, self.radius = name, query, radius

    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.arange(len(texts) * 8, dtype=np.uint8).reshape(len(texts), 8)

    wl = Watchlist.from_entries([Entry("a", "owl", 3), Entry("b", "wren", 5)], encode,
                                tmp_path / "alerts.jsonl")
    assert calls == [["owl", "wren"]]
    assert [(w.name, w.radius, w.code.tolist()) for w in wl.watches] == [
        ("a", 3, list(range(8))), ("b", 5, list(range(8, 16)))]
    assert Watchlist.from_entries([], encode, tmp_path / "x.jsonl").check(
        np.zeros((1, 8), np.uint8), _windows(1)) == []


def test_an_alert_runs_its_command_without_a_shell(tmp_path):
    out = tmp_path / "alert.json"
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ['CVAHASH_ALERT'])"
    code = np.zeros(8, np.uint8)
    wl = Watchlist([Watch("owl", "owl; rm -rf /", 0, code,
                          command=(sys.executable, "-c", script, str(out)))],
                   tmp_path / "alerts.jsonl")
    alerts = wl.check(code[None], _windows(1))
    wl.close(timeout=30)
    assert json.loads(out.read_text()) == alerts[0]


def test_a_command_that_cannot_start_is_logged_not_raised(tmp_path, caplog):
    code = np.zeros(8, np.uint8)
    wl = Watchlist([Watch("owl", "owl", 0, code, command=(str(tmp_path / "missing"),))],
                   tmp_path / "alerts.jsonl")
    assert len(wl.check(code[None], _windows(1))) == 1
    assert "cannot run" in caplog.text


# --- health ---------------------------------------------------------------------------


def _doc(**changes) -> dict:
    h = Health(source="device:default", state="capturing",
               last_capture_utc=NOW.isoformat())
    doc = h.snapshot(10.0, None)
    doc["written_utc"] = NOW.isoformat()
    doc.update(changes)
    return doc


@pytest.mark.parametrize("changes, state, reason", [
    ({}, "OK", None),
    ({"state": "starting", "last_capture_utc": None}, "OK", None),
    ({"state": "capturing", "last_capture_utc": None}, "NOT CAPTURING", "no audio captured"),
    ({"last_capture_utc": (NOW - timedelta(seconds=31)).isoformat()}, "NOT CAPTURING",
     "no audio for 31 s"),
    ({"state": "stopped"}, "STOPPED", "stopped"),
    ({"lag_s": 61.0}, "DEGRADED", "lags 61 s"),
    ({"retention": "paused"}, "DEGRADED", "retention paused"),
    ({"disk_free_mb": 150.0}, "DEGRADED", "150 MB free"),
])
def test_verdicts(changes, state, reason):
    got, reasons = verdict(_doc(**changes), now=NOW + timedelta(seconds=5))
    assert got == state
    assert (reasons == []) if reason is None else any(reason in r for r in reasons)


def test_a_status_not_refreshed_is_stale_whatever_it_says():
    doc = _doc()
    assert verdict(doc, now=NOW + timedelta(seconds=35))[0] == "OK"  # 3 intervals + 5 s
    state, reasons = verdict(doc, now=NOW + timedelta(seconds=36))
    assert state == "STALE" and "36 s" in reasons[0]


def test_status_file_round_trip_and_errors(tmp_path):
    h = Health(source="file:x.wav", state="capturing", last_error="device lost")
    h.gaps = [{"at": i} for i in range(30)]
    path = tmp_path / "run" / "status.json"
    write_status(path, h.snapshot(10.0, tmp_path))
    doc = read_status(path)
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp file left
    assert doc["gaps"] == [{"at": i} for i in range(10, 30)]  # the last 20
    assert doc["disk_free_mb"] > 0 and doc["format"] == 1
    text = format_status(doc)
    assert "file:x.wav" in text and "last error" in text and "device lost" in text
    path.write_text("{half a docu")
    with pytest.raises(CvahashError, match="unreadable status file"):
        read_status(path)


# --- retention ------------------------------------------------------------------------


def test_retained_files_are_named_by_capture_time_and_read_back(tmp_path):
    ret = AudioRetention(tmp_path / "audio", quota_mb=100, sample_rate=16000, min_free_mb=0)
    x = np.linspace(-1.5, 1.5, 16000, dtype=np.float32)  # beyond full scale: clipped
    first = ret.open(NOW)
    ret.write(x)
    ret.close()
    second = ret.open(NOW)  # same second: a suffix, never an overwrite
    ret.close()
    assert (first.name, second.name) == ("20240612_053000.flac", "20240612_053000_1.flac")
    back, rate = sf.read(first, dtype="float32")
    assert rate == 16000 and len(back) == len(x)
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1 / 32768 * 2)


def test_quota_never_deletes_the_file_being_written(tmp_path):
    ret = AudioRetention(tmp_path / "a", quota_mb=0.001, min_free_mb=0)
    path = ret.open(NOW)
    ret.write(np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.3)
    ret.enforce_quota()
    assert path.exists()
    ret.close()  # closed: now it may go
    assert not path.exists() and ret.deleted == 1


def test_an_unwritable_folder_pauses_retention_and_it_resumes(tmp_path):
    ret = AudioRetention(tmp_path / "a", quota_mb=100, min_free_mb=0)
    ret.folder = tmp_path / "not-a-folder"
    ret.folder.write_text("a file where the folder should be")
    assert ret.open(NOW) is None and ret.state == "paused"
    ret.write(np.zeros(10, np.float32))  # a no-op, never an exception
    ret.folder = tmp_path / "a"
    assert ret.open(NOW) is not None and ret.state == "on"
    ret.close()


# --- capture sources ------------------------------------------------------------------


def test_file_replay_gives_every_frame_with_times_from_the_file_name(tmp_path):
    rate = 8000
    x = (np.random.default_rng(2).standard_normal((rate * 3 + 123, 2)) * 0.1).astype(np.float32)
    path = tmp_path / "20240612_053000.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    src = FileSource(path, block_s=0.5)
    with pytest.raises(CaptureError, match="not started"):
        src.read()
    src.start()
    blocks = []
    while (b := src.read()) is not None:
        blocks.append(b)
    src.stop()
    assert src.finished and src.clock_source == "filename"
    np.testing.assert_array_equal(np.concatenate([b.frames for b in blocks]), x)
    assert [len(b.frames) for b in blocks[:-1]] == [rate // 2] * (len(blocks) - 1)
    assert [b.wall for b in blocks] == [NOW + timedelta(seconds=0.5 * i)
                                        for i in range(len(blocks))]
    assert not any(b.gap_before for b in blocks)


def test_file_replay_refuses_a_file_that_is_not_audio(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match="notes.wav"):
        FileSource(bad)


def test_ring_buffer_hands_over_every_frame_in_order_across_threads():
    ring = RingBuffer(4096, 1)
    total, chunk = 50_000, 97
    got = []

    def produce():
        for start in range(0, total, chunk):
            frames = np.arange(start, min(start + chunk, total), dtype=np.float32)[:, None]
            while True:  # the callback never blocks; here we wait instead of dropping
                before = ring.dropped
                ring.write(frames, NOW, time.monotonic())
                if ring.dropped == before:
                    break
                ring.dropped = before
                time.sleep(0.001)

    thread = threading.Thread(target=produce)
    thread.start()
    while len(got) < total:
        block = ring.read(5.0)
        assert block is not None, "the reader starved"
        got.extend(block.frames[:, 0].astype(int).tolist())
    thread.join()
    assert got == list(range(total))
