"""What `cvahash index` prints: one line per skipped file, a progress bar by audio seconds,
no log noise, no traceback on Ctrl-C, and no store when nothing is audio."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.library.index import Progress
from cvahash.store.code_store import CodeStore

DEMO = Path(__file__).resolve().parent / "data" / "demo-bundle"
SR = 48000


def cvahash(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CVAHASH_BUNDLE"}
    return subprocess.run([sys.executable, "-m", "cvahash", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * SR))
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def wav_bytes(samples: np.ndarray, *, data_size: int | None = None) -> bytes:
    """A plain 16-bit mono WAV whose data chunk claims ``data_size`` bytes."""
    data = (samples * 20000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, SR, 2 * SR, 2, 16)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", min(len(body) + len(data), 0xFFFFFFFF)) + body + data


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "card"
    d.mkdir()
    x = noise(3)
    sf.write(d / "int32.wav", x, SR, subtype="PCM_32")
    sf.write(d / "float.wav", np.stack([x * 30, x], 1), SR, subtype="FLOAT")  # > 1.0 is fine
    sf.write(d / "double.wav", x, SR, subtype="DOUBLE")
    sf.write(d / "rf64.wav", x, SR, subtype="PCM_32", format="RF64")
    (d / "streamed.wav").write_bytes(wav_bytes(x, data_size=0xFFFFFFFF))  # size unknown
    cut = wav_bytes(x)
    (d / "cut.wav").write_bytes(cut[: len(cut) - SR])  # cut off mid-recording
    sf.write(d / "short.wav", noise(1.0)[:-10], SR)  # 0.9998 s
    return d


def test_each_file_reported_once_and_valid_wavs_are_not_called_corrupt(folder, tmp_path):
    db = tmp_path / "store"
    for run in (1, 2):
        res = cvahash("index", folder, "--db", db, "--bundle", DEMO, "--quiet")
        assert res.returncode == 3, res.stderr
        err = res.stderr
        assert err.count("short.wav") == 1, err  # once per run, not in the summary again
        assert "shorter than the 1 s minimum (0.999 s)" in err
        assert "WARNING" not in err and "Traceback" not in err
        assert "corrupt" not in err and "streamed.wav" not in err, err
        if run == 1:
            assert err.count("cut.wav: the file is shorter than its header says") == 1, err
        else:
            assert "already in the store: 6" in err
        assert "skipped 1 with problems (each named above)" in err
    with CodeStore.open(db) as store:
        names = {Path(r.path).name for r in store.recordings()}
    assert names == {"int32.wav", "float.wav", "double.wav", "rf64.wav", "streamed.wav",
                     "cut.wav"}


def test_naming_only_non_audio_makes_no_store(tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("field notes, not audio")
    res = cvahash("index", notes, "--db", tmp_path / "store", "--bundle", DEMO)
    assert res.returncode == 1
    assert "no file is usable audio" in res.stderr and "notes.wav: not an audio file" in \
        res.stderr
    assert not (tmp_path / "store").exists()


def test_progress_is_a_bar_by_audio_seconds_with_time_left():
    out = io.StringIO()
    p = Progress(3, stream=out, total_audio_s=3600.0)
    p.t0 -= 10.0  # ten seconds in
    p.update(1, 60, 900.0, "a.flac", finished=True)  # one long file of three: 25 %
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[#####---------------]  25%  0.25 h of 1.00 h audio, 1/3 files")
    assert "90x real time, 30 s left" in line and line.endswith("a.flac")
    p.skip(1800.0)  # the rest was already indexed: 900 of 1800 s
    p.update(3, 60, 900.0, final=True)
    assert " 50%" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize("delay", [0.8, 1.6, 2.4])
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path, delay):
    d = tmp_path / "card"
    d.mkdir()
    for i in range(3):
        sf.write(d / f"rec{i}.flac", noise(120, seed=i), SR)
    db = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "CVAHASH_BUNDLE"}
    proc = subprocess.Popen([sys.executable, "-m", "cvahash", "index", str(d), "--db", str(db),
                             "--bundle", str(DEMO), "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if proc.returncode == 130:  # before the store opened, or cleanly between batches
        assert err.startswith("interrupted") or "run the same command again" in err, err
    res = cvahash("index", d, "--db", db, "--bundle", DEMO, "--quiet")
    assert res.returncode == 0, res.stderr
    with CodeStore.open(db) as store:
        store.check()
        assert len(store.recordings()) == 3 and len(store) == 3 * 12


def test_reindexing_with_another_station_or_hop_is_refused_not_ignored(tmp_path):
    d = tmp_path / "card"
    d.mkdir()
    for i in range(2):
        sf.write(d / f"rec{i}.wav", noise(25, seed=i), SR)
    db = tmp_path / "store"
    assert cvahash("index", d, "--db", db, "--bundle", DEMO, "--station", "ridge-2",
                   "--quiet").returncode == 0
    with CodeStore.open(db) as store:
        before = len(store), store.stats()["stations"]
    res = cvahash("index", d, "--db", db, "--station", "ridge-3", "--quiet")
    assert res.returncode == 1
    assert "--station 'ridge-3': 2 recordings (rec0.wav, rec1.wav) already indexed with " \
           "station 'ridge-2'" in res.stderr
    res = cvahash("index", d, "--db", db, "--hop", "5", "--quiet")
    assert res.returncode == 1 and "already indexed with --hop 10" in res.stderr
    # Leaving the options out, or repeating the same values, keeps what is there.
    assert cvahash("index", d, "--db", db, "--quiet").returncode == 0
    res = cvahash("index", d, "--db", db, "--station", "ridge-2", "--hop", "10", "--quiet")
    assert res.returncode == 0 and "already in the store: 2" in res.stderr
    with CodeStore.open(db) as store:
        assert (len(store), store.stats()["stations"]) == before == (6, {"ridge-2": 6})
