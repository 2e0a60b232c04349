"""The text graph's mapped copy (cvahash.model.mapped): made once per device, used while it
is unchanged, and the codes are those of the bundle's own text.onnx.

The shipped demo bundle is marked as pre-optimised (``graphs.text.ort_optimized``, which
is outside the fingerprint) so it qualifies for a copy; the reference is onnxruntime run
directly on the bundle's text.onnx with its default settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cvahash.model import mapped, verified
from cvahash.model.bundle import ModelBundle
from cvahash.model.integrity import fingerprint_of, sha256_file

DEMO = Path(__file__).parent / "data" / "demo-bundle"
TEXTS = ["owl hooting", "a woodpecker drumming on a dead tree in the rain", "frog",
         "wind " * 60]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(verified.CACHE_ENV, str(folder))
    return folder


def _marked(dst: Path, **text_entry) -> Path:
    shutil.copytree(DEMO, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["graphs"]["text"].update({"ort_optimized": "extended", **text_entry})
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


@pytest.fixture
def marked(tmp_path) -> Path:
    return _marked(tmp_path / "bundle")


def _reference_codes(bundle_dir: Path, texts) -> np.ndarray:
    """Codes from onnxruntime on text.onnx itself, default options, one text at a time
    with the padding cut as the bundle does."""
    bundle = ModelBundle.open(bundle_dir, graphs=("text",))
    tokens = bundle.tokenize(texts)
    session = ort.InferenceSession(str(bundle_dir / "text.onnx"),
                                   providers=["CPUExecutionProvider"])
    rows = []
    for ids, mask in zip(tokens.input_ids, tokens.attention_mask, strict=True):
        used = int(mask.sum())
        rows.append(session.run(None, {"input_ids": ids[None, :used],
                                       "attention_mask": mask[None, :used]})[0][0])
    return np.packbits(np.array(rows) > 0, axis=1)


def _loaded_paths(monkeypatch) -> list[str]:
    seen = []
    real = ort.InferenceSession

    def recording(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return seen


def _copy_folder(cache: Path, bundle_dir: Path) -> Path:
    sha = json.loads((bundle_dir / "manifest.json").read_text())["files"]["text.onnx"]["sha256"]
    return cache / mapped.FOLDER / sha


@pytest.mark.parametrize("pack", [True, False])
def test_the_copy_is_made_once_then_used_and_gives_the_bundles_codes(cache, marked,
                                                                    monkeypatch, pack):
    want = _reference_codes(marked, TEXTS)
    first = ModelBundle.open(marked, graphs=("text",))
    first.one_shot_text = not pack
    assert np.array_equal(first.encode_text(TEXTS), want)
    folder = _copy_folder(cache, marked)
    assert sorted(p.name for p in folder.iterdir()) == [mapped.GRAPH, mapped.DATA, mapped.RECORD]
    assert (folder / mapped.GRAPH).stat().st_size < (marked / "text.onnx").stat().st_size

    seen = _loaded_paths(monkeypatch)
    again = ModelBundle.open(marked, graphs=("text",))
    again.one_shot_text = not pack
    assert np.array_equal(again.encode_text(TEXTS), want)
    assert seen == [str(folder / mapped.GRAPH)]  # the copy, not the bundle's text.onnx
    assert not any(p.name.startswith(".staging-") for p in folder.parent.iterdir())


def test_a_bundle_not_saved_optimised_gets_no_copy(cache, tmp_path):
    plain = shutil.copytree(DEMO, tmp_path / "plain")
    bundle = ModelBundle.open(plain, graphs=("text",))
    assert np.array_equal(bundle.encode_text(TEXTS), _reference_codes(plain, TEXTS))
    assert not (cache / mapped.FOLDER).exists()


def test_a_changed_copy_is_not_used_and_is_made_again(cache, marked, monkeypatch):
    want = _reference_codes(marked, TEXTS)
    ModelBundle.open(marked, graphs=("text",)).encode_text(TEXTS[:1])
    folder = _copy_folder(cache, marked)
    data = folder / mapped.DATA
    with open(data, "r+b") as f:  # same size, other weights: the change time moves
        f.seek(data.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert mapped.find(folder.name, ort.__version__) is None

    seen = _loaded_paths(monkeypatch)
    bundle = ModelBundle.open(marked, graphs=("text",))
    assert np.array_equal(bundle.encode_text(TEXTS), want)
    assert seen[0] == str(marked / "text.onnx")  # the bundle's graph, copy rewritten
    assert mapped.find(folder.name, ort.__version__) == folder / mapped.GRAPH


def test_a_copy_from_another_onnxruntime_version_is_made_again(cache, marked):
    ModelBundle.open(marked, graphs=("text",)).encode_text(TEXTS[:1])
    folder = _copy_folder(cache, marked)
    assert mapped.find(folder.name, ort.__version__) is not None
    assert mapped.find(folder.name, "0.0.1") is None


def test_a_copy_with_other_logits_is_not_kept(cache, marked, monkeypatch):
    monkeypatch.setattr(ModelBundle, "_same_logits", lambda *a, **k: False)
    bundle = ModelBundle.open(marked, graphs=("text",))
    assert np.array_equal(bundle.encode_text(TEXTS), _reference_codes(marked, TEXTS))
    parent = cache / mapped.FOLDER
    assert list(parent.iterdir()) == []  # neither a copy nor a staging folder left


def test_an_unwritable_cache_only_costs_the_speed(tmp_path, marked, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(verified.CACHE_ENV, str(blocker / "cache"))
    bundle = ModelBundle.open(marked, graphs=("text",))
    assert np.array_equal(bundle.encode_text(TEXTS), _reference_codes(marked, TEXTS))


def test_at_most_keep_copies_stay(cache, tmp_path):
    bundles = []
    for i in range(mapped.KEEP + 1):
        b = _marked(tmp_path / f"b{i}")
        # another text.onnx (same graph, one more byte of metadata): another copy
        with open(b / "text.onnx", "ab") as f:
            f.write(bytes([0x32, 0x01, ord(str(i))]))  # ModelProto.doc_string = "i"
        manifest = json.loads((b / "manifest.json").read_text())
        manifest["files"]["text.onnx"].update(sha256=sha256_file(b / "text.onnx"),
                                              bytes=(b / "text.onnx").stat().st_size)
        manifest["fingerprint"] = fingerprint_of(manifest)
        (b / "manifest.json").write_text(json.dumps(manifest))
        ModelBundle.open(b, graphs=("text",)).encode_text(TEXTS[:1])
        bundles.append(b)
        os.utime(_copy_folder(cache, b), (1e9 + i, 1e9 + i))  # made in this order
    kept = sorted(p.name for p in (cache / mapped.FOLDER).iterdir())
    assert len(kept) == mapped.KEEP
    assert _copy_folder(cache, bundles[0]).name not in kept  # the oldest went
    assert _copy_folder(cache, bundles[-1]).name in kept


def test_cli_search_gives_the_same_hits_from_the_copy(cache, marked, tmp_path):
    import soundfile as sf

    rec = tmp_path / "rec.wav"
    rng = np.random.default_rng(3)
    sf.write(rec, (rng.standard_normal(48000 * 40) * 0.1).astype(np.float32), 48000)
    env = {**os.environ, verified.CACHE_ENV: str(cache)}
    cli = [sys.executable, "-m", "cvahash"]
    subprocess.run([*cli, "index", str(rec), "--db", str(tmp_path / "db"), "--bundle",
                    str(DEMO), "--quiet", "--threads", "1"], check=True, env=env)

    def search(bundle):
        return subprocess.run([*cli, "search", "owl hooting", "--db", str(tmp_path / "db"),
                               "--bundle", str(bundle), "-k", "4", "--json"], env=env,
                              check=True, capture_output=True, text=True).stdout

    plain = json.loads(search(DEMO))
    making = json.loads(search(marked))
    assert _copy_folder(cache, marked).is_dir()
    using = json.loads(search(marked))
    assert plain["hits"] and making["hits"] == plain["hits"] == using["hits"]


def test_a_copy_made_meanwhile_by_another_process_is_kept(cache, marked):
    ModelBundle.open(marked, graphs=("text",)).encode_text(TEXTS[:1])
    folder = _copy_folder(cache, marked)
    before = {p.name: p.stat().st_ino for p in folder.iterdir()}
    staging = mapped.staging_folder()  # a second process that wrote its own copy
    for name in (mapped.GRAPH, mapped.DATA):
        shutil.copyfile(folder / name, staging / name)
    assert mapped.publish(staging, folder.name, ort.__version__) == folder / mapped.GRAPH
    assert {p.name: p.stat().st_ino for p in folder.iterdir()} == before
    assert not staging.exists()


def test_a_copy_that_cannot_be_written_only_costs_the_speed(cache, marked, monkeypatch):
    # ONNX Runtime fails to write the copy (a full disk, a folder gone): text.onnx is loaded
    monkeypatch.setattr(mapped, "save_options", lambda options, staging: setattr(
        options, "optimized_model_filepath", str(staging / "missing" / mapped.GRAPH)))
    bundle = ModelBundle.open(marked, graphs=("text",))
    assert np.array_equal(bundle.encode_text(TEXTS), _reference_codes(marked, TEXTS))
    assert list((cache / mapped.FOLDER).iterdir()) == []
