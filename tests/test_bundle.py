"""cvahash.model.bundle.ModelBundle on hand-built bundles, checked against numpy references.

No torch here: the graphs are written with the ``onnx`` helper (a tiny embedding-mean
text encoder and a mel-mean audio encoder, both followed by a linear layer), so every
logit can be recomputed in numpy. The tokenizer is a word-level ``tokenizers`` model.
The real exported CLAP graphs are covered by tests/test_export.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from band_bundle import word_tokenizer

from cvahash.errors import BundleError, InvalidArgument
from cvahash.model.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ModelBundle,
    check_bundle,
    fingerprint_of,
    pack_codes,
    sha256_file,
)
from cvahash.model.frontend import FrontendParams

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

BITS = 12  # not a multiple of 8: packing pads the last byte with zeros
DIM = 8
MAX_LEN = 8
WORDS = ["owl", "hoot", "low", "woodpecker", "drumming", "on", "dead", "tree", "frog", "croak"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
PARAMS = FrontendParams()


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.standard_normal((len(SPECIALS) + len(WORDS), DIM)).astype(np.float32),
        "wt": rng.standard_normal((DIM, BITS)).astype(np.float32),
        "wa": rng.standard_normal((PARAMS.n_mels, BITS)).astype(np.float32) / 8,
        "ba": rng.standard_normal(BITS).astype(np.float32),
    }


def _text_graph(w, path):
    """logits = mean over unmasked tokens of emb[ids], times wt."""
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "ax2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "ax1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "ax1"], ["n"], keepdims=0),
        helper.make_node("Div", ["s", "n"], ["mean"]),
        helper.make_node("MatMul", ["mean", "wt"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(w["emb"], "emb"), numpy_helper.from_array(w["wt"], "wt"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    graph = helper.make_graph(
        nodes, "text", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                        helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                      ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", BITS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _audio_graph(w, path):
    """logits = (mean over frames of the log-mel) times wa, plus ba."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "wa"], ["p"]),
             helper.make_node("Add", ["p", "ba"], ["logits"])]
    inits = [numpy_helper.from_array(w["wa"], "wa"), numpy_helper.from_array(w["ba"], "ba"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "audio",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["b", 1, PARAMS.n_frames, PARAMS.n_mels])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", BITS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _tokenizer(path):
    word_tokenizer(path, WORDS, SPECIALS)


def _reference_ids(text):
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    ids = [0] + [vocab.get(t, 3) for t in text.split()][: MAX_LEN - 2] + [2]
    return ids + [1] * (MAX_LEN - len(ids)), [1] * len(ids) + [0] * (MAX_LEN - len(ids))


def make_bundle(root, seed=0):
    from cvahash.export.onnx.bundle_writer import write_manifest

    root.mkdir()
    w = _weights(seed)
    _text_graph(w, root / "text.onnx")
    _audio_graph(w, root / "audio.onnx")
    _tokenizer(root / "tokenizer.json")
    write_manifest(root, {
        "bits": BITS, "source_model": "hand-built test graphs", "frontend": PARAMS.to_dict(),
        "tokenizer": {"max_length": MAX_LEN, "padding": "max_length", "truncation": True,
                      "pad_id": 1, "pad_token": "<pad>"},
        "precision": "fp32"})
    return root, w


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(built[0], dst)
    return dst


def _features(n, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, 1, PARAMS.n_frames, PARAMS.n_mels)
    return (rng.standard_normal(shape) * 10 - 40).astype(np.float32)


# ---------------------------------------------------------------- codes


def test_pack_codes_is_msb_first_with_zero_padding():
    logits = np.full((2, BITS), -1.0)
    logits[0, 0] = 1.0           # bit 0 -> top bit of byte 0
    logits[1, [7, 8, 11]] = 2.0  # bit 7 -> low bit of byte 0; bits 8, 11 in byte 1
    logits[1, 1] = 0.0           # exactly zero is a 0 bit ("logit > 0")
    codes = pack_codes(logits)
    assert codes.dtype == np.uint8 and codes.shape == (2, 2) and codes.flags.c_contiguous
    assert codes.tolist() == [[0b1000_0000, 0], [0b0000_0001, 0b1001_0000]]


def test_text_codes_match_numpy_reference(built):
    root, w = built
    texts = ["owl hoot", "woodpecker drumming on dead tree", "frog croak croak"]
    bundle = ModelBundle.open(root)
    ref = []
    for t in texts:
        ids, mask = np.array(_reference_ids(t)[0]), np.array(_reference_ids(t)[1], float)
        ref.append((w["emb"][ids] * mask[:, None]).sum(0) / mask.sum() @ w["wt"])
    ref = np.array(ref, dtype=np.float32)
    np.testing.assert_allclose(bundle.text_logits(texts), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bundle.encode_text(texts), np.packbits(ref > 0, axis=1))
    assert bundle.encode_text(texts).shape == (3, 2)


def test_tokenize_pads_truncates_and_says_so(built):
    bundle = ModelBundle.open(built[0])
    long = "owl " * 20
    tok = bundle.tokenize(["owl hoot", long])
    assert tok.input_ids.dtype == np.int64 and tok.input_ids.shape == (2, MAX_LEN)
    assert tok.input_ids[0].tolist() == _reference_ids("owl hoot")[0]
    assert tok.input_ids[1].tolist() == _reference_ids(long)[0]
    assert tok.attention_mask[0].tolist() == _reference_ids("owl hoot")[1]
    assert tok.truncated.tolist() == [False, True]


@pytest.mark.parametrize("bad", [[""], ["   \t\n"], ["owl", " "]])
def test_empty_text_is_refused(built, bad):
    bundle = ModelBundle.open(built[0])
    with pytest.raises(ValueError, match="empty or only whitespace"):
        bundle.encode_text(bad)


@pytest.mark.parametrize("bad", ["owl hoot", [], [b"owl"], [3]])
def test_texts_must_be_a_list_of_strings(built, bad):
    with pytest.raises(InvalidArgument):
        ModelBundle.open(built[0]).encode_text(bad)


def test_audio_codes_match_reference_and_chunking(built):
    root, w = built
    feats = _features(5)
    ref = feats[:, 0].mean(axis=1) @ w["wa"] + w["ba"]
    bundle = ModelBundle.open(root)
    np.testing.assert_allclose(bundle.audio_logits(feats), ref, rtol=1e-4, atol=1e-4)
    whole = bundle.encode_audio(feats, batch_size=8)
    np.testing.assert_array_equal(whole, np.packbits(ref > 0, axis=1))
    # Chunks of 2 (5 = 2 + 2 + 1) give the same codes as one batch.
    np.testing.assert_array_equal(bundle.encode_audio(feats, batch_size=2), whole)
    # float64 input is accepted and cast.
    np.testing.assert_array_equal(bundle.encode_audio(feats.astype(np.float64)), whole)


def test_bad_audio_features_are_refused(built):
    bundle = ModelBundle.open(built[0])
    with pytest.raises(InvalidArgument, match="shape"):
        bundle.encode_audio(np.zeros((2, 1001, 64), np.float32))
    with pytest.raises(InvalidArgument, match="shape"):
        bundle.encode_audio(np.zeros((1, 1, 500, 64), np.float32))
    with pytest.raises(InvalidArgument, match="no windows"):
        bundle.encode_audio(np.zeros((0, 1, 1001, 64), np.float32))
    feats = _features(3)
    feats[2, 0, 10, 3] = np.nan
    with pytest.raises(InvalidArgument, match="window 2"):
        bundle.encode_audio(feats)
    with pytest.raises(InvalidArgument, match="batch_size"):
        bundle.encode_audio(_features(1), batch_size=0)


def test_properties_and_lazy_sessions(built, caplog):
    root, _ = built
    with caplog.at_level(logging.INFO, logger="cvahash.model.bundle"):
        bundle = ModelBundle.open(root, threads=1,
                                  providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
        assert bundle.bits == BITS and bundle.nbytes == 2
        assert bundle.frontend_params == PARAMS
        assert bundle.fingerprint == json.loads((root / MANIFEST_NAME).read_text())["fingerprint"]
        assert bundle.manifest["format_version"] == FORMAT_VERSION
        assert bundle.providers_in_use == {}  # nothing loaded by open()
        bundle.encode_text(["owl"])
        assert set(bundle.providers_in_use) == {"text"}  # a search loads only the text graph
        assert bundle.providers_in_use["text"] == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records if "graph on" in r.getMessage()]
    assert lines == [f"bundle {bundle.fingerprint}: text graph on CPUExecutionProvider (1 threads)"]


def test_fingerprint_depends_on_what_decides_the_codes(built):
    manifest = check_bundle(built[0])
    fp = fingerprint_of(manifest)
    assert fp == manifest["fingerprint"] and len(fp) == 16
    assert fingerprint_of({**manifest, "source_model": "other", "created": "x"}) == fp
    for change in ({"bits": BITS + 1}, {"tokenizer": {**manifest["tokenizer"], "max_length": 9}},
                   {"frontend": {**manifest["frontend"], "f_min": 0.0}}):
        assert fingerprint_of({**manifest, **change}) != fp
    files = json.loads(json.dumps(manifest["files"]))
    files["audio.onnx"]["sha256"] = "0" * 64
    assert fingerprint_of({**manifest, "files": files}) != fp


def test_a_second_bundle_has_another_fingerprint(built, tmp_path):
    other, _ = make_bundle(tmp_path / "other", seed=1)
    assert ModelBundle.open(other).fingerprint != ModelBundle.open(built[0]).fingerprint


# ---------------------------------------------------------------- refusals


def _edit_manifest(root, **changes):
    path = root / MANIFEST_NAME
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["text.onnx", "audio.onnx", "tokenizer.json", "manifest.json"])
def test_missing_file_is_refused_by_name(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        ModelBundle.open(copy)


@pytest.mark.parametrize("name", ["text.onnx", "audio.onnx", "tokenizer.json"])
def test_changed_file_is_refused_by_name(copy, name):
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name.replace('.', '[.]')}: sha256"):
        ModelBundle.open(copy)


def test_truncated_file_is_refused(copy):
    data = (copy / "audio.onnx").read_bytes()
    (copy / "audio.onnx").write_bytes(data[:100])
    with pytest.raises(BundleError, match="audio.onnx: is 100 bytes"):
        ModelBundle.open(copy)


def test_newer_format_is_refused(copy):
    _edit_manifest(copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=r"manifest\.json: bundle format 2 is newer.*upgrade"):
        ModelBundle.open(copy)


@pytest.mark.parametrize("changes, match", [
    ({"bits": BITS + 4}, "fingerprint"),
    ({"format_version": "1"}, "format_version"),
    ({"bits": 0}, "bits"),
    ({"bits": 512}, "bits 512 is outside 1..256"),
    ({"files": {"text.onnx": {"sha256": "x"}}}, "does not list audio.onnx"),
    ({"files": {"../escape": {"sha256": "x"}, "text.onnx": {}, "audio.onnx": {},
                "tokenizer.json": {}}}, "not a plain file name"),
])
def test_edited_manifest_is_refused(copy, changes, match):
    _edit_manifest(copy, **changes)
    with pytest.raises(BundleError, match=match):
        ModelBundle.open(copy)


def test_garbage_manifest_is_refused(copy):
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: unreadable or not valid JSON"):
        ModelBundle.open(copy)


def test_sha256_file_is_sha256(built):
    import hashlib

    path = built[0] / "tokenizer.json"
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- command line


def test_bundle_verify_command(copy, capsys):
    from cvahash.cli import main

    assert main(["bundle", "verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "result      PASS" in out and "text.onnx" in out
    assert main(["bundle", "verify", str(copy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["fingerprint"] == ModelBundle.open(copy).fingerprint
    (copy / "audio.onnx").write_bytes(b"not a graph")
    assert main(["bundle", "verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "audio.onnx" in out and "result      FAIL" in out


def test_bundle_loads_without_torch(built, tmp_path):
    """The device side needs numpy, onnxruntime and tokenizers only."""
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "peft", "onnx"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from cvahash.model.bundle import ModelBundle
        b = ModelBundle.open({str(built[0])!r})
        print(b.encode_text(["owl hoot"]).tolist())
        assert not any(m.split(".")[0] in ("torch", "transformers", "onnx") for m in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    expected = ModelBundle.open(built[0]).encode_text(["owl hoot"]).tolist()
    assert json.loads(out.stdout.strip()) == expected


@pytest.mark.parametrize("name, call", [
    ("tokenizer.json", lambda b: b.encode_text(["owl"])),
    ("text.onnx", lambda b: b.encode_text(["owl"])),
    ("audio.onnx", lambda b: b.encode_audio(_features(1))),
])
def test_unloadable_file_with_valid_hash_names_the_file(copy, name, call):
    """A bundle written with a broken file (hashes match it) fails, naming it: at open
    when the file is a graph that is not ONNX at all (bundle verify says so too), on use
    otherwise."""
    from cvahash.export.onnx.bundle_writer import write_manifest

    (copy / name).write_bytes(b"this is not what it should be")
    fields = json.loads((copy / MANIFEST_NAME).read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    write_manifest(copy, fields)
    with pytest.raises(BundleError, match=name.replace(".", "[.]")):
        call(ModelBundle.open(copy))  # hashes are fine


def _batch_dependent_audio_graph(w, path):
    """logits = m @ wa + ba - mean over the batch of (m @ wa): each row depends on the
    others, like a dynamically quantised graph (one activation scale per batch)."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "wa"], ["p"]),
             helper.make_node("ReduceMean", ["p", "ax0"], ["pm"], keepdims=1),
             helper.make_node("Sub", ["p", "pm"], ["c"]),
             helper.make_node("Add", ["c", "ba"], ["logits"])]
    inits = [numpy_helper.from_array(w["wa"], "wa"), numpy_helper.from_array(w["ba"], "ba"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    graph = helper.make_graph(
        nodes, "audio",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["b", 1, PARAMS.n_frames, PARAMS.n_mels])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", BITS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("declared", [None, False, True])
def test_graphs_not_batch_invariant_run_row_by_row(copy, built, declared):
    from cvahash.export.onnx.bundle_writer import write_manifest

    w = built[1]
    _batch_dependent_audio_graph(w, copy / "audio.onnx")
    fields = json.loads((copy / MANIFEST_NAME).read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    if declared is not None:
        fields["graphs"] = {"audio": {"batch_invariant": declared}}
    write_manifest(copy, fields)
    bundle = ModelBundle.open(copy)
    assert bundle.batch_invariant("audio") is bool(declared)
    feats = _features(4)
    alone = np.concatenate([bundle.audio_logits(feats[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(alone, np.tile(w["ba"], (4, 1)), atol=1e-5)  # own mean
    together = bundle.audio_logits(feats, batch_size=4)
    if declared:  # the manifest says rows are independent: one batch (here: wrongly)
        assert not np.allclose(together, alone, atol=1e-3)
    else:  # row by row: the same window always gives the same logits
        np.testing.assert_array_equal(together, alone)


def test_trim_padding_gives_the_same_logits(copy, built):
    from cvahash.export.onnx.bundle_writer import write_manifest

    texts = ["owl", "woodpecker drumming on dead tree", "frog croak croak"]
    want = ModelBundle.open(built[0]).text_logits(texts)
    fields = json.loads((copy / MANIFEST_NAME).read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    fields["tokenizer"]["trim_padding"] = True
    write_manifest(copy, fields)
    bundle = ModelBundle.open(copy)
    assert bundle.fingerprint != ModelBundle.open(built[0]).fingerprint  # codes may differ
    np.testing.assert_allclose(bundle.text_logits(texts), want, rtol=1e-6, atol=1e-6)
    assert bundle.tokenize(texts).input_ids.shape == (3, MAX_LEN)  # tokenize still pads


def test_windows_run_in_parallel_give_the_sequential_codes():
    """A dynamic-int8 graph runs one window per call; with more than one thread the
    bundle runs several windows at once (one thread each). Same codes as one by one."""
    from pathlib import Path

    demo = Path(__file__).parent / "data" / "demo-bundle"
    rng = np.random.default_rng(3)
    feats = (rng.standard_normal((7, 1, 1001, 64)) * 20 - 40).astype(np.float32)
    serial = ModelBundle.open(demo, threads=1)
    parallel = ModelBundle.open(demo, threads=3)
    want = serial.encode_audio(feats)
    assert serial._audio_workers == 1
    np.testing.assert_array_equal(parallel.encode_audio(feats), want)
    assert parallel._audio_workers == 3
    np.testing.assert_array_equal(parallel.encode_audio(feats[2:3]), want[2:3])
    parallel.close()  # shuts the worker threads down; the next call makes them again
    np.testing.assert_array_equal(parallel.encode_audio(feats[:2]), want[:2])


# --- verifying only what is loaded, and the record of verified files ------------------


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the hash can tell
    path.write_bytes(bytes(data))


def test_a_text_only_open_hashes_the_audio_graph_only_before_loading_it(copy):
    _flip_middle_byte(copy / "audio.onnx")
    bundle = ModelBundle.open(copy, graphs=("text",))  # audio.onnx is not read yet
    assert bundle.encode_text(["owl hoot"]).shape == (1, bundle.nbytes)
    with pytest.raises(BundleError, match=r"audio[.]onnx: sha256"):
        bundle.encode_audio(_features(1))
    with pytest.raises(BundleError, match=r"audio[.]onnx: sha256"):
        ModelBundle.open(copy)  # a full open still refuses it


def test_a_changed_text_graph_is_refused_by_a_text_only_open(copy):
    _flip_middle_byte(copy / "text.onnx")
    with pytest.raises(BundleError, match=r"text[.]onnx: sha256"):
        ModelBundle.open(copy, graphs=("text",))


def test_verified_digests_are_reused_until_the_file_changes(built, copy, monkeypatch, tmp_path):
    from cvahash.model import integrity as bundle_module
    from cvahash.model import verified

    monkeypatch.setenv(verified.CACHE_ENV, str(tmp_path / "cache"))
    ModelBundle.open(copy)
    assert (tmp_path / "cache" / verified.RECORD_FILE).is_file()
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    ModelBundle.open(copy)
    assert hashed == []  # nothing changed: no file read again
    _flip_middle_byte(copy / "audio.onnx")
    with pytest.raises(BundleError, match=r"audio[.]onnx: sha256"):
        ModelBundle.open(copy)
    assert [p.name for p in hashed] == ["audio.onnx"]
    # `check_bundle` (what `cvahash bundle verify` runs) always reads every byte
    hashed.clear()
    ModelBundle.open(built[0])
    hashed.clear()
    check_bundle(built[0])
    assert {p.name for p in hashed} >= {"text.onnx", "audio.onnx", "tokenizer.json"}


def test_an_unwritable_record_folder_only_costs_the_hashing(copy, monkeypatch, tmp_path):
    from cvahash.model import verified

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(verified.CACHE_ENV, str(blocker / "cache"))
    assert ModelBundle.open(copy).fingerprint == ModelBundle.open(copy).fingerprint
