"""The parts of cvahash.export.onnx.verify that need no model: probes and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from oracle import hamming_matrix as oracle_hamming

from cvahash.export.onnx.verify import (
    DataError,
    VerifyReport,
    ap_at_k,
    builtin_probe,
    hamming_matrix,
    judge_map_change,
    load_probe,
    map_at_k,
    map_change_interval,
    quality_change,
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


# ---------------------------------------------------------------- mAP change statistics


def test_ap_at_k_is_the_per_query_map():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (30, 2), dtype=np.uint8)
    labels = [frozenset({int(x)}) for x in rng.integers(0, 4, 30)]
    labels[0] = frozenset({"alone"})  # no other clip shares it; itself is relevant
    aps = ap_at_k(codes, codes, labels)
    assert aps.shape == (30,) and np.isfinite(aps).all()
    assert np.nanmean(aps) == pytest.approx(map_at_k(codes, codes, labels))


def test_equal_codes_give_no_change_and_pass():
    rng = np.random.default_rng(2)
    ap = rng.uniform(0.0, 1.0, 80)
    result, failure, note = judge_map_change(ap, ap.copy())
    assert failure is None and note is None
    assert result.change == 0 and result.low == 0 and result.high == 0 and result.queries == 80
    assert quality_change(-result.change) == "same as torch"


def test_a_clearly_worse_candidate_fails_with_its_interval():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.3, 0.9, 60)
    worse = ref * rng.uniform(0.6, 0.8, 60)   # every query loses 20-40 %
    result, failure, note = judge_map_change(ref, worse, max_map_drop=0.02)
    assert note is None and failure is not None
    assert -0.4 < result.low <= result.change <= result.high < -0.2
    assert f"{result.change:+.1%} worse than torch" in failure and "drop" not in failure


def test_better_is_reported_as_better_never_as_a_negative_drop():
    ref = np.linspace(0.2, 0.8, 50)
    result, failure, _ = judge_map_change(ref, ref * 1.107)
    assert failure is None
    assert quality_change(-result.change) == "+10.7% better than torch"
    assert quality_change(0.03) == "-3.0% worse than torch"


def test_few_near_chance_queries_are_not_judged():
    """The case that used to fail: 24 near-chance queries, mAP moved by about 15 %."""
    rng = np.random.default_rng(4)
    ref = rng.choice([0.0, 0.0, 0.1, 0.2], 24)
    cand = ref.copy()
    cand[np.flatnonzero(ref > 0)[:2]] = 0.0
    result, failure, note = judge_map_change(ref, cand, max_map_drop=0.02)
    assert result.change < -0.02 and failure is None
    assert "too few queries (24 < 30)" in note and "bit agreement alone" in note


def test_an_interval_that_straddles_the_limit_passes():
    # 200 queries, mean change about -3 % but with noise much larger than the shift
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.2, 0.8, 200)
    cand = np.clip(ref * 0.97 + rng.normal(0, 0.2, 200), 0, 1)
    result, failure, _ = judge_map_change(ref, cand, max_map_drop=0.02)
    assert result.low < -0.02 < result.high
    assert failure is None


def test_bootstrap_interval_matches_the_normal_approximation():
    """Independent reference: for many queries the percentile bootstrap of a mean ratio
    agrees with the delta-method normal interval."""
    rng = np.random.default_rng(6)
    n = 2000
    ref = rng.uniform(0.2, 0.8, n)
    cand = np.clip(ref + rng.normal(-0.02, 0.1, n), 0, 1)
    result = map_change_interval(ref, cand, resamples=4000)
    # delta method for (mean(c) - mean(r)) / mean(r) = mean(c)/mean(r) - 1
    mr, mc = ref.mean(), cand.mean()
    g = np.array([-mc / mr ** 2, 1 / mr])
    cov = np.cov(np.vstack([ref, cand])) / n
    se = float(np.sqrt(g @ cov @ g))
    assert result.low == pytest.approx(result.change - 1.96 * se, abs=0.3 * se)
    assert result.high == pytest.approx(result.change + 1.96 * se, abs=0.3 * se)


def test_undefined_change_is_a_note_not_a_failure():
    result, failure, note = judge_map_change(np.zeros(40), np.full(40, 0.5))
    assert result is None and failure is None and "undefined" in note


def test_report_format_says_better_or_worse_with_the_interval():
    report = VerifyReport("b", "f" * 16, "int8", 64, {}, against="run", data="m",
                          n_texts=40, n_windows=40, bit_agreement={"text": 0.99, "audio": 0.99},
                          map10={"torch": 0.2, "bundle": 0.2214}, map_drop=-0.107,
                          map_change_interval=[-0.02, 0.25], map_queries=40)
    text = report.format()
    assert "+10.7% better than torch (fails when the whole interval is more than 2% worse)" \
        in text
    assert "95% interval -2.0% .. +25.0% over 40 queries" in text
    assert "drop" not in text and "result      PASS" in text
    assert report.to_dict()["map_change"] == pytest.approx(0.107)
