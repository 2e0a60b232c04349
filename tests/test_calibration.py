"""The precision-vs-Hamming-distance curve a bundle carries (cvahash.model.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from cvahash.model.calibration import Calibration, fit_curves, isotonic_decreasing


def minmax_isotonic(y, w):
    """Independent reference: the non-increasing weighted isotonic fit is
    f(i) = min over k <= i of max over l >= i of the weighted mean of y[k..l]."""
    n = len(y)
    out = np.empty(n)
    for i in range(n):
        best = np.inf
        for k in range(i + 1):
            worst = -np.inf
            for m in range(i, n):
                ww = w[k:m + 1]
                worst = max(worst, float(np.dot(y[k:m + 1], ww) / ww.sum()))
            best = min(best, worst)
        out[i] = best
    return out


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_fit_matches_the_minmax_formula(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, 12)
    w = rng.integers(1, 20, 12).astype(float)
    fit = isotonic_decreasing(y, w)
    np.testing.assert_allclose(fit, minmax_isotonic(y, w), atol=1e-12)
    assert np.all(np.diff(fit) <= 1e-12)


def test_weightless_distances_borrow_the_level_before_them():
    fit = isotonic_decreasing([0.0, 0.9, 0.0, 0.4, 0.0], [0, 3, 0, 2, 0])
    np.testing.assert_allclose(fit, [0.9, 0.9, 0.9, 0.4, 0.4])
    assert np.isnan(isotonic_decreasing([0.5, 0.5], [0, 0])).all()


def test_fit_curves_on_pairs_with_known_rates():
    # distance 0: 8 of 10 relevant; 1: 1 of 10; 2: 3 of 10 (a violation, pooled with 1);
    # 3: nobody; 4: 0 of 10
    d = np.repeat([0, 1, 2, 4], 10)
    r = np.concatenate([np.arange(10) < 8, np.arange(10) < 1, np.arange(10) < 3,
                        np.zeros(10, bool)])
    c = fit_curves(d, r, bits=4)
    assert c["pairs"] == 40 and c["relevant_pairs"] == 12 and c["base_rate"] == 0.3
    # pooled levels 8/10, 4/20 (distances 1-3), 0/10, each with 2 prior pairs at 0.3
    prior = 2 * 0.3
    assert c["precision_at"] == [round((8 + prior) / 12, 4)] + [round((4 + prior) / 22, 4)] * 3 \
        + [round(prior / 12, 4)]
    # within radius r: 8/10, 9/20, 12/30, 12/30, 12/40, each with the same prior
    assert c["precision_within"] == [round((h + prior) / (m + 2), 4) for h, m in
                                     ((8, 10), (9, 20), (12, 30), (12, 30), (12, 40))]
    with pytest.raises(ValueError, match="0..4"):
        fit_curves([5], [True], bits=4)


def test_thin_evidence_is_not_read_as_certainty():
    # 5 of 5 pairs at distance 0 (base rate 0.1): not "1.00"; 500 of 500 stays near 1
    d = np.r_[np.zeros(5, int), np.full(45, 3)]
    r = np.r_[np.ones(5, bool), np.zeros(45, bool)]
    thin = fit_curves(d, r, bits=4)["precision_at"][0]
    assert thin == round((5 + 0.2) / 7, 4) < 0.75
    d = np.r_[np.zeros(500, int), np.full(4500, 3)]
    r = np.r_[np.ones(500, bool), np.zeros(4500, bool)]
    assert fit_curves(d, r, bits=4)["precision_at"][0] > 0.99
    # the shrunk curves stay non-increasing on random pairs
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = rng.integers(0, 9, 60)
        c = fit_curves(d, rng.random(60) < 1 / (1 + d), bits=8)
        for curve in (c["precision_at"], c["precision_within"]):
            assert np.all(np.diff(curve) <= 1e-12) and 0 <= min(curve) <= max(curve) <= 1


def test_calibration_from_manifest_labels_and_radius():
    c = fit_curves(np.repeat([0, 1, 2, 4], 10),
                   np.concatenate([np.arange(10) < 8, np.arange(10) < 1, np.arange(10) < 3,
                                   np.zeros(10, bool)]), bits=4)
    cal = Calibration.from_manifest({"bits": 4, "calibration": {**c, "source": "probe"}})
    assert [cal.label(d) for d in range(5)] == ["likely", "possible", "possible", "possible",
                                                "unlikely"]
    # beyond either end: the curve's last / first level (0/10 and 8/10 with the prior)
    assert cal.precision(99) == 0.05 and cal.precision(-1) == 0.7167
    assert cal.radius_for(0.7) == 0 and cal.radius_for(0.4) == 1 and cal.radius_for(0.8) is None
    # bundles without a curve, or with a broken one, have none
    assert Calibration.from_manifest({"bits": 4}) is None
    assert Calibration.from_manifest({"bits": 4, "calibration": {"precision_at": [1]}}) is None


def test_the_shipped_demo_bundle_without_a_curve_still_opens():
    from pathlib import Path

    from cvahash.model.bundle import ModelBundle

    bundle = ModelBundle.open(Path(__file__).parent / "data" / "demo-bundle")
    if "calibration" not in bundle.manifest:
        assert Calibration.from_manifest(bundle.manifest) is None
    else:
        assert Calibration.from_manifest(bundle.manifest) is not None


def test_watch_suggest_prints_a_watchlist_entry_the_config_reader_accepts(tmp_path, capsys):
    import json
    import shutil
    from pathlib import Path

    from cvahash.cli import main
    from cvahash.station.config import loads_config

    bundle = tmp_path / "bundle"
    shutil.copytree(Path(__file__).parent / "data" / "demo-bundle", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    bits = manifest["bits"]
    # a curve by hand: distance <= 10 is 90 % relevant, then it falls away
    d = np.concatenate([np.repeat(np.arange(11), 10), np.repeat(np.arange(11, bits + 1), 10)])
    r = np.concatenate([np.arange(110) % 10 != 0, np.arange(10 * (bits - 10)) % 10 == 0])
    manifest["calibration"] = {**fit_curves(d, r, bits), "source": "hand-made pairs"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["watch", "suggest", "Owl hooting at night", "--bundle", str(bundle),
                 "--precision", "0.85"]) == 0
    out = capsys.readouterr().out
    cal = Calibration.from_manifest(manifest)
    radius = cal.radius_for(0.85)
    assert radius is not None and cal.precision_within[radius] >= 0.85
    assert f"radius {radius} of {bits} bits" in out and "hand-made pairs" in out
    entry = out[out.index("[[watchlist]]"):]
    assert f"radius = {radius}" in entry and 'name = "owl-hooting-at-night"' in entry
    config = loads_config('[device]\nname = "t"\n[runtime]\nbundle = "b"\n[store]\n'
                          'path = "s"\n' + entry, base_dir=tmp_path)
    assert config.watchlist[0].radius == radius
    assert config.watchlist[0].query == "Owl hooting at night"
    # no radius is good enough
    assert main(["watch", "suggest", "owl", "--bundle", str(bundle), "--precision", "1"]) == 1
    assert "lower --precision" in capsys.readouterr().err


def test_watch_suggest_without_a_curve_says_what_to_do(capsys, tmp_path):
    import json
    import shutil
    from pathlib import Path

    from cvahash.cli import main

    # the shipped bundle without its curve (a descriptive field: the fingerprint stays)
    bundle = tmp_path / "no-curve"
    shutil.copytree(Path(__file__).parent / "data" / "demo-bundle", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest.pop("calibration", None) is not None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["watch", "suggest", "owl hooting", "--bundle", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "no calibration curve" in err and "cvahash export" in err
    with pytest.raises(SystemExit) as exc:
        main(["watch", "suggest", "owl", "--bundle", str(bundle), "--precision", "0"])
    assert exc.value.code == 2 and "--precision 0.0" in capsys.readouterr().err
