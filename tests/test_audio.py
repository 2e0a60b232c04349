"""cvahash.model.audio: reading, resampling, streaming windows, bad files, capture times.

Files are written with soundfile (or byte by byte where a recorder's or a broken
header is the point) in tmp dirs. References: numpy sines at the target rate, soxr's
one-shot resampling of the whole file, hand-computed downmixes and times.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from cvahash.errors import AudioError
from cvahash.model.audio import (
    AUDIO_EXTENSIONS,
    AudioInfo,
    Window,
    capture_time,
    find_audio,
    iter_windows,
    load,
    probe,
)

SR = 48000
UTC = timezone.utc


def _write(path: Path, sr: int, channels: int, seconds: float, fmt: str = "WAV", subtype=None):
    """A distinct sine per channel (and a little noise), written with soundfile."""
    n = round(sr * seconds)
    t = np.arange(n) / sr
    rng = np.random.default_rng(sr + channels)
    data = np.stack(
        [0.2 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], axis=1
    ) + 0.01 * rng.standard_normal((n, channels))
    sf.write(str(path), data.astype(np.float32), sr, format=fmt, subtype=subtype)
    return data


def _riff(fmt_fields: tuple, data: bytes, extra_chunks: bytes = b"") -> bytes:
    """A WAV file byte by byte: fmt chunk (tag, channels, rate, byte rate, align, bits)."""
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, *fmt_fields)
    body = b"WAVE" + fmt + extra_chunks + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm16_wav(sr=SR, channels=1, n=4800, tag=1) -> bytes:
    return _riff((tag, channels, sr, sr * 2 * channels, 2 * channels, 16), bytes(2 * n * channels))


def _audiomoth_wav(comment: str, sr=SR, n=4800) -> bytes:
    """The chunk layout AudioMoth firmware writes: RIFF, fmt, LIST/INFO (ICMT, IART), data."""

    def sub(tag: bytes, text: str) -> bytes:
        raw = text.encode() + b"\0"
        raw += b"\0" * (len(raw) % 2)
        return tag + struct.pack("<I", len(raw)) + raw

    info = b"INFO" + sub(b"ICMT", comment) + sub(b"IART", "AudioMoth 24F319055F3B")
    lst = b"LIST" + struct.pack("<I", len(info)) + info
    return _riff((1, 1, sr, sr * 2, 2, 16), bytes(2 * n), lst)


# --- probe and load -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,sr,channels",
    [
        ("WAV", 8000, 1),
        ("WAV", 22050, 2),
        ("WAV", 44100, 6),
        ("WAV", 96000, 2),
        ("WAV", 192000, 1),
        ("FLAC", 8000, 2),
        ("FLAC", 44100, 1),
        ("FLAC", 96000, 6),
        ("FLAC", 192000, 2),
        ("OGG", 22050, 1),
        ("OGG", 44100, 2),
        ("OGG", 48000, 6),
    ],
)
def test_probe_load_and_stream_agree(tmp_path, fmt, sr, channels):
    path = tmp_path / f"rec.{fmt.lower()}"
    data = _write(path, sr, channels, 2.3, fmt)
    info = probe(path)
    assert (info.sample_rate, info.channels, info.format) == (sr, channels, fmt)
    assert info.frames == len(data) and info.duration_s == pytest.approx(2.3, abs=1e-3)

    whole = load(path)
    assert whole.dtype == np.float32 and whole.ndim == 1
    assert len(whole) == pytest.approx(2.3 * SR, abs=2)
    if fmt != "OGG":  # lossless: the reference is the written data, downmixed and resampled
        ref = soxr.resample(data.astype(np.float32).mean(axis=1), sr, SR, quality="HQ")
        np.testing.assert_allclose(whole, ref, atol=1e-4)  # PCM_16/FLAC quantisation

    # Streaming in small blocks must give the whole-file resampling, window by window.
    wins = list(iter_windows(path, window_s=0.5, hop_s=0.5, min_last_s=0.0, block_s=0.37))
    assert [w.offset_s for w in wins] == pytest.approx([0.5 * i for i in range(len(wins))])
    streamed = np.concatenate([w.samples for w in wins])
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_resampled_sine_is_a_sine(tmp_path):
    """Independent of soxr: a 1 kHz tone at 44.1 kHz read at 48 kHz is the 48 kHz tone."""
    path = tmp_path / "tone.wav"
    t = np.arange(44100 * 2) / 44100
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * 1000 * t), 44100, subtype="FLOAT")
    x = load(path)
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(x)) / SR)
    np.testing.assert_allclose(x[2000:-2000], ref[2000:-2000], atol=2e-3)


def test_downmix_is_channel_mean(tmp_path):
    path = tmp_path / "st.wav"
    rng = np.random.default_rng(0)
    data = (0.3 * rng.standard_normal((SR, 3))).astype(np.float32)
    sf.write(str(path), data, SR, subtype="FLOAT")
    np.testing.assert_allclose(load(path), data.mean(axis=1), atol=1e-7)
    # opposite channels cancel
    sf.write(str(path), np.stack([data[:, 0], -data[:, 0]], axis=1), SR, subtype="FLOAT")
    np.testing.assert_array_equal(load(path), 0.0)


def test_load_other_rate(tmp_path):
    path = tmp_path / "a.flac"
    _write(path, 44100, 1, 1.0, "FLAC")
    assert len(load(path, sample_rate=16000)) == pytest.approx(16000, abs=1)
    with pytest.raises(ValueError, match="sample_rate"):
        load(path, sample_rate=100)


def test_audio_info_fields(tmp_path):
    path = tmp_path / "x.wav"
    _write(path, 22050, 2, 1.0, subtype="PCM_24")
    assert probe(path) == AudioInfo(
        path=path,
        sample_rate=22050,
        channels=2,
        frames=22050,
        duration_s=1.0,
        format="WAV",
        subtype="PCM_24",
        comment=None,
        truncated=False,
    )


# --- windows --------------------------------------------------------------------------


def _spans(path, **kw):
    return [(round(w.offset_s, 6), round(w.length_s, 6)) for w in iter_windows(path, **kw)]


def test_window_layout_and_last_partial(tmp_path):
    path = tmp_path / "23s.wav"
    sf.write(str(path), np.zeros(23 * 8000, np.int16), 8000)
    assert _spans(path) == [(0, 10), (10, 10), (20, 3)]
    assert _spans(path, min_last_s=4.0) == [(0, 10), (10, 10)]
    # overlapping: one partial window reaches the end, no second one inside it
    assert _spans(path, hop_s=5.0) == [(0, 10), (5, 10), (10, 10), (15, 8)]
    assert _spans(path, window_s=4.0, hop_s=6.0) == [(0, 4), (6, 4), (12, 4), (18, 4)]
    w = next(iter_windows(path))
    assert isinstance(w, Window) and w.samples.dtype == np.float32 and len(w.samples) == 10 * SR


def test_window_end_exactly_at_file_end(tmp_path):
    path = tmp_path / "20s.wav"
    sf.write(str(path), np.zeros(20 * SR, np.int16), SR)
    assert _spans(path) == [(0, 10), (10, 10)]
    assert _spans(path, hop_s=5.0) == [(0, 10), (5, 10), (10, 10)]


def test_file_shorter_than_min_last_yields_nothing(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), np.zeros(SR // 2, np.int16), SR)
    assert _spans(path) == []
    assert _spans(path, min_last_s=0.1) == [(0, 0.5)]


def test_windows_are_independent_copies(tmp_path):
    path = tmp_path / "n.wav"
    _write(path, SR, 1, 3.0)
    wins = list(iter_windows(path, window_s=1.0, hop_s=0.5, block_s=0.3))
    whole = load(path)
    for w in wins:
        i = round(w.offset_s * SR)
        np.testing.assert_array_equal(w.samples, whole[i : i + len(w.samples)])
        assert w.samples.base is None or w.samples.base is not wins[0].samples.base


@pytest.mark.parametrize(
    "kw", [{"window_s": 0}, {"hop_s": -1}, {"block_s": float("nan")}, {"min_last_s": 11.0}]
)
def test_bad_window_arguments(tmp_path, kw):
    path = tmp_path / "n.wav"
    _write(path, SR, 1, 0.5)
    with pytest.raises(ValueError, match=next(iter(kw))):
        iter_windows(path, **kw)


# --- bad files ------------------------------------------------------------------------


def _assert_audio_error(path, *phrases):
    for fn in (probe, load, iter_windows):
        with pytest.raises(AudioError) as e:
            fn(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and msg.endswith(")"), msg
        for phrase in phrases:
            assert phrase in msg, msg


def test_missing_file(tmp_path):
    _assert_audio_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path):
    _assert_audio_error(tmp_path, "directory")


def test_zero_length(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _assert_audio_error(tmp_path / "empty.wav", "empty")


def test_text_renamed_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("site 4, recorder swapped on Tuesday\n" * 10)
    _assert_audio_error(tmp_path / "notes.wav", "not an audio file")


@pytest.mark.parametrize("cut", [12, 30, 40])
def test_truncated_header(tmp_path, cut):
    path = tmp_path / "cut.wav"
    sf.write(str(path), np.zeros(SR, np.int16), SR)
    path.write_bytes(path.read_bytes()[:cut])
    _assert_audio_error(path, "header")


def test_truncated_data_reads_what_is_there(tmp_path):
    path = tmp_path / "cut.wav"
    x = (np.arange(SR) % 1000).astype(np.int16)
    sf.write(str(path), x, SR)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 2 * 10000 - 1])  # cut mid-sample, too
    info = probe(path)
    assert info.truncated and info.frames == SR - 10001
    np.testing.assert_array_equal(load(path), x[: SR - 10001] / 32768.0)


def test_unsupported_encoding(tmp_path):
    path = tmp_path / "codec.wav"
    path.write_bytes(_pcm16_wav(tag=0x1234))
    _assert_audio_error(path, "unsupported")


@pytest.mark.parametrize("rate", [1, 4000, 400_000, 10_000_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = tmp_path / "rate.wav"
    path.write_bytes(_pcm16_wav(sr=rate))
    _assert_audio_error(path, "sample rate", str(rate))


def test_zero_frames(tmp_path):
    path = tmp_path / "hdr.wav"
    path.write_bytes(_pcm16_wav(n=0))
    _assert_audio_error(path, "no audio samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_named_with_time(tmp_path, bad):
    path = tmp_path / "nan.wav"
    x = np.zeros((3 * SR, 2), np.float32)
    x[SR * 3 // 2 + 24, 1] = bad  # 1.5005 s, second channel
    sf.write(str(path), x, SR, subtype="FLOAT")
    assert probe(path).frames == 3 * SR  # the header is fine
    for make in (lambda: load(path), lambda: list(iter_windows(path, block_s=0.7))):
        with pytest.raises(AudioError, match="NaN or infinite") as e:
            make()
        assert str(path) in str(e.value) and "1.500 s" in str(e.value)
        assert "0:00:01.500" in str(e.value) and "channel 2" in str(e.value)


def test_non_finite_after_resampling_rate(tmp_path):
    path = tmp_path / "nan44.wav"
    x = np.zeros(44100 * 4, np.float32)
    x[44100 * 3] = np.nan
    sf.write(str(path), x, 44100, subtype="FLOAT")
    it = iter_windows(path, window_s=1.0, hop_s=1.0, block_s=1.0)
    assert len([next(it) for _ in range(2)]) == 2  # the part before is fine
    with pytest.raises(AudioError, match="3.000 s"):
        list(it)


# --- capture time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "comment,expected",
    [
        (
            (
                "Recorded at 05:30:00 12/06/2024 (UTC) by AudioMoth 24F319055F3B at medium gain "
                "while battery was 4.2V and temperature was 15.1C."
            ),
            datetime(2024, 6, 12, 5, 30, tzinfo=UTC),
        ),
        (
            (
                "Recorded at 21:00:00 24/07/2019 (UTC+1) by AudioMoth 24A04F085664B4E7 at medium "
                "gain while battery was 4.7V and temperature was 19.4C."
            ),
            datetime(2019, 7, 24, 20, 0, tzinfo=UTC),
        ),
        (
            "Recorded at 01:15:00 01/01/2023 (UTC-5) by AudioMoth 0FE081F80FE081F0",
            datetime(2023, 1, 1, 6, 15, tzinfo=UTC),
        ),
        (
            "Recorded at 06:00:00 02/03/2022 (UTC+5:30) by AudioMoth 1234",
            datetime(2022, 3, 2, 0, 30, tzinfo=UTC),
        ),
        (
            "Recorded at 10:30:00.250 24/02/2019 (UTC) by AudioMoth 0FE081F80FE081F0",
            datetime(2019, 2, 24, 10, 30, 0, 250000, tzinfo=UTC),
        ),
        (
            "Recorded at 10:30:00 24/02/2017 by AudioMoth 0FE081F80FE081F0 at gain setting 2",
            datetime(2017, 2, 24, 10, 30, tzinfo=UTC),
        ),
    ],
)
def test_audiomoth_comment(tmp_path, comment, expected):
    # the name carries another time: the recorder's own clock in the header wins
    path = tmp_path / "20000101_000000.WAV"
    path.write_bytes(_audiomoth_wav(comment))
    info = probe(path)
    assert info.comment == comment
    assert capture_time(path) == (expected, "audiomoth")
    assert capture_time(path, info) == (expected, "audiomoth")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("20240612_053000.WAV", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("20240612T053000.wav", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("S4A12345_20240612_053000.wav", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("SMM04321_20240612_053000_000.flac", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("site3-2024-06-12T05-30-00.wav", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("20240612_053000+0200.wav", datetime(2024, 6, 12, 3, 30, tzinfo=UTC)),
        ("20240612T053000-05:00.wav", datetime(2024, 6, 12, 10, 30, tzinfo=UTC)),
        ("20240612T053000Z.wav", datetime(2024, 6, 12, 5, 30, tzinfo=UTC)),
        ("5D2F8F90.WAV", datetime.fromtimestamp(0x5D2F8F90, tz=UTC)),  # old AudioMoth
    ],
)
def test_filename_time(tmp_path, name, expected):
    path = tmp_path / name
    sf.write(str(path), np.zeros(800, np.int16), 8000, format="FLAC" if "flac" in name else "WAV")
    assert capture_time(path) == (expected, "filename")


@pytest.mark.parametrize(
    "name", ["20241345_990000.wav", "recording.wav", "12345678.wav", "2024_0612.wav", "x.wav"]
)
def test_unparseable_falls_back_to_mtime(tmp_path, name):
    path = tmp_path / name
    sf.write(str(path), np.zeros(800, np.int16), 8000)
    when = datetime(2024, 5, 1, 12, 0, 7, tzinfo=UTC)
    os.utime(path, (when.timestamp(), when.timestamp()))
    assert capture_time(path) == (when, "file-mtime")


def test_capture_time_of_missing_or_broken_file(tmp_path):
    assert capture_time(tmp_path / "gone.wav") == (None, "unknown")
    junk = tmp_path / "20240612_053000.wav"
    junk.write_text("not audio")
    assert capture_time(junk) == (datetime(2024, 6, 12, 5, 30, tzinfo=UTC), "filename")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_capture_time_never_raises_on_odd_names(tmp_path_factory, name):
    from cvahash.model.audio import parse_audiomoth_comment, parse_filename_time

    t = parse_filename_time(name)
    assert t is None or t.tzinfo is not None
    t = parse_audiomoth_comment(name)
    assert t is None or t.tzinfo is not None


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2090, 1, 1)))
def test_filename_time_round_trip(when):
    from cvahash.model.audio import parse_filename_time

    when = when.replace(microsecond=0, tzinfo=UTC)
    assert parse_filename_time(when.strftime("%Y%m%d_%H%M%S.WAV")) == when
    later = when + timedelta(hours=1)
    assert parse_filename_time(later.strftime("X_%Y%m%dT%H%M%S+0100.wav")) == when


# --- finding files --------------------------------------------------------------------


def test_find_audio(tmp_path):
    for rel in [
        "b/20240101_000000.WAV",
        "a.flac",
        "b/c/d.ogg",
        "b/notes.txt",
        ".hidden.wav",
        "b/._a.WAV",
        ".cache/x.wav",
        "b/c/e.Wav",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "b")  # not followed: no duplicates, no loops
    expected = [tmp_path / r for r in ["a.flac", "b/20240101_000000.WAV", "b/c/d.ogg", "b/c/e.Wav"]]
    assert find_audio(tmp_path) == expected
    assert find_audio([tmp_path / "b" / "c", str(tmp_path / "a.flac")]) == [
        expected[0],
        *expected[2:],
    ]
    assert find_audio([tmp_path / "b/notes.txt"]) == [tmp_path / "b/notes.txt"]
    with pytest.raises(AudioError, match="no such file"):
        find_audio([tmp_path / "missing"])


def test_extensions_are_readable_formats():
    assert {".wav", ".flac", ".ogg"} <= AUDIO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)


# --- memory ---------------------------------------------------------------------------


def _sparse_wav(path: Path, sr: int, seconds: int) -> None:
    """A long silent PCM-16 WAV written in no time: header, then a sparse file extension."""
    size = 2 * sr * seconds
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    header = b"RIFF" + struct.pack("<I", 4 + len(fmt) + 8 + size) + b"WAVE" + fmt
    header += b"data" + struct.pack("<I", size)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + size)


def _peak_streaming(path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = 0
        for w in iter_windows(path):
            count += 1
            del w
        return tracemalloc.get_traced_memory()[1], count
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_one_hour_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "hour.wav"
    _sparse_wav(path, SR, 3600)
    assert probe(path).duration_s == 3600
    peak, count = _peak_streaming(path)
    assert count == 360
    # one 60 s block read (11.5 MB) + the buffer (block + window) + one window: ~30 MB;
    # the file itself is 345 MB.
    assert peak < 40e6, peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path):
    short, long = tmp_path / "10min.wav", tmp_path / "2h.wav"
    _sparse_wav(short, 44100, 600)  # 44.1 kHz, so the resampling stream is exercised
    _sparse_wav(long, 44100, 7200)
    peak_short, n_short = _peak_streaming(short)
    peak_long, n_long = _peak_streaming(long)
    assert (n_short, n_long) == (60, 720)
    assert peak_long <= peak_short * 1.02 + 65536, (peak_short, peak_long)


def test_truncated_flac_streams_up_to_the_damage(tmp_path):
    """A FLAC cut off (power loss while copying): the windows before the cut come out,
    then an AudioError says where the data became unreadable."""
    path = tmp_path / "cut.flac"
    _write(path, SR, 1, 10.0, "FLAC")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    got = []
    windows = iter_windows(path, window_s=1.0, hop_s=1.0, block_s=0.5)
    with pytest.raises(AudioError, match="unreadable audio data between") as e:
        got.extend(windows)  # extend keeps what came before the exception
    assert len(got) >= 3, [w.offset_s for w in got]
    assert str(path) in str(e.value)
    with pytest.raises(AudioError, match="unreadable"):
        load(path)
