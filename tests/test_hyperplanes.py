"""`cvahash train --objective lsh / itq`: bundles from a CLAP without captions.

A small "pretrained" model is made here (a tiny CLAP saved like a hub checkpoint); LSH
needs nothing else, ITQ reads a folder of recordings. Both runs are exported to fp32
bundles, a folder of clips is indexed and searched with the same commands a user types.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

pytestmark = pytest.mark.workstation

from cvahash.export.train.hyperplanes import (  # noqa: E402
    itq_weights,
    lsh_weights,
    quantisation_loss,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLAP + tokenizer folder, as `save_pretrained` leaves a hub checkpoint."""
    from cvahash.export.train.model import build_tiny_clap
    from cvahash.export.train.tokenizer import train_caption_tokenizer

    out = tmp_path_factory.mktemp("clap") / "model"
    tok = train_caption_tokenizer(["a rising whistle", "owl hooting at night",
                                   "frogs croaking in rain", "rapid clicking"],
                                  vocab_size=300, model_max_length=16)
    build_tiny_clap(seed=1, vocab_size=len(tok)).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Twelve 2 s clips of four kinds, plain files in a folder (no manifest, no captions)."""
    out = tmp_path_factory.mktemp("recordings")
    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(2 * sr) / sr
    for i in range(12):
        kind = i % 4
        if kind == 0:
            x = np.sin(2 * np.pi * rng.uniform(500, 3000) * t)
        elif kind == 1:
            x = 0.3 * rng.standard_normal(t.size)
        elif kind == 2:
            x = np.sin(2 * np.pi * (800 * t + 1500 * t ** 2))
        else:
            x = ((np.arange(t.size) % (sr // 15)) < 40).astype(float)
        sf.write(out / f"clip_{i:02d}.wav", (0.4 * x).astype(np.float32), sr)
    return out


def test_itq_rotation_quantises_better_than_random_hyperplanes():
    rng = np.random.default_rng(3)
    # anisotropic points on the sphere: ITQ's PCA + rotation should fit them better
    x = rng.standard_normal((400, 16)) * np.linspace(3, 0.2, 16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    weight, mean, c = itq_weights(x, 8, seed=0)
    assert c == 8 and weight.shape == (8, 16)
    # the ITQ directions are orthonormal (PCA basis times a rotation)
    assert np.allclose(weight @ weight.T, np.eye(8), atol=1e-8)
    assert quantisation_loss(x, weight, mean) < quantisation_loss(x, lsh_weights(16, 8, 0), mean)
    # bits beyond the dimension are random hyperplanes, still a full-rank map
    weight, _, c = itq_weights(x, 24, seed=0)
    assert c == 16 and weight.shape == (24, 16)
    # the codes are balanced: each ITQ bit splits the data near half-half
    bits = ((x - mean) @ itq_weights(x, 8, seed=0)[0].T) > 0
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.25)


def test_lsh_hyperplanes_are_a_function_of_the_seed():
    assert np.array_equal(lsh_weights(32, 64, 5), lsh_weights(32, 64, 5))
    assert not np.array_equal(lsh_weights(32, 64, 5), lsh_weights(32, 64, 6))


def _index_and_search(bundle, recordings, tmp_path, capsys):
    from cvahash.cli import main

    db = tmp_path / "store"
    assert main(["index", str(recordings), "--db", str(db), "--bundle", str(bundle),
                 "--station", "test"]) in (0, 3)
    capsys.readouterr()
    assert main(["search", "a rising whistle", "--db", str(db), "--bundle", str(bundle),
                 "-k", "5", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("objective", ["lsh", "itq"])
def test_fixed_heads_export_and_search_end_to_end(objective, model_dir, recordings, tmp_path,
                                                  capsys):
    from cvahash.cli import main
    from cvahash.export.train.run import load_run
    from cvahash.model.bundle import ModelBundle

    run = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), "--objective", objective, "--bits", "48",
            "--out", str(run), "--max-text-length", "16", "--quiet"]
    if objective == "itq":
        argv += ["--data", str(recordings)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] == objective and summary["bits"] == 48
    if objective == "itq":
        assert summary["clips"] == 12 and summary["itq_bits"] == 11  # clips - 1 directions
        assert summary["text_centre"] == "audio mean"
    model, config, _tok = load_run(run)
    assert config.head == "projection" and config.lora_rank == 0
    # one map for both branches: the same hyperplanes on the shared projection
    assert torch.equal(model.text_head.linear.weight, model.audio_head.linear.weight)
    if objective == "lsh":
        assert np.allclose(model.text_head.linear.weight.detach().numpy(),
                           lsh_weights(32, 48, 0), atol=1e-6)

    bundle = tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(bundle), "--precision", "fp32"]) == 0
    capsys.readouterr()
    opened = ModelBundle.open(bundle)
    assert opened.bits == 48 and opened.manifest["run"]["objective"] == objective
    # the calibration curve survives export: monotone, one value per distance 0..bits
    from cvahash.model.calibration import Calibration

    cal = Calibration.from_manifest(opened.manifest)
    assert cal is not None and cal.source == "built-in synthetic probe"
    for curve in (cal.precision_at, cal.precision_within):
        assert len(curve) == 49 and np.all(np.diff(curve) <= 0)
    # the bundle computes what PyTorch computes (hyperplanes survive export)
    assert main(["bundle", "verify", str(bundle), "--against", str(run)]) in (0, 1)
    out = capsys.readouterr().out
    assert "agreement   text   1.0000" in out or "agreement   text   0.99" in out
    result = _index_and_search(bundle, recordings, tmp_path, capsys)
    hits = result["hits"]
    assert len(hits) == 5
    assert all(0 <= h["distance"] <= 48 for h in hits)
    # the calibration curve shows in the JSON and as the table's confidence column
    assert result["calibration"]["source"] == "built-in synthetic probe"
    for h in hits:
        assert h["estimated_precision"] == cal.precision(h["distance"])
        assert h["confidence"] == cal.label(h["distance"])
    assert main(["search", "a rising whistle", "--db", str(tmp_path / "store"), "-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "distance", "confidence"]
    assert table[1].split()[2] in ("likely", "possible", "unlikely")
    # and the watchlist radius it proposes is the curve's
    assert main(["watch", "suggest", "A rising whistle!", "--db", str(tmp_path / "store"),
                 "--precision", str(cal.precision_within[0]), "--json"]) == 0
    suggestion = json.loads(capsys.readouterr().out)
    assert suggestion["name"] == "a-rising-whistle"
    assert suggestion["radius"] == cal.radius_for(cal.precision_within[0])
    assert suggestion["estimated_precision"] >= cal.precision_within[0]


def test_fixed_heads_errors_are_cli_words(model_dir, tmp_path, capsys):
    from cvahash.cli import main

    assert main(["train", "--objective", "lsh", "--out", str(tmp_path / "a"), "--quiet"]) == 1
    assert "--model HUB_ID_OR_FOLDER" in capsys.readouterr().err
    assert main(["train", "--model", str(model_dir), "--objective", "itq",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 1
    assert "--data FOLDER" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--model", str(model_dir), "--objective", "itq", "--data", str(empty),
                 "--out", str(tmp_path / "c"), "--quiet"]) == 1
    assert "holds no audio files" in capsys.readouterr().err
    assert main(["train", "--objective", "crovca", "--out", str(tmp_path / "d")]) == 2
    assert "--objective lsh or itq" in capsys.readouterr().err


# ---------------------------------------------------------------- bundle verify statistics


CAPTIONS = ["a rising whistle", "owl hooting at night", "frogs croaking in rain",
            "rapid clicking"]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """40 clips of four kinds with a manifest (captions cycled; reassigned below)."""
    out = tmp_path_factory.mktemp("held-out")
    rng = np.random.default_rng(7)
    sr = 16000
    t = np.arange(sr) / sr
    rows = []
    for i in range(40):
        kind = i % 4
        f0 = rng.uniform(300, 4000)
        x = [np.sin(2 * np.pi * f0 * t), 0.3 * rng.standard_normal(t.size),
             np.sin(2 * np.pi * (f0 * t + 1500 * t ** 2)),
             ((np.arange(t.size) % int(sr / rng.uniform(5, 30))) < 40).astype(float)][kind]
        sf.write(out / f"c{i:02d}.wav", (0.4 * x).astype(np.float32), sr)
        rows.append({"audio": f"c{i:02d}.wav", "caption": CAPTIONS[kind], "split": "test"})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows


@pytest.fixture(scope="module")
def itq_bundle(model_dir, held_out, tmp_path_factory):
    """An ITQ run (audio and captions centred apart) and its fp32 bundle."""
    from cvahash.cli import main

    root = tmp_path_factory.mktemp("itq")
    assert main(["train", "--model", str(model_dir), "--objective", "itq", "--bits", "64",
                 "--data", str(held_out[0]), "--out", str(root / "run"),
                 "--max-text-length", "16", "--quiet"]) == 0
    assert main(["export", str(root / "run"), "--out", str(root / "bundle"),
                 "--precision", "fp32"]) == 0
    return root / "run", root / "bundle"


@pytest.fixture(scope="module")
def retrieving_manifest(itq_bundle, held_out, tmp_path_factory):
    """The held-out clips with captions the run retrieves well *by construction*: greedily,
    nearest (caption, clip) pairs first, each caption takes the 10 clips whose PyTorch audio
    codes are nearest its code, and labels follow the captions. So PyTorch's mAP@10 is high
    and a worse bundle can show it."""
    from cvahash.export.onnx.convert import torch_audio_logits, torch_text_logits
    from cvahash.export.onnx.verify import load_probe
    from cvahash.export.train.run import load_run
    from cvahash.export.train.tokenizer import tokenize
    from cvahash.model.frontend import FrontendParams

    run, _ = itq_bundle
    manifest, rows = held_out
    model, config, tok = load_run(run)
    merged = model.merged()
    audio = torch_audio_logits(merged, load_probe(manifest, FrontendParams()).features) > 0
    ids, mask = tokenize(tok, CAPTIONS, config.text_max_length, config.text_padding)
    text = torch_text_logits(merged, ids.numpy(), mask.numpy()) > 0
    dist = (audio[:, None, :] != text[None, :, :]).sum(axis=2)   # (clips, captions)
    taken, assigned = [0] * len(CAPTIONS), {}
    for flat in np.argsort(dist, axis=None, kind="stable"):
        j, k = divmod(int(flat), len(CAPTIONS))
        if j not in assigned and taken[k] < 10:
            assigned[j], taken[k] = k, taken[k] + 1
    out = tmp_path_factory.mktemp("retrieving") / "manifest.jsonl"
    out.write_text("".join(json.dumps(
        {**r, "audio": str(manifest.parent / r["audio"]), "caption": CAPTIONS[assigned[j]],
         "labels": [f"kind{assigned[j]}"]}) + "\n" for j, r in enumerate(rows)))
    return out


def test_verify_passes_an_equal_bundle_with_a_zero_interval(itq_bundle, retrieving_manifest,
                                                            capsys):
    from cvahash.cli import main

    run, bundle = itq_bundle
    assert main(["bundle", "verify", str(bundle), "--against", str(run), "--data",
                 str(retrieving_manifest), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["map_queries"] == 40 and not report["notes"]
    assert report["map10"]["torch"] > 0.4  # by construction; chance is about 0.25
    assert report["map_change"] == 0 and report["map_change_interval"] == [0, 0]
    assert main(["bundle", "verify", str(bundle), "--against", str(run), "--data",
                 str(retrieving_manifest)]) == 0
    assert "same as torch" in capsys.readouterr().out


def test_verify_fails_a_known_worse_bundle_by_its_interval(itq_bundle, retrieving_manifest,
                                                           tmp_path, capsys):
    """The audio graph swapped for other hyperplanes (well-formed, hashes valid): the
    codes lose the retrieval, the whole interval lies below the limit, verify fails."""
    import copy
    import shutil

    from cvahash.cli import main
    from cvahash.export.onnx.bundle_writer import write_manifest
    from cvahash.export.onnx.convert import export_audio_graph
    from cvahash.export.train.run import load_run

    run, bundle = itq_bundle
    model, _, _ = load_run(run)
    other = copy.deepcopy(model.merged())
    other.audio_head.set(lsh_weights(32, 64, seed=99),
                         other.audio_head.linear.bias.detach().numpy())
    worse = tmp_path / "worse"
    shutil.copytree(bundle, worse)
    export_audio_graph(other, worse / "audio.onnx")
    fields = json.loads((worse / "manifest.json").read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    write_manifest(worse, fields)
    # bit agreement is not demanded here: the mAP statistics alone must fail it
    assert main(["bundle", "verify", str(worse), "--against", str(run), "--data",
                 str(retrieving_manifest), "--min-agreement", "0", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    low, high = report["map_change_interval"]
    assert low <= report["map_change"] <= high < -0.02
    assert any("worse than torch" in f for f in report["failures"])
    # with too few queries the same bundle is not judged by mAP
    assert main(["bundle", "verify", str(worse), "--against", str(run), "--data",
                 str(retrieving_manifest), "--min-agreement", "0", "--min-queries",
                 "100"]) == 0
    out = capsys.readouterr().out
    assert "too few queries (40 < 100)" in out and "worse" in out and "drop" not in out
