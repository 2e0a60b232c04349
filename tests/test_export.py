"""Export a tiny trained run to a bundle and prove the device computes the same codes.

The run comes from the real training path (``cvahash.export.train.loop`` on a small
``cvahash.export.synth.corpus`` corpus, a few steps, LoRA on); the checks use that corpus's
held-out clips and captions, never random tensors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cvahash.errors import BundleError
from cvahash.model.bundle import MANIFEST_NAME, ModelBundle, fingerprint_of, sha256_file

# About 1-2 minutes on 2 busy cores (corpus, a short training run, three exports).
pytestmark = [pytest.mark.workstation, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from cvahash.export.synth.corpus import generate_corpus

    return generate_corpus(tmp_path_factory.mktemp("corpus"), n=40, seed=0)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    from cvahash.export.train.loop import TrainOptions, train
    from cvahash.export.train.run import RunConfig

    out = tmp_path_factory.mktemp("run") / "run"
    config = RunConfig(model="tiny", bits=32, epochs=2, warmup_epochs=1, batch_size=8,
                       lora_rank=4, seed=0)
    train(config, corpus, out, TrainOptions(device="cpu", progress=False))
    return out


@pytest.fixture(scope="module")
def int8_bundle(run_dir, corpus, tmp_path_factory):
    from cvahash.export.onnx.bundle_writer import export_run

    return export_run(run_dir, tmp_path_factory.mktemp("int8") / "bundle", "int8",
                      data=corpus).path


@pytest.fixture(scope="module")
def fp32_bundle(run_dir, corpus, tmp_path_factory):
    from cvahash.cli import main

    out = tmp_path_factory.mktemp("fp32") / "bundle"
    assert main(["export", str(run_dir), "--out", str(out), "--precision", "fp32",
                 "--data", str(corpus)]) == 0
    return out


@pytest.fixture(scope="module")
def held_out(corpus):
    from cvahash.export.onnx.verify import load_probe
    from cvahash.model.frontend import FrontendParams

    return load_probe(corpus, FrontendParams(), splits=("val", "test"))


@pytest.fixture(scope="module")
def reference(run_dir, held_out):
    """PyTorch logits (merged model, transformers tokenizer) of the held-out clips."""
    from cvahash.export.onnx.convert import torch_audio_logits, torch_text_logits
    from cvahash.export.train.run import load_run
    from cvahash.export.train.tokenizer import tokenize

    model, config, tokenizer = load_run(run_dir)
    merged = model.merged()
    ids, mask = tokenize(tokenizer, held_out.captions, config.text_max_length,
                         config.text_padding)
    return {"text": torch_text_logits(merged, ids.numpy(), mask.numpy()),
            "audio": torch_audio_logits(merged, held_out.features), "ids": ids.numpy(),
            "mask": mask.numpy(), "merged": merged, "tokenizer": tokenizer, "config": config}


def test_held_out_probe_is_real_corpus_audio(held_out, corpus):
    lines = [json.loads(x) for x in corpus.read_text().splitlines()]
    held = [x for x in lines if x["split"] in ("val", "test")]
    assert len(held_out.captions) == len(held) >= 4
    assert held_out.captions == [x["caption"] for x in held]
    assert held_out.features.shape == (len(held), 1, 1001, 64)
    assert np.isfinite(held_out.features).all() and held_out.features.std() > 1


def test_fp32_bundle_reproduces_pytorch(fp32_bundle, held_out, reference):
    bundle = ModelBundle.open(fp32_bundle)
    text = bundle.text_logits(held_out.captions)
    audio = bundle.audio_logits(held_out.features)
    np.testing.assert_allclose(text, reference["text"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(audio, reference["audio"], atol=5e-4, rtol=1e-3)
    np.testing.assert_array_equal(bundle.encode_text(held_out.captions),
                                  np.packbits(reference["text"] > 0, axis=1))


def test_audio_graph_has_no_shape_arithmetic_and_any_batch(fp32_bundle, held_out, reference):
    """The exporter folds HTSAT's reshape targets, shifted-window masks and zero pads to
    constants; the graph must still take any batch size and match PyTorch there."""
    import onnx
    import onnxruntime as ort

    manifest = json.loads((fp32_bundle / MANIFEST_NAME).read_text())
    fold = manifest["quantization"]["graph_passes"]["audio"]["shape_fold"]
    assert fold["constants"] > 0 and fold["nodes_removed"] > 0
    ops = {n.op_type for n in onnx.load(str(fp32_bundle / "audio.onnx")).graph.node}
    assert not ops & {"Shape", "Pad", "Where", "Range"}
    session = ort.InferenceSession(str(fp32_bundle / "audio.onnx"),
                                   providers=["CPUExecutionProvider"])
    feats = held_out.features
    for n in (1, 3, len(feats)):
        got = session.run(None, {"input_features": feats[:n]})[0]
        np.testing.assert_allclose(got, reference["audio"][:n], atol=5e-4, rtol=1e-3)


def test_text_graph_has_dynamic_batch_and_sequence(fp32_bundle, reference):
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32_bundle / "text.onnx"),
                                   providers=["CPUExecutionProvider"])
    ids, mask = reference["ids"][:3, :9].copy(), reference["mask"][:3, :9].copy()
    ids[:, -1], mask[:, -1] = 2, 1  # a well-formed, shorter sequence
    want = reference["merged"].text_logits(torch.as_tensor(ids), torch.as_tensor(mask))
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_int8_bundle_verifies_against_the_run(int8_bundle, run_dir, corpus):
    from cvahash.export.onnx.verify import verify_bundle

    report = verify_bundle(int8_bundle, run_dir, corpus)
    assert report.passed, report.format()
    assert report.n_texts == report.n_windows >= 4
    assert min(report.bit_agreement.values()) >= 0.98
    assert report.map10["torch"] > 0
    # a handful of held-out clips: the mAP change is reported, not judged
    assert report.map_queries < 30 and any("too few queries" in n for n in report.notes)
    assert "drop" not in report.format()


def test_quantisation_choice_is_the_best_measured(int8_bundle):
    manifest = json.loads((int8_bundle / MANIFEST_NAME).read_text())
    assert manifest["precision"] == "int8"
    q = manifest["quantization"]
    for branch, n_methods in (("text", 4), ("audio", 5)):
        measured = [c for c in q[branch]["candidates"] if "bit_agreement" in c]
        assert len(q[branch]["candidates"]) == n_methods and measured
        best = max(c["bit_agreement"] for c in measured)
        # The first (fastest) method within the tolerance of the best agreement wins.
        winner = next(c for c in measured if c["bit_agreement"] >= best - q[branch]["tolerance"])
        assert q[branch]["method"] == winner["method"]
        assert q[branch]["bit_agreement"] == winner["bit_agreement"] >= best - 0.002
    assert q["fp32_check"]["text"]["bit_agreement"] == 1.0
    assert any(c["method"] == "static-qdq" for c in q["audio"]["candidates"])


def test_same_input_same_code_whatever_the_batch(int8_bundle, held_out):
    """Dynamic int8 takes activation scales per batch; the bundle must still give a window
    or caption the same code alone as in a batch (search --like finds indexed windows)."""
    bundle = ModelBundle.open(int8_bundle)
    manifest = bundle.manifest
    for branch in ("text", "audio"):
        dynamic = manifest["quantization"][branch]["method"].startswith("dynamic-")
        assert bundle.batch_invariant(branch) is not dynamic
    feats = held_out.features
    alone = np.concatenate([bundle.encode_audio(feats[i:i + 1]) for i in range(len(feats))])
    np.testing.assert_array_equal(bundle.encode_audio(feats, batch_size=8), alone)
    alone = np.concatenate([bundle.encode_text([c]) for c in held_out.captions])
    np.testing.assert_array_equal(bundle.encode_text(held_out.captions), alone)


def test_int8_text_graph_is_smaller_than_fp32(int8_bundle, fp32_bundle):
    # The text graph is mostly embedding and MatMul weights, which int8 shrinks ~4x
    # (tiny: ~0.65x). (The
    # tiny audio graph is not: its few weights are outweighed by the added quantisation
    # nodes; full-size sizes are in docs/benchmarks/bundle.md.)
    fp32 = (fp32_bundle / "text.onnx").stat().st_size
    assert (int8_bundle / "text.onnx").stat().st_size < 0.8 * fp32


def test_manifest_describes_the_bundle(int8_bundle, reference):
    manifest = json.loads((int8_bundle / MANIFEST_NAME).read_text())
    config, tokenizer = reference["config"], reference["tokenizer"]
    assert manifest["format_version"] == 1 and manifest["bits"] == 32
    assert manifest["source_model"] == "tiny"
    assert manifest["frontend"] == config.frontend
    assert manifest["tokenizer"] == {"max_length": config.text_max_length,
                                     "padding": config.text_padding, "truncation": True,
                                     "pad_id": tokenizer.pad_token_id,
                                     "pad_token": tokenizer.pad_token, "trim_padding": True}
    for name in ("text.onnx", "audio.onnx", "tokenizer.json"):
        assert manifest["files"][name]["sha256"] == sha256_file(int8_bundle / name)
    assert manifest["fingerprint"] == fingerprint_of(manifest)


def test_tokenizer_json_alone_gives_transformers_ids(int8_bundle, held_out, reference):
    from cvahash.export.train.tokenizer import tokenize

    bundle = ModelBundle.open(int8_bundle)
    tokens = bundle.tokenize(held_out.captions)
    np.testing.assert_array_equal(tokens.input_ids, reference["ids"])
    np.testing.assert_array_equal(tokens.attention_mask, reference["mask"])
    assert not tokens.truncated.any()
    long = " ".join(held_out.captions * 4)
    tokens = bundle.tokenize([long])
    ids, _ = tokenize(reference["tokenizer"], [long], reference["config"].text_max_length)
    np.testing.assert_array_equal(tokens.input_ids, ids.numpy())
    assert tokens.truncated.tolist() == [True]


def test_codes_identical_in_a_process_without_torch(int8_bundle, held_out, reference,
                                                    tmp_path):
    np.save(tmp_path / "features.npy", held_out.features)
    (tmp_path / "captions.json").write_text(json.dumps(held_out.captions))
    script = textwrap.dedent(f"""
        import json, sys
        class BlockHeavy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "peft", "onnx"):
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, BlockHeavy())
        import numpy as np
        from cvahash.model.bundle import ModelBundle
        bundle = ModelBundle.open({str(int8_bundle)!r}, threads=1)
        captions = json.loads(open({str(tmp_path / "captions.json")!r}).read())
        np.save({str(tmp_path / "text.npy")!r}, bundle.encode_text(captions))
        np.save({str(tmp_path / "audio.npy")!r},
                bundle.encode_audio(np.load({str(tmp_path / "features.npy")!r})))
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("torch", "transformers", "peft", "onnx"))
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    text, audio = np.load(tmp_path / "text.npy"), np.load(tmp_path / "audio.npy")
    bundle = ModelBundle.open(int8_bundle)
    np.testing.assert_array_equal(text, bundle.encode_text(held_out.captions))
    np.testing.assert_array_equal(audio, bundle.encode_audio(held_out.features))
    assert text.shape == audio.shape == (len(held_out.captions), 4)
    # ...and those codes are PyTorch's, bit for bit on nearly every bit.
    for codes, logits in ((text, reference["text"]), (audio, reference["audio"])):
        assert np.mean(np.unpackbits(codes, axis=1) == (logits > 0)) >= 0.98


def test_verify_fails_for_a_bundle_of_another_model(int8_bundle, run_dir, corpus, reference,
                                                    tmp_path, capsys):
    """A well-formed bundle (valid hashes) whose audio graph is not the run's fails verify."""
    import copy

    from cvahash.cli import main
    from cvahash.export.onnx.bundle_writer import write_manifest
    from cvahash.export.onnx.convert import export_audio_graph

    other = copy.deepcopy(reference["merged"])
    with torch.no_grad():
        for p in other.audio_head.parameters():
            p.copy_(torch.randn_like(p))
    wrong = tmp_path / "wrong"
    shutil.copytree(int8_bundle, wrong)
    export_audio_graph(other, wrong / "audio.onnx")
    fields = json.loads((wrong / MANIFEST_NAME).read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    write_manifest(wrong, fields)
    assert main(["bundle", "verify", str(wrong), "--against", str(run_dir), "--data",
                 str(corpus), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["passed"]
    assert any("audio bit agreement" in f for f in report["failures"])
    assert report["bit_agreement"]["text"] >= 0.98
    # Thresholds are configurable: nothing is demanded, nothing fails.
    assert main(["bundle", "verify", str(wrong), "--against", str(run_dir), "--data",
                 str(corpus), "--min-agreement", "0", "--max-map-drop", "100"]) == 0
    assert "result      PASS" in capsys.readouterr().out


def test_tampered_bundle_is_refused_by_verify(int8_bundle, run_dir, tmp_path, capsys):
    from cvahash.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(int8_bundle, bad)
    data = bytearray((bad / "text.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="text.onnx"):
        ModelBundle.open(bad)
    assert main(["bundle", "verify", str(bad), "--against", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "text.onnx: sha256" in out and "FAIL" in out


def test_export_refuses_to_overwrite_and_bad_precision(int8_bundle, run_dir, capsys):
    from cvahash.cli import main
    from cvahash.export.onnx.bundle_writer import ExportError, export_run

    before = sha256_file(int8_bundle / MANIFEST_NAME)
    assert main(["export", str(run_dir), "--out", str(int8_bundle)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sha256_file(int8_bundle / MANIFEST_NAME) == before
    with pytest.raises(ExportError, match="precision"):
        export_run(run_dir, int8_bundle.parent / "x", "int4")
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--out", "x", "--precision", "int4"])


def test_export_of_a_missing_run_names_it(tmp_path):
    from cvahash.cli import main
    from cvahash.export.onnx.bundle_writer import export_run
    from cvahash.export.train.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="run.json"):
        export_run(tmp_path / "nope", tmp_path / "out")
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_fp16_export_without_corpus_uses_the_builtin_probe(run_dir, held_out, reference,
                                                          int8_bundle, tmp_path):
    from cvahash.export.onnx.bundle_writer import export_run

    result = export_run(run_dir, tmp_path / "fp16", "fp16")
    q = result.manifest["quantization"]
    assert result.manifest["precision"] == "fp16" and q["probe"] == "built-in synthetic probe"
    assert q["text"]["method"] == q["audio"]["method"] == "fp16"
    assert result.manifest["graphs"]["audio"]["batch_invariant"] is True
    bundle = ModelBundle.open(result.path)
    codes = np.unpackbits(bundle.encode_audio(held_out.features), axis=1)
    assert np.mean(codes == (reference["audio"] > 0)) >= 0.98
    # A bundle of the same run at another precision is another model: another fingerprint.
    assert bundle.fingerprint != ModelBundle.open(int8_bundle).fingerprint
