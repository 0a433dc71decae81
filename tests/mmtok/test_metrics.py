"""Reconstruction and retrieval metrics against hand-computed values; the Metric record and its table."""

import math

import pytest
import torch

from mmtok.metrics import (
    SSIM_SIGMA, SSIM_WINDOW, Metric, mean_interval, metrics_table, psnr, retrieval_metrics, si_snr, ssim,
    wilson_interval,
)


def test_psnr_known_value_and_identity():
    target = torch.zeros(2, 3, 4, 4)
    est = torch.full_like(target, 0.1)  # mse 0.01 -> 20 dB
    assert psnr(est, target).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(psnr(target, target).item())
    assert psnr(target, target, max_db=100.0).item() == 100.0


def test_psnr_value_range_and_per_item():
    frames = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shifted = (frames.int() + 5).clamp(0, 255).to(torch.uint8)
    mse = (shifted.double() - frames.double()).pow(2).flatten(1).mean(1)
    per_clip = psnr(shifted, frames, (0.0, 255.0), per_item=True)
    assert per_clip.shape == (2,)
    torch.testing.assert_close(per_clip, (10 * torch.log10(255.0 ** 2 / mse)).float())
    # The same frames as float video in [-1, 1]: the same PSNR (only the range's width matters).
    as_video = [f.double() / 127.5 - 1 for f in (shifted, frames)]
    torch.testing.assert_close(psnr(*as_video, (-1.0, 1.0), per_item=True), per_clip)


def test_ssim_is_one_for_identical_and_drops_with_noise():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 16, 16)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.3 * torch.randn_like(img)).clamp(0, 1)
    assert ssim(noisy, img).item() < 0.8
    assert ssim(noisy, img).item() > ssim(torch.rand_like(img), img).item()


def test_ssim_value_range_and_per_item():
    frames = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    noisy = (frames + 60 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    x, y = noisy.to(torch.uint8).movedim(-1, -3), frames.movedim(-1, -3)        # [B, T, 3, H, W]
    per_clip = ssim(x, y, (0.0, 255.0), per_item=True)
    assert per_clip.shape == (2,) and (per_clip < 0.9).all()
    torch.testing.assert_close(ssim(y, y, (0.0, 255.0), per_item=True), torch.ones(2))
    assert per_clip.mean().item() == pytest.approx(ssim(x, y, (0.0, 255.0)).item(), abs=1e-6)
    # The same frames in [0, 1] or as float video in [-1, 1] score the same: values count from the range's floor.
    assert ssim(x / 255, y / 255).item() == pytest.approx(ssim(x, y, (0.0, 255.0)).item(), abs=1e-6)
    assert ssim(x / 127.5 - 1, y / 127.5 - 1, (-1.0, 1.0)).item() == pytest.approx(ssim(x / 255, y / 255).item(),
                                                                                   abs=1e-6)
    assert ssim(x / 127.5 - 1, y / 127.5 - 1).item() != pytest.approx(ssim(x / 255, y / 255).item(), abs=1e-3)


def test_ssim_window_is_the_11_pixel_gaussian_of_wang_et_al():
    # An 11x11 image holds exactly one window position: SSIM is the Gaussian-weighted (sigma 1.5) formula over it.
    gen = torch.Generator().manual_seed(2)
    x, y = (torch.rand(11, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    w = torch.outer(g, g) / g.sum() ** 2
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cov = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2, (w * x * y).sum() - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim(x[None], y[None]).item() == pytest.approx(expected.item(), abs=1e-6)
    assert (SSIM_WINDOW, SSIM_SIGMA) == (11, 1.5)


def test_si_snr_is_scale_invariant_and_matches_definition():
    torch.manual_seed(1)
    target = torch.randn(3, 1000)
    noise = 0.1 * torch.randn(3, 1000)
    base = si_snr(target + noise, target)
    torch.testing.assert_close(si_snr(5.0 * (target + noise), target), base, rtol=1e-4, atol=1e-4)
    assert (base > 15).all() and (base < 25).all()  # ~20 dB for noise at 1/10 of the amplitude
    assert (si_snr(target, target) > 60).all()
    assert si_snr(target[:, None], target[:, None]).shape == (3, 1)   # [B, 1, N] audio: one value per clip


def test_si_snr_argument_order_is_estimate_then_target():
    # SI-SNR depends only on the angle between the two signals, except where eps matters: eps regularises the
    # target's energy. Against a near-silent target (energy 1e-7, ten times eps) the estimate's projection is
    # shrunk by 1 / (1 + eps / 1e-7), a residual of 1/11: 20 dB. With the roles swapped the quiet signal is the
    # estimate, whose residual is ~0 and floored by eps: 10 log10(1e-7 / 1e-8) = 10 dB.
    loud = torch.ones(1000)
    loud[::2] = -1.0                                                       # zero mean, energy 1000
    quiet = 1e-5 * loud                                                    # energy 1e-7
    assert si_snr(loud, quiet).item() == pytest.approx(20.0, abs=0.01)
    assert si_snr(quiet, loud).item() == pytest.approx(10.0, abs=0.01)


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


def test_metric_json_and_table():
    m = [Metric("t2v/digit_accuracy", 0.5, 0.1, "chance (1/10)", True, 4, 1.0, interval=wilson_interval(2, 4)),
         Metric("continuation/psnr", float("inf"), 20.0, "copy last frame", True, 4, unit="dB"),
         Metric("lm/loss_t2v", 3.0, 8.3, "uniform", False, 100, unit="nats/token")]
    d = [x.to_dict() for x in m]
    assert d[0]["beats_baseline"] is True and d[1]["value"] is None and d[2]["beats_baseline"] is True
    table = metrics_table(m)
    assert "50.0%" in table and "10.0%" in table and "chance (1/10)" in table and "8.3 nats/token" in table
    assert table.count("\n") == 2 + len(m)
    assert d[0]["interval"] == pytest.approx(list(wilson_interval(2, 4))) and "[15, 85]%" in table
    assert d[1]["interval"] is None
    torch.manual_seed(0)  # keep module state tidy for other tests
