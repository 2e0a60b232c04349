"""`make demo` end to end, short: the shipped bundle, a 3-minute field recording, five
queries. Runtime-side only (no torch needed), so it also guards the demo on CI; the
`--retrain` path (torch) is a slow test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cvahash.model.bundle import check_bundle

REPO = Path(__file__).resolve().parent.parent


def test_shipped_demo_bundle_is_intact():
    manifest = check_bundle(REPO / "tests" / "data" / "demo-bundle")
    assert manifest["bits"] == 64 and manifest["precision"] == "int8"


def test_demo_runs_end_to_end(tmp_path, capsys):
    from cvahash.export.demo import main

    assert main(["--out", str(tmp_path), "--minutes", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("precision@10 = ") == 5
    assert re.search(r"mean precision@10 over 5 queries: [0-9.]+ \(chance [0-9.]+\)", out)
    assert (tmp_path / "store").is_dir()


def test_demo_on_a_recording_and_words_training_never_saw(tmp_path, capsys):
    from cvahash.export.demo import DEMO_CALLS, main
    from cvahash.export.synth.captions import queries_for

    assert main(["--out", str(tmp_path), "--minutes", "2", "--seed", "11", "--background",
                 "stream", "--heldout-queries", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for label in DEMO_CALLS[:5]:
        (held,) = queries_for(label, heldout=True)[:1]
        assert f'cvahash search "{held}"' in out
        assert queries_for(label, heldout=False)[0] not in re.findall(r'search "([^"]+)"', out)
    assert "--background stream" in out and "--seed 11" in out
    assert (tmp_path / "store-11-stream").is_dir() and not (tmp_path / "store").exists()
    assert out.count("precision@10 = ") == 5


@pytest.mark.slow
def test_demo_retrain_path_makes_a_bundle_of_the_recipe(tmp_path, capsys):
    """`make demo ARGS="--retrain --quick"`: corpus, stand-in pretraining (augmented,
    label-anchored + supclip), more train-split clips (`synth --extend`), 64-bit distill
    heads on both, int8 export, then the demo on that bundle."""
    pytest.importorskip("torch")
    from cvahash.export.demo import main

    assert main(["--out", str(tmp_path), "--retrain", "--quick", "--minutes", "2",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    manifest = check_bundle(tmp_path / "train" / "bundle")
    assert manifest["bits"] == 64 and manifest["precision"] == "int8"
    assert manifest["run"]["objective"] == "distill" and manifest["run"]["lora_rank"] == 0
    assert "cvahash synth --extend" in out and "manifest-extended.jsonl" in out
    extended = (tmp_path / "train" / "corpus" / "manifest-extended.jsonl").read_text()
    assert len(extended.splitlines()) == 100 + 16
    shipped = check_bundle(REPO / "tests" / "data" / "demo-bundle")
    assert manifest["frontend"] == shipped["frontend"]
    assert manifest["tokenizer"] == shipped["tokenizer"]
    assert (tmp_path / "train" / "standin" / "model" / "config.json").is_file()
    assert out.count("precision@10 = ") == 5
