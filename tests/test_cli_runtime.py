"""`cvahash index`, `search` and `info` end to end, on a real tiny model bundle.

The bundle is a tiny untrained HashingModel exported to fp32 ONNX with the workstation
toolchain (built once per test session, about 15 s; skipped where torch is absent).
Search results are checked against an independent brute force: every window's code
recomputed from the audio with the bundle, ranked by tests/oracle.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from oracle import knn_reference

from cvahash.cli import main


def chirps(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    """Background noise with a few bird-like chirps, different per seed."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    x = 0.02 * rng.standard_normal(n)
    for start in rng.uniform(0, max(seconds - 1, 0.1), size=int(seconds / 4) + 1):
        t = np.arange(round(0.4 * sr)) / sr
        f0 = rng.uniform(1500, 6000)
        s = 0.3 * np.sin(2 * np.pi * (f0 * t + 2000 * t**2)) * np.hanning(t.size)
        i = round(start * sr)
        x[i : i + s.size] += s[: n - i]
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    """A small season of recordings: 2 good files in nested folders plus bad ones."""
    root = tmp_path_factory.mktemp("season")
    rec = root / "rec"
    (rec / "ridge" / "06-12").mkdir(parents=True)
    good = [rec / "ridge" / "06-12" / "20240612_053000.wav", rec / "ridge" / "20240613_053000.flac"]
    sf.write(good[0], chirps(35.0, 48000, 1), 48000, subtype="PCM_16")
    sf.write(good[1], chirps(20.0, 32000, 2, channels=2), 32000, subtype="PCM_16")
    (rec / "ridge" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    (rec / "ridge" / "zero.wav").write_bytes(b"")
    return {"root": root, "rec": rec, "good": good,
            "bad": [rec / "ridge" / "corrupt.wav", rec / "ridge" / "zero.wav"]}


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def indexed(season, tiny_bundle, tmp_path_factory):
    """The season indexed once into a store (module scope: index is the slow part)."""
    db = tmp_path_factory.mktemp("store") / "db"
    rc = main(["index", str(season["rec"]), "--db", str(db), "--bundle", str(tiny_bundle),
               "--station", "ridge-2", "--quiet"])
    return {"db": db, "rc": rc, **season}


def all_window_codes(bundle_dir: Path, paths) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Every window's code, recomputed from the audio: the reference the store must match."""
    from cvahash.model.audio import iter_windows
    from cvahash.model.bundle import ModelBundle
    from cvahash.model.frontend import log_mel

    bundle = ModelBundle.open(bundle_dir)
    codes, where = [], []
    for p in paths:
        ws = list(iter_windows(p))
        codes.append(bundle.encode_audio(log_mel([w.samples for w in ws], bundle.frontend_params)))
        where += [(str(Path(p).resolve()), w.offset_s) for w in ws]
    return np.concatenate(codes), where


# --- help and usage -------------------------------------------------------------------


@pytest.mark.parametrize("command, flags", [
    ("index", ["--db", "--bundle", "--station", "exit codes"]),
    ("search", ["--like", "-k", "--since", "--until", "--station", "--json", "--clips",
                "--spectrograms", "CVAHASH_BUNDLE"]),
    ("info", ["--db", "--json"]),
])
def test_every_command_has_help(capsys, command, flags):
    rc, out, _ = cli(capsys, command, "--help")
    assert rc == 0
    for flag in flags:
        assert flag in out


def test_search_usage_errors_exit_2(capsys, tmp_path):
    assert cli(capsys, "search", "--db", tmp_path)[0] == 2  # neither TEXT nor --like
    rc, _, err = cli(capsys, "search", "owl", "--like", "a.wav", "--db", tmp_path)
    assert rc == 2 and "exactly one" in err
    rc, _, err = cli(capsys, "search", "owl", "--db", tmp_path, "-k", "0")
    assert rc == 2 and "-k 0" in err


# --- index ----------------------------------------------------------------------------


def test_index_reports_bad_files_and_exits_3(indexed, capsys):
    assert indexed["rc"] == 3
    rc, out, _ = cli(capsys, "info", "--db", indexed["db"], "--json")
    info = json.loads(out)
    assert rc == 0
    assert info["windows"] == 4 + 2  # 35 s -> 3 full + 5 s tail; 20 s -> 2
    assert info["recordings"] == 2 and info["stations"] == {"ridge-2": 6}
    assert info["first_capture"] == "2024-06-12T05:30:00Z"
    assert info["last_capture_end"] == "2024-06-13T05:30:20Z"
    assert info["bits"] == 64 and len(info["fingerprint"]) == 16
    assert info["bundle"] and Path(info["bundle"]).is_dir()
    assert info["bytes"] == info["code_bytes"] + info["metadata_bytes"] > 0


def test_reindexing_is_resumable_and_names_every_bad_file(indexed, tiny_bundle, capsys):
    before = json.loads(cli(capsys, "info", "--db", indexed["db"], "--json")[1])
    rc, _, err = cli(capsys, "index", indexed["rec"], "--db", indexed["db"], "--station",
                     "ridge-2")  # no --bundle: the store remembers it
    assert rc == 3
    assert "already in the store: 2" in err and "indexed 0 files" in err
    for bad in indexed["bad"]:
        assert str(bad) in err
    assert "not an audio file" in err or "corrupt" in err
    assert "file is empty" in err
    after = json.loads(cli(capsys, "info", "--db", indexed["db"], "--json")[1])
    assert after["windows"] == before["windows"]


def test_index_with_nothing_to_do_changes_nothing(tmp_path, tiny_bundle, capsys):
    db = tmp_path / "db"
    rc, _, err = cli(capsys, "index", tmp_path / "missing", "--db", db, "--bundle", tiny_bundle)
    assert rc == 1 and "missing: no such file or folder" in err
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    rc, _, err = cli(capsys, "index", tmp_path / "docs", "--db", db, "--bundle", tiny_bundle)
    assert rc == 1 and "no audio files under" in err
    rc, _, err = cli(capsys, "index", tmp_path / "docs" / "notes.txt", "--db", db, "--bundle",
                     tmp_path / "no-bundle")
    assert rc == 1
    rc, _, err = cli(capsys, "index", tmp_path / "docs", "--db", db, "--bundle", tiny_bundle,
                     "--hop", "0")
    assert rc == 2 and "--hop 0" in err
    assert not db.exists()


def test_index_all_good_exits_0(tmp_path, tiny_bundle, capsys, season):
    rc, _, err = cli(capsys, "index", season["good"][1], "--db", tmp_path / "db", "--bundle",
                     tiny_bundle, "--quiet")
    assert rc == 0 and "indexed 1 file " in err


# --- search ---------------------------------------------------------------------------


def test_text_search_matches_brute_force_over_recomputed_codes(indexed, tiny_bundle, capsys):
    from cvahash.model.bundle import ModelBundle

    rc, out, err = cli(capsys, "search", "a crow cawing", "--db", indexed["db"], "-k", "4",
                       "--json")
    assert rc == 0, err
    doc = json.loads(out)
    bundle = ModelBundle.open(tiny_bundle)
    assert doc["query"] == "a crow cawing" and doc["mode"] == "text"
    assert doc["bits"] == 64 and doc["fingerprint"] == bundle.fingerprint
    assert doc["truncated"] is False

    codes, where = all_window_codes(tiny_bundle, indexed["good"])
    query = bundle.encode_text(["a crow cawing"])
    ref_d, ref_i = knn_reference(query, codes, 4)
    got = [(h["recording"], h["start_s"], h["distance"]) for h in doc["hits"]]
    # Ties are ordered by store row; rows follow file order, as `where` does.
    want = [(*where[i], int(d)) for d, i in zip(ref_d[0], ref_i[0], strict=True)]
    assert got == want
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3, 4]
    h = doc["hits"][0]
    assert h["station"] == "ridge-2" and h["end_s"] > h["start_s"]
    assert h["capture_time"].endswith("Z") and h["clock_source"] == "filename"


def test_table_output(indexed, capsys):
    rc, out, _ = cli(capsys, "search", "owl hooting", "--db", indexed["db"], "-k", "3")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 4
    # exported bundles carry a calibration curve: a confidence column after the distance
    # (word and estimated precision), then the recording
    assert lines[0].split()[:5] == ["rank", "distance", "confidence", "recording", "start-end"]
    cells = lines[1].split()
    assert cells[0] == "1" and cells[2] in ("likely", "possible", "unlikely")
    assert 0 <= float(cells[3]) <= 1
    assert cells[4].endswith((".wav", ".flac")) and "-" in cells[5]
    assert cells[-1] == "ridge-2"
    # recordings shown relative to their common folder, not as absolute paths
    assert not any(line.split()[4].startswith("/") for line in lines[1:])


def test_filters(indexed, capsys):
    db = indexed["db"]
    rc, out, _ = cli(capsys, "search", "owl", "--db", db, "--json", "--until", "2024-06-11")
    assert rc == 0 and json.loads(out)["hits"] == []
    # a bare date as --until includes that whole day
    rc, out, _ = cli(capsys, "search", "owl", "--db", db, "--json", "--until", "2024-06-12")
    hits = json.loads(out)["hits"]
    assert len(hits) == 4 and all(h["recording"].endswith(".wav") for h in hits)
    rc, out, _ = cli(capsys, "search", "owl", "--db", db, "--json", "--since", "2024-06-13")
    hits = json.loads(out)["hits"]
    assert len(hits) == 2 and all(h["recording"].endswith(".flac") for h in hits)
    rc, out, _ = cli(capsys, "search", "owl", "--db", db, "--json", "--since",
                     "2024-06-12T05:30:10", "--until", "2024-06-12T05:30:30")
    assert sorted(h["start_s"] for h in json.loads(out)["hits"]) == [10.0, 20.0]
    # A station the store has no window of is a mistake, not an empty result.
    rc, out, err = cli(capsys, "search", "owl", "--db", db, "--station", "elsewhere")
    assert rc == 1 and out == "" and "--station 'elsewhere': no such station" in err
    rc, _, err = cli(capsys, "search", "owl", "--db", db, "--since", "yesterday")
    assert rc == 1 and "not a date/time" in err


@pytest.mark.parametrize("query, expect", [("", "empty"), ("   \t ", "empty")])
def test_empty_queries_are_refused(indexed, capsys, query, expect):
    rc, out, err = cli(capsys, "search", query, "--db", indexed["db"])
    assert rc == 1 and out == "" and expect in err and "type what you want to hear" in err


def test_long_and_non_ascii_queries(indexed, capsys):
    long_query = "woodpecker drumming on a dead tree " * 60
    rc, out, err = cli(capsys, "search", long_query, "--db", indexed["db"], "--json", "-k", "2")
    doc = json.loads(out)
    assert rc == 0 and doc["truncated"] is True and "truncated" in err
    assert len(doc["hits"]) == 2
    rc, out, err = cli(capsys, "search", "Zaunkönig singt 鳥", "--db", indexed["db"], "-k", "2")
    assert rc == 0 and len(out.splitlines()) == 3 and "non-ASCII" in err


def test_query_by_example_finds_the_window_itself(indexed, capsys):
    target = indexed["good"][0]
    rc, out, err = cli(capsys, "search", "--like", f"{target}@20", "--db", indexed["db"],
                       "--json", "-k", "6")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "like" and doc["query"].endswith("@20")
    first = doc["hits"][0]
    assert first["distance"] == 0
    same = [h for h in doc["hits"] if h["distance"] == 0]
    assert any(h["recording"] == str(target.resolve()) and h["start_s"] == 20.0 for h in same)
    # a start past the end, or a bad file, is a clear error
    rc, _, err = cli(capsys, "search", "--like", f"{target}@500", "--db", indexed["db"])
    assert rc == 1 and "past the end" in err
    rc, _, err = cli(capsys, "search", "--like", indexed["bad"][0], "--db", indexed["db"])
    assert rc == 1 and str(indexed["bad"][0]) in err


def test_clips_and_spectrograms(indexed, capsys, tmp_path):
    rc, out, err = cli(capsys, "search", "birdsong", "--db", indexed["db"], "-k", "3", "--json",
                       "--clips", tmp_path / "clips", "--spectrograms", tmp_path / "spec")
    assert rc == 0, err
    clips = sorted((tmp_path / "clips").iterdir())
    specs = sorted((tmp_path / "spec").iterdir())
    assert len(clips) == 3 and len(specs) == 3
    assert [c.name[:8] for c in clips] == ["rank_01_", "rank_02_", "rank_03_"]
    assert all(s.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in specs)
    # Each snippet is its hit's window plus 1 s either side, cut at the recording's ends
    # (a recording's last window may be short).
    for clip, hit in zip(clips, json.loads(out)["hits"], strict=True):
        length = sf.info(hit["recording"]).duration
        want = min(hit["end_s"] + 1.0, length) - max(hit["start_s"] - 1.0, 0.0)
        assert sf.info(str(clip)).duration == pytest.approx(want, abs=0.01), (clip, hit)
    assert "wrote 3 of 3 WAV snippets" in err and "wrote 3 of 3 spectrograms" in err


def test_a_recording_that_is_gone_is_reported_per_hit(season, tiny_bundle, tmp_path, capsys):
    rec = tmp_path / "rec"
    rec.mkdir()
    kept = shutil.copy(season["good"][1], rec / "20240613_053000.flac")
    doomed = shutil.copy(season["good"][0], rec / "20240612_053000.wav")
    db = tmp_path / "db"
    assert cli(capsys, "index", rec, "--db", db, "--bundle", tiny_bundle, "--quiet")[0] == 0
    os.unlink(doomed)
    rc, _, err = cli(capsys, "search", "owl", "--db", db, "-k", "6", "--clips", tmp_path / "c")
    assert rc == 0
    assert "wrote 2 of 6 WAV snippets" in err
    assert err.count("no longer exists") == 4
    assert len(list((tmp_path / "c").iterdir())) == 2 and Path(kept).exists()


# --- bundles and stores that do not belong together -----------------------------------


def test_a_store_made_with_another_bundle_is_refused(tmp_path, tiny_bundle, capsys, season):
    from cvahash.model.bundle import ModelBundle
    from cvahash.store.code_store import CodeStore

    CodeStore.create(tmp_path / "other", 64, "0123456789abcdef").close()
    mine = ModelBundle.open(tiny_bundle).fingerprint
    rc, out, err = cli(capsys, "search", "owl", "--db", tmp_path / "other", "--bundle",
                       tiny_bundle)
    assert rc == 1 and out == ""
    assert "0123456789abcdef" in err and mine in err
    rc, _, err = cli(capsys, "index", season["good"][1], "--db", tmp_path / "other", "--bundle",
                     tiny_bundle)
    assert rc == 1 and "0123456789abcdef" in err and mine in err
    with CodeStore.open(tmp_path / "other") as store:
        assert len(store) == 0


def test_search_says_what_to_pass_when_no_bundle_is_known(tmp_path, capsys, monkeypatch):
    from cvahash.store.code_store import CodeStore

    monkeypatch.delenv("CVAHASH_BUNDLE", raising=False)
    CodeStore.create(tmp_path / "db", 64, "0123456789abcdef").close()
    rc, _, err = cli(capsys, "search", "owl", "--db", tmp_path / "db")
    assert rc == 1 and "--bundle DIR" in err and "CVAHASH_BUNDLE" in err
    rc, _, err = cli(capsys, "search", "owl", "--db", tmp_path / "nothing")
    assert rc == 1 and "is not a code store" in err
    rc, _, err = cli(capsys, "info", "--db", tmp_path / "nothing")
    assert rc == 1 and "is not a code store" in err


def test_bundle_from_environment(indexed, tiny_bundle, capsys, monkeypatch, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(indexed["db"], db)
    (db / "indexed-with.json").unlink()
    monkeypatch.setenv("CVAHASH_BUNDLE", str(tiny_bundle))
    rc, out, _ = cli(capsys, "search", "owl", "--db", db, "-k", "1")
    assert rc == 0 and len(out.splitlines()) == 2


def test_info_text(indexed, capsys):
    rc, out, _ = cli(capsys, "info", "--db", indexed["db"])
    assert rc == 0
    assert "windows:" in out and "6" in out
    assert "ridge-2 (6 windows)" in out
    assert "2024-06-12T05:30:00Z .. 2024-06-13T05:30:20Z" in out
    assert "64 bits" in out
