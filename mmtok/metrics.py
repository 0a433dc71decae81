"""Reconstruction, retrieval and uncertainty metrics shared by the evaluations (the one implementation of each).

Video: :func:`psnr` and :func:`ssim` on images or clips whose pixel values span ``value_range`` (``(0, 255)`` for
uint8 frames, ``(-1, 1)`` for float video, see :mod:`mmtok.frames`). Audio: :func:`si_snr`. Retrieval:
:func:`retrieval_metrics` (R@k and median rank from a similarity matrix). Uncertainty: :func:`wilson_interval` (a
proportion) and :func:`mean_interval` (a mean). Arguments go ``(estimate, target)`` (torchmetrics' ``(preds,
target)``); all take and return tensors (or floats), compute in float64 and never need a GPU.

Reporting: :class:`Metric` (one evaluated quantity beside its baseline, its interval and the probe's ceiling), the
record every scoring function returns (the datasets' under :mod:`mmtok.datasets`, and the LM's in
:mod:`lm.evaluation`), and :func:`metrics_table` / :func:`format_value` / :func:`format_interval`, how reports and the
demo page show it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11   # side of SSIM's Gaussian window (Wang et al. 2004; torchmetrics' default), shrunk for smaller images
SSIM_SIGMA = 1.5


def psnr(estimate: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0), *,
         per_item: bool = False, max_db: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)`` with ``peak = value_range[1] - value_range[0]``
    (``inf`` for identical inputs).

    Args:
        per_item: one value per item of the first dimension (``[B]``, MSE over the rest) instead of one over all.
        max_db: cap the result (identical inputs then score ``max_db``, which keeps a mean over clips finite).
    """
    _check_same_shape(estimate, target, "psnr")
    squared = (estimate.double() - target.double()).pow(2)
    mse = squared.flatten(1).mean(1) if per_item else squared.mean()
    db = 10 * torch.log10((value_range[1] - value_range[0]) ** 2 / mse)
    return (db if max_db is None else db.clamp_max(max_db)).float()


def ssim(estimate: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0), *,
         per_item: bool = False) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of images ``[..., C, H, W]``: a :data:`SSIM_WINDOW`-pixel
    Gaussian window (sigma :data:`SSIM_SIGMA`), each channel of each image (leading dimensions: batch, time) on its
    own, averaged.

    SSIM's luminance term is not shift-invariant: pixel values are measured from ``value_range[0]`` (black), and the
    stabilising constants scale with the range's width.

    Args:
        per_item: one value per item of the first dimension (``[B]``) instead of one over all.
    """
    _check_same_shape(estimate, target, "ssim")
    if target.dim() < 3:
        raise ValueError(f"ssim expects [..., C, H, W], got shape {tuple(target.shape)}")
    h, w = target.shape[-2:]
    low, peak = value_range[0], value_range[1] - value_range[0]
    x = target.reshape(-1, 1, h, w).double() - low
    y = estimate.reshape(-1, 1, h, w).double() - low
    window = min(SSIM_WINDOW, h, w)
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]                  # [1, 1, k, k]

    def blur(t):
        return F.conv2d(t, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return (ssim_map.reshape(target.shape[0], -1).mean(1) if per_item else ssim_map.mean()).float()


def si_snr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio in dB of each signal ``[..., N]`` (Le Roux et al. 2019): the energy of
    ``estimate``'s projection onto ``target`` over the energy of the rest, after removing both means.

    The value depends only on the angle between the two signals, except where ``eps`` matters: it regularises the
    target's energy (the projection) and the residual's, so a near-silent target cannot be matched.
    """
    _check_same_shape(estimate, target, "si_snr")
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = target.double() - target.double().mean(-1, keepdim=True)
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


def _check_same_shape(estimate: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if estimate.shape != target.shape:
        raise ValueError(f"{name}: estimate and target shapes differ: {tuple(estimate.shape)} vs "
                         f"{tuple(target.shape)}")


# --------------------------------------------------------------------------------------------------- reporting
@dataclass
class Metric:
    """One evaluated quantity beside its baseline.

    Attributes:
        name: dotted name, e.g. ``t2v/digit_accuracy``.
        value: the model's score (``nan`` when nothing was evaluated).
        baseline: the chance / trivial score; ``baseline_name`` says which (e.g. ``"chance (1/10)"``).
        higher_is_better: direction of the metric.
        n: number of samples behind ``value``.
        reference: the probe's score on the ground truth itself (its ceiling), when meaningful.
        unit: ``""`` (fractions), ``"dB"``, ``"px"``, ``"nats/token"``.
        interval: the 95% confidence interval of ``value`` (Wilson for accuracies, normal for means), when known.
    """

    name: str
    value: float
    baseline: float
    baseline_name: str
    higher_is_better: bool = True
    n: int = 0
    reference: float | None = None
    unit: str = ""
    interval: tuple[float, float] | None = None

    @property
    def beats_baseline(self) -> bool | None:
        """Whether ``value`` is better than ``baseline`` (``None`` when either is not finite)."""
        if not (math.isfinite(self.value) and math.isfinite(self.baseline)):
            return None
        return self.value > self.baseline if self.higher_is_better else self.value < self.baseline

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["beats_baseline"] = self.beats_baseline
        if self.interval is not None:
            d["interval"] = [_finite_or_none(float(v)) for v in self.interval]
        return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in d.items()}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def format_value(metric: dict[str, Any], value: float | None) -> str:
    """A metric's value as the tables show it: accuracies in percent, others with their unit."""
    if value is None:
        return "n/a"
    if metric["name"].endswith("accuracy"):
        return f"{100 * value:.1f}%"
    unit = metric.get("unit", "")
    return f"{value:.3g}{(' ' + unit) if unit else ''}"


def format_interval(metric: dict[str, Any]) -> str:
    """``[low, high]`` of a metric dict's ``interval`` (``"n/a"`` without one)."""
    interval = metric.get("interval")
    if not interval or any(v is None for v in interval):
        return "n/a"
    if metric["name"].endswith("accuracy"):
        return f"[{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]%"
    return f"[{interval[0]:.3g}, {interval[1]:.3g}]"


def metrics_table(metrics: Sequence[Metric | dict[str, Any]]) -> str:
    """A markdown table: metric, model, baseline (which), probe on ground truth, n, better than baseline."""
    lines = ["| metric | model | 95% interval | baseline | probe on ground truth | n | beats baseline |",
             "|---|---|---|---|---|---|---|"]
    for m in metrics:
        d = m.to_dict() if isinstance(m, Metric) else m
        lines.append(f"| {d['name']} {'↑' if d['higher_is_better'] else '↓'} | {format_value(d, d['value'])} | "
                     f"{format_interval(d)} | {format_value(d, d['baseline'])} ({d['baseline_name']}) | "
                     f"{format_value(d, d.get('reference'))} | {d['n']} | "
                     f"{ {True: 'yes', False: '**no**', None: 'n/a'}[d.get('beats_baseline')]} |")
    return "\n".join(lines) + "\n"
