"""The monitoring daemon, with a real audio device: PulseAudio's null sink.

PulseAudio runs with a private runtime dir; its null sink's monitor is the default
source, so what `paplay` plays is what the daemon's sounddevice InputStream captures
(through ALSA's pulse plugin). The model is the analytic band bundle
(tests/band_bundle.py): a tone in mel group K gets the code of the text "bandK", so
the checks below are exact, not statistical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from band_bundle import make_band_bundle, tone_scene

from cvahash.store.code_store import CodeStore

PY = sys.executable


def _pulse_up(env) -> None:
    subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1", "-n",
                    "--load=module-native-protocol-unix",
                    "--load=module-null-sink sink_name=vsink", "--load=module-always-sink"],
                   env=env, check=True, capture_output=True, timeout=30)
    for _ in range(50):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True,
                          check=False).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run(["pactl", "set-default-sink", "vsink"], env=env, check=True)
    subprocess.run(["pactl", "set-default-source", "vsink.monitor"], env=env, check=True)


def _pulse_down(env) -> None:
    subprocess.run(["pulseaudio", "-k"], env=env, capture_output=True, timeout=30, check=False)
    time.sleep(0.5)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    missing = [b for b in ("pulseaudio", "pactl", "paplay") if not shutil.which(b)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make system-deps` (Debian packages "
                    "pulseaudio pulseaudio-utils libasound2-plugins libportaudio2)")
    rt = tmp_path_factory.mktemp("xdg")
    os.chmod(rt, 0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(rt), PYTHONUNBUFFERED="1")
    _pulse_up(env)
    yield env
    _pulse_down(env)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_band_bundle(tmp_path_factory.mktemp("bundle") / "b")


def write_config(path: Path, bundle: Path, *, hop=5.0, retention=True, watch=("band3",),
                 commit_windows=1, interval=1, window=10.0, commit_interval="2"):
    d = path.parent
    watches = "".join(
        f'\n[[watchlist]]\nname = "{w}"\nquery = "{w}"\nradius = 0\ncooldown_s = 1\n'
        for w in watch)
    path.write_text(f"""
[device]
name = "test-station"
[runtime]
bundle = "{bundle}"
threads = 1
precision = "fp32"
[capture]
device = "default"
sample_rate = 44100
channels = 1
[windows]
window_s = {window}
hop_s = {hop}
[store]
path = "{d / 'store'}"
commit_every_windows = {commit_windows}
{f"commit_interval_s = {commit_interval}" if commit_interval else ""}
[retention]
enabled = {'true' if retention else 'false'}
path = "{d / 'audio'}"
quota_mb = 50
{watches}
[status]
path = "{d / 'status.json'}"
interval_s = {interval}
""")
    return path


def start_daemon(cfg: Path, env, *extra) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "cvahash", "-v", "daemon", "--config", str(cfg), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_status(path: Path, pred, timeout=40.0, proc=None) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited early:\n{proc.stdout.read()}")
        try:
            doc = json.loads(path.read_text())
            if pred(doc):
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"status never satisfied the condition; last: "
                         f"{path.read_text() if path.exists() else 'no file'}")


def stop(proc: subprocess.Popen, timeout=5.0) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(
            f"daemon did not exit within {timeout} s of SIGTERM:\n{out}") from None
    return proc.returncode, time.monotonic() - t0, out


def overlaps(capture_s: float, length: float, a: float, b: float, slack=1.5) -> bool:
    return capture_s < b + slack and capture_s + length > a - slack


@pytest.mark.slow
def test_live_capture_finds_played_events_and_raises_alerts(pulse, bundle, tmp_path):
    scene = tmp_path / "scene.wav"
    events = [(3, 6.0, 9.0), (5, 16.0, 19.0), (3, 26.0, 29.0)]
    sf.write(scene, tone_scene(34.0, events), 48000)
    cfg = write_config(tmp_path / "station.toml", bundle)
    proc = start_daemon(cfg, pulse)
    status = tmp_path / "status.json"
    wait_status(status, lambda d: d["state"] == "capturing" and d["last_capture_utc"],
                proc=proc)
    t_play = time.time()
    subprocess.run(["paplay", str(scene)], env=pulse, check=True, timeout=90)
    wait_status(status, lambda d: d["windows_total"] >= 6, proc=proc)
    rc, took, out = stop(proc)
    assert rc == 0, out
    assert took < 5.0

    # A text search over what was captured finds both band-3 events, exactly.
    res = subprocess.run([PY, "-m", "cvahash", "search", "band3", "--db",
                          str(tmp_path / "store"), "--json", "-k", "50"],
                         env=pulse, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    hits = [h for h in json.loads(res.stdout)["hits"] if h["distance"] == 0]
    assert hits, res.stdout

    def start_s(h):
        return datetime.fromisoformat(h["capture_time"].replace("Z", "+00:00")).timestamp()

    for k, a, b in events:
        near = [h for h in hits
                if overlaps(start_s(h), h["end_s"] - h["start_s"], t_play + a, t_play + b)]
        if k == 3:
            assert near, f"band-3 event at {a}-{b} s not found among {hits}"
    for h in hits:  # every exact hit holds a band-3 event
        assert any(overlaps(start_s(h), h["end_s"] - h["start_s"], t_play + a, t_play + b)
                   for k, a, b in events if k == 3), h

    # The watchlist raised alerts for band 3, each at a band-3 event.
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(a["watch"] == "band3" and a["distance"] == 0 for a in alerts)
    for a in alerts:
        assert any(overlaps(a["capture_s"], a["length_s"], t_play + s, t_play + e)
                   for k, s, e in events if k == 3), a

    # Audio was retained as FLAC named by capture time; the status says it stopped.
    flacs = sorted((tmp_path / "audio").glob("*.flac"))
    assert flacs and sf.info(flacs[0]).duration > 20
    doc = json.loads(status.read_text())
    assert doc["state"] == "stopped" and doc["windows_total"] >= 6
    with CodeStore.open(tmp_path / "store", "r") as store:
        store.check()  # raises StoreCorrupt on any inconsistency
        assert len(store) == doc["windows_total"]


@pytest.mark.slow
def test_a_live_call_is_searchable_15_s_after_it_was_played(pulse, bundle, tmp_path):
    """[store] commit_interval_s (default 10 s) bounds how stale a live search can be, even
    when commit_every_windows is far away: the daemon is still running when we search."""
    scene = tmp_path / "call.wav"
    sf.write(scene, tone_scene(2.5, [(5, 0.2, 2.2)]), 48000)
    cfg = write_config(tmp_path / "station.toml", bundle, window=5.0, hop=2.5, retention=False,
                       watch=(), commit_windows=1000, commit_interval=None)
    proc = start_daemon(cfg, pulse)
    status = tmp_path / "status.json"
    try:
        wait_status(status, lambda d: d["state"] == "capturing" and d["last_capture_utc"],
                    proc=proc)
        t_play = time.time()
        subprocess.run(["paplay", str(scene)], env=pulse, check=True, timeout=30)
        time.sleep(max(0.0, t_play + 2.5 + 15 - time.time()))
        res = subprocess.run([PY, "-m", "cvahash", "search", "band5", "--db",
                              str(tmp_path / "store"), "--json", "-k", "5"],
                             env=pulse, capture_output=True, text=True, timeout=60, check=False)
        assert proc.poll() is None, proc.stdout.read()
        assert res.returncode == 0, res.stderr
        hits = [h for h in json.loads(res.stdout)["hits"] if h["distance"] == 0]
        start = [datetime.fromisoformat(h["capture_time"].replace("Z", "+00:00")).timestamp()
                 for h in hits]
        assert any(overlaps(s, 5.0, t_play + 0.2, t_play + 2.2) for s in start), res.stdout
        # The status counts committed rows as the store's (what search sees), never more.
        doc = json.loads(status.read_text())
        with CodeStore.open(tmp_path / "store", "r") as store:
            assert doc["store_rows"] <= len(store)
    finally:
        rc, _, out = stop(proc)
    assert rc == 0, out


@pytest.mark.slow
def test_device_loss_is_retried_and_the_gap_recorded(pulse, bundle, tmp_path):
    cfg = write_config(tmp_path / "station.toml", bundle, watch=())
    proc = start_daemon(cfg, pulse)
    status = tmp_path / "status.json"
    try:
        before = wait_status(status, lambda d: d["windows_total"] >= 1, proc=proc)
        _pulse_down(pulse)  # the "USB microphone" vanishes
        wait_status(status, lambda d: d["reconnects"] >= 1, timeout=30, proc=proc)
    finally:
        _pulse_up(pulse)  # and comes back
    back = wait_status(status, lambda d: d["state"] == "capturing" and d["gaps"], timeout=60,
                       proc=proc)
    # The lost run's tail window may land after the loss; wait for a window of the new run.
    doc = wait_status(status, lambda d: d["windows_total"] > back["windows_total"], timeout=60,
                      proc=proc)
    assert doc["windows_total"] > before["windows_total"]
    assert doc["gaps"][0]["to"] > doc["gaps"][0]["from"]
    rc, took, out = stop(proc)
    assert rc == 0 and took < 5.0, out
    assert "reconnecting" in out or "input lost" in out
    with CodeStore.open(tmp_path / "store", "r") as store:
        recs = store.recordings()
        assert len(recs) >= 2  # one run before the loss, one after


def _long_recording(path: Path, seconds: float):
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", samplerate=22050, channels=2, subtype="PCM_16") as f:
        for _ in range(int(seconds // 30)):
            f.write(rng.standard_normal((22050 * 30, 2)).astype(np.float32) * 0.05)


def test_sigkill_leaves_a_consistent_store(bundle, tmp_path):
    rec = tmp_path / "20240612_053000.wav"
    _long_recording(rec, 20 * 60)
    cfg = write_config(tmp_path / "station.toml", bundle, retention=False, watch=(),
                       commit_windows=3)
    env = dict(os.environ)
    for delay in (2.5, 4.0):
        proc = start_daemon(cfg, env, "--source", f"file:{rec}", "--fast")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        with CodeStore.open(tmp_path / "store", "a") as store:  # opens, recovers if needed
            store.check()  # raises StoreCorrupt on any inconsistency
    with CodeStore.open(tmp_path / "store", "r") as store:
        codes, windows = store.read(np.arange(len(store)))
        assert codes.shape == (len(store), 2)
        assert all(w.recording.path == str(rec.resolve()) for w in windows)


def test_file_replay_gives_the_codes_of_indexing(bundle, tmp_path):
    """The daemon's stream path and `cvahash index`'s file path compute the same codes."""
    rec = tmp_path / "20240612_053000.wav"
    x = tone_scene(47.0, [(2, 3, 6), (6, 14, 15), (4, 33, 40)], sr=48000)
    sf.write(rec, np.stack([x, 0.5 * x], 1), 32000)  # also exercises resampling
    cfg = write_config(tmp_path / "station.toml", bundle, hop=10.0, retention=False, watch=())
    proc = start_daemon(cfg, dict(os.environ), "--source", f"file:{rec}", "--fast")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    res = subprocess.run([PY, "-m", "cvahash", "index", str(rec), "--db",
                          str(tmp_path / "indexed"), "--bundle", str(bundle)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    with CodeStore.open(tmp_path / "store") as a, CodeStore.open(tmp_path / "indexed") as b:
        ca, wa = a.read(np.arange(len(a)))
        cb, wb = b.read(np.arange(len(b)))
    assert [w.offset_s for w in wa] == [w.offset_s for w in wb]
    assert [w.capture_utc for w in wa] == [w.capture_utc for w in wb]
    np.testing.assert_array_equal(ca, cb)
    assert {w.clock_source for w in wa} == {"filename"}


def test_sigterm_on_an_idle_device_free_run_exits_fast(bundle, tmp_path):
    """A replay in real time, stopped by SIGTERM: flushed, exit 0, within 5 s."""
    rec = tmp_path / "20240612_053000.wav"
    _long_recording(rec, 60)
    cfg = write_config(tmp_path / "station.toml", bundle, retention=False, watch=(),
                       commit_windows=1000)
    proc = start_daemon(cfg, dict(os.environ), "--source", f"file:{rec}")
    wait_status(tmp_path / "status.json", lambda d: d["windows_total"] >= 1, timeout=40,
                proc=proc)
    # The recording's clock says 2024; audio still arrives now, so the replay is capturing.
    live = subprocess.run([PY, "-m", "cvahash", "status", "--config", str(cfg)],
                          capture_output=True, text=True, check=False)
    assert live.returncode == 0 and live.stdout.startswith("OK"), live.stdout + live.stderr
    assert "2024-06-12" in live.stdout  # the capture time is still shown
    rc, took, out = stop(proc)
    assert rc == 0 and took < 5.0, out
    assert "INFO cvahash.station.daemon: stopped (SIGTERM received)" in out, out
    doc = json.loads((tmp_path / "status.json").read_text())
    with CodeStore.open(tmp_path / "store") as store:
        # commit_every_windows=1000 was never reached: every window came from the flush.
        assert len(store) == doc["windows_total"] >= 1


def test_status_command_verdicts(tmp_path):
    from cvahash.station.health import Health, verdict, write_status

    h = Health(source="device:default", state="capturing")
    now = datetime.now(timezone.utc)
    h.last_capture_utc = now.isoformat()
    path = tmp_path / "status.json"
    write_status(path, h.snapshot(10, tmp_path))
    assert verdict(json.loads(path.read_text()))[0] == "OK"
    res = subprocess.run([PY, "-m", "cvahash", "status", "--file", str(path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("OK")

    doc = json.loads(path.read_text())
    doc["last_capture_utc"] = "2020-01-01T00:00:00+00:00"
    assert verdict(doc)[0] == "NOT CAPTURING"  # a status file without last_audio_utc
    doc["last_audio_utc"] = now.isoformat()  # a replayed file: old capture times, fresh audio
    assert verdict(doc)[0] == "OK"
    doc["last_audio_utc"] = "2020-01-01T00:00:00+00:00"
    doc["last_capture_utc"] = now.isoformat()  # a clock set in the future: no audio arrives
    assert verdict(doc)[0] == "NOT CAPTURING"
    doc = json.loads(path.read_text())
    doc["written_utc"] = "2020-01-01T00:00:00+00:00"
    write_status(path, doc)
    res = subprocess.run([PY, "-m", "cvahash", "status", "--file", str(path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and res.stdout.startswith("STALE")
    res = subprocess.run([PY, "-m", "cvahash", "status", "--file", str(tmp_path / "nope")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "no status file" in res.stderr


def test_retention_quota_deletes_oldest_and_full_disk_pauses(tmp_path):
    from cvahash.station.retention import AudioRetention

    ret = AudioRetention(tmp_path / "audio", quota_mb=0.5, min_free_mb=0)
    rng = np.random.default_rng(0)
    for minute in range(6):
        assert ret.open(datetime(2024, 6, 12, 5, minute, tzinfo=timezone.utc)) is not None
        ret.write(rng.standard_normal(48000 * 5).astype(np.float32) * 0.3)
        ret.close()
    left = sorted(p.name for p in (tmp_path / "audio").glob("*.flac"))
    total = sum(p.stat().st_size for p in (tmp_path / "audio").glob("*.flac"))
    assert total <= 0.5e6 and ret.deleted >= 1
    assert left[-1] == "20240612_050500.flac"  # the newest survives, the oldest went first
    assert "20240612_050000.flac" not in left

    full = AudioRetention(tmp_path / "audio2", quota_mb=100, min_free_mb=1e12)  # "disk full"
    assert full.open(datetime(2024, 6, 12, tzinfo=timezone.utc)) is None
    assert full.state == "paused"
    full.write(np.zeros(100, np.float32))  # a no-op, never an exception
    full.close()


def test_live_blocks_give_the_windows_of_the_file(tmp_path):
    """The daemon feeds cvahash.model.audio.Windower odd-sized live blocks; the windows must be
    those iter_windows cuts from the same audio read as a file."""
    from cvahash.model.audio import Windower, downmix, iter_windows

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((44100 * 37, 2)) * 0.1).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    ref = list(iter_windows(path, window_s=10.0, hop_s=5.0))
    sw = Windower(44100, 48000, 480000, 240000, 48000)
    got = []
    step = 4410 * 3 + 17  # odd block sizes
    for i in range(0, len(x), step):
        sw.push(downmix(x[i:i + step]))
        got += sw.ready()
    sw.finish()
    got += sw.ready()
    assert [w.offset_s for w in got] == [w.offset_s for w in ref]
    assert [round(w.length_s, 3) for w in got] == [round(w.length_s, 3) for w in ref]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)


def test_ring_buffer_wraps_and_reports_drops():
    from cvahash.station.capture import RingBuffer

    ring = RingBuffer(10, 1)
    now = datetime.now(timezone.utc)
    assert ring.read(0.01) is None
    ring.write(np.arange(7, dtype=np.float32)[:, None], now, 0.0)
    assert ring.read(0.1).frames[:, 0].tolist() == list(range(7))
    ring.write(np.arange(7, 13, dtype=np.float32)[:, None], now, 1.0)  # wraps around the end
    block = ring.read(0.1)
    assert block.frames[:, 0].tolist() == list(range(7, 13)) and not block.gap_before
    ring.write(np.zeros((11, 1), np.float32), now, 2.0)  # does not fit: dropped, counted
    assert ring.dropped == 11
    ring.write(np.ones((3, 1), np.float32), now, 3.0)
    block = ring.read(0.1)
    assert block.gap_before and len(block.frames) == 3 and block.monotonic == 3.0


def test_daemon_logs_a_startup_and_a_shutdown_line_at_info(bundle, tmp_path):
    """Without -v: the config's [logging] level (default info) shows both lines, as journald
    would, and nothing else needs a Python reader."""
    rec = tmp_path / "20240612_053000.wav"
    sf.write(rec, tone_scene(22.0, [(2, 3, 6)]), 48000)
    cfg = write_config(tmp_path / "station.toml", bundle, retention=False, watch=())
    res = subprocess.run([PY, "-m", "cvahash", "daemon", "--config", str(cfg), "--source",
                          f"file:{rec}", "--fast"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    start = [ln for ln in lines if "INFO cvahash.station.daemon: started:" in ln]
    assert len(start) == 1, res.stderr
    for part in (f"bundle {bundle}", f"store {tmp_path / 'store'} (0 windows)",
                 f"status file {tmp_path / 'status.json'}", "audio retention off",
                 f"source file:{rec}", f"config {cfg}"):
        assert part in start[0], (part, start[0])
    with CodeStore.open(tmp_path / "store") as store:
        n = len(store)
    stop_line = [ln for ln in lines if "INFO cvahash.station.daemon: stopped (" in ln]
    assert len(stop_line) == 1 and lines[-1] == stop_line[0], res.stderr
    assert f"stopped (end of {rec}): {n} windows written this run" in stop_line[0]
    assert "last commit 20" in stop_line[0]


def test_file_replay_alerts_on_the_web_pages_watchlist(bundle, tmp_path):
    """A watch added on the web page (watchlist.json beside the alerts log) alerts like a
    [[watchlist]] entry of the config, with no [[watchlist]] in the config."""
    rec = tmp_path / "20240612_053000.wav"
    events = [(3, 6.0, 9.0), (5, 16.0, 19.0), (3, 26.0, 29.0)]
    sf.write(rec, tone_scene(34.0, events), 48000)
    cfg = write_config(tmp_path / "station.toml", bundle, hop=5.0, retention=False, watch=())
    (tmp_path / "watchlist.json").write_text(json.dumps(
        {"watches": [{"name": "from the page", "query": "band3", "radius": 0}]}))
    proc = start_daemon(cfg, dict(os.environ), "--source", f"file:{rec}", "--fast")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(a["watch"] == "from the page" and a["distance"] == 0 for a in alerts)
    start = datetime(2024, 6, 12, 5, 30).timestamp()  # local time, as the file name is read
    for a in alerts:
        assert any(overlaps(a["capture_s"], a["length_s"], start + s, start + e)
                   for k, s, e in events if k == 3), a
