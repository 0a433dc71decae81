"""Finite scalar quantization (Mentzer et al. 2023, arXiv 2309.15505).

Each dimension ``i`` is squashed into a bounded range with ``tanh`` and rounded to one of ``levels[i]`` values, so
the codebook is the product grid of the levels and there is no codebook to learn and no auxiliary loss. Codes are
numbered in mixed radix: ``index = sum_i digit_i * prod_{j<i} levels[j]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mmtok.quantizers.common import QuantizerOutput, UsageMetrics, no_autocast


class FSQ(nn.Module):
    """Finite scalar quantizer over channel-last vectors ``[..., dim]``.

    Args:
        levels: number of values per quantized dimension, e.g. ``[8, 5, 5, 5]`` (1,000 codes) or
            ``[8, 8, 8, 5, 5, 5]`` (64,000 codes); each at least 2.
        dim: input dimension; defaults to ``len(levels)``. When it differs, linear projections map
            ``dim -> len(levels) -> dim`` around the quantizer.
        eps: widens the tanh bound slightly so that the extreme levels are reachable.
    """

    def __init__(self, *, levels: Sequence[int], dim: int | None = None, eps: float = 1e-3):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = levels
        self.codebook_size = math.prod(levels)
        self.num_dims = len(levels)
        self.dim = dim if dim is not None else self.num_dims

        self.eps = eps
        for name, value in self._constants().items():
            self.register_buffer(name, value, persistent=False)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]     # plain ints: safe on the meta device
        self._index_offset = float(sum((lvl // 2) * b for lvl, b in zip(levels, basis)))  # index of level 0s

        has_projections = self.dim != self.num_dims
        self.project_in = nn.Linear(self.dim, self.num_dims) if has_projections else nn.Identity()
        self.project_out = nn.Linear(self.num_dims, self.dim) if has_projections else nn.Identity()

    def _constants(self) -> dict[str, torch.Tensor]:
        """The fixed tensors the quantizer derives from its levels (non-persistent buffers)."""
        lv = torch.tensor(self.levels, dtype=torch.float32)
        half_level = (lv - 1) * (1 + self.eps) / 2
        offset = (lv % 2 == 0).float() * 0.5              # even levels: a grid shifted by half a step
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        return {"_half_level": half_level, "_offset": offset, "_shift": torch.atanh(offset / half_level),
                "_half_width": torch.div(lv, 2, rounding_mode="floor"),
                "_basis": torch.tensor(basis, dtype=torch.long),
                "_levels": torch.tensor(self.levels, dtype=torch.long)}

    @torch.no_grad()
    def reset_constants(self) -> None:
        """Refill the derived buffers (a model built on the meta device, as ``from_pretrained`` does, has them
        uninitialized: they are not in the state dict)."""
        for name, value in self._constants().items():
            getattr(self, name).copy_(value)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z [..., dim]``; returns ``QuantizerOutput`` with indices ``[...]`` and a zero loss."""
        if not z.dtype.is_floating_point:
            raise TypeError(f"FSQ expects a floating-point input, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects input [..., {self.dim}] (channel-last), got shape {tuple(z.shape)}")
        with no_autocast(z.device.type):
            x = self.project_in(z.float())                                          # [..., n]
            bounded = torch.addcmul(-self._offset, torch.tanh(x + self._shift), self._half_level)  # [..., n]
            rounded = _RoundStraightThrough.apply(bounded)                          # integers in [-L//2, ...]
            indices = self._levels_to_indices(rounded.detach())                     # [...]
            quantized = self.project_out(rounded / self._half_width)               # [..., dim]
        loss = z.new_zeros((), dtype=torch.float32)
        metrics = UsageMetrics(indices, self.codebook_size) if self.training else {}
        return QuantizerOutput(quantized, indices, loss, metrics)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Grid points ``[..., len(levels)]`` (values ``(k - L//2) / (L//2)``, before ``project_out``) -> indices."""
        if codes.shape[-1] != self.num_dims:
            raise ValueError(f"FSQ codes must be [..., {self.num_dims}], got shape {tuple(codes.shape)}")
        return self._levels_to_indices(torch.round(codes * self._half_width))

    def _levels_to_indices(self, levels: torch.Tensor) -> torch.Tensor:
        """Mixed-radix index of centred integer levels ``[..., n]`` (digit = level + L//2).

        ``sum_i (level_i + h_i) b_i = levels @ b + sum_i h_i b_i``: one small matmul-vector product, exact in fp32
        below 2^24 codes.
        """
        if self.codebook_size < 2 ** 24:
            return torch.addmv(levels.new_full(levels.shape[:-1], self._index_offset).reshape(-1),
                               levels.reshape(-1, self.num_dims), self._basis.float()).long().view(levels.shape[:-1])
        return ((levels.long() + self._half_width.long()) * self._basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[...]`` -> quantized vectors ``[..., dim]`` (the exact inverse of ``forward``)."""
        if indices.dtype.is_floating_point:
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"FSQ indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        digits = (indices.long()[..., None] // self._basis) % self._levels          # [..., n]
        centered = (digits - self._half_width.long()).float()
        with no_autocast(indices.device.type):
            return self.project_out(centered / self._half_width)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, codebook_size={self.codebook_size}"


class _RoundStraightThrough(torch.autograd.Function):
    """``round`` forward, identity backward: the straight-through estimator in one kernel each way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad
