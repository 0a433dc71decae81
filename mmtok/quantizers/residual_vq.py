"""Residual vector quantization (SoundStream, Zeghidour et al. 2021, arXiv 2107.03312).

Stage ``i`` quantizes what the stages before it left over: ``r_0 = z``, ``e_i = VQ_i(r_i)``, ``r_{i+1} = r_i - e_i``,
and the output is ``sum_i e_i``. Any prefix of the stages decodes to a coarser reconstruction, which is what makes
bitrate selectable: with quantizer dropout (train each batch with a random number of stages) one model serves every
bitrate from ``quantize_dropout_cutoff_index + 1`` stages up to all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtok.quantizers.common import QuantizerOutput, broadcast_, code_usage, no_autocast, straight_through
from mmtok.quantizers.vq import VectorQuantizer


class ResidualVQ(nn.Module):
    """Residual vector quantizer over channel-last vectors ``[..., dim]``; indices are ``[..., num_quantizers]``.

    Args:
        dim: input dimension.
        num_quantizers: number of stages.
        codebook_size: codes per stage.
        codebook_dim: dimension the stages work in; when it differs from ``dim``, one pair of linear projections
            maps ``dim -> codebook_dim -> dim`` around all stages.
        quantize_dropout: in training, quantize each batch with a random number of stages (the dropped stages'
            indices are -1); under ``torch.distributed`` rank 0 draws the number for everyone.
        quantize_dropout_cutoff_index: at least ``cutoff + 1`` stages are always kept.
        decay, eps, commitment_weight, use_cosine_sim, ema_update, kmeans_init, kmeans_iters,
            threshold_ema_dead_code: passed to every stage's :class:`~mmtok.quantizers.VectorQuantizer`.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        use_cosine_sim: bool = False,
        ema_update: bool = True,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
    ):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        if not 0 <= quantize_dropout_cutoff_index < num_quantizers:
            raise ValueError(f"quantize_dropout_cutoff_index must be in [0, {num_quantizers}), "
                             f"got {quantize_dropout_cutoff_index}")
        self.dim = dim
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim if codebook_dim is not None else dim
        self.quantize_dropout = quantize_dropout
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index

        has_projections = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if has_projections else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if has_projections else nn.Identity()
        self.layers = nn.ModuleList(
            VectorQuantizer(dim=self.codebook_dim, codebook_size=codebook_size, decay=decay, eps=eps,
                            commitment_weight=commitment_weight, use_cosine_sim=use_cosine_sim,
                            ema_update=ema_update, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                            threshold_ema_dead_code=threshold_ema_dead_code)
            for _ in range(num_quantizers)
        )

    def forward(self, z: torch.Tensor, num_quantizers: int | None = None) -> QuantizerOutput:
        """Quantize ``z [..., dim]`` with the first ``num_quantizers`` stages (all by default).

        With an explicit ``num_quantizers`` the indices are ``[..., num_quantizers]``; otherwise they are
        ``[..., self.num_quantizers]``, with -1 for the stages quantizer dropout skipped in training.
        """
        if not z.dtype.is_floating_point:
            raise TypeError(f"ResidualVQ expects a floating-point input, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"ResidualVQ expects input [..., {self.dim}] (channel-last), got shape {tuple(z.shape)}")
        if num_quantizers is not None and not 1 <= num_quantizers <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be in [1, {self.num_quantizers}], got {num_quantizers}")
        num_out = num_quantizers or self.num_quantizers
        num_used = num_out
        if num_quantizers is None and self.training and self.quantize_dropout:
            num_used = self._draw_num_stages(z.device)

        with no_autocast(z.device.type):
            x = self.project_in(z.float())                               # [..., c]
            total = torch.zeros_like(x)                                  # sum of the chosen codes
            loss = x.new_zeros(())
            indices, usage = [], []
            for layer in self.layers[:num_used]:
                # The residual keeps its gradient path to x (commitment loss); the codes are constants.
                out = layer(x - total)
                total = total + out.quantized.detach()
                loss = loss + out.loss
                indices.append(out.indices)
                usage.append(out.metrics)
            quantized = self.project_out(straight_through(total, x))   # [..., dim]

        indices = torch.stack(indices, dim=-1)                           # [..., num_used]
        if num_used < num_out:
            pad = indices.new_full((*indices.shape[:-1], num_out - num_used), -1)
            indices = torch.cat([indices, pad], dim=-1)                  # [..., num_out]
        metrics = {key: torch.stack([m[key] for m in usage]).mean() for key in usage[0]}
        metrics["num_quantizers"] = torch.tensor(float(num_used))
        return QuantizerOutput(quantized, indices, loss, metrics)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``[..., k]`` of the first ``k <= num_quantizers`` stages -> vectors ``[..., dim]``.

        Entries of -1 (stages skipped by quantizer dropout) contribute nothing. Exact inverse of ``forward``.
        """
        if indices.dtype.is_floating_point:
            raise TypeError(f"ResidualVQ indices must be an integer tensor, got {indices.dtype}")
        if indices.dim() < 1 or not 1 <= indices.shape[-1] <= self.num_quantizers:
            raise ValueError(f"ResidualVQ indices must be [..., k] with 1 <= k <= {self.num_quantizers}, "
                             f"got shape {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices must lie in [-1, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        indices = indices.long()
        with no_autocast(indices.device.type):
            total = None
            for level, layer in enumerate(self.layers[: indices.shape[-1]]):
                idx = indices[..., level]
                codes = torch.nn.functional.embedding(idx.clamp_min(0), layer.codebook())   # [..., c]
                codes = torch.where((idx >= 0)[..., None], codes, torch.zeros_like(codes))
                total = codes.new_zeros(codes.shape) + codes if total is None else total + codes
            return self.project_out(total)

    def _draw_num_stages(self, device: torch.device) -> int:
        low = self.quantize_dropout_cutoff_index + 1
        n = torch.randint(low, self.num_quantizers + 1, (1,), device=device)
        return int(broadcast_(n))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_quantizers={self.num_quantizers}, codebook_size={self.codebook_size}, "
                f"quantize_dropout={self.quantize_dropout}")
