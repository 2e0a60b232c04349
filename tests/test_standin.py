"""The stand-in's pretraining recipe learns: a tiny CLAP pretrained here with ``supclip``
retrieves held-out clips by held-out phrasings far above chance.

Four sound kinds (tone, noise, chirp, clicks), 1 s clips; the test clips are new
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
    "noise": (["hissing white noise", "static noise burst"], "a burst of noise"),
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
            elif label == "noise":
                x = 0.3 * rng.standard_normal(t.size)
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


def test_supclip_pretraining_beats_chance_on_held_out_phrasings(tmp_path):
    from cvahash.export.train.evaluate import evaluate_run
    from cvahash.export.train.loop import TrainOptions, train
    from cvahash.export.train.run import RunConfig

    torch.set_num_threads(1)
    manifest = make_corpus(tmp_path)
    config = RunConfig(model="tiny", objective="supclip", lora_rank=0, epochs=40,
                       batch_size=16, lr_base=2e-3, text_max_length=16, seed=0,
                       tiny_config={"audio_config": {"patch_size": 16,
                                                     "patch_stride": [16, 16]}})
    train(config, manifest, tmp_path / "run", TrainOptions(progress=False,
                                                          tiny_vocab_size=300))
    result = evaluate_run(tmp_path / "run", manifest, split="test", progress=False)
    got = result["text_to_audio"]["continuous"]["mAP@10"]
    labels = [[k] for k in KINDS for _ in range(3)]
    chance = chance_map10(labels)
    print(f"continuous mAP@10 {got:.3f}, chance {chance:.3f}")
    assert got >= chance + 0.25, f"continuous mAP@10 {got:.3f}, chance {chance:.3f}"
