"""Training objectives against values worked out by hand."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cvahash.export.train.losses import (
    ClipLoss,
    ContrastiveHashLoss,
    CroVCALoss,
    coding_rate,
    make_objective,
)
from cvahash.export.train.model import sign_ste


def test_sign_ste_forward_is_the_code_rule_and_backward_is_identity():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.3], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 1.0]  # bit = logit > 0, so 0 maps to -1
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_coding_rate_of_orthonormal_rows():
    # X = I (n = d = 4): X^T X = I, so R = 1/2 * d * log(1 + d / (n * eps)) = 2 log(21).
    assert coding_rate(torch.eye(4), eps=0.05).item() == pytest.approx(2 * math.log(21), rel=1e-5)
    # All rows equal: X^T X = n u u^T with |u| = 1, one eigenvalue d/eps: R = 1/2 log(1 + d/eps)
    same = torch.ones(5, 4)
    assert coding_rate(same, eps=0.05).item() == pytest.approx(0.5 * math.log(81), rel=1e-5)


def test_crovca_targets_are_the_other_views_detached_hard_codes():
    text = torch.tensor([[2.0, -1.0], [0.5, 0.5]], requires_grad=True)
    audio = torch.tensor([[-1.0, 3.0], [1.0, -2.0]], requires_grad=True)
    loss = CroVCALoss(align_weight=1.0, rate_weight=0.0)
    parts = loss(text, audio)
    assert set(parts) == {"align", "coding_rate"}
    parts["align"].backward()
    # d/dt of 0.5 * mean BCE(t, a_bits) = 0.5 * (sigmoid(t) - a_bits) / numel; no term from
    # the BCE of the audio view (its targets are detached text bits).
    audio_bits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = 0.5 * (torch.sigmoid(text.detach()) - audio_bits) / 4
    assert torch.allclose(text.grad, expected, atol=1e-7)


def test_crovca_weights_scale_each_term():
    t, a = torch.randn(8, 16), torch.randn(8, 16)
    base = CroVCALoss()(t, a)
    double = CroVCALoss(align_weight=2.0, rate_weight=0.2)(t, a)
    assert double["align"].item() == pytest.approx(2 * base["align"].item(), rel=1e-6)
    assert double["coding_rate"].item() == pytest.approx(2 * base["coding_rate"].item(), rel=1e-6)
    assert base["coding_rate"].item() < 0  # we maximise the rate


def test_contrastive_terms():
    codes = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0],
                          [1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]])
    loss = ContrastiveHashLoss(temperature=0.1, alpha=0.1, beta=0.01)
    parts = loss(codes, codes)
    # |logits| = 1 everywhere: no quantisation loss; every bit column sums to 0: balanced
    assert parts["quantization"].item() == pytest.approx(0.0)
    assert parts["bit_balance"].item() == pytest.approx(0.0)
    # similarities of unit codes: 1 on the diagonal, 0 or -1 off it (rows 0/1 and 2/3 are
    # opposite); InfoNCE per row = log(1 + 2 e^-10 + e^-20), about 9e-5
    expected = math.log(1 + 2 * math.exp(-10) + math.exp(-20))
    assert parts["infonce"].item() == pytest.approx(expected, abs=1e-6)
    # mismatched views cost more
    assert loss(codes, codes.flip(0))["infonce"].item() > 1.0
    # all-positive bits: balance = mean |mean| = 1, times beta
    assert loss(torch.ones(4, 4), torch.ones(4, 4))["bit_balance"].item() == pytest.approx(0.01)


def test_clip_loss_is_low_for_matching_pairs_and_log_n_for_constant_embeddings():
    e = torch.eye(4) * 3.0
    assert ClipLoss(temperature=0.07)(e, e)["clip"].item() < 1e-5
    same = torch.ones(4, 4)
    assert ClipLoss()(same, same)["clip"].item() == pytest.approx(math.log(4), rel=1e-5)


def test_make_objective_names_and_errors():
    assert make_objective("crovca").uses == "logits"
    assert make_objective("clip").uses == "embeddings"
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("hamming")
    with pytest.raises(ValueError, match="bad loss settings"):
        make_objective("contrastive", gamma=1.0)
