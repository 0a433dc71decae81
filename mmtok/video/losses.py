"""Training losses of the video tokenizer: the pixel reconstruction loss (optionally weighted towards each frame's
foreground), a 3D patch discriminator, hinge GAN losses, LeCam regularization, the VQGAN adaptive adversarial weight
and an optional perceptual loss from a user-supplied TorchScript feature network.

References: VQGAN (Esser et al. 2021, arXiv 2012.09841) for the hinge loss and the adaptive weight; LeCam (Tseng et
al. 2021, arXiv 2104.03310) for the regularizer MAGVIT-v2 uses against discriminator overfitting.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class VideoDiscriminator(nn.Module):
    """A 3D convolutional patch discriminator: video ``[B, 3, T, H, W]`` -> patch logits ``[B, 1, T'', H'', W'']``.

    The first conv keeps time and halves space; each of the ``num_layers`` following ones halves both (time only
    while more than 2 frames remain), with GroupNorm and LeakyReLU(0.2).

    Args:
        in_channels: image channels.
        channels: width of the first layer (doubled per layer, capped at ``8 * channels``).
        num_layers: strided layers after the first.
    """

    def __init__(self, *, in_channels: int = 3, channels: int = 32, num_layers: int = 3):
        super().__init__()
        self.stem = nn.Conv3d(in_channels, channels, 3, stride=(1, 2, 2), padding=1)
        self.layers = nn.ModuleList()
        ch = channels
        for i in range(num_layers):
            out = min(channels * 2 ** (i + 1), channels * 8)
            self.layers.append(nn.ModuleDict(dict(
                conv_t=nn.Conv3d(ch, out, 3, stride=(2, 2, 2), padding=1),
                conv_s=nn.Conv3d(ch, out, 3, stride=(1, 2, 2), padding=1),
                norm=nn.GroupNorm(min(32, out // 4), out))))
            ch = out
        self.head = nn.Conv3d(ch, 1, 3, padding=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(video), 0.2)                                           # [B, C, T, H/2, W/2]
        for layer in self.layers:
            conv = layer["conv_t"] if x.shape[2] > 2 else layer["conv_s"]
            x = F.leaky_relu(layer["norm"](conv(x)), 0.2)                                 # halve (t,) h, w
        return self.head(x)                                                               # [B, 1, t, h, w]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]`` (halved, as VQGAN)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-E[D(G(z))]``."""
    return -logits_fake.mean()


class LeCamEMA(nn.Module):
    """LeCam regularization: keeps the discriminator's outputs near exponential moving averages of its outputs on
    the other class, ``E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(G(z)))^2]``.

    The EMAs are buffers, so the state is checkpointed with ``state_dict``.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        real, fake = logits_real.float().mean(), logits_fake.float().mean()
        if not bool(self.initialized):
            self.ema_real.copy_(real)
            self.ema_fake.copy_(fake)
            self.initialized.fill_(True)
        else:
            self.ema_real.lerp_(real, 1 - self.decay)
            self.ema_fake.lerp_(fake, 1 - self.decay)

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake).pow(2).mean())


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, *, l1: float = 1.0, l2: float = 1.0,
                        foreground_weight: float = 0.0) -> torch.Tensor:
    """``l1 * |x - x^| + l2 * (x - x^)^2``, averaged with per-pixel weights ``1 + foreground_weight * f``.

    ``f`` is how far each target pixel is from its frame's background, taken as the per-channel median over the
    frame (the largest channel distance, clamped to [0, 1] for targets in [-1, 1]); the weights are normalized to
    mean 1 per frame, so ``foreground_weight`` moves the loss towards the pixels that differ from the background
    without changing its scale. Small objects on a plain background are a few percent of the pixels: a plain mean
    lets a model that draws only the background score well, and it learns their shape late (on the demo corpus
    with 8 px glyphs, a probe read 30% of digits back after 1,500 steps unweighted; docs/what_was_tried.md).
    ``0`` (the default) is the plain mean.

    Shapes: ``reconstruction`` and ``target`` ``[B, C, T, H, W]``; returns a scalar.
    """
    if reconstruction.shape != target.shape or target.dim() != 5:
        raise ValueError(f"reconstruction and target must both be [B, C, T, H, W], got "
                         f"{tuple(reconstruction.shape)} and {tuple(target.shape)}")
    if foreground_weight < 0:
        raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
    diff = reconstruction - target
    per_pixel = l1 * diff.abs() + l2 * diff.pow(2)                                     # [B, C, T, H, W]
    if foreground_weight == 0:
        return per_pixel.mean()
    with torch.no_grad():
        background = target.flatten(3).median(dim=3).values[..., None, None]            # [B, C, T, 1, 1]
        f = ((target - background).abs().amax(dim=1, keepdim=True) / 2).clamp(0, 1)    # [B, 1, T, H, W]
        w = 1 + foreground_weight * f
        w = w / w.mean(dim=(3, 4), keepdim=True)
    return (per_pixel * w).mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ``||grad rec|| / (||grad g|| + 1e-4)`` at the decoder's last layer (detached, clamped)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class PerceptualLoss(nn.Module):
    """Feature-space distance under a frozen user-supplied network (there are no hub weights to download here).

    Args:
        checkpoint: a TorchScript file (``torch.jit.save``) mapping images ``[N, 3, H, W]`` in [-1, 1] to one
            feature tensor or a list/tuple of them (e.g. a scripted VGG or a self-supervised image encoder).
        max_frames: frames per video sampled (evenly) to bound the cost.

    The loss is the mean over feature maps of the squared distance between channel-normalized features (LPIPS
    without learned channel weights).
    """

    def __init__(self, checkpoint: str | os.PathLike, max_frames: int = 4):
        super().__init__()
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"perceptual feature network not found: {checkpoint}")
        self.net = torch.jit.load(str(checkpoint), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.max_frames = max_frames

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.net.eval()  # always frozen
        return self

    def _features(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        out = self.net(images)
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = reconstruction.shape[2]
        idx = torch.linspace(0, t - 1, min(t, self.max_frames)).round().long().to(reconstruction.device)
        def frames(v: torch.Tensor) -> torch.Tensor:                                      # [B*k, 3, H, W]
            return v.index_select(2, idx).transpose(1, 2).flatten(0, 1)
        loss = reconstruction.new_zeros(())
        feats_r, feats_t = self._features(frames(reconstruction)), self._features(frames(target.detach()))
        for fr, ft in zip(feats_r, feats_t):
            fr, ft = F.normalize(fr, dim=1), F.normalize(ft, dim=1)
            loss = loss + (fr - ft).pow(2).sum(1).mean()
        return loss / max(1, len(feats_r))
