"""Spatio-temporal token selection (STTS, Wang et al., ECCV 2022, arXiv 2111.11591).

A light scorer ranks the frames of a clip and keeps the top ``K_t`` (temporal stage), then ranks the regions
(anchors) of every kept frame and keeps the top ``K_s`` (spatial stage); the encoder's later blocks see only the kept
tokens. Choosing the top K is not differentiable, so in training STTS uses the perturbed maximum (Berthet et al.
2020, arXiv 2002.08676; as in Cordonnier et al.'s differentiable patch selection, arXiv 2104.03059): the hard top-K
indicator of the scores plus Gaussian noise, averaged over samples, is a smooth function of the scores whose
gradient is estimated from the same samples. Each kept slot is then the indicator-weighted mix of the items (in
training, a soft mix; its weights sum to one). At inference the hard top-K gathers the items themselves.

Implemented here: the scorer (:class:`TokenScorer`) is an MLP on each item's pooled feature concatenated with the
mean of all items' features (local + global context, as STTS's scorer); a frame's feature is the mean of its
tokens, a region's the mean of its ``a x a`` tokens, regions being the non-overlapping ``a x a`` windows of the
token grid. Scores are min-max normalised to [0, 1] per clip before the noise, so ``sigma`` is on a fixed scale.
Kept frames and regions stay in their original order. The gradient estimator is the exact one of Berthet et al.
(``E[<g, Y(s + sigma Z)> Z] / sigma``), which costs one product per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatioTemporalSelector", "TokenScorer", "hard_topk", "perturbed_topk", "select_topk"]


class _PerturbedTopK(torch.autograd.Function):
    """``E[onehot(topk(s + sigma Z))]`` ``[G, k, n]`` (the indices of each sample sorted ascending) with the
    perturbed-maximum gradient ``d/ds = E[<g, Y> Z] / sigma``."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, num_samples: int, sigma: float) -> torch.Tensor:
        g, n = scores.shape
        noise = torch.randn(g, num_samples, n, device=scores.device, dtype=scores.dtype)   # [G, S, n]
        idx = (scores[:, None, :] + sigma * noise).topk(k, dim=-1).indices.sort(dim=-1).values  # [G, S, k]
        ctx.save_for_backward(noise, idx)
        ctx.n, ctx.sigma = n, sigma
        return F.one_hot(idx, n).to(scores.dtype).mean(dim=1)                               # [G, k, n]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        noise, idx = ctx.saved_tensors                                                     # [G, S, n], [G, S, k]
        # <g, Y_s> for each sample: Y_s is one-hot, so it picks grad_out[k, idx[s, k]] and sums over k
        picked = grad_out[:, None].expand(-1, idx.shape[1], -1, -1).gather(-1, idx[..., None]).squeeze(-1)  # [G,S,k]
        inner = picked.sum(-1)                                                             # [G, S]
        grad = (inner[..., None] * noise).mean(dim=1) / ctx.sigma                          # [G, n]
        return grad, None, None, None


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int, sigma: float) -> torch.Tensor:
    """Differentiable top-``k`` indicators ``[G, k, n]`` of ``scores`` ``[G, n]`` (perturbed maximum).

    Row ``j`` of a clip's ``[k, n]`` block is the probability, under the noise, that item ``i`` is the ``j``-th
    selected (in ascending item order); each row sums to one.
    """
    return _PerturbedTopK.apply(scores, k, num_samples, sigma)


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[G, k]`` of the ``k`` highest ``scores`` ``[G, n]``, in ascending item order."""
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def select_topk(items: torch.Tensor, scores: torch.Tensor, k: int, *, training: bool, num_samples: int,
                sigma: float) -> torch.Tensor:
    """Keep ``k`` of the items ``[G, n, D]`` by ``scores`` ``[G, n]`` -> ``[G, k, D]``: soft (perturbed maximum,
    gradients reach the scores) when ``training``, the items themselves otherwise."""
    if not training:
        idx = hard_topk(scores, k)                                                         # [G, k]
        return items.gather(1, idx[..., None].expand(-1, -1, items.shape[-1]))
    lo, hi = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    normed = (scores - lo) / (hi - lo + 1e-6)                                              # [G, n] in [0, 1]
    indicators = perturbed_topk(normed.float(), k, num_samples, sigma).to(items.dtype)    # [G, k, n]
    return indicators @ items                                                              # [G, k, D]


class TokenScorer(nn.Module):
    """STTS's light scorer: ``[G, n, C] -> [G, n]``, an MLP on each item's feature and the mean feature of all."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        hidden = max(8, dim // 4)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.local = nn.Linear(dim, hidden)
        self.fc1 = nn.Linear(2 * hidden, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.local(self.norm(x)))                                               # [G, n, h]
        context = h.mean(dim=1, keepdim=True).expand_as(h)                                 # [G, n, h]
        return self.fc2(F.gelu(self.fc1(torch.cat([h, context], dim=-1)))).squeeze(-1)     # [G, n]


class SpatioTemporalSelector(nn.Module):
    """The two STTS stages on a clip's token grid ``[B, T, H, W, C]``.

    Args:
        dim: token width.
        frames, regions: build the temporal / spatial scorer.
        region_size: region side ``a`` in tokens.
        num_samples, sigma: the perturbed maximum's samples and noise (training only).
    """

    def __init__(self, dim: int, *, frames: bool, regions: bool, region_size: int, num_samples: int, sigma: float,
                 eps: float = 1e-6):
        super().__init__()
        self.frame_scorer = TokenScorer(dim, eps) if frames else None
        self.region_scorer = TokenScorer(dim, eps) if regions else None
        self.region_size = int(region_size)
        self.num_samples, self.sigma = int(num_samples), float(sigma)

    def forward(self, x: torch.Tensor, keep_frames: int | None, keep_regions: int | None) -> torch.Tensor:
        """``x`` ``[B, T, H, W, C]`` -> the kept tokens ``[B, K_t, K_s * a * a, C]`` (frame stage off: ``K_t = T``;
        region stage off: all ``H * W`` tokens of each kept frame, in grid order)."""
        b, t, h, w, c = x.shape
        opts = dict(training=self.training, num_samples=self.num_samples, sigma=self.sigma)
        if keep_frames is not None:
            scores = self.frame_scorer(x.mean(dim=(2, 3)))                                 # [B, T]
            x = select_topk(x.reshape(b, t, h * w * c), scores, keep_frames, **opts).view(b, keep_frames, h, w, c)
            t = keep_frames
        if keep_regions is None:
            return x.reshape(b, t, h * w, c)
        a = self.region_size
        if h % a or w % a:
            raise ValueError(f"stts_region_size={a} must divide the token grid {h}x{w}")
        regions = (x.reshape(b * t, h // a, a, w // a, a, c).permute(0, 1, 3, 2, 4, 5)
                   .reshape(b * t, (h // a) * (w // a), a * a, c))                          # [B*T, R, a*a, C]
        scores = self.region_scorer(regions.mean(dim=2))                                   # [B*T, R]
        kept = select_topk(regions.flatten(2), scores, keep_regions, **opts)               # [B*T, K_s, a*a*C]
        return kept.view(b, t, keep_regions * a * a, c)
