"""No-training baselines: exact bits, reconstructions of the input's shape, the lossless case, rate control."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtok.baselines import (
    _drop_sei,
    h264_roundtrip,
    h264_within_bits,
    opus_roundtrip,
    pcm_downsample_roundtrip,
    thumbnail_roundtrip,
)
from mmtok.metrics import psnr, si_snr


def moving_clip(t: int = 17, size: int = 32, seed: int = 0) -> np.ndarray:
    """A textured pattern drifting one pixel per frame, plus a little noise: something a codec has work on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    frames = []
    for k in range(t):
        r = 128 + 90 * np.sin((x + k) / 3.0) * np.cos(y / 5.0)
        g = 128 + 90 * np.cos((x - y + 2 * k) / 7.0)
        b = 128 + 60 * np.sin((y + k) / 4.0)
        frames.append(np.stack([r, g, b], -1) + rng.normal(0, 4, (size, size, 3)))
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def clip_psnr(estimate: np.ndarray, target: np.ndarray) -> float:
    return float(psnr(torch.from_numpy(estimate), torch.from_numpy(target), (0.0, 255.0), max_db=100.0))


def tone(seconds: float, rate: int, freqs=(220.0, 440.0, 660.0)) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate(freqs))
    return (0.3 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ thumbnail
@pytest.mark.parametrize("thw", [(5, 8, 8), (5, 16, 16), (3, 5, 7)])
def test_thumbnail_bits_exact_and_shape(thw):
    clip = moving_clip()
    out = thumbnail_roundtrip(clip, *thw)
    assert out.bits == thw[0] * thw[1] * thw[2] * 3 * 8
    assert out.output.shape == clip.shape and out.output.dtype == np.uint8
    assert 5.0 < clip_psnr(out.output, clip) < 40.0


def test_thumbnail_lossless_cases():
    clip = moving_clip(t=9, size=16)
    full = thumbnail_roundtrip(clip, 9, 16, 16)
    np.testing.assert_array_equal(full.output, clip)
    assert math.isinf(psnr(torch.from_numpy(full.output), torch.from_numpy(clip), (0.0, 255.0)).item())
    assert clip_psnr(full.output, clip) == 100.0                 # the cap every mmtok clip PSNR uses
    flat = np.broadcast_to(np.array([10, 200, 77], np.uint8), (9, 16, 16, 3)).copy()
    np.testing.assert_array_equal(thumbnail_roundtrip(flat, 1, 1, 1).output, flat)
    assert thumbnail_roundtrip(flat, 1, 1, 1).bits == 24


def test_thumbnail_more_bits_reconstruct_better():
    clip = moving_clip()
    scores = [clip_psnr(thumbnail_roundtrip(clip, *thw).output, clip) for thw in [(3, 4, 4), (5, 8, 8), (9, 16, 16)]]
    assert scores == sorted(scores)


def test_thumbnail_rejects_bad_sizes():
    clip = moving_clip(t=5, size=8)
    with pytest.raises(ValueError, match="between 1 and"):
        thumbnail_roundtrip(clip, 6, 4, 4)
    with pytest.raises(ValueError, match="uint8 frames"):
        thumbnail_roundtrip(clip.astype(np.float32), 1, 1, 1)


# ----------------------------------------------------------------------------------------------------------- H.264
def test_drop_sei_keeps_every_other_unit():
    sps, pps = b"\x00\x00\x00\x01\x67\x42\x00\x0a", b"\x00\x00\x00\x01\x68\xce\x38\x80"
    sei, idr = b"\x00\x00\x01\x06\x05\x10" + b"x264 banner", b"\x00\x00\x01\x65\x88\x84\x00\x33\x10"
    assert _drop_sei(sps + pps + sei + idr) == sps + pps + idr
    assert _drop_sei(sei) == b""
    assert _drop_sei(idr) == idr


def test_h264_roundtrip_shapes_bits_and_determinism():
    clip = moving_clip()
    a = h264_roundtrip(clip, 8.0, crf=23)
    assert a.output.shape == clip.shape and a.output.dtype == np.uint8
    assert a.bits > 0 and a.bits % 8 == 0
    assert h264_roundtrip(clip, 8.0, crf=23).bits == a.bits      # one thread: the same bits every time
    worse = h264_roundtrip(clip, 8.0, crf=45)
    assert worse.bits < a.bits
    assert clip_psnr(worse.output, clip) < clip_psnr(a.output, clip)
    odd = moving_clip(t=5, size=15)                             # 4:2:0 needs even sizes: odd ones code 4:4:4
    out = h264_roundtrip(odd, 8.0, crf=10)
    assert out.output.shape == odd.shape and out.settings["pix_fmt"] == "yuv444p"


def test_h264_bits_do_not_depend_on_the_heap():
    """x264's MB-tree lookahead read uninitialised memory on small frames: the same clip coded to other bits when
    glibc filled fresh allocations with another byte. The round trip turns it off; its bits must not move."""
    code = ("import sys; sys.path.insert(0, 'tests/mmtok'); from test_baselines import moving_clip; "
            "from mmtok.baselines import h264_roundtrip; "
            "print(h264_roundtrip(moving_clip(), 8.0, crf=23).bits, h264_roundtrip(moving_clip(size=64), 8.0, crf=23).bits)")
    root = Path(__file__).resolve().parents[2]
    bits = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={**os.environ, "MALLOC_PERTURB_": perturb, "PYTHONPATH": str(root)}).stdout
            for perturb in ("0", "77", "200")}
    assert len(bits) == 1, bits


def test_h264_bitrate_mode_lands_within_a_factor():
    clip = moving_clip()
    seconds = len(clip) / 8.0
    for bitrate in (20_000, 50_000):
        got = h264_roundtrip(clip, 8.0, bitrate=bitrate).bits / seconds
        assert bitrate / 3 < got < bitrate * 3, (bitrate, got)


def test_h264_within_bits_fits_the_budget():
    clip = moving_clip()
    small, large = h264_within_bits(clip, 8.0, 8_000), h264_within_bits(clip, 8.0, 40_000)
    assert small.bits <= 8_000 and large.bits <= 40_000
    assert large.settings["crf"] < small.settings["crf"]
    assert clip_psnr(large.output, clip) > clip_psnr(small.output, clip)
    impossible = h264_within_bits(clip, 8.0, 64)                # below what CRF 51 needs: its encode, over budget
    assert impossible.bits > 64 and impossible.settings["crf"] == 51


def test_h264_rejects_bad_arguments():
    clip = moving_clip(t=3, size=8)
    with pytest.raises(ValueError, match="exactly one"):
        h264_roundtrip(clip, 8.0)
    with pytest.raises(ValueError, match="crf"):
        h264_roundtrip(clip, 8.0, crf=60)


# ------------------------------------------------------------------------------------------------------------ audio
def test_opus_roundtrip_aligned_with_the_input():
    rate = 16000
    wave = tone(2.0, rate)
    hi = opus_roundtrip(wave, rate, 64)
    assert hi.output.shape == wave.shape and hi.output.dtype == np.float32
    # Any misalignment (the encoder's pre-skip, the resampler's delay) would show as a low SI-SNR on tones.
    assert si_snr(torch.from_numpy(hi.output), torch.from_numpy(wave)).item() > 15.0
    lo = opus_roundtrip(wave, rate, 12)
    assert 0.5 * 12_000 * 2.0 < lo.bits < 1.5 * 12_000 * 2.0
    assert si_snr(torch.from_numpy(lo.output), torch.from_numpy(wave)).item() < \
        si_snr(torch.from_numpy(hi.output), torch.from_numpy(wave)).item()


def test_opus_constant_bitrate_counts_every_packet():
    wave = tone(1.0, 24000)
    cbr = opus_roundtrip(wave, 24000, 12, vbr=False)
    # 20 ms packets of 12 kbit/s are 30 bytes each; the packets cover the second plus the 312-sample pre-skip.
    packets = math.ceil((48000 + 312) / 960)
    assert cbr.bits == packets * 30 * 8


def test_pcm_downsample_bits_exact_and_band_limit():
    rate = 16000
    low = tone(1.0, rate, freqs=(300.0,))
    same = pcm_downsample_roundtrip(low, rate, rate, 16)
    assert same.bits == rate * 16
    assert si_snr(torch.from_numpy(same.output), torch.from_numpy(low)).item() > 80.0
    half = pcm_downsample_roundtrip(low, rate, 8000, 8)
    assert half.bits == 8000 * 8 and half.output.shape == low.shape
    assert si_snr(torch.from_numpy(half.output), torch.from_numpy(low)).item() > 30.0
    high = tone(1.0, rate, freqs=(6000.0,))                     # above the 4 kHz Nyquist of 8 kHz: removed
    gone = pcm_downsample_roundtrip(high, rate, 8000, 16).output
    assert np.sqrt(np.mean(gone ** 2)) < 0.05 * np.sqrt(np.mean(high ** 2))


def test_audio_baselines_reject_bad_input():
    with pytest.raises(ValueError, match="mono float"):
        opus_roundtrip(np.zeros((2, 100), np.float32), 16000, 12)
    with pytest.raises(ValueError, match="6 to 510"):
        opus_roundtrip(np.zeros(100, np.float32), 16000, 3)
    with pytest.raises(ValueError, match="target_rate"):
        pcm_downsample_roundtrip(np.zeros(100, np.float32), 16000, 32000)
    with pytest.raises(ValueError, match="NaN"):
        pcm_downsample_roundtrip(np.full(100, np.nan, np.float32), 16000, 8000)
