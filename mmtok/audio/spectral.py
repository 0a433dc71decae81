"""The spectral codec layout: an STFT-frame encoder and a Vocos-style inverse-STFT decoder, both at the code rate.

SEANet (:mod:`mmtok.audio.modeling_audio`) must assemble the waveform, phase and all, sample by sample through
transposed convs, and on 2 CPU cores it had not learned the spectral detail of real speech after an hour. Here every
layer runs at the frame rate (one frame per code), as in Vocos (Siuzdak 2023, arXiv 2306.00814) and WavTokenizer
(arXiv 2408.16532):

    wav [B,1,N]   (N = F * hop)
      -> STFT (Hann window n_fft, hop; "same" padding: exactly F frames)       [B, K, F] complex, K = n_fft/2 + 1
      -> features: log magnitude, and real / imaginary parts at magnitude^0.3  [B, F, 3K]
      -> Linear -> LayerNorm -> ConvNeXt blocks -> LayerNorm -> Linear         [B, dimension, F]   (the latent)
    latent -> Linear -> LayerNorm -> ConvNeXt blocks -> LayerNorm -> Linear   [B, F, 2K]
      -> magnitude = exp(first K), phase = last K  -> inverse STFT (overlap-add, "same" padding) -> [B, 1, F * hop]

Predicting a magnitude and a phase per bin makes the spectral envelope (what the mel distance reads) a direct output:
on real speech and music it passes SEANet's hour-long mel distance within a few hundred steps (README, Benchmarks).
The phase is only as good as the waveform loss makes it (a light L1 leaves it unrelated to the input's: SI-SNR
-38 dB; a heavy one, -6 dB). The windows are centred, so this layout is not causal (no streaming).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNeXtBlock", "SpectralDecoder", "SpectralEncoder", "inverse_stft", "stft"]

_LOG_FLOOR = 1e-5          # floors the encoder's log magnitude (-100 dB of a full-scale bin)
_MAX_LOG_MAGNITUDE = 7.0   # exp(7) ~ 1,100: far above any bin of a [-1, 1] signal, caps a diverging step


def _same_padding(n_fft: int, hop: int) -> int:
    # Padding on each side that gives exactly F = N / hop frames of N samples (and N samples back from F frames).
    return (n_fft - hop) // 2


def stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``[B, 1, N]`` (``N`` a multiple of ``hop``) -> complex ``[B, n_fft // 2 + 1, N / hop]``, frame ``t``
    centred on samples ``t * hop .. (t + 1) * hop`` (zero padding at both ends)."""
    pad = _same_padding(n_fft, hop)
    x = F.pad(x[:, 0], (pad, pad))
    return torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True)


def inverse_stft(spec: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`stft`: complex ``[B, K, F]`` -> ``[B, 1, F * hop]`` by windowed overlap-add, divided by
    the summed squared window (so ``inverse_stft(stft(x)) == x``). Written out because ``torch.istft`` refuses
    ``center=False`` when the window envelope vanishes at the untrimmed ends, which are trimmed here anyway."""
    frames = spec.shape[-1]
    pad = _same_padding(n_fft, hop)
    chunks = torch.fft.irfft(spec, n=n_fft, dim=1) * window[:, None]          # [B, n_fft, F]
    length = (frames - 1) * hop + n_fft
    y = F.fold(chunks, (1, length), (1, n_fft), stride=(1, hop))[:, 0, 0]     # [B, length]
    envelope = F.fold(window.square()[None, :, None].expand(1, n_fft, frames), (1, length), (1, n_fft),
                      stride=(1, hop))[0, 0, 0]                               # [length]
    y = y[:, pad: pad + frames * hop] / envelope[pad: pad + frames * hop].clamp_min(1e-8)
    return y[:, None]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block over time (Vocos): depthwise conv k7 -> LayerNorm -> Linear (``ratio`` x) -> GELU -> Linear,
    scaled by a learned per-channel gain (layer scale, starting small) and added to the input. ``[B, T, C]``."""

    def __init__(self, channels: int, ratio: float, kernel_size: int = 7):
        super().__init__()
        hidden = int(channels * ratio)
        self.dwconv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.up = nn.Linear(channels, hidden)
        self.down = nn.Linear(hidden, channels)
        self.gain = nn.Parameter(torch.full((channels,), 1.0 / 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, C] -> [B, T, C]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.down(F.gelu(self.up(self.norm(h))))
        return x + self.gain * h


def _window(n_fft: int, device: torch.device) -> torch.Tensor:
    # Made on each call, not kept as a buffer: a non-persistent buffer is left uninitialised when transformers
    # builds the model on the meta device in from_pretrained.
    return torch.hann_window(n_fft, device=device)


def _trunk(config) -> tuple[nn.LayerNorm, nn.ModuleList, nn.LayerNorm]:
    width = config.base_channels
    blocks = nn.ModuleList(ConvNeXtBlock(width, config.mlp_ratio) for _ in range(config.num_blocks))
    return nn.LayerNorm(width), blocks, nn.LayerNorm(width)


class SpectralEncoder(nn.Module):
    """Waveform ``[B, 1, N]`` (``N`` a multiple of the hop) -> latent ``[B, dimension, N / hop]``."""

    def __init__(self, config):
        super().__init__()
        self.n_fft, self.hop = config.n_fft, config.hop_length
        bins = self.n_fft // 2 + 1
        self.embed = nn.Linear(3 * bins, config.base_channels)
        self.norm_in, self.blocks, self.norm_out = _trunk(config)
        self.proj = nn.Linear(config.base_channels, config.dimension)

    def forward(self, x: torch.Tensor, state=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("the spectral codec is not causal and cannot stream")
        spec = stft(x.float(), self.n_fft, self.hop, _window(self.n_fft, x.device)).transpose(1, 2)   # [B, F, K]
        magnitude = spec.abs()
        compressed = spec * magnitude.clamp_min(_LOG_FLOOR).pow(-0.7)             # |S|^0.3, S's phase
        feats = torch.cat([magnitude.clamp_min(_LOG_FLOOR).log(), compressed.real, compressed.imag], dim=-1)
        feats = feats.to(x.dtype)
        h = self.norm_in(self.embed(feats))                                      # [B, F, C]
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm_out(h)).transpose(1, 2)                       # [B, D, F]


class SpectralDecoder(nn.Module):
    """Latent ``[B, dimension, F]`` -> waveform ``[B, 1, F * hop]`` through a predicted magnitude and phase."""

    def __init__(self, config):
        super().__init__()
        self.n_fft, self.hop = config.n_fft, config.hop_length
        self.bins = self.n_fft // 2 + 1
        self.embed = nn.Linear(config.dimension, config.base_channels)
        self.norm_in, self.blocks, self.norm_out = _trunk(config)
        self.head = nn.Linear(config.base_channels, 2 * self.bins)

    def forward(self, z: torch.Tensor, state=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("the spectral codec is not causal and cannot stream")
        h = self.norm_in(self.embed(z.transpose(1, 2)))                          # [B, F, C]
        for block in self.blocks:
            h = block(h)
        log_magnitude, phase = self.head(self.norm_out(h)).transpose(1, 2).split(self.bins, dim=1)   # [B, K, F] x 2
        magnitude = log_magnitude.clamp(max=_MAX_LOG_MAGNITUDE).exp()
        spec = torch.polar(magnitude.float(), phase.float())                      # complex [B, K, F]
        return inverse_stft(spec, self.n_fft, self.hop, _window(self.n_fft, z.device)).to(z.dtype)
