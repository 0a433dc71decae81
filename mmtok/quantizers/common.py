"""What every quantizer shares: the output tuple, the straight-through trick, code-usage metrics, and the few
collectives that keep codebooks identical across ranks under ``torch.distributed`` (DDP or DeepSpeed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


class QuantizerOutput(NamedTuple):
    """What a quantizer's ``forward`` returns.

    Attributes:
        quantized: the quantized vectors, same shape as the input ``[..., dim]``; gradients pass straight through to
            the input. Its values equal ``indices_to_codes(indices)`` exactly.
        indices: int64 code indices, ``[...]`` (``[..., num_quantizers]`` for residual VQ).
        loss: the weighted auxiliary loss to add to the training objective (a scalar tensor, zero when none).
        metrics: detached scalars for logging: ``utilization`` (fraction of the codebook used by this batch) and
            ``perplexity`` (exp of the entropy of the batch's code histogram), plus quantizer-specific terms.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Values of ``hard``, gradient of identity to ``soft`` (Bengio et al. 2013, arXiv 1308.3432).

    Written as ``hard + (soft - soft.detach())`` rather than the usual ``soft + (hard - soft).detach()``: ``x - x``
    is exactly zero in IEEE arithmetic, so the output equals ``hard`` bit for bit and ``indices_to_codes`` is an
    exact inverse even in training mode.
    """
    return hard.detach() + (soft - soft.detach())


@torch.no_grad()
def code_usage(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Batch codebook utilization and perplexity from a tensor of indices (negative indices are ignored)."""
    flat = indices.reshape(-1)
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        zero = torch.zeros((), device=indices.device)
        return {"utilization": zero, "perplexity": zero}
    counts = torch.bincount(flat, minlength=codebook_size).float()
    probs = counts / counts.sum()
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"utilization": (counts > 0).float().mean(), "perplexity": entropy.exp()}


def no_autocast(device_type: str):
    """Quantizers compute in fp32: distances and entropies in bf16/fp16 pick wrong codes and produce NaNs."""
    return torch.autocast(device_type=device_type, enabled=False)


# ------------------------------------------------------------------------------------- distributed (no-ops alone)
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src`` (identity in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
