"""Video clips for tokenizer training and evaluation: records from a manifest or a folder of videos and images,
and seeded random clips from them (random start, random crop), deterministic in ``(seed, step)`` with unreadable files
skipped and counted (:class:`~mmtok.data.ingest.BadFileReport`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mmtok.data.ingest import BadFileReport, ClipRecord, load_records
from mmtok.data.media import MediaError, probe, read_video, resize_and_crop, write_gif

__all__ = ["IMAGE_EXTENSIONS", "RandomClips", "VideoClipConfig", "find_records", "read_image",
           "write_comparison_gif"]


@dataclass
class VideoClipConfig:
    """Where clips come from and how they are cut (the ``data`` section of the video tokenizer recipes)."""

    source: str = "outputs/demo/corpus/manifest.jsonl"   # manifest (.jsonl) or media folder
    split: Optional[str] = "train"           # manifest split to train on (ignored for folders)
    sample_split: Optional[str] = "validation"   # split the sample reconstructions come from (None: training data)
    num_frames: int = 17                     # 1 + 4k for the default presets
    crop_frames: Optional[int] = None        # train on random sub-clips of this many frames (1 + 4k; None: all).
                                             # The causal model takes any 1 + 4k frames, and shorter clips put more
                                             # different videos in a batch of the same cost.
    fps: float = 8.0
    size: int = 64                           # crop side
    resize: Optional[int] = None             # shorter side resized to this before the random crop (None: size)
    num_samples: int = 4                     # clips shown in samples/*.gif and scored for sample PSNR
    image_batch_size: int = 0                # > 0: joint image-video training (MAGVIT-v2): every image_every-th
    image_every: int = 2                     # step is a batch of this many single frames from different clips
    max_retries: int = 20                    # other clips tried when one is unreadable
    cache_mb: int = 1024                     # keep decoded short clips (whole file = one sample) in memory up to
                                             # this size: a small corpus is decoded once instead of every step


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file -> uint8 ``[1, size', size', 3]`` (shorter side resized to ``size``, centre-cropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            frame = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(path, f"not a readable image ({e})") from e
    return resize_and_crop(frame[None], size)


def find_records(cfg: VideoClipConfig) -> list[ClipRecord]:
    """Records of a manifest (filtered by ``cfg.split``), or of a folder's videos and images."""
    source = Path(cfg.source)
    if not source.exists():
        raise FileNotFoundError(f"data.source not found: {source}")
    if source.is_file():
        return load_records(source, split=cfg.split)
    records = [r for r in load_records(source) if r.video is not None]
    for p in sorted(source.rglob("*")):
        if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in IMAGE_EXTENSIONS:
            records.append(ClipRecord(id=p.relative_to(source).as_posix(), video=p))
    return records


class RandomClips:
    """Random clips from video files and images, deterministic in ``(seed, step)``.

    ``batch(step, batch_size)`` walks a per-epoch permutation of the records; each clip gets a random start (when the
    file is long enough) and a random crop. Unreadable records are skipped for good, counted in ``report``, and
    replaced by the next record of the permutation.
    """

    def __init__(self, records: list[ClipRecord], cfg: VideoClipConfig, seed: int, rank: int = 0, world: int = 1):
        self.records = [r for r in records if r.video is not None]
        if not self.records:
            raise ValueError(f"no video or image files in {cfg.source}"
                             + (f" (split {cfg.split!r})" if cfg.split else ""))
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        self.bad: set[int] = set()
        self.report = BadFileReport(total=len(self.records))
        self._durations: dict[int, float | None] = {}
        self._decoded: dict[int, np.ndarray] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def _duration(self, i: int) -> float | None:
        if i not in self._durations:
            try:
                info = probe(self.records[i].video)
                self._durations[i] = getattr(info, "duration", None)
            except MediaError:
                self._durations[i] = None
        return self._durations[i]

    def _whole_clip(self, i: int) -> np.ndarray:
        """Record ``i``'s ``cfg.num_frames`` frames, decoded once and kept while the cache has room."""
        frames = self._decoded.get(i)
        if frames is None:
            cfg, record = self.cfg, self.records[i]
            frames = read_video(record.video, fps=cfg.fps, num_frames=cfg.num_frames, size=cfg.resize or cfg.size,
                                start=record.start, pad=True)
            if self._decoded_bytes + frames.nbytes <= cfg.cache_mb * 2 ** 20:
                self._decoded[i] = frames
                self._decoded_bytes += frames.nbytes
        return frames

    def load(self, i: int, rng: np.random.Generator | None, num_frames: int | None = None) -> np.ndarray:
        """Record ``i`` -> uint8 ``[T, size, size, 3]`` (random start and crop with ``rng``, else the first frames
        centre-cropped); ``num_frames`` overrides ``cfg.num_frames`` (1: one frame, for image steps). Raises
        :class:`MediaError`."""
        cfg, record = self.cfg, self.records[i]
        n = num_frames or cfg.num_frames
        resize = cfg.resize or cfg.size
        if record.video.suffix.lower() in IMAGE_EXTENSIONS:
            frames = read_image(record.video, resize)
            frames = np.repeat(frames, n, axis=0)                                     # a still clip
        else:
            start = record.start
            end = record.end if record.end is not None else self._duration(i)
            whole = self._whole_clip(i) if end is not None and end - start <= cfg.num_frames / cfg.fps + 1e-3 \
                else None
            if whole is not None:   # a short record, decoded once: take the sample's frames from memory
                first = int(rng.integers(0, len(whole) - n + 1)) if rng is not None and len(whole) > n else 0
                frames = whole[first:first + n]
            else:
                span = n / cfg.fps
                if rng is not None and end is not None and end - start > span + 1e-3:
                    start = start + float(rng.uniform(0, end - start - span))
                frames = read_video(record.video, fps=cfg.fps, num_frames=n, size=resize, start=start, pad=True)
        h, w = frames.shape[1:3]
        if rng is not None:
            y, x = int(rng.integers(0, h - cfg.size + 1)), int(rng.integers(0, w - cfg.size + 1))
            if num_frames is None and cfg.crop_frames is not None and cfg.crop_frames < len(frames):
                s = int(rng.integers(0, len(frames) - cfg.crop_frames + 1))
                frames = frames[s:s + cfg.crop_frames]
        else:
            y, x = (h - cfg.size) // 2, (w - cfg.size) // 2
        return np.ascontiguousarray(frames[:, y:y + cfg.size, x:x + cfg.size])

    def batch(self, step: int, batch_size: int, num_frames: int | None = None) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` for optimizer step ``step`` (this rank's share of the global batch)."""
        n = len(self.records)
        out = []
        for j in range(batch_size):
            position = (step * batch_size * self.world + self.rank * batch_size + j)
            rng = np.random.default_rng([self.seed, step, self.rank, j, num_frames or 0])
            for attempt in range(self.cfg.max_retries + 1):
                epoch, k = divmod(position + attempt, n)
                i = int(np.random.default_rng([self.seed, epoch]).permutation(n)[k])
                if i in self.bad:
                    continue
                try:
                    out.append(self.load(i, rng, num_frames))
                    break
                except MediaError as e:
                    self.bad.add(i)
                    self.report.add(self.records[i].id, e.path, e.reason)
            else:
                raise RuntimeError(f"{self.cfg.max_retries + 1} unreadable clips in a row; see the bad-file report: "
                                   f"{self.report.summary()}")
        return torch.from_numpy(np.stack(out))


def write_comparison_gif(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor, fps: float) -> None:
    """Originals (top row) above reconstructions (bottom row); uint8 ``[B, T, H, W, 3]`` each."""
    top = torch.cat(list(originals), dim=2)                                              # [T, H, B*W, 3]
    bottom = torch.cat(list(reconstructions), dim=2)
    write_gif(path, torch.cat([top, bottom], dim=1).numpy(), fps)                 # [T, 2H, B*W, 3]
