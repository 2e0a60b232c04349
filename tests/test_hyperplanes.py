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
    from cvahash.export.train.model import load_run
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
    # the bundle computes what PyTorch computes (hyperplanes survive export)
    assert main(["bundle", "verify", str(bundle), "--against", str(run)]) in (0, 1)
    out = capsys.readouterr().out
    assert "agreement   text   1.0000" in out or "agreement   text   0.99" in out
    result = _index_and_search(bundle, recordings, tmp_path, capsys)
    hits = result["hits"] if isinstance(result, dict) else result
    assert len(hits) == 5
    assert all(0 <= h["distance"] <= 48 for h in hits)


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
