"""Search-side pieces that need no model: query checks, argument parsing, result output
(table, JSON, WAV snippets, spectrogram PNGs).

End-to-end search against a real tiny bundle lives in test_cli_runtime.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.errors import BundleError, CvahashError, InvalidArgument
from cvahash.library.library import BUNDLE_ENV, resolve_bundle
from cvahash.model.frontend import FrontendParams
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
    from cvahash.query import plots

    path, _, _ = recording
    params = FrontendParams()
    hits = [_hit(1, path, 0.0), _hit(2, path, 20.0), _hit(3, tmp_path / "nope.wav", 0.0)]
    saved = write_spectrograms(hits, tmp_path / "spec", params, query="owl hooting")
    assert saved[2].path is None and "no longer exists" in saved[2].problem
    mpimg = pytest.importorskip("matplotlib.image")
    for s in saved[:2]:
        assert mpimg.imread(s.path).shape[1] > 800  # a real picture, axes and all
    assert sorted(p.name for p in (tmp_path / "spec").iterdir()) == [
        "rank_01_20240612_053000_00s.png", "rank_02_20240612_053000_20s.png"]

    # The drawn picture: the loudest mel row of the 500 Hz window lies at 0.5 kHz on the
    # frequency axis, the 6 kHz window's well above it.
    centres = plots.mel_centres_hz(params)

    def loudest_khz(start):
        x = sf.read(path, start=int(start * 22050), stop=int((start + 10) * 22050),
                    dtype="float32")[0].mean(axis=1)
        import soxr
        fig = plots.spectrogram_figure(soxr.resample(x, 22050, 48000), params, start_s=start,
                                       capture_time=None, title="t")
        mel = fig.axes[0].images[0].get_array()
        return centres[int(np.argmax(np.asarray(mel).mean(axis=1)))] / 1000

    assert abs(loudest_khz(0.0) - 0.5) < 0.06 and abs(loudest_khz(20.0) - 6.0) < 0.4


def test_a_spectrogram_says_what_a_person_needs_to_read_it():
    """Axes in seconds, clock time and kHz, a title with the query, rank, distance,
    station and capture time, a colour scale; a short window's repeat padding greyed
    with the end of the recording marked (a 2.3 s call must not read as four calls)."""
    from cvahash.query import plots

    params = FrontendParams()
    t = np.arange(int(2.3 * 48000)) / 48000
    call = (0.3 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
    hit = Hit(rank=2, distance=7, row=0, recording=Recording(path="/x/owl.wav",
                                                             station="ridge-2"),
              offset_s=30.0, length_s=2.3, clock_source="gps",
              capture_utc=datetime(2024, 6, 12, 5, 30, 30, tzinfo=timezone.utc).timestamp())
    title, sub = plots.hit_title(hit, "owl hooting")
    fig = plots.spectrogram_figure(call, params, start_s=30.0,
                                   capture_time=hit.known_capture_time,
                                   title=title, subtitle=sub)
    ax = fig.axes[0]
    text = ax.get_title(loc="left")
    for part in ('"owl hooting"', "rank 2", "distance 7 bits", "station ridge-2",
                 "2024-06-12 05:30:30 UTC"):
        assert part in text, (part, text)
    assert ax.get_xlabel() == "seconds into the recording"
    assert "kHz" in ax.get_ylabel()
    assert ax.get_xlim() == pytest.approx((30.0, 40.0), abs=0.02)
    assert any(a.get_label() == "<colorbar>" or "dB" in a.get_ylabel() for a in fig.axes[1:])
    fig.canvas.draw()
    clock = [a for a in ax.child_axes]
    labels = [lb.get_text() for lb in clock[0].get_xticklabels() if lb.get_text()]
    assert "05:30:30" in labels and "05:30:34" in labels  # 30 s into a file started 05:30:00
    ticks = [lb.get_text() for lb in ax.get_yticklabels()]
    assert "1" in ticks and "8" in ticks
    grey = [p for p in ax.patches if p.get_x() == pytest.approx(32.3, abs=0.02)]
    assert grey and grey[0].get_width() == pytest.approx(7.7, abs=0.02)
    (note,) = [t.get_text() for t in ax.texts if "end of recording" in t.get_text()]
    assert "2.3 s 3 more times" in note and "0.8 s of silence" in note
    # ... which is what the front-end fed the model: three more copies, then the floor
    from cvahash.model.frontend import MEL_FLOOR, log_mel
    mel = log_mel(call, params)[0, 0]
    frame = params.hop_length / params.sample_rate
    floor = 10 * np.log10(MEL_FLOOR)
    first = np.median(mel[5:int(2.0 / frame)].max(axis=1))
    fourth = np.median(mel[int(3 * 2.3 / frame) + 5:int((3 * 2.3 + 2.0) / frame)].max(axis=1))
    assert abs(fourth - first) < 1.0 and first > floor + 50
    assert np.allclose(mel[int(4 * 2.3 / frame) + 3:], floor)  # past the last frame's reach
    whole = plots.spectrogram_figure(np.tile(call, 5), params, start_s=0.0, capture_time=None,
                                     title="t")
    assert not whole.axes[0].patches and not whole.axes[0].texts  # a full window: no mark
    assert isinstance(QueryError("x"), CvahashError)


def test_spectrograms_without_matplotlib_name_the_install_command(monkeypatch, tmp_path):
    import builtins

    from cvahash.errors import MissingExtra

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingExtra, match=r"pip install '\.\[plots\]'"):
        write_spectrograms([], tmp_path / "spec", FrontendParams())
    assert not (tmp_path / "spec").exists()


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
