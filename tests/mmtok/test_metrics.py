"""Reconstruction and retrieval metrics against hand-computed values."""

import math

import pytest
import torch

from mmtok.metrics import mean_interval, psnr, retrieval_metrics, si_snr, ssim, wilson_interval


def test_psnr_known_value_and_identity():
    ref = torch.zeros(2, 3, 4, 4)
    est = torch.full_like(ref, 0.1)  # mse 0.01 -> 20 dB
    assert psnr(ref, est).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(psnr(ref, ref).item())


def test_ssim_is_one_for_identical_and_drops_with_noise():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 16, 16)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.3 * torch.randn_like(img)).clamp(0, 1)
    assert ssim(img, noisy).item() < 0.8
    assert ssim(img, noisy).item() > ssim(img, torch.rand_like(img)).item()


def test_si_snr_is_scale_invariant_and_matches_definition():
    torch.manual_seed(1)
    ref = torch.randn(3, 1000)
    noise = 0.1 * torch.randn(3, 1000)
    base = si_snr(ref, ref + noise)
    torch.testing.assert_close(si_snr(ref, 5.0 * (ref + noise)), base, rtol=1e-4, atol=1e-4)
    assert (base > 15).all() and (base < 25).all()  # ~20 dB for noise at 1/10 of the amplitude


def test_retrieval_metrics_ranks():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.1, 0.2]])
    out = retrieval_metrics(sim, ks=(1, 2))
    # query 0 rank 1, query 1 rank 2, query 2 rank 1
    assert out["R@1"] == pytest.approx(2 / 3)
    assert out["R@2"] == pytest.approx(1.0)
    assert out["median_rank"] == 1.0
    positives = torch.tensor([[False, True, False], [True, False, False], [False, False, True]])
    assert retrieval_metrics(sim, positives, ks=(1,))["R@1"] == pytest.approx(2 / 3)


def test_metric_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-square"):
        retrieval_metrics(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------- intervals
def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-3)    # not degenerate at 0 successes
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-3)
    # more samples, narrower interval around the same proportion
    assert wilson_interval(40, 50)[1] - wilson_interval(40, 50)[0] < high - low
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_mean_interval_known_values():
    low, high = mean_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 1.96 / math.sqrt(3)) and high == pytest.approx(2 + 1.96 / math.sqrt(3))
    assert mean_interval([5.0, 5.0, float("nan")]) == (5.0, 5.0)                 # non-finite values are dropped
    assert all(math.isnan(v) for v in mean_interval([1.0]))
