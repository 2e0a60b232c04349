"""Search-side pieces that need no model: query checks, argument parsing, result output
(table, JSON, WAV snippets, spectrogram PNGs) and the PNG writer itself.

End-to-end search against a real tiny bundle lives in test_cli_runtime.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.errors import BundleError, CvahashError, InvalidArgument
from cvahash.library.library import BUNDLE_ENV, resolve_bundle
from cvahash.model.frontend import FrontendParams, log_mel
from cvahash.query.png import VIRIDIS_ANCHORS, colorize, encode_png, write_png
from cvahash.query.report import (
    clip_name,
    display_paths,
    format_span,
    format_table,
    to_json,
    write_clips,
    write_spectrograms,
)
from cvahash.query.results import SearchResult
from cvahash.query.search import (
    MAX_QUERY_CHARS,
    QueryError,
    parse_like,
    parse_offset,
    parse_when,
    prepare_query,
)
from cvahash.store.records import Hit, Recording

# --- an independent PNG reader (spec sections 5, 11, 12; filter type 0 only) ----------


def read_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kind == b"IEND"
    width, height, depth, colour, *_ = header
    assert depth == 8
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all()
    img = raw[:, 1:].reshape(height, width, channels)
    return img[:, :, 0] if channels == 1 else img


# --- queries --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\x00\x01"])
def test_empty_or_blank_query_is_refused_with_an_example(text):
    with pytest.raises(QueryError, match="empty.*type what you want to hear"):
        prepare_query(text)


def test_query_whitespace_and_control_characters_are_tidied():
    q, truncated, notes = prepare_query("  owl\thooting\x07 at   night \n")
    assert q == "owl hooting at night"
    assert not truncated and notes == []


def test_non_ascii_query_is_kept_normalised_with_a_note():
    decomposed = "Zaunko\u0308nig singt"  # o + combining diaeresis
    q, truncated, notes = prepare_query(decomposed)
    assert q == "Zaunk\u00f6nig singt"
    assert not truncated
    assert any("non-ASCII" in n for n in notes)
    assert prepare_query("鳥のさえずり")[0] == "鳥のさえずり"


def test_very_long_query_is_cut_at_a_word_boundary_with_a_note():
    text = " ".join(["woodpecker"] * 500)
    q, truncated, notes = prepare_query(text)
    assert truncated
    assert len(q) <= MAX_QUERY_CHARS
    assert text.startswith(q) and q.endswith("woodpecker")
    assert any("truncated" in n and str(len(text)) in n for n in notes)


def test_a_query_without_spaces_is_still_cut():
    q, truncated, _ = prepare_query("x" * 5000)
    assert truncated and len(q) == MAX_QUERY_CHARS


@pytest.mark.parametrize(
    "spec, path, start",
    [
        ("calls/wren.wav", "calls/wren.wav", 0.0),
        ("calls/wren.wav@12.5", "calls/wren.wav", 12.5),
        ("calls/wren.wav@1:05", "calls/wren.wav", 65.0),
        ("calls/wren.wav@1:00:05", "calls/wren.wav", 3605.0),
        ("me@home/wren.wav", "me@home/wren.wav", 0.0),  # '@' in a name, no time after it
        ("me@home/wren.wav@3", "me@home/wren.wav", 3.0),
    ],
)
def test_parse_like(spec, path, start):
    assert parse_like(spec) == (Path(path), start)


@pytest.mark.parametrize("bad", ["", "  ", "abc", "-3", "1:xx"])
def test_parse_offset_refuses_non_times(bad):
    with pytest.raises(QueryError):
        parse_offset(bad)
    if bad.strip():
        assert parse_like(f"a.wav@{bad}") == (Path(f"a.wav@{bad}"), 0.0)


def test_parse_when_defaults_to_utc_and_converts_zones():
    utc = timezone.utc
    assert parse_when("2024-06-12") == datetime(2024, 6, 12, tzinfo=utc)
    assert parse_when("2024-06-12", end_of_day=True) == datetime(2024, 6, 13, tzinfo=utc)
    assert parse_when("2024-06-12T05:30") == datetime(2024, 6, 12, 5, 30, tzinfo=utc)
    assert parse_when("2024-06-12T05:30Z", end_of_day=True) == datetime(2024, 6, 12, 5, 30,
                                                                        tzinfo=utc)
    assert parse_when("2024-06-12 07:30:00+02:00") == datetime(2024, 6, 12, 5, 30, tzinfo=utc)
    with pytest.raises(InvalidArgument, match="not a date/time"):
        parse_when("last tuesday")


def test_resolve_bundle_order_and_message(tmp_path, monkeypatch):
    monkeypatch.delenv(BUNDLE_ENV, raising=False)
    recorded = tmp_path / "bundle-a"
    recorded.mkdir()
    assert resolve_bundle("explicit", str(recorded)) == Path("explicit")
    assert resolve_bundle(None, str(recorded)) == recorded
    monkeypatch.setenv(BUNDLE_ENV, "/from/env")
    assert resolve_bundle(None, str(tmp_path / "gone")) == Path("/from/env")
    monkeypatch.delenv(BUNDLE_ENV)
    with pytest.raises(BundleError, match=r"no longer exists.*--bundle DIR.*CVAHASH_BUNDLE"):
        resolve_bundle(None, str(tmp_path / "gone"))
    with pytest.raises(BundleError, match=r"does not record.*--bundle DIR"):
        resolve_bundle(None, None)


# --- table and JSON -------------------------------------------------------------------


def test_format_span():
    assert format_span(0, 10) == "00:00-00:10"
    assert format_span(80, 90) == "01:20-01:30"
    assert format_span(3590, 3600) == "0:59:50-1:00:00"
    assert format_span(7200, 7203.5) == "2:00:00-2:00:03.5"


def test_display_paths_are_relative_to_the_common_folder():
    paths = ["/data/2024/06/a.wav", "/data/2024/07/b.wav", "/data/2024/06/c.flac"]
    assert display_paths(paths) == ["06/a.wav", "07/b.wav", "06/c.flac"]
    assert display_paths(["/data/x/a.wav"]) == ["a.wav"]
    assert display_paths(["/a.wav", "/b/c.wav"]) == ["/a.wav", "/b/c.wav"]


def _hit(rank, recording, start, distance=3, station="ridge-2", clock="audiomoth"):
    rec = Recording(path=str(recording), station=station or "", sample_rate=48000)
    return Hit(rank=rank, distance=distance, row=rank * 7, recording=rec, offset_s=start,
               length_s=10.0,
               capture_utc=datetime(2024, 6, 12, 5, 30, tzinfo=timezone.utc).timestamp(),
               clock_source=clock)


def test_format_table_has_every_column_aligned():
    hits = [_hit(1, "/d/s/a.wav", 80.0, 2), _hit(2, "/d/s/b.wav", 3600.0, 11, None, "file-mtime")]
    lines = format_table(hits).splitlines()
    assert lines[0].split() == ["rank", "distance", "recording", "start-end", "captured", "(UTC)",
                                "station"]
    assert lines[1].split() == ["1", "2", "a.wav", "01:20-01:30", "2024-06-12T05:30:00Z",
                                "ridge-2"]
    # an mtime-derived time is marked as a guess; a missing station shows "-"
    assert lines[2].split() == ["2", "11", "b.wav", "1:00:00-1:00:10", "2024-06-12T05:30:00Z~",
                                "-"]
    col = lines[0].index("recording")
    assert lines[1][col:].startswith("a.wav") and lines[2][col:].startswith("b.wav")


def test_json_document_has_query_metadata_and_every_hit():
    result = SearchResult("owl hooting", "text", 64, "abcd1234abcd1234", 2,
                          [_hit(1, "/d/a.wav", 0.0), _hit(2, "/d/b.wav", 10.0)],
                          truncated=True, notes=["query truncated"],
                          filters={"since": datetime(2024, 6, 1, tzinfo=timezone.utc),
                                   "station": None})
    doc = json.loads(to_json(result))
    assert doc["query"] == "owl hooting" and doc["bits"] == 64 and doc["truncated"] is True
    assert doc["fingerprint"] == "abcd1234abcd1234"
    assert doc["filters"] == {"since": "2024-06-01T00:00:00Z"}
    assert [h["rank"] for h in doc["hits"]] == [1, 2]
    h = doc["hits"][1]
    assert h["recording"] == "/d/b.wav" and h["start_s"] == 10.0 and h["end_s"] == 20.0
    assert h["capture_time"] == "2024-06-12T05:30:00Z" and h["clock_source"] == "audiomoth"
    assert h["station"] == "ridge-2" and h["sample_rate"] == 48000 and h["distance"] == 3


def test_clip_names_are_safe_and_ordered():
    assert clip_name(3, "/x/20240612_053000.WAV", 80.0) == "rank_03_20240612_053000_01m20s.wav"
    assert clip_name(12, "/x/a b?c.wav", 3725.5) == "rank_12_a-b-c_1h02m05s.wav"
    assert clip_name(1, "/x/wren.flac", 5, ".png") == "rank_01_wren_05s.png"


# --- snippets and spectrograms --------------------------------------------------------


@pytest.fixture
def recording(tmp_path):
    """30 s stereo 22.05 kHz, 24-bit: a distinct tone per 10 s so we know what is where."""
    sr = 22050
    t = np.arange(30 * sr) / sr
    freq = np.where(t < 10, 500.0, np.where(t < 20, 2000.0, 6000.0))
    left = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / sr)
    path = tmp_path / "rec" / "20240612_053000.wav"
    path.parent.mkdir()
    sf.write(path, np.stack([left, 0.5 * left], axis=1), sr, subtype="PCM_24")
    return path, np.stack([left, 0.5 * left], axis=1).astype(np.float32), sr


def test_clips_are_cut_from_the_original_with_context(recording, tmp_path):
    path, original, sr = recording
    gone = tmp_path / "rec" / "deleted.wav"
    hits = [_hit(1, path, 10.0), _hit(2, gone, 0.0), _hit(3, path, 20.0)]
    saved = write_clips(hits, tmp_path / "clips", context_s=1.0)
    assert [s.rank for s in saved] == [1, 2, 3]
    assert saved[1].path is None and "no longer exists" in saved[1].problem
    data, rate = sf.read(saved[0].path, dtype="float32")
    assert rate == sr and data.shape == (12 * sr, 2)
    assert sf.info(str(saved[0].path)).subtype == "PCM_24"
    np.testing.assert_allclose(data, original[9 * sr : 21 * sr], atol=1e-6)
    # the last hit's context is clipped at the end of the file
    data, _ = sf.read(saved[2].path, dtype="float32")
    np.testing.assert_allclose(data, original[19 * sr :], atol=1e-6)
    assert saved[0].path.name == "rank_01_20240612_053000_10s.wav"


def test_spectrograms_show_the_hit_window_with_frequency_upwards(recording, tmp_path):
    path, _, _ = recording
    params = FrontendParams()
    hits = [_hit(1, path, 0.0), _hit(2, path, 20.0), _hit(3, tmp_path / "nope.wav", 0.0)]
    saved = write_spectrograms(hits, tmp_path / "spec", params)
    assert saved[2].path is None and "no longer exists" in saved[2].problem
    low = read_png(saved[0].path.read_bytes())
    high = read_png(saved[1].path.read_bytes())
    assert low.shape == (3 * params.n_mels, params.n_frames, 3)

    def brightest_row(img):
        return int(np.argmax(img.astype(float).sum(axis=(1, 2))))

    # 500 Hz sits near the bottom, 6 kHz well above it (row 0 is the top of the picture)
    assert brightest_row(low) > brightest_row(high)
    mel = log_mel(np.sin(2 * np.pi * 500 * np.arange(480000) / 48000), params)[0, 0]
    expected_band = int(np.argmax(mel.mean(axis=0)))
    assert abs(brightest_row(low) // 3 - (params.n_mels - 1 - expected_band)) <= 1


# --- PNG writer -----------------------------------------------------------------------


def test_png_round_trips_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (7, 13), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    assert np.array_equal(read_png(encode_png(grey)), grey)
    assert np.array_equal(read_png(encode_png(rgb)), rgb)
    out = write_png(tmp_path / "x.png", rgb)
    assert np.array_equal(read_png(out.read_bytes()), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left


def test_png_matches_an_independent_decoder_when_available(tmp_path):
    mpimg = pytest.importorskip("matplotlib.image")
    rgb = colorize(np.random.default_rng(2).random((20, 30)))
    back = mpimg.imread(write_png(tmp_path / "c.png", rgb))
    assert np.array_equal(np.rint(back[..., :3] * 255).astype(np.uint8), rgb)


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8),
                                 np.zeros((0, 3), np.uint8), np.zeros(5, np.uint8)])
def test_png_refuses_what_it_cannot_write(bad):
    with pytest.raises(InvalidArgument):
        encode_png(bad)


def test_colour_map_runs_dark_to_bright_and_handles_odd_values():
    ramp = colorize(np.linspace(0, 1, 17)[None, :])[0]
    assert np.array_equal(ramp, VIRIDIS_ANCHORS.astype(np.uint8))
    luminance = ramp @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(luminance) > 0).all()
    odd = colorize(np.array([[np.nan, np.inf, 5.0, 5.0]]))
    assert (odd[0, :2] == 0).all() and (odd[0, 2] == VIRIDIS_ANCHORS[0]).all()
    assert isinstance(QueryError("x"), CvahashError)


# --- query by example: the window that is searched for ----------------------------------


@pytest.mark.parametrize("start", [0.0, 5.0, 12.5, 27.0])
def test_example_window_is_the_audio_from_start(recording, start):
    from cvahash.model.audio import load
    from cvahash.query.search import example_window

    path, _, _ = recording  # 30 s at 22.05 kHz, stereo: resampled and downmixed
    params = FrontendParams()
    whole = load(path, params.sample_rate)
    got = example_window(path, start, params)
    first = round(start * params.sample_rate)
    want = whole[first : first + params.n_samples]
    assert got.shape == want.shape  # 10 s, or what is left near the end (27 s -> 3 s)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_example_window_past_the_end_is_refused(recording):
    from cvahash.query.search import example_window

    with pytest.raises(QueryError, match="past the end"):
        example_window(recording[0], 30.0, FrontendParams())
