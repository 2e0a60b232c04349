"""Indexing recordings into a code store (cvahash.library.index), with a numpy stand-in bundle.

The stand-in turns log-mel features into codes by a fixed random projection, so these
tests need no ONNX model and check the pipeline itself: which windows go in, with what
metadata, what is skipped and why, resuming, and that a failure mid-file leaves nothing
of that file in the store. The real bundle is exercised in test_cli_runtime.py.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.errors import AudioError, StoreError
from cvahash.library.index import Progress, content_hash, find_recordings, index_recordings
from cvahash.model.frontend import FrontendParams, log_mel
from cvahash.store.code_store import CodeStore


class StandInBundle:
    """What cvahash.library.index needs of a ModelBundle, in numpy: 64-bit codes from a fixed
    random projection of the mean log-mel per band and its time profile."""

    bits = 64
    fingerprint = "standin0standin0"
    path = Path("/nonexistent/standin-bundle")

    def __init__(self, fail_after_calls: int | None = None):
        self.frontend_params = FrontendParams()
        rng = np.random.default_rng(0)
        self.w = rng.standard_normal((64 + 1001, 64))
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = features[:, 0].astype(np.float64)  # [B, frames, mels]
        summary = np.concatenate([x.mean(axis=1), x.mean(axis=2)], axis=1)
        summary -= summary.mean(axis=1, keepdims=True)
        return summary @ self.w

    def encode_audio(self, features):
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise KeyboardInterrupt  # stands for a crash or power cut mid-file
        return np.packbits(self.logits(features) > 0, axis=1)


def tone(seconds: float, sr: int = 48000, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(int(freq))
    x = 0.2 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = 48000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path


def expected_windows(duration_s: float, window_s: float = 10.0, min_last_s: float = 1.0) -> int:
    full = math.floor(duration_s / window_s + 1e-9)
    tail = duration_s - full * window_s
    return full + (1 if tail >= min_last_s - 1e-9 else 0)


@pytest.fixture
def store(tmp_path):
    s = CodeStore.create(tmp_path / "db", StandInBundle.bits, StandInBundle.fingerprint)
    yield s
    s.close()


def test_windows_codes_and_metadata_go_in(tmp_path, store):
    bundle = StandInBundle()
    a = write(tmp_path / "rec" / "20240612_053000.wav", tone(25.0, freq=800))
    b = write(tmp_path / "rec" / "deep" / "b.flac", tone(20.0, sr=22050, freq=3000, channels=2),
              sr=22050)
    report = index_recordings([tmp_path / "rec"], store, bundle, station="ridge-2")
    assert report.exit_code == 0 and report.skipped == []
    assert sorted(report.indexed) == sorted([a, b])
    assert report.windows == expected_windows(25.0) + expected_windows(20.0) == 5
    assert report.audio_s == pytest.approx(45.0)

    hits = store.search(np.zeros(8, np.uint8), 100)[0]
    by_path = {}
    for h in hits:
        by_path.setdefault(Path(h.recording.path).name, []).append(h)
    wins = sorted(by_path["20240612_053000.wav"], key=lambda h: h.offset_s)
    assert [w.offset_s for w in wins] == [0.0, 10.0, 20.0]
    assert [w.length_s for w in wins] == [10.0, 10.0, 5.0]  # the 5 s tail is a window too
    t0 = datetime(2024, 6, 12, 5, 30, tzinfo=timezone.utc).timestamp()
    assert [w.capture_utc for w in wins] == pytest.approx([t0, t0 + 10, t0 + 20])
    assert {w.clock_source for w in wins} == {"filename"}
    rec = wins[0].recording
    assert rec.station == "ridge-2" and rec.sample_rate == 48000
    assert rec.duration_s == pytest.approx(25.0) and rec.content_hash == content_hash(a)
    assert rec.path == str(a.resolve())
    other = by_path["b.flac"][0].recording
    assert other.sample_rate == 22050 and other.start_utc is not None  # from its mtime
    assert by_path["b.flac"][0].clock_source == "file-mtime"

    # The stored codes are the codes of the windows, computed independently here.
    from cvahash.model.audio import iter_windows

    windows = list(iter_windows(a))
    want = bundle.encode_audio(log_mel([w.samples for w in windows], bundle.frontend_params))
    rows = [w.row for w in wins]
    got, _ = store.read(rows)
    assert np.array_equal(got, want)


def test_bad_files_are_named_skipped_and_the_rest_indexed(tmp_path, store):
    rec = tmp_path / "rec"
    good = write(rec / "good.wav", tone(12.0))
    (rec / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (rec / "empty.flac").write_bytes(b"")
    header_only = write(rec / "header_only.wav", tone(0.001))
    header_only.write_bytes(header_only.read_bytes()[:44])
    nan = tone(15.0).copy()
    nan[11 * 48000] = np.nan
    write(rec / "nan.wav", nan, subtype="FLOAT")
    write(rec / "short.wav", tone(0.5))  # under the 1 s minimum
    many = write(rec / "sixteen_channels.wav", tone(11.0, channels=16))
    absurd = write(rec / "absurd_rate.wav", tone(2.0))
    data = bytearray(absurd.read_bytes())
    data[24:28] = (1_000_000_000).to_bytes(4, "little")  # the WAV header's sample rate
    absurd.write_bytes(bytes(data))
    (rec / "notes.txt").write_text("not a recording")  # not an audio name: not even looked at

    lines = []

    class Capture:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    report = index_recordings([rec], store, StandInBundle(),
                              progress=Progress(8, stream=Capture()))
    assert report.exit_code == 3
    assert sorted(p.name for p in report.indexed) == ["good.wav", "sixteen_channels.wav"]
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert set(reasons) == {"garbage.wav", "empty.flac", "header_only.wav", "nan.wav",
                            "short.wav", "absurd_rate.wav"}
    assert "not an audio file" in reasons["garbage.wav"]
    assert "empty" in reasons["empty.flac"]
    assert "no audio samples" in reasons["header_only.wav"]
    assert "NaN" in reasons["nan.wav"] and "0:00:11" in reasons["nan.wav"]
    assert "shorter than the 1 s minimum" in reasons["short.wav"]
    assert "sample rate" in reasons["absurd_rate.wav"]
    for name, reason in reasons.items():
        assert name in reason  # every message names its file
    # The NaN file failed after its first window was encoded: none of it is stored.
    paths = {r.path for r in store.recordings()}
    assert paths == {str(good.resolve()), str(many.resolve())}
    assert len(store) == 2 + 2
    printed = "".join(lines)
    assert all(f"skipped {rec / n}" in printed for n in reasons)
    # Not a terminal: one status line per indexed file, and one at the end.
    status = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(status) == 3 and status[-1].startswith("[8/8 files 100%] 4 windows")
    summary = "\n".join(report.summary())
    assert "skipped 6 with problems" in summary and "indexed 2 files" in summary


def test_a_file_cut_off_mid_data_is_indexed_as_far_as_it_goes(tmp_path, store):
    cut = write(tmp_path / "rec" / "cut.wav", tone(25.0))
    data = cut.read_bytes()
    cut.write_bytes(data[: 44 + 2 * 48000 * 14])  # header says 25 s, 14 s of samples remain
    report = index_recordings([cut], store, StandInBundle())
    assert report.exit_code == 0 and report.windows == 2  # 0-10 s and the 4 s tail
    assert store.recordings()[0].duration_s == pytest.approx(14.0)


def test_resume_skips_what_is_in_and_redoes_a_file_cut_off_mid_way(tmp_path):
    rec = tmp_path / "rec"
    for i in range(3):
        write(rec / f"{i}.wav", tone(30.0, freq=500 + 300 * i))
    db = tmp_path / "db"
    with CodeStore.create(db, 64, StandInBundle.fingerprint) as store:
        # Each file is 3 windows = 2 encode calls at batch=2. The run "crashes" on the
        # second call: the first file was half encoded, so nothing of it may be stored.
        crashing = StandInBundle(fail_after_calls=1)
        with pytest.raises(KeyboardInterrupt):
            index_recordings([rec], store, crashing, batch=2)
    with CodeStore.open(db, "a") as store:
        assert store.recordings() == [] and len(store) == 0
    with CodeStore.open(db, "a") as store:
        crashing = StandInBundle(fail_after_calls=2)
        with pytest.raises(KeyboardInterrupt):
            index_recordings([rec], store, crashing, batch=2)
    with CodeStore.open(db, "a") as store:
        assert [Path(r.path).name for r in store.recordings()] == ["0.wav"]
        assert len(store) == 3
        report = index_recordings([rec], store, StandInBundle(), batch=2)
        assert [p.name for p in report.already] == ["0.wav"]
        assert [p.name for p in report.indexed] == ["1.wav", "2.wav"]
        assert len(store) == 9
        again = index_recordings([rec], store, StandInBundle())
        assert again.indexed == [] and len(again.already) == 3 and len(store) == 9
        # A rewritten file (new content, same name) is indexed again and its old version's
        # 3 windows are retired from search.
        write(rec / "2.wav", tone(20.0, freq=4000))
        changed = index_recordings([rec], store, StandInBundle())
        assert [p.name for p in changed.indexed] == ["2.wav"]
        assert changed.retired == 3
        hashes = [r.content_hash for r in store.recordings() if r.path.endswith("2.wav")]
        assert hashes == [content_hash(rec / "2.wav")]
        assert sum(seg.n_rows for seg, _ in store.iter_segments()) == 9 - 3 + 2


def test_missing_paths_and_folders_without_audio_are_errors(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(AudioError, match="no such file or folder"):
        find_recordings([tmp_path / "nope"])
    with pytest.raises(AudioError, match="no audio files under"):
        find_recordings([tmp_path / "empty_dir", tmp_path / "docs"])
    with pytest.raises(AudioError, match="no audio files under"):
        index_recordings([tmp_path / "docs"], None, StandInBundle())


def test_store_errors_stop_the_run_instead_of_skipping_files(tmp_path):
    write(tmp_path / "rec" / "a.wav", tone(10.0))
    with CodeStore.create(tmp_path / "db", 64, StandInBundle.fingerprint):
        pass
    with CodeStore.open(tmp_path / "db", "r") as read_only, \
            pytest.raises(StoreError, match="read-only"):
        index_recordings([tmp_path / "rec"], read_only, StandInBundle())


def test_content_hash_sees_changes_in_every_sampled_place_and_ignores_the_name(tmp_path):
    """The hash reads the size and 18 evenly spaced 64 KiB samples, not every byte: a
    change inside any sample or of the length is seen; a same-size change between the
    samples is not (the price of reading ~1 MB of an hours-long file)."""
    chunk, n = 1 << 16, 5_000_000
    data = bytearray(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8))
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(data))
    h = content_hash(big)
    assert h.startswith("s256:")
    copy = tmp_path / "copy.bin"
    copy.write_bytes(bytes(data))
    assert content_hash(copy) == h  # another name, the same bytes
    # The sampled places, computed independently: 18 starts spread evenly over the file.
    starts = [i * (n - chunk) // 17 for i in range(18)]
    for start in starts:
        for at in (start, start + chunk // 2, start + chunk - 1):
            changed = bytearray(data)
            changed[at] ^= 1
            copy.write_bytes(bytes(changed))
            assert content_hash(copy) != h, f"a change at byte {at} (sampled) was not seen"
    copy.write_bytes(bytes(data[:-1]))  # a truncated copy
    assert content_hash(copy) != h
    copy.write_bytes(bytes(data) + b"\0")  # an extended one
    assert content_hash(copy) != h
    gap = starts[1] - 1  # a byte between the first and the second sample
    assert starts[0] + chunk <= gap < starts[1]
    changed = bytearray(data)
    changed[gap] ^= 1
    copy.write_bytes(bytes(changed))
    assert content_hash(copy) == h  # the documented limit: not every byte is read
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    other = tmp_path / "small2.bin"
    other.write_bytes(b"abd")
    assert content_hash(small) != content_hash(other)
