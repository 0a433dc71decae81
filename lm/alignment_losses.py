"""The contrastive losses of the alignment head and the cross-process gathering they need.

* :func:`mil_nce_loss`: MIL-NCE (Miech et al., arXiv 1912.06430), VATT's video-text loss (arXiv 2104.11178), whose
  numerator sums over *all* the positives of a clip (its captions).
* :func:`nce_loss`: NCE over paired rows, VATT's video-audio loss (MIL-NCE with one positive per clip).
* :func:`gather_across_processes`: every rank's embeddings, so the negatives span the global batch;
  :func:`clip_keys` / :func:`first_occurrence` name each row's clip so that a clip seen on several rows (or ranks)
  counts once.

Distributed training: with an initialised ``torch.distributed`` process group, embeddings are all-gathered with
``torch.distributed.nn.functional.all_gather`` (which keeps gradients), so every rank computes the same loss over the
global batch. Its backward sums the ranks' gradients into each rank's own embeddings, and DDP then averages over the
ranks: the parameter gradient equals that of one process on the union batch. Without a process group (or with one
process) gathering is a no-op. No accelerate / deepspeed import here.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["clip_keys", "first_occurrence", "gather_across_processes", "mil_nce_loss", "nce_loss"]


# ------------------------------------------------------------------------------------------------------ losses
def mil_nce_loss(video: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                 logit_scale: torch.Tensor | float) -> torch.Tensor:
    """MIL-NCE (Miech et al., arXiv 1912.06430, Eq. 1), as VATT uses it for video-text.

    For video ``i`` with positive captions ``P(i)``::

        loss_i = -log( sum_{t in P(i)} e^{s(i,t)} / ( sum_t e^{s(i,t)} + sum_{j != i} sum_{t in P(i)} e^{s(j,t)} ) )

    i.e. the numerator sums over the clip's captions, and the negatives are the clip paired with every other caption
    and every other clip paired with the clip's captions. ``s = logit_scale * cos``. With one positive per row
    (``positives`` the identity) it is the symmetric NCE of :func:`nce_loss`.

    Args:
        video: ``[N, D]`` embeddings (normalised here).
        text: ``[M, D]`` embeddings.
        positives: ``[N, M]`` bool, ``positives[i, t]`` = caption ``t`` describes clip ``i``; every clip needs one.
        logit_scale: ``1 / temperature``.

    Returns:
        The mean over clips (a 0-d tensor).
    """
    if video.dim() != 2 or text.dim() != 2 or video.shape[1] != text.shape[1]:
        raise ValueError(f"video and text embeddings must be [N, D] and [M, D] with the same D, got "
                         f"{tuple(video.shape)} and {tuple(text.shape)}")
    if positives.shape != (video.shape[0], text.shape[0]):
        raise ValueError(f"positives must be [num_videos, num_texts] = {(video.shape[0], text.shape[0])}, got "
                         f"{tuple(positives.shape)}")
    if video.shape[0] == 0:
        raise ValueError("MIL-NCE needs at least one clip")
    positives = positives.bool()
    if not positives.any(dim=1).all():
        raise ValueError(f"clip(s) {(~positives.any(dim=1)).nonzero().flatten().tolist()} have no positive caption")
    logits = logit_scale * (F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T)  # [N, M]
    neg_inf = torch.finfo(logits.dtype).min
    numerator = logits.masked_fill(~positives, neg_inf).logsumexp(dim=1)  # [N]
    row = logits.logsumexp(dim=1)  # [N] clip i with every caption
    # other clips j != i with clip i's captions: entry [i, j] = logsumexp_{t in P(i)} s(j, t)
    pos_cols = logits[None, :, :].masked_fill(~positives[:, None, :], neg_inf)  # [N(i), N(j), M] = s(j, t)
    other = pos_cols.logsumexp(dim=2)  # [N(i), N(j)]
    other = other.masked_fill(torch.eye(len(other), dtype=torch.bool, device=other.device), neg_inf)
    denominator = torch.logaddexp(row, other.logsumexp(dim=1))  # [N]
    return (denominator - numerator).mean()


def nce_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """NCE over paired rows (VATT's video-audio loss): row ``i`` of ``a`` and of ``b`` form the positive pair, all
    other rows of the batch the negatives (both directions, one denominator), so ``nce_loss(a, b) == nce_loss(b, a)``.

    Args:
        a, b: ``[N, D]`` embeddings of the same N clips (normalised here).
        logit_scale: ``1 / temperature``.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"NCE pairs row i of both inputs: they must have the same shape [N, D], got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    return mil_nce_loss(a, b, eye, logit_scale)


# ------------------------------------------------------------------------------------------------- gathering
def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_across_processes(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate each tensor's rows over all processes, in rank order, keeping gradients.

    Row counts may differ between ranks (rows are padded to the largest count for the collective and cut after). A
    no-op without an initialised process group or with one process. Every rank must call it with the same number
    of tensors (of the same trailing shapes and dtypes). Floating tensors go through
    ``torch.distributed.nn.functional.all_gather`` (autograd-aware: the backward sums the ranks' gradients into
    each rank's slice); integer tensors (ids) through plain ``all_gather``.
    """
    rank, world = _world()
    if world == 1:
        return list(tensors)
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    device = tensors[0].device
    sizes_local = torch.tensor([t.shape[0] for t in tensors], device=device, dtype=torch.long)  # [T]
    sizes = [torch.zeros_like(sizes_local) for _ in range(world)]
    dist.all_gather(sizes, sizes_local)
    sizes = torch.stack(sizes)  # [world, T]
    out = []
    for k, t in enumerate(tensors):
        n_max = int(sizes[:, k].max())
        if n_max == 0:  # empty on every rank (a decision all ranks share): nothing to exchange
            out.append(t)
            continue
        pad = t.new_zeros((n_max - t.shape[0], *t.shape[1:]))
        padded = torch.cat([t, pad])  # [n_max, ...]
        if t.is_floating_point():
            parts = dist_fn.all_gather(padded)
        else:
            parts = [torch.zeros_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
        out.append(torch.cat([p[: int(sizes[r, k])] for r, p in enumerate(parts)]))
    return out


# ------------------------------------------------------------------------------------------------------ clips
def clip_keys(clip_ids: Sequence[Any] | torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """int64 keys identifying each row's clip (equal keys = same clip); unique per row (and rank) without ids."""
    if clip_ids is None:
        rank, _ = _world()
        return (rank << 40) + torch.arange(batch, device=device) + (1 << 62)  # cannot collide with hashed ids
    if len(clip_ids) != batch:
        raise ValueError(f"clip_ids has {len(clip_ids)} entries for a batch of {batch} sequences")
    if isinstance(clip_ids, torch.Tensor):
        return clip_ids.to(device=device, dtype=torch.long).flatten()
    keys = []
    for c in clip_ids:
        if isinstance(c, (int,)) and not isinstance(c, bool):
            keys.append(int(c))
        else:  # strings (row ids of the shards): a stable 62-bit hash, the same on every rank
            keys.append(int.from_bytes(hashlib.sha256(str(c).encode()).digest()[:8], "little") >> 2)
    return torch.tensor(keys, dtype=torch.long, device=device)


def first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """Bool ``[N]``: True at the first row of each distinct key."""
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=keys.device)
    same = keys[:, None] == keys[None, :]  # [N, N]
    earlier = torch.tril(same, diagonal=-1).any(dim=1)
    return ~earlier
