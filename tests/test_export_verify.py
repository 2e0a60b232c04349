"""The parts of cvahash.export.onnx.verify that need no model: probes and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from oracle import hamming_matrix as oracle_hamming

from cvahash.export.onnx.verify import (
    DataError,
    builtin_probe,
    hamming_matrix,
    load_probe,
    map_at_k,
)
from cvahash.model.frontend import FrontendParams, log_mel

PARAMS = FrontendParams()


def test_hamming_matrix_matches_oracle():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (5, 4), dtype=np.uint8)
    c = rng.integers(0, 256, (9, 4), dtype=np.uint8)
    np.testing.assert_array_equal(hamming_matrix(q, c), oracle_hamming(q, c))


def test_map_at_k_known_answers():
    # One bit per code; queries and clips with the same bit are at distance 0.
    codes = np.array([[0b1000_0000], [0], [0b1000_0000], [0]], dtype=np.uint8)
    labels = [frozenset("a"), frozenset("b"), frozenset("a"), frozenset("c")]
    # Query 0 (a): ranking 0, 2 (d=0), then 1, 3 -> relevant at ranks 1, 2 -> AP 1.
    # Query 1 (b): ranking 1, 3 (d=0), 0, 2 -> relevant at rank 1 -> AP 1.
    # Query 2 (a): AP 1. Query 3 (c): ranking 1, 3 -> relevant at rank 2 -> AP 1/2.
    assert map_at_k(codes, codes, labels) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    # k=1: query 3 has its only relevant clip at rank 2 -> 0.
    assert map_at_k(codes, codes, labels, k=1) == pytest.approx(3 / 4)
    # Reversed query codes put the relevant clips last.
    flipped = codes ^ np.uint8(0b1000_0000)
    # Query 0 (a): ranking 1, 3, 0, 2 -> relevant at 3, 4 -> (1/3 + 2/4) / 2.
    assert map_at_k(flipped[:1], codes, labels[:1] + labels[1:]) == pytest.approx(
        (1 / 3 + 2 / 4) / 2)


def test_builtin_probe_is_deterministic_real_audio():
    a, b = builtin_probe(PARAMS, n=7), builtin_probe(PARAMS, n=7)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (7, 1, 1001, 64) and np.isfinite(a.features).all()
    assert len(set(a.labels)) == 7 and len(a.captions) == 7
    # Different calls give different spectrograms.
    assert np.abs(a.features[0] - a.features[1]).mean() > 1


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_probe_reads_held_out_clips(tmp_path):
    sr = 16000  # resampled to 48 kHz by the loader
    t = np.arange(sr * 2) / sr
    tones = {f: (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (500, 2000, 4000)}
    for f, x in tones.items():
        sf.write(tmp_path / f"{f}.wav", np.stack([x, x], axis=1), sr, subtype="FLOAT")  # stereo
    path = _manifest(tmp_path, [
        {"audio": "500.wav", "caption": "low tone", "labels": ["low"], "split": "train"},
        {"audio": "2000.wav", "caption": "mid tone", "labels": ["mid"], "split": "val"},
        {"audio": "4000.wav", "caption": "high tone", "labels": ["high"], "split": "test"},
    ])
    probe = load_probe(path, PARAMS)
    assert probe.captions == ["mid tone", "high tone"]
    assert probe.labels == [frozenset(["mid"]), frozenset(["high"])]
    import soxr

    want = log_mel(soxr.resample(tones[2000], sr, 48000), PARAMS)
    np.testing.assert_allclose(probe.features[0], want[0], atol=1e-3)
    assert "val+test" in probe.source
    assert load_probe(path, PARAMS, splits=("train",)).captions == ["low tone"]


@pytest.mark.parametrize("line, match", [
    ("{broken", r"manifest\.jsonl:2: not valid JSON"),
    ('{"caption": "x"}', r"manifest\.jsonl:2: missing 'audio'"),
    ('{"audio": "a.wav", "caption": "  "}', r"manifest\.jsonl:2: empty caption"),
    ('{"audio": "missing.wav", "caption": "owl"}', r"manifest\.jsonl:2: cannot read audio"),
])
def test_load_probe_errors_name_the_line(tmp_path, line, match):
    sf.write(tmp_path / "a.wav", np.zeros(4800, np.float32) + 0.1, 48000)
    path = _manifest(tmp_path, [{"audio": "a.wav", "caption": "ok"}, line])
    with pytest.raises(DataError, match=match):
        load_probe(path, PARAMS)


def test_load_probe_refuses_empty_audio(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(0, np.float32), 48000)
    with pytest.raises(DataError, match="empty"):
        load_probe(_manifest(tmp_path, [{"audio": "a.wav", "caption": "owl"}]), PARAMS)
