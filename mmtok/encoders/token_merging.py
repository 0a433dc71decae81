"""Token merging inside the encoder: ToMe (arXiv 2210.09461) and the learnable, saliency-aware VTM (arXiv 2410.23782).

**ToMe.** In every block, after attention, the tokens of a clip are split alternately into sets A (even places) and
B (odd places); each A token is matched to its most similar B token (cosine similarity of the attention keys,
averaged over heads), and the ``r`` best-matched A tokens are merged into their B partners. A merged token is the
size-weighted average of its members and its size is their sum, so the total size of a clip (the patches it stands
for) never changes. Attention then adds ``log(size)`` to each key's logits (proportional attention) so a merged
token weighs as the tokens it replaced. The matching needs no parameters: ToMe runs training-free on a trained
encoder, and gradients pass through the weighted averages when training with it.

**VTM.** The paper observes that merging by similarity alone merges away salient tokens, and proposes a learnable
merge: a saliency score per token partitions the tokens into *targets* (salient; they receive merges and are never
merged away) and *sources*, each source is matched to its most similar target and merged into it. The paper trains
the scorer through an auxiliary saliency-guided attention path used only in training. Implemented here: a small
MLP per block scores every token; the ``floor(n / 2)`` most salient tokens of a clip are the targets, the rest the
sources; the ``r`` best-matched sources merge into their targets (as ToMe, by key similarity), and the merged
average weighs each member by ``size * sigmoid(saliency)``. That weighting is the scorer's gradient path (no
second attention pass, and training and inference compute the same thing); sizes still count patches.

Packing: merging is done per clip on a padded view of the packed batch with a validity mask, so padding is never
matched, never merged and never counted; the result is packed again (:mod:`mmtok.encoders.packing`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.encoders.packing import Packing

__all__ = ["AlternatePartition", "Partition", "SaliencyScorer", "merge_bipartite", "merge_tokens", "tome_partition",
           "vtm_partition"]


class Partition(NamedTuple):
    """Sources and targets of bipartite matching in padded rows: places ``src_idx [B, Ms]`` / ``dst_idx [B, Md]``
    in each row, and whether each is a real token (``src_ok``, ``dst_ok``)."""

    src_idx: torch.Tensor
    src_ok: torch.Tensor
    dst_idx: torch.Tensor
    dst_ok: torch.Tensor


class AlternatePartition(Partition):
    """ToMe's partition, sources at even places and targets at odd ones: the sets are strided views of the rows, so
    :func:`merge_bipartite` slices them instead of gathering (the gathers were most of a merge's cost)."""


class SaliencyScorer(nn.Module):
    """VTM's per-token saliency: ``LayerNorm -> Linear -> GELU -> Linear`` to one score, ``[..., C] -> [...]``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        hidden = max(8, dim // 4)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x)))).squeeze(-1)


def tome_partition(lengths: torch.Tensor, max_len: int) -> AlternatePartition:
    """ToMe's sets for padded rows of ``lengths`` real tokens: sources A = even places, targets B = odd places.

    Returns ``src_idx [B, ceil(M/2)]``, ``src_ok``, ``dst_idx [B, floor(M/2)]``, ``dst_ok`` (places in the padded
    row, and whether each is a real token).
    """
    places = torch.arange(max_len, device=lengths.device)
    src, dst = places[0::2], places[1::2]
    b = lengths.shape[0]
    return AlternatePartition(src.expand(b, -1), src[None] < lengths[:, None], dst.expand(b, -1),
                              dst[None] < lengths[:, None])


def vtm_partition(saliency: torch.Tensor, lengths: torch.Tensor) -> Partition:
    """VTM's sets for padded rows: the ``floor(n / 2)`` most salient real tokens are the targets, the rest sources.

    ``saliency`` ``[B, M]`` (padding ignored), ``lengths`` ``[B]``; returns ``src_idx [B, M - M//2]``, ``src_ok``,
    ``dst_idx [B, M//2]``, ``dst_ok`` as :func:`tome_partition`.
    """
    b, m = saliency.shape
    places = torch.arange(m, device=saliency.device)
    valid = places[None] < lengths[:, None]                                            # [B, M]
    order = saliency.detach().masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True)  # real first
    n_dst = lengths // 2                                                               # [B]
    dst_slots, src_slots = places[: m // 2], places[: m - m // 2]
    dst_idx = order[:, : m // 2]
    src_pos = (n_dst[:, None] + src_slots[None]).clamp(max=m - 1)                      # [B, M - M//2]
    src_idx = order.gather(1, src_pos)
    return Partition(src_idx, src_slots[None] < (lengths - n_dst)[:, None], dst_idx, dst_slots[None] < n_dst[:, None])


def merge_bipartite(x: torch.Tensor, sizes: torch.Tensor, metric: torch.Tensor, valid: torch.Tensor,
                    partition: Partition, r: int,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bipartite soft matching and merging on padded rows (ToMe's core, Sec. 3 of arXiv 2210.09461).

    Each source is matched to its most similar target (cosine similarity of ``metric``); per row, the
    ``min(r, #sources, #targets)`` best-matched sources are merged into their targets as the ``weights``-weighted
    average (``sizes`` when not given); sizes add up.

    Args:
        x: tokens ``[B, M, C]``; sizes: ``[B, M]``; metric: ``[B, M, d]`` (ToMe: attention keys);
        valid: ``[B, M]`` real tokens; partition: ``(src_idx, src_ok, dst_idx, dst_ok)`` from
        :func:`tome_partition` or :func:`vtm_partition`; r: merges per row; weights: ``[B, M]`` merge weights.

    Returns:
        ``(x, sizes, keep)``: merged tokens and sizes ``[B, M, ...]`` (targets that received merges updated) and
        ``keep`` ``[B, M]``, the real tokens that remain (merged sources removed).
    """
    src_idx, src_ok, dst_idx, dst_ok = partition
    bsz, m, c = x.shape
    alternate = isinstance(partition, AlternatePartition)

    def take(t: torch.Tensor, idx: torch.Tensor, start: int) -> torch.Tensor:   # [B, M, ...] -> the set's rows
        if alternate:
            return t[:, start::2]
        return t.gather(1, idx if t.dim() == 2 else idx[..., None].expand(-1, -1, t.shape[-1]))

    with torch.no_grad():  # the matching is a discrete choice; gradients flow through the averages
        unit = F.normalize(metric.float(), dim=-1)
        scores = take(unit, src_idx, 0) @ take(unit, dst_idx, 1).transpose(1, 2)       # [B, Ms, Md]
        best, match = scores.masked_fill_(~dst_ok[:, None, :], float("-inf")).max(dim=-1)   # [B, Ms]
        best = best.masked_fill(~src_ok, float("-inf"))
        r_row = torch.minimum(src_ok.sum(1), dst_ok.sum(1)).clamp(max=r)               # [B]
        top = best.argsort(dim=1, descending=True)[:, : int(r_row.max())]             # [B, R] best-matched first
        top_ok = torch.arange(top.shape[1], device=x.device)[None] < r_row[:, None]    # [B, R] merged
        merged = torch.zeros_like(src_ok).scatter_(1, top, top_ok)                     # [B, Ms]
        target = match.gather(1, top)                                                  # [B, R] places in the targets
        received = torch.zeros(dst_ok.shape, device=x.device).scatter_add_(1, target, top_ok.float()) > 0
        if alternate:
            keep = valid.clone()
            keep[:, 0::2] &= ~merged
        else:  # scatter_add, not scatter: padded slots of a VTM partition may repeat a place
            keep = valid & ~(torch.zeros(bsz, m, device=x.device).scatter_add_(1, src_idx, merged.float()) > 0)
    # Each target becomes the weighted mean of itself and the sources merged into it; only the targets change, and
    # only the R merged sources are gathered.
    w = (sizes if weights is None else weights).to(x.dtype)                            # [B, M]
    w_top = take(w, src_idx, 0).gather(1, top) * top_ok                               # [B, R], 0 if not merged
    x_top = take(x, src_idx, 0).gather(1, top[..., None].expand(-1, -1, c))            # [B, R, C]
    w_dst, x_dst = take(w, dst_idx, 1), take(x, dst_idx, 1)                            # [B, Md], [B, Md, C]
    num = (x_dst * w_dst[..., None]).scatter_add(1, target[..., None].expand(-1, -1, c), x_top * w_top[..., None])
    den = w_dst.scatter_add(1, target, w_top)                                          # [B, Md]
    x_dst = torch.where(received[..., None], num / den[..., None], x_dst)
    s_dst = take(sizes, dst_idx, 1).scatter_add(1, target, take(sizes, src_idx, 0).gather(1, top) * top_ok)
    if alternate:
        x_out, sizes_out = x.clone(), sizes.clone()
        x_out[:, 1::2], sizes_out[:, 1::2] = x_dst, s_dst
    else:
        x_out = x.scatter(1, dst_idx[..., None].expand(-1, -1, c), x_dst)
        sizes_out = sizes.scatter(1, dst_idx, s_dst)
    return x_out, sizes_out, keep


def merge_tokens(x: torch.Tensor, sizes: torch.Tensor, metric: torch.Tensor, packing: Packing, r: int, *,
                 saliency: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Packing]:
    """Merge up to ``r`` tokens in every clip of a packed batch (ToMe, or VTM when ``saliency`` is given).

    Args:
        x: packed tokens ``[N, C]``; sizes: ``[N]`` patches each token stands for; metric: ``[N, d]`` the
        similarity features (attention keys); packing: the clips' layout; r: merges per clip (a clip of ``n``
        tokens merges at most ``n // 2``); saliency: ``[N]`` VTM scores (``None``: ToMe).

    Returns:
        ``(x, sizes, packing)`` of the merged batch (``[N', C]``, ``[N']``); each clip's total size is unchanged.
    """
    valid = packing.valid_mask()                                                       # [B, M]
    xp, sp, mp = packing.pad(x), packing.pad(sizes), packing.pad(metric)              # [B, M, ...]
    if saliency is None:
        partition, weights = tome_partition(packing.lengths, packing.max_len), None
    else:
        sal = packing.pad(saliency)                                                    # [B, M]
        partition, weights = vtm_partition(sal, packing.lengths), sp * torch.sigmoid(sal)
    x_out, s_out, keep = merge_bipartite(xp, sp, mp, valid, partition, r, weights)
    return x_out[keep], s_out[keep], Packing.from_lengths(keep.sum(1))
