"""cvahash.model.frontend against transformers' ClapFeatureExtractor (the reference the models
are trained with) and against facts that need no reference (silence, tone placement).

The comparisons need torch + transformers (the [export] extra) and are skipped without
them; the rest runs in a runtime-only environment.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from cvahash.model.frontend import FrontendParams, log_mel, mel_filterbank

SR = 48000
N = 480000
TOL_DB = 1e-4  # the contract says 1e-3 dB; float64 throughout gives ~1e-5


def _t(n):
    return np.arange(n) / SR


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = _t(N)
    clicks = np.zeros(N)
    clicks[::4801] = 1.0
    return {
        "tone_1k": 0.5 * np.sin(2 * np.pi * 1000 * t),
        "tone_13k": 0.3 * np.sin(2 * np.pi * 13000 * t),
        "tone_30hz_below_fmin": 0.3 * np.sin(2 * np.pi * 30 * t),
        "chirp": 0.4 * np.sin(2 * np.pi * (50 * t + (14000 - 50) / 20 * t**2)),
        "noise": 0.1 * rng.standard_normal(N),
        "silence": np.zeros(N),
        "clicks": clicks,
        "clipped": np.clip(3 * np.sin(2 * np.pi * 440 * t), -1, 1),
        "faint": 1e-6 * rng.standard_normal(N),
    }


@pytest.fixture(scope="module")
def clap_extractor():
    """Factory for the reference extractor with the unfused model's settings."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def make(params: FrontendParams):
        return transformers.ClapFeatureExtractor(
            feature_size=params.n_mels,
            sampling_rate=params.sample_rate,
            hop_length=params.hop_length,
            max_length_s=int(params.max_length_s),
            fft_window_size=params.n_fft,
            frequency_min=params.f_min,
            frequency_max=params.f_max,
            padding=params.padding,
            truncation=params.truncation,
        )

    return make


def _reference(extractor, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = extractor(samples, sampling_rate=SR, return_tensors="np")["input_features"]
    return np.asarray(out)


# --- parameters ----------------------------------------------------------------------


def test_default_params_shape():
    p = FrontendParams()
    assert (p.n_samples, p.n_frames) == (480000, 1001)
    assert mel_filterbank(p).shape == (513, 64)


def test_params_round_trip_through_json():
    p = FrontendParams(f_min=0.0, n_mels=128, padding="pad")
    assert FrontendParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert FrontendParams.from_dict({}) == FrontendParams()


@pytest.mark.parametrize(
    "key,value",
    [
        ("sample_rate", 0),
        ("sample_rate", 48000.5),
        ("sample_rate", True),
        ("n_fft", "1024"),
        ("hop_length", -1),
        ("n_mels", 0),
        ("f_min", float("nan")),
        ("f_max", 30000.0),  # above Nyquist
        ("f_max", 10.0),  # below f_min
        ("max_length_s", 0.01),  # fewer samples than n_fft
        ("max_length_s", 10.00001),  # not a whole number of samples
        ("truncation", "fusion"),
        ("padding", "zeros"),
    ],
)
def test_params_bad_value_names_key(key, value):
    with pytest.raises(ValueError, match=key):
        FrontendParams.from_dict({key: value})


def test_params_unknown_key_named():
    with pytest.raises(ValueError, match="hop_size"):
        FrontendParams.from_dict({"hop_size": 480})


# --- behaviour that needs no reference -------------------------------------------------


def test_silence_is_floor():
    out = log_mel(np.zeros(N, dtype=np.float32))
    assert out.shape == (1, 1, 1001, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out, -100.0)


def test_tone_lands_in_its_mel_band():
    p = FrontendParams()
    fb = mel_filterbank(p)
    for k in (43, 100, 192):  # FFT bins where mel bands span several bins (2 kHz and up)
        hz = k * SR / p.n_fft
        out = log_mel(np.sin(2 * np.pi * hz * _t(N)), p)
        # the band whose filter weighs the tone's FFT bin most is the loudest band
        assert int(np.argmax(out[0, 0, 500])) == int(np.argmax(fb[k]))


def test_filterbank_is_a_copy_and_cached_values_stable():
    p = FrontendParams()
    a = mel_filterbank(p)
    a[:] = 0
    assert mel_filterbank(p).max() > 0


def test_deterministic_crop_is_first_window():
    x = np.random.default_rng(0).standard_normal(N + 12345)
    np.testing.assert_array_equal(log_mel(x), log_mel(x[:N]))


def test_rng_crop_uses_rng_draw():
    x = np.random.default_rng(0).standard_normal(N + 12345)
    start = int(np.random.default_rng(7).integers(0, 12345 + 1))
    assert start != 0
    np.testing.assert_array_equal(
        log_mel(x, rng=np.random.default_rng(7)), log_mel(x[start : start + N])
    )


@pytest.mark.parametrize(
    "bad", [np.zeros(0), np.zeros((2, 3, 4)), "noise", [np.zeros(10), np.zeros((3, 3))]]
)
def test_bad_input_is_value_error(bad):
    with pytest.raises(ValueError):
        log_mel(bad)


def test_non_finite_input_refused():
    x = np.zeros(1000)
    x[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        log_mel([np.zeros(1000), x])


# --- against transformers ---------------------------------------------------------------


@pytest.mark.workstation
@pytest.mark.parametrize(
    "params",
    [FrontendParams(), FrontendParams(f_min=0.0), FrontendParams(n_fft=2048, n_mels=128)],
    ids=["fmin50", "class-default-fmin0", "nfft2048-128mels"],
)
def test_filterbank_matches_transformers(params):
    pytest.importorskip("transformers")
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=params.n_fft // 2 + 1,
        num_mel_filters=params.n_mels,
        min_frequency=params.f_min,
        max_frequency=params.f_max,
        sampling_rate=params.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filterbank(params), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.workstation
@pytest.mark.parametrize(
    "params", [FrontendParams(), FrontendParams(f_min=0.0)], ids=["fmin50", "fmin0"]
)
@pytest.mark.parametrize("name", list(_signals()))
def test_ten_second_windows_match_transformers(clap_extractor, params, name):
    x = _signals()[name]
    ref = _reference(clap_extractor(params), x.astype(np.float32))
    ours = log_mel(x.astype(np.float32), params)
    assert ours.shape == ref.shape == (1, 1, 1001, 64)
    assert np.abs(ours - ref).max() <= TOL_DB


@pytest.mark.workstation
@pytest.mark.parametrize(
    "n_fft, hop", [(1023, 480), (1025, 480), (511, 333), (1024, 333)],
    ids=["odd-nfft", "odd-nfft-up", "odd-nfft-odd-hop", "odd-hop"],
)
def test_odd_fft_sizes_and_hops_match_transformers(clap_extractor, n_fft, hop):
    # An odd n_fft pads one sample short of a frame, so transformers counts one frame
    # fewer; log_mel used to crash on the size mismatch instead.
    params = FrontendParams(n_fft=n_fft, hop_length=hop)
    x = _signals()["chirp"].astype(np.float32)
    ref = _reference(clap_extractor(params), x)
    ours = log_mel(x, params)
    assert ours.shape == ref.shape == (1, 1, params.n_frames, 64)
    assert np.abs(ours - ref).max() <= TOL_DB


@pytest.mark.workstation
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
@pytest.mark.parametrize("n", [1, 100, 30000, 160001, N - 1])
def test_short_windows_are_padded_like_transformers(clap_extractor, padding, n):
    p = FrontendParams(padding=padding)
    rng = np.random.default_rng(n)
    t = _t(n)
    x = (0.3 * np.sin(2 * np.pi * 3000 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    ref = _reference(clap_extractor(p), x)
    assert np.abs(log_mel(x, p) - ref).max() <= TOL_DB


@pytest.mark.workstation
def test_batch_of_mixed_lengths_matches_transformers(clap_extractor):
    p = FrontendParams()
    sig = _signals()
    batch = [sig["chirp"][:50000], sig["noise"], sig["clicks"][: N - 480], sig["silence"][:7]]
    ref = _reference(clap_extractor(p), batch)
    ours = log_mel(batch, p)
    assert ours.shape == ref.shape == (4, 1, 1001, 64)
    assert np.abs(ours - ref).max() <= TOL_DB


@pytest.mark.workstation
def test_long_input_is_a_crop_like_transformers(clap_extractor):
    """transformers crops at np.random.randint(0, excess + 1); the same crop gives the
    same features, so rand_trunc is exactly "compute on a crop"."""
    p = FrontendParams()
    x = np.random.default_rng(3).standard_normal(N + 48000).astype(np.float32)
    np.random.seed(11)
    ref = _reference(clap_extractor(p), x)
    np.random.seed(11)
    start = np.random.randint(0, 48000 + 1)
    assert np.abs(log_mel(x[start : start + N], p) - ref).max() <= TOL_DB


def test_threads_share_no_work_arrays():
    """Per-thread scratch: concurrent calls give each caller its own result."""
    from concurrent.futures import ThreadPoolExecutor

    sig = list(_signals().values())
    want = [log_mel(x) for x in sig]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(log_mel, sig))
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_reflect_padding_at_the_smallest_sizes():
    """The hand-written reflect padding against np.pad's, for tiny FFTs and hops."""
    rng = np.random.default_rng(5)
    for n_fft in (2, 4, 6, 8):
        p = FrontendParams(n_fft=n_fft, hop_length=1, max_length_s=n_fft * 3 / SR, f_min=0.0,
                           f_max=SR / 2)
        x = rng.standard_normal(p.n_samples)
        half = n_fft // 2
        frames = np.lib.stride_tricks.sliding_window_view(
            np.pad(x, (half, half), mode="reflect"), n_fft)[:: p.hop_length]
        power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=-1)) ** 2
        want = 10 * np.log10(np.maximum(power @ mel_filterbank(p), 1e-10))
        np.testing.assert_allclose(log_mel(x, p)[0, 0], want, atol=1e-4)
