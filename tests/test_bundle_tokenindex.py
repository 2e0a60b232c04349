"""A one-shot text query is tokenized from an index of tokenizer.json holding only the
tokens and merges it can use (cvahash.model.tokenindex); the ids, mask and truncation flag
must be those of the whole tokenizer (the reference: ``tokenizers`` on the file itself)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from cvahash.model import tokenindex, verified
from cvahash.model.bundle import ModelBundle
from cvahash.model.integrity import fingerprint_of, sha256_file

DEMO = Path(__file__).parent / "data" / "demo-bundle"
FIXED = ["owl hooting", "<s>hi</s> <pad> <mask>", "a  <s>b", "x <mask> y", "Zaunkönig singt 🐦",
         "  many   spaces\tand\nlines  ", "frog " * 80, "don't stop 12345 6.78!"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alpha = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,'!?-éüß中文🐦\t\n<>/"
    words = ["owl", "hoot", "wood", "pecker", "drum", "frog", "rain", "the", " ", "  ", "!",
             "<mask>", "</s>"]
    out = ["".join(rng.choice(alpha) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    out += ["".join(rng.choice(words) for _ in range(rng.randint(1, 25))) for _ in range(n)]
    return FIXED + [t for t in out if t.strip()]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(verified.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _with_tokenizer(dst: Path, tokenizer_json: Path | None = None) -> Path:
    shutil.copytree(DEMO, dst)
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, dst / "tokenizer.json")
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["files"]["tokenizer.json"].update(
            sha256=sha256_file(dst / "tokenizer.json"),
            bytes=(dst / "tokenizer.json").stat().st_size)
        manifest["fingerprint"] = fingerprint_of(manifest)
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _synthetic_bpe(path: Path, *, prefix_space: bool, size: int = 3000) -> Path:
    """A byte-level BPE tokenizer with random merges and RoBERTa's special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + alphabet)}
    merges, toks, rng = [], list(alphabet), random.Random(7)
    while len(vocab) < size:
        a, b = rng.choice(toks), rng.choice(toks)
        if len(a + b) <= 8 and a + b not in vocab:
            vocab[a + b] = len(vocab)
            toks.append(a + b)
            merges.append((a, b))
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True)])
    tok.save(str(path))
    return path


def _reference(bundle_dir: Path, texts) -> tuple:
    """ids, mask, truncated from the whole tokenizer.json, with the manifest's settings."""
    settings = json.loads((bundle_dir / "manifest.json").read_text())["tokenizer"]
    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=settings["max_length"])
    tok.enable_padding(length=settings["max_length"], pad_id=settings["pad_id"],
                       pad_token=settings["pad_token"])
    enc = tok.encode_batch(list(texts))
    return (np.array([e.ids for e in enc]), np.array([e.attention_mask for e in enc]),
            np.array([bool(e.overflowing) for e in enc]))


def _one_shot(bundle_dir: Path) -> ModelBundle:
    bundle = ModelBundle.open(bundle_dir, graphs=("text",))
    bundle.one_shot_text = True
    return bundle


def _count_file_loads(monkeypatch) -> list[str]:
    loads = []
    real = Tokenizer.from_file
    monkeypatch.setattr(Tokenizer, "from_file",
                        staticmethod(lambda p: loads.append(p) or real(p)))
    return loads


@pytest.mark.parametrize("source", ["demo", "no-prefix-space", "prefix-space"])
def test_one_shot_queries_tokenize_as_the_whole_file_does(cache, tmp_path, monkeypatch,
                                                          source):
    tokenizer_json = None
    if source != "demo":
        tokenizer_json = _synthetic_bpe(tmp_path / "tok.json",
                                        prefix_space=source == "prefix-space")
    bundle_dir = _with_tokenizer(tmp_path / "bundle", tokenizer_json)
    texts = _texts(100, seed=len(source))
    _one_shot(bundle_dir).tokenize(["owl"])  # the first one-shot query makes the index
    digest = sha256_file(bundle_dir / "tokenizer.json")
    assert tokenindex.index_path(digest).is_file()

    loads = _count_file_loads(monkeypatch)
    want = _reference(bundle_dir, texts)
    loads.clear()
    for i, text in enumerate(texts):  # one query per process, as `cvahash search` runs
        got = _one_shot(bundle_dir).tokenize([text])
        assert got.input_ids[0].tolist() == want[0][i].tolist(), repr(text)
        assert got.attention_mask[0].tolist() == want[1][i].tolist(), repr(text)
        assert bool(got.truncated[0]) == bool(want[2][i]), repr(text)
    assert loads == []  # never the whole tokenizer.json


def test_a_changed_index_is_not_used(cache, tmp_path, monkeypatch):
    bundle_dir = _with_tokenizer(tmp_path / "bundle")
    _one_shot(bundle_dir).tokenize(["owl"])
    index = tokenindex.index_path(sha256_file(bundle_dir / "tokenizer.json"))
    with open(index, "r+b") as f:  # rewritten in place: its change time moves
        data = f.read()
        f.seek(0)
        f.write(data)
    os.utime(index, ns=(1, 1))
    loads = _count_file_loads(monkeypatch)
    got = _one_shot(bundle_dir).tokenize(FIXED)
    assert loads  # the whole file again
    assert np.array_equal(got.input_ids, _reference(bundle_dir, FIXED)[0])


def test_a_tokenizer_with_a_normalizer_is_loaded_whole(cache, tmp_path):
    spec = json.loads((DEMO / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "tok.json").write_text(json.dumps(spec))
    bundle_dir = _with_tokenizer(tmp_path / "bundle", tmp_path / "tok.json")
    for _ in range(2):
        got = _one_shot(bundle_dir).tokenize(["OWL Hooting", "Frog"])
    assert not tokenindex.index_path(sha256_file(bundle_dir / "tokenizer.json")).exists()
    assert np.array_equal(got.input_ids, _reference(bundle_dir, ["OWL Hooting", "Frog"])[0])


def test_very_long_text_is_tokenized_by_the_whole_file(cache, tmp_path, monkeypatch):
    bundle_dir = _with_tokenizer(tmp_path / "bundle")
    _one_shot(bundle_dir).tokenize(["owl"])
    long = "a woodpecker drumming on a dead tree " * 200
    loads = _count_file_loads(monkeypatch)
    got = _one_shot(bundle_dir).tokenize([long])
    assert loads and bool(got.truncated[0])
    assert np.array_equal(got.input_ids, _reference(bundle_dir, [long])[0])


def test_long_lived_bundles_load_the_whole_file(cache, tmp_path):
    bundle_dir = _with_tokenizer(tmp_path / "bundle")
    bundle = ModelBundle.open(bundle_dir, graphs=("text",))
    assert np.array_equal(bundle.tokenize(FIXED).input_ids, _reference(bundle_dir, FIXED)[0])
    assert not (cache / "mapped-graphs").exists()  # no index made for them


def test_a_tokenizer_that_cannot_be_indexed_is_not_tried_again(cache, tmp_path, monkeypatch):
    spec = json.loads((DEMO / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "tok.json").write_text(json.dumps(spec))
    bundle_dir = _with_tokenizer(tmp_path / "bundle", tmp_path / "tok.json")
    _one_shot(bundle_dir).tokenize(["owl"])
    tried = []
    monkeypatch.setattr(tokenindex, "build", lambda *a: tried.append(a))
    got = _one_shot(bundle_dir).tokenize(["OWL"])
    assert tried == []
    assert np.array_equal(got.input_ids, _reference(bundle_dir, ["OWL"])[0])


def test_the_first_one_shot_query_loads_the_tokenizer_once(cache, tmp_path, monkeypatch):
    bundle_dir = _with_tokenizer(tmp_path / "bundle")
    loads = _count_file_loads(monkeypatch)
    got = _one_shot(bundle_dir).tokenize(FIXED)  # makes the index on the way
    assert len(loads) == 1
    assert np.array_equal(got.input_ids, _reference(bundle_dir, FIXED)[0])
