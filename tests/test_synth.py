"""The synthetic corpus: call types, captions, splits, SNR, soundscapes, the command.

Everything runs at 16 kHz on a few dozen clips so the file takes seconds, not minutes.
"""

from __future__ import annotations

import itertools
import json
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from cvahash.cli import main
from cvahash.errors import InvalidArgument
from cvahash.export.synth import corpus as synth
from cvahash.export.synth.backgrounds import SNR_RANGE_DB
from cvahash.export.synth.captions import (
    ATTRIBUTE_WORDS,
    BACKGROUND_TEMPLATES,
    OVERLAP_TEMPLATES,
    QUIET_TEMPLATES,
    SEQUENCE_TEMPLATES,
    TRIPLE_TEMPLATES,
    contains_phrase,
)

SR = 16000
SEED = 7
N_CLIPS = 40


def band_fraction(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float(power[(f >= lo) & (f <= hi)].sum() / power.sum())


def centroid(x: np.ndarray, sr: int) -> float:
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    return float((power * np.fft.rfftfreq(len(x), 1.0 / sr)).sum() / power.sum())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = synth.generate_corpus(out, n=N_CLIPS, seed=SEED, sample_rate=SR)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    return out, records


# ------------------------------------------------------------------ call types

def test_registry_has_at_least_30_distinct_call_types():
    labels = [c.label for c in synth.CALL_TYPES]
    names = [c.name for c in synth.CALL_TYPES]
    assert len(set(labels)) == len(labels) >= 30
    assert len(set(names)) == len(names)
    assert len({c.family for c in synth.CALL_TYPES}) >= 5
    # confusable families exist on purpose
    assert sum(c.family == "whistle" for c in synth.CALL_TYPES) >= 4
    for c in synth.CALL_TYPES:
        assert c.heldout_phrases and len(c.phrases) >= 2, c.label


@pytest.mark.parametrize("call", synth.CALL_TYPES, ids=lambda c: c.label)
def test_call_type_makes_finite_audible_audio_in_range(call):
    duration = call.duration[0] + 0.5
    x = call.generate(np.random.default_rng(1), 32000, duration)
    assert x.dtype == np.float32 and x.shape == (round(duration * 32000),)
    assert np.isfinite(x).all()
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 0.01  # not silent
    # the model hears 50 Hz - 14 kHz; the registry says where the energy is
    assert band_fraction(x, 32000, 80, 14500) > 0.97
    assert band_fraction(x, 32000, *call.band) > 0.8
    # same generator state, same audio
    assert np.array_equal(x, call.generate(np.random.default_rng(1), 32000, duration))


@pytest.mark.parametrize("call", synth.CALL_TYPES, ids=lambda c: c.label)
def test_pitch_knob_moves_the_spectrum(call):
    # 32 kHz: at 16 kHz the katydid's 8-12 kHz band is cut at the 7.2 kHz limit
    low = call.render(np.random.default_rng(2), 32000, 3.0, pitch=-1.0)
    high = call.render(np.random.default_rng(2), 32000, 3.0, pitch=1.0)
    assert centroid(high, 32000) > centroid(low, 32000) * 1.03


def test_tempo_knob_changes_repetition():
    call = synth.call_type("spring_peeper")
    slow = call.render(np.random.default_rng(3), SR, 6.0, tempo=-1.0)
    fast = call.render(np.random.default_rng(3), SR, 6.0, tempo=1.0)

    def onsets(x):
        env = np.abs(x).reshape(-1, SR // 100).max(axis=1) > 0.05
        return int(np.sum(env[1:] & ~env[:-1]))
    assert onsets(fast) > onsets(slow)


# ---------------------------------------------------------------- vocabulary

def test_heldout_words_never_occur_in_seen_vocabulary():
    seen_texts = [p for c in synth.CALL_TYPES for p in c.phrases]
    seen_texts += [w for seen, _held in ATTRIBUTE_WORDS.values() for w in seen]
    for pair in (SEQUENCE_TEMPLATES, OVERLAP_TEMPLATES, TRIPLE_TEMPLATES,
                 BACKGROUND_TEMPLATES, QUIET_TEMPLATES):
        seen_texts += list(pair[0])
    for marker in synth.heldout_markers():
        hits = [t for t in seen_texts if contains_phrase(t, marker)]
        assert not hits, f"held-out {marker!r} occurs in seen {hits}"


def test_queries_for_every_call_type():
    for c in synth.CALL_TYPES:
        queries = synth.queries_for(c.label)
        assert len(queries) >= 3 and all(isinstance(q, str) and q for q in queries)
        held = synth.queries_for(c.label, heldout=True)
        assert held and set(held) <= set(c.heldout_phrases)
        assert set(synth.queries_for(c.label, heldout=False)) == set(c.phrases)
    with pytest.raises(KeyError, match="woodpecker_drumming"):
        synth.queries_for("unicorn_singing")


# ------------------------------------------------------------------- corpus

def test_manifest_schema_and_files(corpus):
    out, records = corpus
    assert len(records) == N_CLIPS
    assert {r["split"] for r in records} == {"train", "val", "test"}
    for r in records:
        assert set(r) >= {"audio", "caption", "labels", "split", "background", "snr_db",
                          "sources", "duration_s", "sample_rate"}
        info = sf.info(str(out / r["audio"]))
        assert info.samplerate == r["sample_rate"] == SR and info.channels == 1
        assert info.frames == round(r["duration_s"] * SR)
        assert 3.0 <= r["duration_s"] <= 15.0
        assert 1 <= len(r["labels"]) <= 3 and len(set(r["labels"])) == len(r["labels"])
        assert r["labels"] == [s["label"] for s in r["sources"]]
        assert all(label in synth.CALLS for label in r["labels"])
        assert r["background"] in synth.BACKGROUNDS
        for s in r["sources"]:
            assert 0 <= s["onset_s"] < s["offset_s"] <= r["duration_s"] + 1e-6
        data, _ = sf.read(str(out / r["audio"]))
        assert np.isfinite(data).all() and 0.05 < np.max(np.abs(data)) < 1.0


def test_captions_name_every_call(corpus):
    _out, records = corpus
    for r in records:
        for label in r["labels"]:
            c = synth.call_type(label)
            assert any(contains_phrase(r["caption"], p) for p in c.phrases + c.heldout_phrases), \
                (label, r["caption"])


def test_snr_is_what_was_asked(corpus):
    out, records = corpus
    for r in records[:12]:
        clip = synth.render_clip(int(r["id"]), SEED, r["split"], SR)
        written, _ = sf.read(str(out / r["audio"]), dtype="float64")
        # the file is calls + background, up to 16-bit rounding
        assert np.max(np.abs(written - (clip.calls + clip.background))) < 2e-4
        # measure over the manifest's source windows, from the written audio
        mask = np.zeros(len(written), dtype=bool)
        for s in r["sources"]:
            mask[round(s["onset_s"] * SR): round(s["offset_s"] * SR)] = True
        calls = written - clip.background
        snr = 10 * np.log10(np.sum(calls[mask] ** 2) / np.sum(clip.background[mask] ** 2))
        assert abs(snr - r["snr_db"]) < 1.0, (r["id"], snr, r["snr_db"])
        lo, hi = SNR_RANGE_DB[r["background"]]
        assert lo <= r["snr_db"] <= hi


def test_splits_hold_out_phrasings_and_stream(corpus):
    _out, records = corpus
    markers = synth.heldout_markers()
    for r in records:
        if r["split"] == "test":
            continue
        assert r["background"] not in synth.HELDOUT_BACKGROUNDS, r
        assert not r["heldout_phrasing"] and not r["heldout_background"]
        found = [m for m in markers if contains_phrase(r["caption"], m)]
        assert not found, (r["caption"], found)
    # the test split uses what train never sees (enough test clips to be sure)
    tests = [synth.render_clip(i, SEED, "test", SR).record for i in range(25)]
    assert any(t["background"] == "stream" for t in tests)
    assert any(t["heldout_phrasing"] for t in tests)
    assert any(t["heldout_phrasing"] and any(contains_phrase(t["caption"], m) for m in markers)
               for t in tests)


def test_extra_train_clips_are_the_pools_and_hold_nothing_out(tmp_path):
    """``extend_train_split``: the corpus's clips plus the stand-in pool's extra clips (seed
    + 1, split train), in a second manifest; the corpus's own manifest is untouched."""
    out = tmp_path / "c"
    manifest = synth.generate_corpus(out, n=6, seed=SEED, sample_rate=SR)
    before = manifest.read_bytes()
    extended = synth.extend_train_split(out, 8)
    assert manifest.read_bytes() == before
    lines = extended.read_text().splitlines()
    assert lines[:6] == before.decode().splitlines()
    extra = [json.loads(x) for x in lines[6:]]
    assert [r["id"] for r in extra] == [f"x{i:06d}" for i in range(8)]
    markers = synth.heldout_markers()
    for i, r in enumerate(extra):
        want = synth.render_clip(i, SEED + 1, "train", SR)
        assert {**want.record, "id": r["id"], "audio": r["audio"]} == r
        assert r["split"] == "train" and not r["heldout_phrasing"]
        assert r["background"] not in synth.HELDOUT_BACKGROUNDS
        assert not [m for m in markers if contains_phrase(r["caption"], m)]
        written, sr = sf.read(str(out / r["audio"]), dtype="float32")
        assert sr == SR and np.max(np.abs(written - want.audio)) < 1e-4
    # again, with workers: the same manifest and files
    first = extended.read_bytes()
    (out / extra[0]["audio"]).unlink()  # a missing file is rendered again
    assert synth.extend_train_split(out, 8, workers=2).read_bytes() == first
    assert (out / extra[0]["audio"]).is_file()
    # a finished extension is kept without rendering; another count is redone
    stamp = extended.stat().st_mtime_ns
    assert synth.extend_train_split(out, 8) == extended and extended.stat().st_mtime_ns == stamp
    assert len(synth.extend_train_split(out, 3).read_text().splitlines()) == 6 + 3
    with pytest.raises(InvalidArgument, match="not a `cvahash synth` corpus"):
        synth.extend_train_split(tmp_path / "nothing", 3)
    with pytest.raises(InvalidArgument, match=">= 0"):
        synth.extend_train_split(out, -1)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = synth.generate_corpus(tmp_path / "a", n=6, seed=3, sample_rate=SR, workers=1)
    b = synth.generate_corpus(tmp_path / "b", n=6, seed=3, sample_rate=SR, workers=2)
    c = synth.generate_corpus(tmp_path / "c", n=6, seed=4, sample_rate=SR)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    for line in a.read_text().splitlines():
        rel = json.loads(line)["audio"]
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="positive"):
        synth.generate_corpus(tmp_path, n=0)
    with pytest.raises(InvalidArgument, match="format"):
        synth.generate_corpus(tmp_path, n=1, fmt="mp3")
    with pytest.raises(InvalidArgument, match="sample rate"):
        synth.generate_corpus(tmp_path, n=1, sample_rate=8000)
    with pytest.raises(InvalidArgument, match=".flac or .wav"):
        synth.make_soundscape(tmp_path / "x.mp3", 10, 4, 0)
    with pytest.raises(InvalidArgument, match="unicorn"):
        synth.make_soundscape(tmp_path / "x.wav", 10, 4, 0, call_types=["unicorn"])


# --------------------------------------------------------------- soundscape

def test_soundscape_events_are_where_the_energy_is(tmp_path):
    path = tmp_path / "scape.wav"
    events = synth.make_soundscape(path, 180, 8, seed=5, sample_rate=SR)
    sidecar = json.loads(synth.events_path(path).read_text())
    assert sidecar["events"] == events and len(events) >= 5
    audio, sr = sf.read(str(path), dtype="float64")
    assert sr == SR and len(audio) == 180 * SR
    for prev, ev in itertools.pairwise(events):
        assert prev["end_s"] <= ev["start_s"]
    # a stretch with no event anywhere near it
    busy = np.zeros(len(audio), dtype=bool)
    for ev in events:
        busy[max(0, int((ev["start_s"] - 1) * SR)): int((ev["end_s"] + 1) * SR)] = True
    free = np.flatnonzero(~busy)
    assert len(free) > 2 * SR
    quiet = audio[free[:2 * SR]]
    for ev in events:
        lo, hi = synth.call_type(ev["label"]).band
        seg = audio[int(ev["start_s"] * SR): int(ev["end_s"] * SR)]
        quiet_seg = np.resize(quiet, len(seg))

        def band_energy(x, lo=lo, hi=hi):
            p = np.abs(np.fft.rfft(x)) ** 2
            f = np.fft.rfftfreq(len(x), 1 / SR)
            return p[(f >= lo) & (f <= hi)].sum() / len(x)
        assert band_energy(seg) > 1.5 * band_energy(quiet_seg), ev
        # SNR against the background's stated long-term level: (event + bg) / bg - 1
        bg_power = 10 ** (sidecar["background_dbfs"] / 10)
        snr = 10 * np.log10(max(np.mean(seg ** 2) / bg_power - 1, 1e-9))
        assert abs(snr - ev["snr_db"]) < 1.0, (ev, snr)
    assert np.max(np.abs(audio)) < 0.99  # nothing clipped


def test_long_soundscape_memory_stays_bounded(tmp_path):
    def peak_bytes(seconds):
        tracemalloc.start()
        try:
            synth.make_soundscape(tmp_path / f"{seconds}.flac", seconds, 6, seed=1,
                                  sample_rate=SR, background="rain")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak_bytes(60), peak_bytes(300)
    # 300 s at 16 kHz is 38 MB as one float64 array; blocks keep the peak flat
    assert long < 20e6, f"peak {long / 1e6:.1f} MB"
    assert long < 1.25 * short + 1e6, (short, long)
    assert sf.info(str(tmp_path / "300.flac")).frames == 300 * SR


# ------------------------------------------------------------------ command

def test_command_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--soundscape" in text and "--out" in text and "--sample-rate" in text


def test_command_small_corpus_and_soundscape(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--n", "4", "--seed", "1",
                 "--sample-rate", str(SR), "--format", "wav"]) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["audio"].endswith(".wav")
    assert "4/4" in capsys.readouterr().err
    # a non-empty folder is refused unless forced
    assert main(["synth", "--out", str(out), "--n", "2", "--sample-rate", str(SR)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", "--out", str(out), "--n", "2", "--sample-rate", str(SR),
                 "--force"]) == 0
    scape = tmp_path / "s.flac"
    assert main(["synth", "--soundscape", str(scape), "--minutes", "0.5",
                 "--sample-rate", str(SR), "--call-types", "owl_hooting,crow_cawing",
                 "--events-per-minute", "6"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "s.events.json", "s.flac"]
    events = json.loads(synth.events_path(scape).read_text())["events"]
    assert events and {e["label"] for e in events} <= {"owl_hooting", "crow_cawing"}
    assert main(["synth", "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(synth.CALL_TYPES)
    # --extend: more train-split clips in a second manifest
    assert main(["synth", "--extend", str(out), "--extra", "3"]) == 0
    assert "wrote 3 train-split clips" in capsys.readouterr().err
    extended = (out / "manifest-extended.jsonl").read_text().splitlines()
    assert len(extended) == 2 + 3 and (out / "audio" / "train-extra" / "000002.flac").is_file()
    assert main(["synth", "--extend", str(tmp_path / "nothing"), "--extra", "3"]) == 1
    assert "not a `cvahash synth` corpus" in capsys.readouterr().err


def test_synth_needs_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, cvahash.export.synth.corpus, cvahash.commands.synth; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'onnx', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
