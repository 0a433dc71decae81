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
merged away) and *sources*, each source is matched to its most similar target and merged into it, and the scorer is
trained through saliency-guided attention. Implemented here: a small MLP per block scores the tokens entering the
block; attention adds ``log sigmoid(saliency)`` to each key's logits (the guided attention, which gives the scorer
its gradient; kept at inference, so training and inference compute the same thing); of each pair of neighbouring
places the more salient token is the target, the other the source (:func:`vtm_partition`; the paper takes the
clip's most salient half, which read 0.3-1.1 points under pairs on the demo corpus: docs/what_was_tried.md); the
``r`` best-matched sources merge into their targets (as ToMe, by key similarity), the average weighing each member
by ``size * sigmoid(saliency)``; sizes still count patches. On the demo corpus's 48-token clips no form of VTM tried
reached ToMe's accuracy at the same token count (fine-tuned: up to one test clip under; trained from scratch: far
under; docs/what_was_tried.md): the paper's gains are on long videos, where most tokens are redundant. For short
clips, prefer ToMe.

Packing: merging is done per clip on a padded view of the packed batch with a validity mask, so padding is never
matched, never merged and never counted; the result is packed again (:mod:`mmtok.encoders.packing`). Clips of equal
length (no RLT) have no padding to track and take a shorter path (:func:`merge_alternate_full`) to the same result.
After a merge each clip holds its unmerged sources, then its targets.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.encoders.packing import Packing

__all__ = ["AlternatePartition", "Partition", "SaliencyScorer", "merge_alternate_full", "merge_bipartite",
           "merge_tokens", "tome_partition", "vtm_partition"]


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
    """VTM's sets for padded rows: of each pair of neighbouring places ``(2i, 2i + 1)`` the more salient token is the
    target, the other the source (a last unpaired token is a source).

    The paper takes the clip's most salient half as targets, which can leave most targets on the moving object and
    background sources few background targets to merge into; choosing within pairs keeps ToMe's even spread of
    targets while the scorer still decides which token of a pair may be merged away. With ties (a uniform scorer)
    this is ToMe's partition.

    ``saliency`` ``[B, M]`` (padding ignored), ``lengths`` ``[B]``; returns ``src_idx [B, M - M//2]``, ``src_ok``,
    ``dst_idx [B, M//2]``, ``dst_ok`` as :func:`tome_partition`.
    """
    b, m = saliency.shape
    places = torch.arange(m, device=saliency.device)
    valid = places[None] < lengths[:, None]                                            # [B, M]
    s = saliency.detach().masked_fill(~valid, float("-inf"))
    even, odd = places[0::2], places[1::2]                                             # [M - M//2], [M//2]
    paired = even[: odd.shape[0]]
    odd_wins = s[:, 1::2] >= s[:, paired]                                              # [B, M//2]
    dst_idx = torch.where(odd_wins, odd, paired)
    src_idx = torch.cat([torch.where(odd_wins, paired, odd), even[odd.shape[0]:].expand(b, -1)], dim=1)
    return Partition(src_idx, valid.gather(1, src_idx), dst_idx, valid.gather(1, dst_idx))


def _merge_into_targets(x_dst: torch.Tensor, w_dst: torch.Tensor, s_dst: torch.Tensor, x_src: torch.Tensor,
                        w_src: torch.Tensor, s_src: torch.Tensor, target: torch.Tensor,
                        ok: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``x_dst [B, Md, C]`` absorb sources ``x_src [B, R, C]`` at places ``target [B, R]``: each target becomes
    the weighted mean (``w_dst``, ``w_src``) of itself and its sources, and sizes (``s_dst``, ``s_src``) add.
    ``ok [B, R]`` marks the sources really merged (``None``: all). Returns ``(x_dst, s_dst)``."""
    c = x_dst.shape[-1]
    hit = torch.ones_like(target, dtype=x_dst.dtype) if ok is None else ok.to(x_dst.dtype)   # [B, R]
    w_src, s_src = w_src * hit, s_src * hit
    num = (x_dst * w_dst[..., None]).scatter_add(1, target[..., None].expand(-1, -1, c), x_src * w_src[..., None])
    den = w_dst.scatter_add(1, target, w_src)                                          # [B, Md]
    received = torch.zeros_like(den).scatter_add_(1, target, hit) > 0                  # untouched targets stay exact
    return torch.where(received[..., None], num / den[..., None], x_dst), s_dst.scatter_add(1, target, s_src)


def merge_alternate_full(x: torch.Tensor, sizes: torch.Tensor, metric: torch.Tensor,
                         r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe on rows that are all real tokens (an unpadded batch of equal-length clips), output built by concatenation.

    The same matching and size-weighted merge as :func:`merge_bipartite` with :func:`tome_partition`, without its
    padding bookkeeping: the result has ``M - min(r, M // 2)`` tokens a row, the unmerged sources (set A, in their
    order) then the targets (set B), as in ToMe's reference code. Order carries no meaning after a merge (positions
    are in the embeddings; attention and pooling are order-free).

    Args:
        x: ``[B, M, C]``; sizes: ``[B, M]``; metric: ``[B, M, d]`` (the attention keys); r: merges per row.

    Returns:
        ``(x, sizes)`` ``[B, M - r', C]``, ``[B, M - r']``.
    """
    c = x.shape[-1]
    r = min(r, x.shape[1] // 2)
    with torch.no_grad():
        unit = F.normalize(metric.float(), dim=-1)
        best, match = (unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)).max(dim=-1)    # [B, Ms]
        order = best.argsort(dim=1, descending=True)
        top, rest = order[:, :r], order[:, r:].sort(dim=1).values                      # [B, r], [B, Ms - r]
        target = match.gather(1, top)                                                  # [B, r]
    xa, sa, xb, sb = x[:, 0::2], sizes[:, 0::2], x[:, 1::2], sizes[:, 1::2]
    s_top = sa.gather(1, top)
    x_dst, s_dst = _merge_into_targets(xb, sb.to(x.dtype), sb, xa.gather(1, top[..., None].expand(-1, -1, c)),
                                       s_top.to(x.dtype), s_top, target)
    return (torch.cat([xa.gather(1, rest[..., None].expand(-1, -1, c)), x_dst], dim=1),
            torch.cat([sa.gather(1, rest), s_dst], dim=1))


def merge_bipartite(x: torch.Tensor, sizes: torch.Tensor, metric: torch.Tensor, partition: Partition, r: int,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bipartite soft matching and merging on padded rows (ToMe's core, Sec. 3 of arXiv 2210.09461).

    Each source is matched to its most similar target (cosine similarity of ``metric``); per row, the
    ``min(r, #sources, #targets)`` best-matched sources are merged into their targets as the ``weights``-weighted
    average (``sizes`` when not given); sizes add up.

    Args:
        x: tokens ``[B, M, C]``; sizes: ``[B, M]``; metric: ``[B, M, d]`` (ToMe: attention keys);
        partition: ``(src_idx, src_ok, dst_idx, dst_ok)`` from
        :func:`tome_partition` or :func:`vtm_partition`; r: merges per row; weights: ``[B, M]`` merge weights.

    Returns:
        ``(x, sizes, keep)``: rows laid out as the sources then the targets, ``[B, Ms + Md, ...]`` (targets that
        received merges updated), and ``keep`` ``[B, Ms + Md]``, the real tokens that remain (merged sources
        removed). ``x[keep]`` is the merged batch, packed: each clip's unmerged sources in partition order, then its
        targets (order carries no meaning after a merge: positions are in the embeddings, and attention and pooling
        are order-free).
    """
    src_idx, src_ok, dst_idx, dst_ok = partition
    c = x.shape[-1]
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
        keep = torch.cat([src_ok & ~merged, dst_ok], dim=1)                            # [B, Ms + Md]
    # Only the targets change; the R merged sources are gathered from the sources.
    w = (sizes if weights is None else weights).to(x.dtype)                            # [B, M]
    x_src, w_src, s_src = take(x, src_idx, 0), take(w, src_idx, 0), take(sizes, src_idx, 0)   # [B, Ms, ...]
    x_dst, s_dst = _merge_into_targets(take(x, dst_idx, 1), take(w, dst_idx, 1), take(sizes, dst_idx, 1),
                                       x_src.gather(1, top[..., None].expand(-1, -1, c)), w_src.gather(1, top),
                                       s_src.gather(1, top), target, top_ok)
    return torch.cat([x_src, x_dst], dim=1), torch.cat([s_src, s_dst], dim=1), keep


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
    xp, sp, mp = packing.pad(x), packing.pad(sizes), packing.pad(metric)              # [B, M, ...]
    if saliency is None and packing.is_uniform:  # no padding to track: the cheaper, concatenating form
        x_out, s_out = merge_alternate_full(xp, sp, mp, r)                             # [B, M', C], [B, M']
        return x_out.flatten(0, 1), s_out.flatten(), Packing.uniform(*s_out.shape, x.device)
    if saliency is None:
        partition, weights = tome_partition(packing.lengths, packing.max_len), None
    else:
        sal = packing.pad(saliency)                                                    # [B, M]
        partition, weights = vtm_partition(sal, packing.lengths), sp * torch.sigmoid(sal)
    x_out, s_out, keep = merge_bipartite(xp, sp, mp, partition, r, weights)
    return x_out[keep], s_out[keep], Packing.from_lengths(keep.sum(1))
