"""What every quantizer shares: the output tuple, the straight-through trick, code-usage metrics, and the few
collectives that keep codebooks identical across ranks under ``torch.distributed`` (DDP or DeepSpeed).
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
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
        metrics: detached scalars for logging, in training mode: ``utilization`` (fraction of the codebook used by
            this batch) and ``perplexity`` (exp of the entropy of the batch's code histogram), plus
            quantizer-specific terms. Empty in eval mode, where a per-batch histogram over ``2^18`` codes would cost
            more than the quantization (evaluations aggregate the indices over their whole set instead).
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
    """Batch codebook utilization and perplexity from a tensor of (non-negative) code indices."""
    n = indices.numel()
    if n == 0:
        zero = torch.zeros((), device=indices.device)
        return {"utilization": zero, "perplexity": zero}
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    # H = -sum (c/n) log(c/n) = log n - sum c log c / n; log(max(c, 1)) makes empty bins contribute 0.
    entropy = math.log(n) - (counts * counts.clamp_min(1.0).log()).sum() / n
    return {"utilization": torch.count_nonzero(counts) / codebook_size, "perplexity": entropy.exp()}


class UsageMetrics:
    """A read-only metrics mapping whose code-usage entries are computed on first access.

    The histogram behind ``utilization`` and ``perplexity`` costs as much as quantizing a batch with a large
    codebook; most training steps never log it, so it is only computed when read. It reads like a dict
    (``m[key]``, ``dict(m)``, ``{**m}``, ``items()``) but is deliberately not a ``collections.abc.Mapping``:
    wrappers that rebuild every mapping in a model's output (accelerate's bf16 / fp16 output conversion does)
    would otherwise read all of it every step and then call this constructor with a plain dict.
    """

    def __init__(self, indices: torch.Tensor, codebook_size: int, **extra: torch.Tensor):
        self._indices = indices.detach()
        self._codebook_size = codebook_size
        self._values: dict[str, torch.Tensor] | None = None
        self._extra = extra

    def _resolve(self) -> dict[str, torch.Tensor]:
        if self._values is None:
            self._values = {**code_usage(self._indices, self._codebook_size), **self._extra}
            self._indices = None  # type: ignore[assignment]
        return self._values

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if self._values is None:
            self._extra[key] = value
        else:
            self._values[key] = value

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._resolve()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolve())

    def __len__(self) -> int:
        return len(self._resolve())

    def __contains__(self, key: object) -> bool:
        return key in self._resolve()

    def keys(self) -> KeysView[str]:
        return self._resolve().keys()

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self._resolve().items()

    def values(self) -> ValuesView[torch.Tensor]:
        return self._resolve().values()

    def get(self, key: str, default: torch.Tensor | None = None) -> torch.Tensor | None:
        return self._resolve().get(key, default)

    def __repr__(self) -> str:
        return f"UsageMetrics({dict(self._resolve())})"


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
