"""Training toolchain: manifest errors, frozen encoders, falling losses, exact resume, runs.

Everything runs on a tiny random CLAP and a small tone/noise/chirp/click corpus made here.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
sf = pytest.importorskip("soundfile")

from cvahash.export.train.data import ManifestError, log_mel_features, read_manifest
from cvahash.export.train.loop import TrainOptions, train
from cvahash.export.train.model import HashingModel, build_tiny_clap
from cvahash.export.train.run import RunConfig, load_checkpoint, load_run
from cvahash.export.train.tokenizer import tokenize, train_caption_tokenizer
from cvahash.model.frontend import FrontendParams

CLASSES = {
    "tone": ["a steady high tone", "pure whistle tone", "high pitched beep"],
    "noise": ["hissing white noise", "static noise burst", "rushing wind noise"],
    "chirp": ["rising chirp call", "upward sweeping chirp", "bird chirp rising"],
    "click": ["rapid clicking", "woodpecker drumming clicks", "series of sharp clicks"],
}


def make_corpus(out, n_per=6, seed=0, sr=16000, dur=1.0):
    """Four classes of 1 s clips at 16 kHz (resampled to 48 kHz by the loader)."""
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * dur)) / sr
    lines = []
    for label, captions in CLASSES.items():
        for j in range(n_per):
            f0 = rng.uniform(300, 3000)
            if label == "tone":
                x = np.sin(2 * np.pi * f0 * t)
            elif label == "noise":
                x = 0.3 * rng.standard_normal(t.size)
            elif label == "chirp":
                x = np.sin(2 * np.pi * (f0 * t + 2000 * t**2))
            else:
                x = ((np.arange(t.size) % (sr // 20)) < 40).astype(float)
            x = 0.5 * x + 0.01 * rng.standard_normal(t.size)
            path = f"clips/{label}_{j}.wav"
            sf.write(out / path, x.astype(np.float32), sr)
            lines.append({"audio": path, "caption": captions[j % 3], "labels": [label],
                          "split": "test" if j % 3 == 2 else "train"})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def small_config(**kw):
    base = {"model": "tiny", "bits": 16, "epochs": 2, "warmup_epochs": 1, "batch_size": 8,
            "text_max_length": 16, "lora_rank": 4, "seed": 3}
    base.update(kw)
    return RunConfig(**base)


QUIET = TrainOptions(progress=False, tiny_vocab_size=300)


# ---------------------------------------------------------------- manifest


def test_manifest_errors_name_the_line(tmp_path, corpus):
    good = json.loads(corpus.read_text().splitlines()[0])
    good["audio"] = str(corpus.parent / good["audio"])

    def write(name, text):
        p = tmp_path / name
        p.write_text(text)
        return p

    missing = dict(good, audio="nowhere.wav")
    p = write("m1.jsonl", json.dumps(good) + "\n\n" + json.dumps(missing) + "\n")
    with pytest.raises(ManifestError, match=r"m1.jsonl:3: audio file .*nowhere.wav does not exist"):
        read_manifest(p)
    p = write("m2.jsonl", json.dumps(dict(good, caption="  ")) + "\n")
    with pytest.raises(ManifestError, match=r"m2.jsonl:1: empty caption"):
        read_manifest(p)
    p = write("m3.jsonl", json.dumps(good) + "\n{not json\n")
    with pytest.raises(ManifestError, match=r"m3.jsonl:2: not valid JSON"):
        read_manifest(p)
    p = write("m4.csv", "path,text\nx.wav,hello\n")
    with pytest.raises(ManifestError, match=r"m4.csv:1: CSV header"):
        read_manifest(p)
    # CSV with labels separated by ';'
    p = write("m5.csv", f"audio,caption,labels\n{good['audio']},a tone,tone;bird\n")
    (entry,) = read_manifest(p)
    assert entry.labels == ("tone", "bird") and entry.split is None
    # unreadable audio is reported at feature time, naming the manifest line
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio at all")
    bad = dict(good, audio="broken.wav")
    p = write("m6.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError, match=r"m6.jsonl:2: cannot read audio .*broken.wav"):
        log_mel_features(read_manifest(p), tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.npy"))  # no half-written cache left


def test_feature_cache_is_reused_and_matches_the_frontend(tmp_path, corpus):
    from cvahash.export.train.data import load_audio
    from cvahash.model.frontend import log_mel

    entries = read_manifest(corpus)[:3]
    first = log_mel_features(entries, tmp_path, progress=False)
    assert first.shape == (3, 1, 1001, 64) and first.dtype == np.float16
    again = log_mel_features(entries, tmp_path, progress=False)
    assert again.filename == first.filename
    ref = log_mel(load_audio(entries[1], 48000))[0]
    assert np.abs(first[1].astype(np.float32) - ref).max() < 0.1  # float16 rounding only


# ---------------------------------------------------------------- model


def test_gradients_reach_only_lora_and_heads():
    tok = train_caption_tokenizer([c for cs in CLASSES.values() for c in cs], vocab_size=300)
    model = HashingModel(build_tiny_clap(1, vocab_size=len(tok)), bits=16)
    model.add_lora(4)
    model.freeze_base()
    with torch.no_grad():  # lora_B starts at 0 (then lora_A gets no gradient): nudge it
        for p in model.lora_parameters():
            p.add_(0.01)
    ids, mask = tokenize(tok, ["a steady high tone", "rapid clicking", "rising chirp", "hiss"], 16)
    feats = torch.randn(4, 1, 1001, 64) * 20 - 30
    model.train()
    t, a = model(ids, mask, feats)
    (t.pow(2).sum() + a.pow(2).sum()).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    allowed = {n for n, _ in model.named_parameters()
               if "lora_" in n or n.startswith(("text_head.", "audio_head."))}
    assert got <= allowed
    assert any("text_model" in n and "lora_A" in n for n in got)
    assert any("audio_model" in n and "lora_A" in n for n in got)
    assert {n for n in allowed if "head" in n and "weight" in n} <= got


# ---------------------------------------------------------------- training


def _history(run_dir):
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective,lora", [("crovca", 0), ("contrastive", 0), ("crovca", 4),
                                            ("distill", 0), ("distill", 4), ("clip", 0)])
def test_each_objective_loss_falls(tmp_path, corpus, objective, lora):
    epochs = 12
    config = small_config(objective=objective, lora_rank=lora, epochs=epochs, bits=32,
                          lr_head=3e-3, lr_lora=3e-3, lr_base=2e-3, warmup_epochs=2)
    train(config, corpus, tmp_path / "run", QUIET)
    hist = _history(tmp_path / "run")
    totals = [sum(v for k, v in h.items() if k not in ("epoch", "step")) for h in hist]
    assert len(totals) == epochs
    first, last = np.mean(totals[:2]), np.mean(totals[-2:])
    assert last < first - 0.05 * abs(first), totals


def test_distill_teacher_is_the_pretrained_encoders_also_with_lora(tmp_path, corpus):
    """A LoRA run's teacher is the encoders without adapters, computed once: what a
    heads-only run trains on (the same memo entry)."""
    from cvahash.export.train.device import encode_all

    memo = {}
    opts = TrainOptions(progress=False, tiny_vocab_size=300, embedding_cache=memo)
    config = small_config(objective="distill", lora_rank=4, epochs=3, warmup_epochs=0,
                          lr_lora=5e-3)
    train(config, corpus, tmp_path / "run", opts)
    (teacher_t, teacher_a), = memo.values()
    model, _, tok = load_run(tmp_path / "run")
    entries = [e for e in read_manifest(corpus) if e.split == "train"]
    feats = log_mel_features(entries, corpus.parent / ".cvahash-cache",
                             FrontendParams.from_dict(config.frontend), seed=config.seed)
    ids, mask = tokenize(tok, [e.caption for e in entries], config.text_max_length,
                         config.text_padding)
    with model.clap.disable_adapter():
        base_t, base_a = encode_all(model, feats, ids, mask, torch.device("cpu"))
    tuned_t, tuned_a = encode_all(model, feats, ids, mask, torch.device("cpu"))
    assert torch.allclose(teacher_t, base_t, atol=1e-5)
    assert torch.allclose(teacher_a, base_a, atol=1e-5)
    # the adapters did train: the tuned encoders are not the teacher
    assert not torch.allclose(tuned_t, base_t, atol=1e-4)


def test_resume_gives_identical_next_steps(tmp_path, corpus):
    config = small_config(epochs=3)
    whole = train(config, corpus, tmp_path / "whole", QUIET)
    assert whole["step"] == whole["total_steps"] == 6
    part = train(small_config(epochs=3), corpus, tmp_path / "part",
                 TrainOptions(progress=False, tiny_vocab_size=300, stop_after_steps=3))
    assert part["step"] == 3
    assert load_checkpoint(tmp_path / "part")["train"]["step"] == 3
    resumed = train(small_config(epochs=3), corpus, tmp_path / "part", QUIET)
    assert resumed["step"] == 6
    a = load_checkpoint(tmp_path / "whole")["model"]
    b = load_checkpoint(tmp_path / "part")["model"]
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # LoRA actually moved after the head-only warm-up epoch
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)


def test_resume_refuses_other_settings(tmp_path, corpus):
    train(small_config(epochs=1), corpus, tmp_path / "r", QUIET)
    with pytest.raises(ValueError, match="bits"):
        train(small_config(epochs=1, bits=32), corpus, tmp_path / "r", QUIET)


def test_run_loads_offline_and_merged_model_matches(tmp_path, corpus):
    train(small_config(epochs=2), corpus, tmp_path / "run", QUIET)
    model, config, tok = load_run(tmp_path / "run")
    assert config.bits == 16 and config.lora_rank == 4
    assert config.frontend["sample_rate"] == 48000
    ids, mask = tokenize(tok, ["rapid clicking", "pure whistle tone"], config.text_max_length)
    feats = torch.randn(2, 1, 1001, 64) * 20 - 30
    merged = model.merged()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        t1, a1 = model(ids, mask, feats)
        t2, a2 = merged(ids, mask, feats)
    assert t1.shape == (2, 16) and a1.shape == (2, 16)
    assert torch.allclose(t1, t2, atol=1e-4) and torch.allclose(a1, a2, atol=1e-4)
    # the run's tokenizer.json gives the same ids without transformers
    import tokenizers

    raw = tokenizers.Tokenizer.from_file(str(tmp_path / "run" / "tokenizer" / "tokenizer.json"))
    assert raw.encode("rapid clicking").ids == tok("rapid clicking")["input_ids"]


def test_clip_run_is_a_model_for_later_runs_and_cli_eval(tmp_path, corpus):
    from cvahash.cli import main

    assert main(["train", "--model", "tiny", "--objective", "clip", "--data", str(corpus),
                 "--out", str(tmp_path / "clip"), "--epochs", "2", "--batch-size", "8",
                 "--max-text-length", "16", "--quiet"]) == 0
    assert (tmp_path / "clip" / "hf_model" / "model.safetensors").exists()
    assert main(["train", "--model", str(tmp_path / "clip"), "--data", str(corpus),
                 "--out", str(tmp_path / "hash"), "--bits", "16", "--epochs", "2",
                 "--batch-size", "8", "--lora-rank", "4", "--max-text-length", "16",
                 "--quiet"]) == 0
    assert main(["eval", str(tmp_path / "hash"), "--data", str(corpus), "--quiet"]) == 0
    result = json.loads((tmp_path / "hash" / "eval.json").read_text())
    for direction in ("text_to_audio", "audio_to_text"):
        for method in ("binary", "continuous", "two_stage", "continuous_base"):
            scores = result[direction][method]
            assert set(scores) == {f"{m}@{k}" for m in ("mAP", "P") for k in (1, 5, 10, 20)}
            assert all(0.0 <= v <= 1.0 for v in scores.values())
    # the station's text ranking: Hamming candidates re-ranked by the text logits
    weighted = result["text_to_audio"]["weighted"]
    assert set(weighted) == set(result["text_to_audio"]["binary"])
    assert "weighted" not in result["audio_to_text"]
    ap = [x for x in result["per_query_ap10"]["weighted"] if x is not None]
    assert len(result["per_query_ap10"]["weighted"]) == result["n_clips"]
    assert weighted["mAP@10"] == pytest.approx(sum(ap) / len(ap), abs=1e-5)
    ratio = result["ratio_weighted_map10"]
    assert ratio is None or ratio["low"] <= ratio["ratio"] <= ratio["high"]
    assert (tmp_path / "hash" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a bad manifest is a clean error, not a traceback
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav", "caption": "a"}\n')
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 1


def test_cli_distill_heads_with_a_chosen_hidden_width(tmp_path, corpus, capsys):
    from cvahash.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(run), "--objective", "distill",
                 "--bits", "16", "--head-hidden", "48", "--lora-rank", "0", "--epochs", "2",
                 "--batch-size", "8", "--max-text-length", "16", "--quiet"]) == 0
    model, config, _ = load_run(run)
    assert config.objective == "distill" and config.head_hidden == 48
    assert model.text_head.net[0].out_features == model.audio_head.net[0].out_features == 48
    capsys.readouterr()
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "bad"),
                 "--head-hidden", "0", "--quiet"]) == 2
    assert "--head-hidden must be >= 1" in capsys.readouterr().err
