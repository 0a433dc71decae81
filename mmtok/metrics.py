"""Reconstruction and retrieval metrics shared by the evaluation recipes.

Video: :func:`psnr`, :func:`ssim` on frames in ``[0, 1]``. Audio: :func:`si_snr`. Retrieval: :func:`retrieval_metrics`
(R@k and median rank from a similarity matrix). Uncertainty: :func:`wilson_interval` (a proportion) and
:func:`mean_interval` (a mean). All take and return tensors (or floats) and never need a GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(reference: torch.Tensor, estimate: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB over all elements (``inf`` for identical inputs)."""
    _check_same_shape(reference, estimate, "psnr")
    mse = F.mse_loss(estimate.double(), reference.double())
    if mse == 0:
        return torch.tensor(math.inf)
    return (10 * torch.log10(max_value ** 2 / mse)).float()


def ssim(reference: torch.Tensor, estimate: torch.Tensor, max_value: float = 1.0, window: int = 7,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of images ``[..., C, H, W]`` with a Gaussian window.

    Leading dimensions (batch, time) are flattened; channels are compared separately and averaged.
    """
    _check_same_shape(reference, estimate, "ssim")
    if reference.dim() < 3:
        raise ValueError(f"ssim expects [..., C, H, W], got shape {tuple(reference.shape)}")
    c, h, w = reference.shape[-3:]
    window = min(window, h, w)
    x = reference.reshape(-1, 1, h, w).double()
    y = estimate.reshape(-1, 1, h, w).double()
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]                  # [1, 1, k, k]

    def blur(t):
        return F.conv2d(t, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().float()


def si_snr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio in dB per signal ``[..., N]`` (Le Roux et al. 2019)."""
    _check_same_shape(reference, estimate, "si_snr")
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    projection = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    noise = est - projection
    ratio = projection.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio + eps)).float()


def retrieval_metrics(similarity: torch.Tensor, positives: torch.Tensor | None = None,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and median rank for queries (rows) against candidates (columns).

    Args:
        similarity: ``[Q, C]`` scores, higher is more similar.
        positives: ``[Q, C]`` boolean matrix of correct candidates; defaults to the diagonal (query ``i`` matches
            candidate ``i``). With several positives the best-ranked one counts.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [queries, candidates], got shape {tuple(similarity.shape)}")
    q, c = similarity.shape
    if positives is None:
        if q != c:
            raise ValueError(f"a non-square similarity ({q}x{c}) needs an explicit positives matrix")
        positives = torch.eye(q, dtype=torch.bool)
    if positives.shape != similarity.shape or not positives.any(dim=1).all():
        raise ValueError("positives must match similarity's shape and give every query at least one positive")
    order = similarity.argsort(dim=1, descending=True)                     # [Q, C] candidate ids by score
    hits = positives.gather(1, order)                                      # [Q, C] is the r-th candidate right?
    first_hit = hits.float().argmax(dim=1) + 1                             # 1-based rank of the best positive
    out = {f"R@{k}": float((first_hit <= k).float().mean()) for k in ks}
    out["median_rank"] = float(first_hit.float().median())
    return out


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% for ``z = 1.96``).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n successes, which is where
    a small evaluation's accuracies often land. ``n = 0`` gives ``(nan, nan)``.
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval ``mean +- z * sd / sqrt(n)`` of a sample mean (``(nan, nan)`` below 2 values)."""
    x = torch.as_tensor(list(values), dtype=torch.float64)
    x = x[torch.isfinite(x)]
    if x.numel() < 2:
        return float("nan"), float("nan")
    half = z * float(x.std(unbiased=True)) / math.sqrt(x.numel())
    m = float(x.mean())
    return m - half, m + half


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: reference and estimate shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
