"""Packed batches: clips with different numbers of tokens, laid back to back in one ``[N, C]`` tensor.

After RLT drops static tubelets, ToMe merges tokens or text padding is removed, the clips of a batch hold different
numbers of tokens. Padding them to the longest would spend attention and MLP compute on padding; packing stores only
real tokens (RLT, arXiv 2411.05222, packs its batches the same way) and keeps, per clip, where its tokens lie
(:class:`Packing`). Attention must then never cross clips: :func:`packed_attention` confines it to each clip.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Packing", "packed_attention"]


class Packing(NamedTuple):
    """Where each clip's tokens lie in a packed ``[N, ...]`` tensor: clip ``i`` holds rows
    ``cu_seqlens[i]:cu_seqlens[i + 1]``, ``counts[i]`` of them.

    Attributes:
        lengths: tokens per clip ``[B]`` (int64, on the tokens' device).
        cu_seqlens: cumulative lengths ``[B + 1]`` (int64), starting at 0 (flash-attention's varlen layout).
        counts: the lengths as Python ints (read once, so shape decisions need no further device syncs).
    """

    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    counts: tuple[int, ...]

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor) -> "Packing":
        """The packing of clips with ``lengths`` ``[B]`` tokens each."""
        lengths = lengths.long()
        cu = F.pad(lengths.cumsum(0), (1, 0))
        return cls(lengths, cu, tuple(int(n) for n in lengths.tolist()))

    @classmethod
    def uniform(cls, num_clips: int, length: int, device: torch.device | str | None = None) -> "Packing":
        """``num_clips`` clips of ``length`` tokens each (no device sync)."""
        lengths = torch.full((num_clips,), length, dtype=torch.long, device=device)
        cu = torch.arange(num_clips + 1, dtype=torch.long, device=device) * length
        return cls(lengths, cu, (length,) * num_clips)

    @property
    def num_clips(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        """Tokens in the packed tensor."""
        return sum(self.counts)

    @property
    def max_len(self) -> int:
        return max(self.counts)

    @property
    def is_uniform(self) -> bool:
        """Every clip holds the same number of tokens (the packed rows reshape to ``[B, max_len, ...]``)."""
        return min(self.counts) == max(self.counts)

    def segment_ids(self) -> torch.Tensor:
        """The clip of every packed token, ``[N]`` (int64)."""
        return torch.repeat_interleave(torch.arange(self.num_clips, device=self.lengths.device), self.lengths,
                                       output_size=self.total)

    def valid_mask(self) -> torch.Tensor:
        """``[B, max_len]`` bool, True where a padded row holds a real token (tokens first, padding after)."""
        return torch.arange(self.max_len, device=self.lengths.device)[None] < self.lengths[:, None]

    def pad(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """Packed ``[N, ...]`` -> padded ``[B, max_len, ...]`` (``value`` in the padding)."""
        if self.is_uniform:
            return x.reshape(self.num_clips, self.max_len, *x.shape[1:])
        out = x.new_full((self.num_clips, self.max_len, *x.shape[1:]), value)
        out[self.valid_mask()] = x
        return out

    def block_diagonal_mask(self) -> torch.Tensor:
        """``[N, N]`` bool, True where query and key belong to the same clip."""
        seg = self.segment_ids()
        return seg[:, None] == seg[None, :]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, *,
                     key_bias: torch.Tensor | None = None, impl: str = "padded") -> torch.Tensor:
    """Softmax attention of packed queries, keys and values ``[N, heads, head_dim]``, each clip attending only to
    itself. Returns ``[N, heads, head_dim]``.

    Args:
        packing: the clips' layout in the packed tensors.
        key_bias: optional ``[N]`` added to the logits of every query for that key (ToMe's proportional attention
            passes ``log(size)``).
        impl: for clips of different lengths, ``"padded"`` (each clip padded to the longest, one batched call
            with a key padding mask: cost ``B * max_len^2``), ``"block_mask"`` (one call over all tokens with a
            block-diagonal mask: ``(sum of lengths)^2``) or ``"per_clip"`` (one call per clip: ``sum of
            lengths^2``, in B calls). Clips of equal length always run as one batched call, no mask.
    """
    n, h, d = q.shape
    if packing.is_uniform:
        b, m = packing.num_clips, packing.max_len
        qb, kb, vb = (t.reshape(b, m, h, d).transpose(1, 2) for t in (q, k, v))             # [B, h, m, d]
        mask = None if key_bias is None else key_bias.reshape(b, 1, 1, m).to(q.dtype)     # [B, 1, 1, m]
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)                   # [B, h, m, d]
        return out.transpose(1, 2).reshape(n, h, d)
    if impl == "padded":
        valid = packing.valid_mask()                                                       # [B, M]
        qb, kb, vb = (packing.pad(t).transpose(1, 2) for t in (q, k, v))                  # [B, h, M, d]
        if key_bias is None:
            mask = valid[:, None, None, :]                                                 # [B, 1, 1, M]
        else:  # padded keys at -inf; every query still sees its clip's real keys (no empty row)
            mask = packing.pad(key_bias.to(q.dtype), float("-inf"))[:, None, None, :]
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)                   # [B, h, M, d]
        return out.transpose(1, 2)[valid]                                                  # [N, h, d]
    if impl == "per_clip":
        outs = []
        bias = key_bias.split(packing.counts) if key_bias is not None else [None] * packing.num_clips
        for qi, ki, vi, bi in zip(q.split(packing.counts), k.split(packing.counts), v.split(packing.counts), bias):
            mask = None if bi is None else bi.reshape(1, 1, -1).to(q.dtype)                   # [1, 1, n_i]
            outs.append(F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1),
                                                       attn_mask=mask).transpose(0, 1))     # [n_i, h, d]
        return torch.cat(outs)
    if impl != "block_mask":
        raise ValueError(f"impl must be 'padded', 'block_mask' or 'per_clip', got {impl!r}")
    allowed = packing.block_diagonal_mask()                                                # [N, N]
    if key_bias is None:
        mask = allowed
    else:  # a float mask: the bias where allowed, -inf across clips (every query sees itself: no empty row)
        mask = torch.where(allowed, key_bias[None, :].to(q.dtype), torch.tensor(float("-inf"), dtype=q.dtype,
                                                                                 device=q.device))
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask[None, None])                      # [1, h, N, d]
    return out[0].transpose(0, 1)
