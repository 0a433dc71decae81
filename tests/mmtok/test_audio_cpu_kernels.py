"""The audio codec's CPU inference kernels (mmtok/audio/cpu_kernels.py) compute what the plain PyTorch path computes.

Without autograd the codec runs its convs time-major (channels-last oneDNN kernels, matmul forms for one input or
few output channels, a fused 1x1 conv + residual add, cached weights); training keeps plain F.conv1d. Both must
compute the same function: each kernel against ``F.conv1d``, each conv module with and without autograd, and the
whole encoder and decoder.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmtok.audio import AudioTokenizer
from mmtok.audio.cpu_kernels import conv1d_few_output_channels, conv1d_one_input_channel, conv1x1_add_, time_major
from mmtok.audio.modeling_audio import StreamConv1d, StreamConvTranspose1d


def tone(n: int, sr: int = 16000, freq: float = 440.0, batch: int = 1) -> torch.Tensor:
    t = torch.arange(n) / sr
    wave = 0.4 * torch.sin(2 * math.pi * freq * t) + 0.1 * torch.sin(2 * math.pi * 2 * freq * t)
    return wave.expand(batch, 1, n).clone()


# -------------------------------------------------------------------------------------------- the matmul forms
@pytest.mark.parametrize("kernel,stride,dilation,padding", [(7, 1, 1, 3), (4, 2, 1, 0), (3, 1, 2, 2), (10, 5, 1, 5),
                                                            (1, 1, 1, 0)])
def test_one_input_channel_conv_equals_conv1d(kernel, stride, dilation, padding):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 1, 60, generator=g), torch.randn(8, 1, kernel, generator=g), torch.randn(8, generator=g)
    out = conv1d_one_input_channel(x, w, b, stride, dilation, padding)
    expected = F.conv1d(x, w, b, stride, padding, dilation)
    assert out.shape == expected.shape and out.stride(1) == 1           # time-major
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_channels,kernel,dilation,padding", [(1, 7, 1, 3), (2, 3, 3, 3), (3, 5, 1, 0),
                                                                  (1, 1, 1, 0), (1, 7, 1, 6)])
def test_few_output_channels_conv_equals_conv1d(out_channels, kernel, dilation, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 60, generator=g)
    w, b = torch.randn(out_channels, 8, kernel, generator=g), torch.randn(out_channels, generator=g)
    out = conv1d_few_output_channels(x, w, b, dilation, padding)
    expected = F.conv1d(x, w, b, 1, padding, dilation)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_fused_add_declines_where_it_does_not_apply():
    """Where the fused op cannot run, ``conv1x1_add_`` leaves ``out`` alone and ``add_into`` adds the conv itself."""
    torch.manual_seed(0)
    conv = StreamConv1d(8, 6, 1)
    x = time_major(torch.randn(1, 8, 50))
    channel_first = torch.randn(1, 6, 50)                           # not time-major: the op cannot write into it
    kept = channel_first.clone()
    with torch.no_grad():
        assert not conv1x1_add_(conv, channel_first, x) and torch.equal(channel_first, kept)
        expected = kept + conv(x)
        torch.testing.assert_close(conv.add_into(channel_first, x), expected, rtol=1e-5, atol=1e-5)
    conv64 = StreamConv1d(8, 6, 1).double()                         # the op is float32 only
    x64, out64 = time_major(torch.randn(1, 8, 50, dtype=torch.float64)), time_major(torch.zeros(1, 6, 50).double())
    with torch.no_grad():
        assert not conv1x1_add_(conv64, out64, x64) and not out64.any()
        torch.testing.assert_close(conv64.add_into(out64, x64), conv64(x64))


# ----------------------------------------------------------------------------------- through the codec's convs
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("channels,kernel,stride,dilation", [
    ((6, 5), 7, 1, 1), ((6, 5), 3, 1, 9), ((6, 5), 4, 2, 1), ((6, 5), 1, 1, 1),
    ((1, 8), 7, 1, 1), ((1, 8), 4, 2, 1), ((1, 8), 3, 1, 2),          # one input channel: im2col + matmul
    ((8, 1), 7, 1, 1), ((8, 2), 3, 1, 3), ((8, 1), 1, 1, 1)])        # few output channels: per-tap matmul
def test_inference_conv_equals_the_training_conv(causal, channels, kernel, stride, dilation):
    torch.manual_seed(0)
    conv = StreamConv1d(*channels, kernel, stride=stride, dilation=dilation, causal=causal)
    x = torch.randn(2, channels[0], 80)
    expected = conv(x)                                             # autograd on: F.conv1d, channel-first
    with torch.no_grad():
        out = conv(x)
        again = conv(x)                                            # served from the cached inference weight
    assert out.shape == expected.shape == (2, channels[1], 80 // stride)
    assert out.stride(1) == 1                                      # time-major: channels innermost
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(again, out)


@pytest.mark.parametrize("causal", [True, False])
def test_inference_transposed_conv_equals_the_training_one(causal):
    torch.manual_seed(0)
    up = StreamConvTranspose1d(6, 4, stride=3, causal=causal)
    x = torch.randn(2, 6, 11)
    expected = up(x)
    with torch.no_grad():
        out = up(x)
    assert out.shape == expected.shape == (2, 4, 33)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)


def test_fused_conv_add_equals_conv_then_add():
    torch.manual_seed(0)
    conv = StreamConv1d(8, 6, 1)
    x, out = time_major(torch.randn(1, 8, 50)), time_major(torch.randn(1, 6, 50))
    expected = out + conv(x).detach()
    with torch.no_grad():
        result = conv.add_into(out, x)
    assert result is out                                           # in place
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):                              # a shape that cannot take the sum
        with torch.no_grad():
            conv.add_into(torch.zeros(1, 6, 49), x)


def test_inference_weights_follow_parameter_updates(tmp_path):
    """The cached inference weights are dropped when a parameter changes: in place (an optimizer step) or by
    loading other weights."""
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("debug", lstm_layers=1, conv_shortcut=True, kmeans_init=False).eval()
    wav = tone(1024, batch=2) + 0.05 * torch.randn(2, 1, 1024)
    codes = tok.encode(wav)
    latent = tok.encoder(tok.preprocess(wav)).detach()             # the training path, as reference
    with torch.no_grad():
        torch.testing.assert_close(tok.encoder(tok.preprocess(wav)), latent, rtol=1e-4, atol=1e-5)
        for p in tok.encoder.parameters():                         # an in-place update, like optimizer.step()
            p.mul_(1.5)
        changed = tok.encoder(tok.preprocess(wav))
    torch.testing.assert_close(changed, tok.encoder(tok.preprocess(wav)).detach(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(changed, latent, atol=1e-3)
    other = AudioTokenizer.from_preset("debug", lstm_layers=1, conv_shortcut=True, kmeans_init=False).eval()
    other.load_state_dict(tok.state_dict())                        # other has cached its own weights first
    other.encode(wav)
    fresh = AudioTokenizer.from_preset("debug", lstm_layers=1, conv_shortcut=True, kmeans_init=False).eval()
    fresh.encode(wav)
    fresh.load_state_dict(tok.state_dict())
    assert torch.equal(fresh.encode(wav), other.encode(wav)) and torch.equal(other.encode(wav), tok.encode(wav))
    assert not torch.equal(tok.encode(wav), codes)


# ---------------------------------------------------------------------------------------------- the whole codec
@pytest.mark.parametrize("overrides", [dict(), dict(patch_size=2, conv_shortcut=True, lstm_layers=1)])
def test_codec_inference_equals_its_training_pass(overrides):
    """Encoder and decoder give the same latent and waveform with autograd (plain convs) and without (the kernels,
    the fused residual adds, the in-place ELUs)."""
    torch.manual_seed(0)
    tok = AudioTokenizer.from_preset("debug", kmeans_init=False, **overrides).eval()
    wav = tone(tok.hop_length * 8, batch=2) + 0.05 * torch.randn(2, 1, tok.hop_length * 8)
    latent = tok.encoder(tok.preprocess(wav.clone()))                   # autograd on: the training path
    recon = tok.decoder(latent)
    with torch.no_grad():
        fast_latent = tok.encoder(tok.preprocess(wav.clone()))
        fast_recon = tok.decoder(latent.detach().clone())
    torch.testing.assert_close(fast_latent, latent.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_recon, recon.detach(), rtol=1e-4, atol=1e-5)
