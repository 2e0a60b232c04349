"""The stand-in's pretraining recipe (cvahash.export.train.standin) learns: a tiny CLAP
pretrained with it retrieves held-out clips by held-out phrasings far above chance.

Four sound kinds (tone, buzz, chirp, clicks), 1 s clips; the test clips are new
renderings with captions in a phrasing no training caption used. About 30-60 s on one
thread. If this fails, the recipe no longer beats chance by a clear margin.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

pytestmark = pytest.mark.workstation

# (training phrasings, held-out phrasing) per kind; the held-out one reuses the key word
KINDS = {
    "tone": (["a steady high tone", "pure whistle tone"], "one long tone"),
    "buzz": (["low droning buzz", "buzz of a low hum"], "a buzz droning on"),
    "chirp": (["rising chirp call", "upward sweeping chirp"], "a chirp sweeping up"),
    "click": (["rapid clicking", "series of sharp clicks"], "clicks in a fast series"),
}


def make_corpus(out, n_train=8, n_test=3, seed=0, sr=16000):
    rng = np.random.default_rng(seed)
    t = np.arange(sr) / sr
    rows = []
    for label, (seen, held) in KINDS.items():
        for j in range(n_train + n_test):
            f0 = rng.uniform(400, 3000)
            if label == "tone":
                x = np.sin(2 * np.pi * f0 * t)
            elif label == "buzz":
                x = np.sign(np.sin(2 * np.pi * f0 / 8 * t))
            elif label == "chirp":
                x = np.sin(2 * np.pi * (f0 * t + 2000 * t ** 2))
            else:
                x = ((np.arange(t.size) % int(sr / rng.uniform(10, 30))) < 40).astype(float)
            x = 0.5 * x + 0.02 * rng.standard_normal(t.size)
            path = f"{label}_{j}.wav"
            sf.write(out / path, x.astype(np.float32), sr)
            test = j >= n_train
            rows.append({"audio": path, "caption": held if test else seen[j % len(seen)],
                         "labels": [label], "split": "test" if test else "train"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "manifest.jsonl"


def chance_map10(labels, trials=2000, seed=0):
    """Independent reference: mAP@10 of random rankings (own clip included)."""
    from cvahash.export.train import metrics

    rel = metrics.relevance_matrix(labels, labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    ranking = np.array([rng.permutation(n) for _ in range(trials)])
    aps = [metrics.average_precision_at_k(ranking[i:i + 1], rel[i % n:i % n + 1], 10)[0]
           for i in range(trials)]
    return float(np.mean(aps))


def test_standin_recipe_beats_chance_on_held_out_phrasings(tmp_path):
    """The recipe of cvahash.export.train.standin (augmented label-anchored + supclip
    pretraining, then the text stage), small: a plain manifest (no synth parts, so the
    clips themselves are the "calls"), a 16-item noise bank, 40 epochs of 4 batches of 16,
    100 text-stage steps. No broadband-noise kind: the recipe mixes random noise under
    every clip, so noise is background to it."""
    from cvahash.export.train import metrics
    from cvahash.export.train.model import load_clap
    from cvahash.export.train.standin import pretrain_standin
    from cvahash.export.train.tokenizer import tokenize
    from cvahash.model.audio import load
    from cvahash.model.frontend import FrontendParams, log_mel

    torch.set_num_threads(1)
    manifest = make_corpus(tmp_path, n_train=16)
    model_dir, _ = pretrain_standin(manifest, tmp_path / "standin", epochs=40, extra=0,
                                    noise=16, seed=0, batch=16, text_steps=100, log=None)
    clap, tok = load_clap(model_dir)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    params = FrontendParams()
    feats = np.concatenate([log_mel(load(tmp_path / r["audio"], params.sample_rate), params)
                            for r in test])
    ids, mask = tokenize(tok, [r["caption"] for r in test], 32)
    with torch.no_grad():
        t = clap.text_projection(clap.text_model(input_ids=ids, attention_mask=mask)
                                 .pooler_output).numpy()
        a = clap.audio_projection(clap.audio_model(input_features=torch.from_numpy(feats))
                                  .pooler_output).numpy()
    ranking = metrics.rank_by_similarity(metrics.cosine_similarities(t, a))
    labels = [r["labels"] for r in test]
    rel = metrics.relevance_matrix(labels, labels)
    got = float(metrics.retrieval_scores(ranking, rel, (10,))["mAP@10"])
    chance = chance_map10(labels)
    print(f"continuous mAP@10 {got:.3f}, chance {chance:.3f}")
    assert got >= chance + 0.25, f"continuous mAP@10 {got:.3f}, chance {chance:.3f}"


def test_wordnet_synonyms_of_caption_words():
    """The lexicon reads WordNet 3.0's own files: a word's other lemmas in its most frequent
    senses, inflected words by their base form, adjectives' "similar to" senses."""
    from cvahash.export.train.lexicon import base_forms, synonyms, wordnet_dir

    folder = wordnet_dir()
    table = synonyms(["rising", "honks", "woodpecker", "drumming", "the", "42", "zzqx"])
    assert "ascending" in table["rising"]          # rising/ascending: "similar to"
    assert "pecker" in table["woodpecker"]          # one synset
    assert "drum" in table["drumming"]              # verb sense, by its base form
    assert {"honk", "toot"} <= set(table["honks"])  # looked up by its base form
    assert "42" not in table and "zzqx" not in table
    assert all(w not in alts for w, alts in table.items())
    # morphy: suffix rules and the exception lists
    from cvahash.export.train.lexicon import _wordnet

    index, _, exceptions = _wordnet(str(folder))
    assert base_forms("geese", "n", index, exceptions) == ["goose"]
    assert "croak" in base_forms("croaking", "v", index, exceptions)


def test_text_stage_swaps_caption_words_for_synonyms():
    from cvahash.export.train.standin import SYNONYM_SWAP, perturb_captions

    captions = ["rising whistle"] * 400
    lexicon = {"rising": ["ascending", "climbing"]}
    # no other perturbation can make these words: count whole words after the swap
    out = perturb_captions(captions, ["x"], np.random.default_rng(0), lexicon)
    swapped = sum(("ascending" in c.split()) or ("climbing" in c.split()) for c in out) / 400
    assert abs(swapped - SYNONYM_SWAP * 0.85) < 0.1  # dropped with p 0.15 afterwards
    plain = perturb_captions(captions, ["x"], np.random.default_rng(0))
    assert not any("ascending" in c or "climbing" in c for c in plain)


def test_missing_wordnet_names_the_install(monkeypatch):
    import builtins

    from cvahash.export.train import lexicon

    real_import = builtins.__import__

    def no_wn(name, *args, **kwargs):
        if name == "wn":
            raise ImportError("no wn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wn)
    with pytest.raises(lexicon.LexiconMissing, match=r"pip install '\.\[export\]'"):
        lexicon.wordnet_dir()
