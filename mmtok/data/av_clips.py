"""Whole audio-visual clips held in memory, with their captions: what contrastive training (VATT,
``recipes/train_vatt.py``) and its evaluation read.

Each record of a manifest (or a folder) is decoded once (:func:`mmtok.data.ingest.iter_clips`: ``num_frames`` frames at
``fps`` from the record's start, shorter side resized and centre-cropped to ``size``, the audio of the same span at
``sample_rate``) and stacked: short clips such as the Moving-Digits corpus's fit in memory many thousand times over
(5 frames of 32x32 and 1.25 s of 16 kHz audio are 95 KB a clip). Records that cannot be decoded, or that lack the
audio asked for, are skipped and listed in :attr:`AVClips.report`. Batches are drawn by :func:`epoch_batch`, a pure
function of ``(seed, step)``, so a resumed run sees the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mmtok.data.ingest import BadFileReport, ClipConfig, iter_clips, load_records
from mmtok.frames import from_uint8

__all__ = ["AVClips", "epoch_batch"]


@dataclass
class AVClips:
    """Decoded clips: ``frames`` uint8 ``[N, T, H, W, 3]``, ``audio`` float32 ``[N, samples]`` (``None`` when no audio
    was asked for), each clip's ``captions`` (possibly none) and ``ids``; ``report`` lists the skipped records."""

    ids: list[str]
    frames: torch.Tensor
    audio: torch.Tensor | None
    captions: list[list[str]]
    report: BadFileReport = field(default_factory=BadFileReport)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.frames.shape[0] != n or len(self.captions) != n or (self.audio is not None
                                                                      and self.audio.shape[0] != n):
            raise ValueError(f"AVClips fields disagree on the number of clips: {n} ids, {self.frames.shape[0]} "
                             f"frames, {len(self.captions)} caption lists, "
                             f"{None if self.audio is None else self.audio.shape[0]} waveforms")

    @classmethod
    def load(cls, source: str | os.PathLike, *, cfg: ClipConfig, split: str | Sequence[str] | None = None,
             limit: int | None = None, num_workers: int = 0, progress: bool | None = None) -> "AVClips":
        """Decode the video records of a manifest (``split`` of it) or folder, at most ``limit`` of them.

        ``cfg`` must fix ``num_frames``, ``fps`` and ``size`` (clips are stacked); ``cfg.sample_rate=None`` reads
        no audio. Every clip's audio is cut or zero-padded to ``num_frames / fps`` seconds.
        """
        if cfg.num_frames is None or cfg.fps is None or cfg.size is None:
            raise ValueError("AVClips stacks clips of one shape: the ClipConfig needs num_frames, fps and size")
        records = [r for r in load_records(source, split=split) if r.video is not None]
        if limit is not None:
            records = records[:limit]
        if not records:
            raise ValueError(f"no video records in {source}" + (f" (split {split!r})" if split else ""))
        report = BadFileReport()
        samples = round(cfg.num_frames / cfg.fps * cfg.sample_rate) if cfg.sample_rate else 0
        ids, frames, audio, captions = [], [], [], []
        for clip in iter_clips(records, cfg, num_workers=num_workers, report=report, progress=progress):
            if cfg.sample_rate and clip.audio is None:
                report.add(clip.id, None, "no audio track")
                continue
            ids.append(clip.id)
            frames.append(clip.frames)
            captions.append(list(clip.captions))
            if cfg.sample_rate:
                wave = clip.audio[:samples]
                audio.append(np.pad(wave, (0, samples - len(wave))))
        if not ids:
            raise ValueError(f"no decodable clips in {source}: {report.summary()}")
        return cls(ids, torch.from_numpy(np.stack(frames)),
                   torch.from_numpy(np.stack(audio)).float() if cfg.sample_rate else None, captions, report)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> "AVClips":
        """The clips at ``indices``, in that order (the skip report stays with the original)."""
        idx = list(indices)
        return AVClips([self.ids[i] for i in idx], self.frames[idx],
                       None if self.audio is None else self.audio[idx], [self.captions[i] for i in idx])

    def video(self, indices: Sequence[int] | slice) -> torch.Tensor:
        """Float video ``[B, 3, T, H, W]`` in [-1, 1] of the clips at ``indices``."""
        return from_uint8(self.frames[indices])


def epoch_batch(num_items: int, step: int, batch_size: int, *, seed: int, rank: int = 0,
                world: int = 1) -> list[int]:
    """The items of optimizer step ``step`` on process ``rank`` of ``world``: consecutive places in a per-epoch
    random permutation (``(seed, epoch)`` draws it), so every item is seen once an epoch and the batch is a pure
    function of ``(seed, step, rank)``."""
    if num_items < 1 or batch_size < 1:
        raise ValueError(f"need num_items >= 1 and batch_size >= 1, got {num_items} and {batch_size}")
    out = []
    permutations: dict[int, np.ndarray] = {}
    for j in range(batch_size):
        epoch, k = divmod(step * batch_size * world + rank * batch_size + j, num_items)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(num_items)
        out.append(int(permutations[epoch][k]))
    return out
