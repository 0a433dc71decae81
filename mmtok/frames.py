"""The one convention for video frames in mmtok, and the only conversions between its two forms.

- **uint8 frames**, channel-last ``[..., T, H, W, 3]`` in ``0..255``: what media files decode to and are written from
  (:mod:`mmtok.data.media`), what the probes and the evaluation read.
- **float video**, channel-first ``[..., 3, T, H, W]`` in ``[-1, 1]``: what the video tokenizer encodes and decodes
  and what the LM's generator returns.

Float frames always mean ``[-1, 1]``; no mmtok function takes or returns ``[0, 1]`` frames. :func:`from_uint8` and
:func:`to_uint8` are the two conversions; a pixel survives the round trip exactly.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["from_uint8", "to_uint8"]


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[..., T, H, W, C]`` -> float32 video ``[..., C, T, H, W]`` in [-1, 1] (``0 -> -1``,
    ``255 -> 1``)."""
    if frames.dtype != torch.uint8 or frames.dim() < 4:
        raise ValueError(f"expected uint8 frames [..., T, H, W, C], got shape {tuple(frames.shape)} {frames.dtype}")
    return frames.movedim(-1, -4).float().div(127.5).sub(1.0)


def to_uint8(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float video ``[..., 3, T, H, W]`` in [-1, 1] (clamped, rounded) -> uint8 frames ``[..., T, H, W, 3]`` on the
    CPU. uint8 input is taken to be frames already and returned as it is; NumPy arrays are accepted."""
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if video.dtype == torch.uint8:
        return video.cpu()
    if not video.is_floating_point() or video.dim() < 4 or video.shape[-4] != 3:
        raise ValueError(f"expected float video [..., 3, T, H, W] in [-1, 1] or uint8 frames [..., T, H, W, 3], got "
                         f"shape {tuple(video.shape)} {video.dtype}")
    return ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-4, -1).cpu()
