"""EnCodec's multi-scale STFT discriminator and the adversarial losses of codec training.

EnCodec (arXiv 2210.13438, section 3.4): each sub-discriminator sees the complex STFT (real and imaginary parts as
two channels) at one resolution and runs a small 2-D conv stack dilated along time; the generator is trained with a
hinge adversarial loss plus a feature-matching loss (L1 between the discriminator's activations on real and
reconstructed audio, relative to the real activations' mean magnitude).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations


def _wn(module: nn.Module) -> nn.Module:
    return parametrizations.weight_norm(module)


class STFTDiscriminator(nn.Module):
    """One resolution: complex STFT ``[B, 2, frames, n_fft/2+1]`` -> logits ``[B, 1, frames', bins']`` and the
    activations of every layer (for feature matching)."""

    def __init__(self, n_fft: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [_wn(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for d in dilations:   # dilated in time, strided in frequency
            layers.append(_wn(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1),
                                        padding=(d, 4))))
        layers.append(_wn(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.layers = nn.ModuleList(layers)
        self.conv_out = _wn(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = wav.reshape(wav.shape[0], -1)                                              # [B, N]
        spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)               # [B, 2, frames, bins]
        features = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            features.append(h)
        return self.conv_out(h), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """Several :class:`STFTDiscriminator` at FFT sizes ``n_ffts`` (EnCodec at 24 kHz: 2048, 1024, 512)."""

    def __init__(self, n_ffts: Sequence[int] = (1024, 512, 256), channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in n_ffts)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for disc in self.discriminators:
            lg, ft = disc(wav)
            logits.append(lg)
            features.append(ft)
        return logits, features


def discriminator_hinge_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """``mean(relu(1 - D(x))) + mean(relu(1 + D(G(x))))``, averaged over sub-discriminators."""
    loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))
    return loss / len(real_logits)


def generator_hinge_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """``mean(relu(1 - D(G(x))))``, averaged over sub-discriminators (EnCodec's generator adversarial loss)."""
    return sum(F.relu(1 - f).mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          fake_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean over sub-discriminators and layers of ``|f_real - f_fake|_1 / mean(|f_real|)`` (real side detached)."""
    total, count = 0.0, 0
    for reals, fakes in zip(real_features, fake_features):
        for r, f in zip(reals, fakes):
            r = r.detach()
            total = total + F.l1_loss(f, r) / r.abs().mean().clamp_min(1e-6)
            count += 1
    return total / max(count, 1)
