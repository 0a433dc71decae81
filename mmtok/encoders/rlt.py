"""Run-length tokenization (RLT, Choudhury et al., arXiv 2411.05222).

Video is full of tubelets that do not change from one time step to the next (a static background, a still camera).
RLT finds them before the encoder, from the pixels alone, and drops them: a tubelet whose mean absolute difference
from the tubelet at the same place one time step earlier is below a threshold is a repeat. The first time step is
always kept. Each kept tubelet then stands for itself and the run of repeats that follows it at its place; that run
length is the token's size, and a learned run-length embedding tells the encoder about it. The clips of a batch keep
different numbers of tokens, so the batch is packed (:mod:`mmtok.encoders.packing`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RunLengthEmbedding", "rlt_keep_mask", "run_lengths"]


def rlt_keep_mask(tubelets: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which tubelets RLT keeps.

    Args:
        tubelets: pixels per tubelet ``[B, T', S, D]`` (``S`` spatial places, ``D`` pixel values each).
        threshold: a tubelet whose mean absolute difference from the tubelet at the same place at ``t - 1`` is
            below this is dropped.

    Returns:
        ``[B, T', S]`` bool; every tubelet of the first time step is kept.
    """
    change = (tubelets[:, 1:] - tubelets[:, :-1]).abs().mean(-1)                     # [B, T'-1, S]
    first = torch.ones_like(tubelets[:, :1, :, 0], dtype=torch.bool)                   # [B, 1, S]
    return torch.cat([first, change >= threshold], dim=1)                             # [B, T', S]


def run_lengths(keep: torch.Tensor) -> torch.Tensor:
    """How many time steps each kept tubelet stands for: itself and the dropped repeats after it at its place.

    ``keep`` ``[B, T', S]`` bool (time step 0 all kept) -> ``[B, T', S]`` int64, 0 where dropped. The run lengths at
    each place sum to ``T'``.
    """
    t = keep.shape[1]
    steps = torch.arange(t, device=keep.device).view(1, t, 1)
    kept_at = torch.where(keep, steps, torch.full_like(steps, t).expand_as(keep))     # [B, T', S]
    # the first kept step at or after each step (reverse running minimum), then the one strictly after it
    next_kept = kept_at.flip(1).cummin(1).values.flip(1)                              # [B, T', S]
    after = torch.cat([next_kept[:, 1:], torch.full_like(next_kept[:, :1], t)], dim=1)
    return torch.where(keep, after - steps, torch.zeros_like(after))


class RunLengthEmbedding(nn.Embedding):
    """A learned vector per run length ``1 .. max_run`` (longer runs share the last), added to kept tokens.

    It starts at zero (the model's init sets it), so turning RLT on for a model trained without it changes nothing
    but the token set: the paper's training-free RLT.
    """

    def __init__(self, max_run: int, dim: int):
        super().__init__(int(max_run), dim)

    def forward(self, runs: torch.Tensor) -> torch.Tensor:
        """Run lengths ``[...]`` (>= 1) -> ``[..., dim]``."""
        return super().forward(runs.clamp(1, self.num_embeddings) - 1)
