"""Lookup-free quantization (LFQ), from MAGVIT-v2 (Yu et al. 2023, arXiv 2310.05737), and its spherical variant
BSQ (Zhao et al. 2024, arXiv 2406.07548).

Each of the ``d`` latent dimensions is quantized to its sign, so the codebook is the ``2^d`` corners of a cube and
nothing is looked up: ``index = sum_i bit_i * 2^i`` (bit ``i`` = dimension ``i`` is positive).

The entropy loss ``E[H(q(z))] - gamma * H(E[q(z)])`` asks each vector to commit to one code (low per-sample entropy)
while the batch as a whole spreads over the codebook (high codebook entropy). ``q(z)`` is the soft assignment
``softmax_c(-inv_temperature * ||z - c||^2)``. Because the codebook is a product of per-dimension choices, this
distribution factorizes into independent bits, ``p(bit_i = 1) = sigmoid(4 * inv_temperature * scale * z_i)``:

* the per-sample entropy is exactly the sum of the bits' binary entropies (no ``2^d`` tensor at all);
* the codebook entropy ``H(E[q])`` does not factorize (a mixture of products is not a product). It is computed per
  group of ``entropy_group_bits`` bits, each group a sub-codebook of ``2^g`` codes, and summed over groups. With one
  group (``entropy_group_bits = d``) this is the exact full-codebook entropy, affordable for small ``d``; with
  several it is the sum of the sub-codebooks' exact entropies, an upper bound of the joint one that is cheap at
  ``2^18`` and ``2^20`` codes (memory ``N * 2^g`` per group instead of ``N * 2^d``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.quantizers.common import QuantizerOutput, UsageMetrics, no_autocast, straight_through


def binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli(sigmoid(logits)): ``softplus(l) - sigmoid(l) * l``."""
    return F.softplus(logits) - torch.sigmoid(logits) * logits


class LFQ(nn.Module):
    """Lookup-free quantizer over channel-last vectors ``[..., dim]``.

    Args:
        dim: input dimension; defaults to ``log2(codebook_size)``. When it differs, linear projections map
            ``dim -> log2(codebook_size) -> dim`` around the quantizer.
        codebook_size: a power of two, ``2^d``.
        entropy_loss_weight: weight of the entropy loss (MAGVIT-v2 uses 0.1).
        commitment_loss_weight: weight of ``||z - sg(q)||^2`` (MAGVIT-v2 uses 0.25).
        diversity_gamma: weight of the codebook-entropy term inside the entropy loss.
        inv_temperature: sharpness of the soft assignment used by the entropy loss.
        codebook_scale: the code values are ``+-codebook_scale`` (``+-1/sqrt(d)`` when ``spherical``).
        spherical: BSQ: project each vector onto the unit sphere before taking signs.
        entropy_group_bits: bits per sub-codebook for the codebook entropy (see the module docstring); the default
            5 is cheap at any codebook size (over 10x faster than the exact entropy at 2^10 codes); ``d`` (up to
            16) gives the exact full-codebook entropy, which is what codebooks of at most 2^5 codes always get.
        entropy_anneal_steps: over this many training steps the entropy weight decays linearly from
            ``entropy_anneal_factor * entropy_loss_weight`` to ``entropy_loss_weight`` (0 disables annealing).
        entropy_anneal_factor: the starting multiplier of the annealing schedule.
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        codebook_scale: float = 1.0,
        spherical: bool = False,
        entropy_group_bits: int = 5,
        entropy_anneal_steps: int = 0,
        entropy_anneal_factor: float = 3.0,
    ):
        super().__init__()
        if codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of two >= 2, got {codebook_size}")
        self.num_bits = int(math.log2(codebook_size))
        self.codebook_size = codebook_size
        self.dim = dim if dim is not None else self.num_bits
        entropy_group_bits = min(entropy_group_bits, self.num_bits)
        if not 1 <= entropy_group_bits <= 16:
            raise ValueError(f"entropy_group_bits must be in [1, 16] (a 2^g sub-codebook per group), "
                             f"got {entropy_group_bits}")
        self.entropy_group_bits = entropy_group_bits
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.inv_temperature = inv_temperature
        self.spherical = spherical
        self.scale = 1.0 / math.sqrt(self.num_bits) if spherical else codebook_scale
        self.entropy_anneal_steps = entropy_anneal_steps
        self.entropy_anneal_factor = entropy_anneal_factor

        has_projections = self.dim != self.num_bits
        self.project_in = nn.Linear(self.dim, self.num_bits) if has_projections else nn.Identity()
        self.project_out = nn.Linear(self.num_bits, self.dim) if has_projections else nn.Identity()

        self.register_buffer("bit_shifts", torch.arange(self.num_bits), persistent=False)
        # Training forward passes seen, for the annealing schedule; saved so a resumed run continues the schedule.
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z [..., dim]``; returns ``QuantizerOutput`` with indices ``[...]``."""
        self._check_input(z)
        with no_autocast(z.device.type):
            x = self.project_in(z.float())                                # [..., d]
            if self.spherical:
                x = F.normalize(x, dim=-1)
            bits = x > 0                                                  # [..., d]
            hard = torch.where(bits, self.scale, -self.scale)             # [..., d]
            indices = (bits.long() << self.bit_shifts).sum(-1)            # [...]

            commitment = F.mse_loss(x, hard)
            loss = self.commitment_loss_weight * commitment
            metrics = (UsageMetrics(indices, self.codebook_size, commitment=commitment.detach())
                       if self.training else {})
            if self.training and self.entropy_loss_weight > 0:
                per_sample, codebook = self.entropy_terms(x.reshape(-1, self.num_bits))
                entropy_loss = per_sample - self.diversity_gamma * codebook
                loss = loss + self.entropy_weight() * entropy_loss
                metrics["per_sample_entropy"] = per_sample.detach()
                metrics["codebook_entropy"] = codebook.detach()
            if self.training:
                self.num_steps += 1

            quantized = self.project_out(straight_through(hard, x))      # [..., dim]
        return QuantizerOutput(quantized, indices, loss, metrics)

    def entropy_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean per-sample entropy and (grouped) codebook entropy, in nats, of pre-quantization vectors ``[N, d]``."""
        logits = (4.0 * self.inv_temperature * self.scale) * x          # [N, d], logit of p(bit = 1)
        per_sample = binary_entropy_from_logits(logits).sum(-1).mean()
        codebook = logits.new_zeros(())
        for group in logits.split(self.entropy_group_bits, dim=-1):    # [N, g] each
            g = group.shape[-1]
            # log p(sub-code c) = sum_i b_ci * l_i - sum_i softplus(l_i): a softmax over (group @ B^T).
            sub_bits = ((torch.arange(2 ** g, device=x.device)[:, None] >> torch.arange(g, device=x.device)) & 1)
            probs = torch.softmax(group @ sub_bits.to(group.dtype).T, dim=-1)   # [N, 2^g]
            avg = probs.mean(0)                                                  # [2^g]
            codebook = codebook - (avg * torch.log(avg.clamp_min(1e-9))).sum()
        return per_sample, codebook

    def entropy_weight(self) -> float:
        """The entropy loss weight at the current step of the annealing schedule."""
        if self.entropy_anneal_steps <= 0:
            return self.entropy_loss_weight
        progress = min(1.0, float(self.num_steps) / self.entropy_anneal_steps)
        factor = self.entropy_anneal_factor + (1.0 - self.entropy_anneal_factor) * progress
        return self.entropy_loss_weight * factor

    # ------------------------------------------------------------------------------------------------ inverse
    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[...]`` -> quantized vectors ``[..., dim]`` (the exact inverse of ``forward``)."""
        if indices.dtype.is_floating_point:
            raise TypeError(f"LFQ indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"LFQ indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        bits = (indices.long()[..., None] >> self.bit_shifts) & 1              # [..., d]
        hard = torch.where(bits.bool(), self.scale, -self.scale)
        with no_autocast(indices.device.type):
            return self.project_out(hard)

    def _check_input(self, z: torch.Tensor) -> None:
        if not z.dtype.is_floating_point:
            raise TypeError(f"LFQ expects a floating-point input, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"LFQ expects input [..., {self.dim}] (channel-last), got shape {tuple(z.shape)}")

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size=2^{self.num_bits}, spherical={self.spherical}, "
                f"entropy_group_bits={self.entropy_group_bits}")
