"""Video clips for tokenizer training and evaluation: records from a manifest or a folder of videos and images,
seeded random clips from them (random start, random crop, and the augmentation real footage needs at small data:
random resized crops, flips, colour jitter, temporal strides), deterministic in ``(seed, step)`` with unreadable
files skipped and counted (:class:`~mmtok.data.ingest.BadFileReport`), and fixed clips for evaluation
(:func:`fixed_clips`: centre crops, spread over a split's sources)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mmtok.data.ingest import BadFileReport, ClipRecord, interleave_sources, load_records
from mmtok.data.media import MediaError, probe, read_video, resize_and_crop, write_gif

__all__ = ["IMAGE_EXTENSIONS", "RandomClips", "VideoClipConfig", "find_records", "fixed_clips", "read_image",
           "write_comparison_gif"]


@dataclass
class VideoClipConfig:
    """Where clips come from and how they are cut (the ``data`` section of the video tokenizer recipes)."""

    source: str = "outputs/demo/corpus/manifest.jsonl"   # manifest (.jsonl) or media folder
    split: Optional[str] = "train"           # manifest split to train on (ignored for folders)
    sample_split: Optional[str] = "validation"   # held-out split: the sample reconstructions and the trainer's val/
                                             # scores come from it (None: training data)
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
    # Augmentation of training clips: all off by default; samples and evaluation clips are never augmented. Each
    # clip draws its own from its random generator (a batch stays a pure function of (seed, step)), the same for
    # all of its frames, so motion is untouched.
    crop_scale: Optional[list[float]] = None  # [low, high]: random resized crop, a square whose side is a uniform
                                             # fraction of the (resized) shorter side, scaled to `size` (zoom);
                                             # evaluation clips are the centre crop at `high`. None: `size` crops
                                             # at the resized scale
    flip: bool = False                       # mirror left-right with probability 1/2
    brightness: float = 0.0                  # multiply the pixels by 1 + U(-b, b)
    contrast: float = 0.0                    # scale deviations from the clip's mean grey by 1 + U(-c, c)
    saturation: float = 0.0                  # scale deviations from each pixel's grey by 1 + U(-s, s)
    hue: float = 0.0                         # rotate the hue by U(-h, h) turns (h <= 0.5)
    frame_steps: list[int] = field(default_factory=lambda: [1])   # temporal stride: each clip takes every k-th
                                             # frame at `fps`, k drawn from the steps the record is long enough
                                             # for (faster motion from the same footage)


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
    file is long enough), a random crop and the augmentation ``cfg`` turns on (temporal stride, resized crop, flip,
    colour jitter; :class:`VideoClipConfig`). Unreadable records are skipped for good, counted in ``report``, and
    replaced by the next record of the permutation. ``load(i, None)`` is the evaluation view: the first frames,
    centre-cropped, never augmented. ``batch`` may be called from several threads at once
    (:class:`mmtok.data.prefetch.StepPrefetcher`): the shared caches and the bad-file record are updated under a lock.
    """

    def __init__(self, records: list[ClipRecord], cfg: VideoClipConfig, seed: int, rank: int = 0, world: int = 1):
        self.records = [r for r in records if r.video is not None]
        if not self.records:
            raise ValueError(f"no video or image files in {cfg.source}"
                             + (f" (split {cfg.split!r})" if cfg.split else ""))
        _check_augmentation(cfg)
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        self.bad: set[int] = set()
        self.report = BadFileReport(total=len(self.records))
        self._durations: dict[int, float | None] = {}
        self._decoded: dict[int, np.ndarray] = {}
        self._decoded_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records)

    def skipped_state(self) -> dict:
        """The unreadable records met so far, for a checkpoint (a consistent copy while other threads read)."""
        with self._lock:
            return {"bad_indices": sorted(self.bad), "bad_files": list(self.report.entries)}

    def restore_skipped(self, state: dict) -> None:
        """Take back what :meth:`skipped_state` returned (on resume)."""
        with self._lock:
            self.bad = set(state.get("bad_indices", []))
            self.report.entries = list(state.get("bad_files", []))

    def _duration(self, i: int) -> float | None:
        if i not in self._durations:
            try:
                info = probe(self.records[i].video)
                self._durations[i] = getattr(info, "duration", None)
            except MediaError:
                self._durations[i] = None
        return self._durations[i]

    def _span(self) -> int:
        """Frames at ``fps`` the longest-stride clip covers: a record no longer than that is decoded whole."""
        return (self.cfg.num_frames - 1) * max(self.cfg.frame_steps) + 1

    def _whole_clip(self, i: int) -> np.ndarray:
        """Record ``i``'s frames at ``fps`` (up to :meth:`_span`, at least ``cfg.num_frames``: a shorter file
        repeats its last frame), decoded once and kept while the cache has room."""
        frames = self._decoded.get(i)
        if frames is None:
            cfg, record = self.cfg, self.records[i]
            stop = record.start + self._span() / cfg.fps
            if record.end is not None:   # longer strides stay inside the record; one clip is read as it always was
                stop = min(stop, max(record.end, record.start + cfg.num_frames / cfg.fps))
            frames = read_video(record.video, fps=cfg.fps, size=cfg.resize or cfg.size, start=record.start, end=stop)
            if len(frames) < cfg.num_frames:
                frames = np.concatenate([frames, np.repeat(frames[-1:], cfg.num_frames - len(frames), axis=0)])
            with self._lock:
                if i not in self._decoded and self._decoded_bytes + frames.nbytes <= cfg.cache_mb * 2 ** 20:
                    self._decoded[i] = frames
                    self._decoded_bytes += frames.nbytes
        return frames

    def _frame_step(self, rng: np.random.Generator | None, n: int, available: float) -> int:
        """The temporal stride of one sample: drawn from ``cfg.frame_steps`` whose clip of ``n`` frames fits in
        ``available`` frames (the smallest step when none does); 1 without ``rng`` or for a single frame."""
        if rng is None or n == 1:
            return 1
        steps = sorted(set(self.cfg.frame_steps))
        fitting = [k for k in steps if (n - 1) * k + 1 <= available + 1e-6] or steps[:1]
        return fitting[0] if len(fitting) == 1 else fitting[int(rng.integers(0, len(fitting)))]

    def load(self, i: int, rng: np.random.Generator | None, num_frames: int | None = None) -> np.ndarray:
        """Record ``i`` -> uint8 ``[T, size, size, 3]`` (random start, crop and augmentation with ``rng``, else the
        first frames centre-cropped); ``num_frames`` overrides ``cfg.num_frames`` (1: one frame, for image steps).
        Raises :class:`MediaError`."""
        cfg, record = self.cfg, self.records[i]
        n = num_frames or cfg.num_frames
        resize = cfg.resize or cfg.size
        if record.video.suffix.lower() in IMAGE_EXTENSIONS:
            frames = read_image(record.video, resize)
            frames = np.repeat(frames, n, axis=0)                                     # a still clip
        else:
            start = record.start
            end = record.end if record.end is not None else self._duration(i)
            whole = self._whole_clip(i) if end is not None and end - start <= self._span() / cfg.fps + 1e-3 \
                else None
            if whole is not None:   # a short record, decoded once: take the sample's frames from memory
                k = self._frame_step(rng, n, len(whole))
                span = (n - 1) * k + 1
                if len(whole) < span:   # no step of frame_steps fits: the smallest, the last frame repeated
                    whole = np.concatenate([whole, np.repeat(whole[-1:], span - len(whole), axis=0)])
                first = int(rng.integers(0, len(whole) - span + 1)) if rng is not None and len(whole) > span else 0
                frames = whole[first:first + span:k]
            else:
                k = self._frame_step(rng, n, (end - start) * cfg.fps if end is not None else np.inf)
                span = (n - 1) * k + 1
                if rng is not None and end is not None and end - start > span / cfg.fps + 1e-3:
                    start = start + float(rng.uniform(0, end - start - span / cfg.fps))
                frames = read_video(record.video, fps=cfg.fps, num_frames=span, size=resize, start=start,
                                    pad=True)[::k]
        h, w = frames.shape[1:3]
        if rng is None:   # the evaluation view: the centre crop (at crop_scale's largest scale)
            side = cfg.size if cfg.crop_scale is None else max(1, int(round(cfg.crop_scale[1] * min(h, w))))
            y, x = (h - side) // 2, (w - side) // 2
            frames = frames[:, y:y + side, x:x + side]
            return np.ascontiguousarray(frames if side == cfg.size else resize_and_crop(frames, cfg.size))
        if cfg.crop_scale is None:
            y, x = int(rng.integers(0, h - cfg.size + 1)), int(rng.integers(0, w - cfg.size + 1))
            side = cfg.size
        else:
            low, high = cfg.crop_scale
            side = max(1, int(round(float(rng.uniform(low, high)) * min(h, w))))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        if num_frames is None and cfg.crop_frames is not None and cfg.crop_frames < len(frames):
            s = int(rng.integers(0, len(frames) - cfg.crop_frames + 1))
            frames = frames[s:s + cfg.crop_frames]
        frames = frames[:, y:y + side, x:x + side]
        if side != cfg.size:
            frames = resize_and_crop(frames, cfg.size)    # the readers' scaler: area down, bilinear up
        if cfg.flip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return np.ascontiguousarray(_colour_jitter(frames, rng, cfg))

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
                    with self._lock:
                        if i not in self.bad:
                            self.bad.add(i)
                            self.report.add(self.records[i].id, e.path, e.reason)
            else:
                raise RuntimeError(f"{self.cfg.max_retries + 1} unreadable clips in a row; see the bad-file report: "
                                   f"{self.report.summary()}")
        return torch.from_numpy(np.stack(out))


def _check_augmentation(cfg: VideoClipConfig) -> None:
    if cfg.crop_scale is not None:
        if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {cfg.crop_scale}")
        if (cfg.resize or cfg.size) * cfg.crop_scale[0] < 1:
            raise ValueError(f"data.crop_scale {cfg.crop_scale} gives crops under one pixel")
    for name in ("brightness", "contrast", "saturation"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"data.{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0 <= cfg.hue <= 0.5:
        raise ValueError(f"data.hue must be in [0, 0.5] (turns of the colour wheel), got {cfg.hue}")
    if not cfg.frame_steps or min(cfg.frame_steps) < 1:
        raise ValueError(f"data.frame_steps must be a non-empty list of strides >= 1, got {cfg.frame_steps}")


# Rec. 601 luma weights, and the RGB -> YIQ transform whose chroma plane (I, Q) a hue rotation turns (grey, with
# I = Q = 0, is left as it is).
_LUMA = np.array([0.299, 0.587, 0.114])
_YIQ = np.array([_LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _colour_jitter(frames: np.ndarray, rng: np.random.Generator, cfg: VideoClipConfig) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter of a uint8 clip ``[T, H, W, 3]`` (amounts in ``cfg``; one
    draw per enabled kind, the same for every frame), in that order, clipped to [0, 255] once at the end. All four
    are linear in RGB, so the clip goes through one 3x3 matrix and an offset."""
    if not (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
        return frames
    matrix = np.eye(3)
    if cfg.brightness:
        matrix = matrix * (1 + rng.uniform(-cfg.brightness, cfg.brightness))
    offset = np.zeros(3)
    if cfg.contrast:
        c = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
        grey = float(frames.reshape(-1, 3).mean(0) @ _LUMA) * matrix[0, 0]    # the mean grey after brightness
        matrix, offset = matrix * c, np.full(3, (1 - c) * grey)
    if cfg.saturation:
        s = 1 + rng.uniform(-cfg.saturation, cfg.saturation)
        matrix = (s * np.eye(3) + (1 - s) * np.outer(np.ones(3), _LUMA)) @ matrix   # grey is a fixed point
    if cfg.hue:
        angle = 2 * np.pi * rng.uniform(-cfg.hue, cfg.hue)
        turn = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        matrix = np.linalg.inv(_YIQ) @ turn @ _YIQ @ matrix                         # grey is a fixed point
    out = frames.astype(np.float32) @ matrix.T.astype(np.float32) + offset.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fixed_clips(records: list[ClipRecord], cfg: VideoClipConfig,
                count: int) -> tuple[torch.Tensor, list[ClipRecord], list[dict]]:
    """Up to ``count`` evaluation clips: the evaluation view of readable records (``RandomClips.load(i, None)``:
    first frames, centre crop, no augmentation), taken in :func:`~mmtok.data.ingest.interleave_sources` order
    (spread over the records' sources).

    Returns uint8 clips ``[N, T, size, size, 3]``, the ``N`` records they come from, and the unreadable records met
    on the way (``id``, ``file``, ``reason``). Raises ``ValueError`` when no record is readable.
    """
    data = RandomClips(interleave_sources(records), cfg, seed=0)
    clips, used, bad = [], [], []
    for i, record in enumerate(data.records):
        if len(clips) == count:
            break
        try:
            clips.append(data.load(i, None))
            used.append(record)
        except MediaError as e:
            bad.append({"id": record.id, "file": str(e.path), "reason": e.reason})
    if not clips:
        raise ValueError(f"no readable clip in {cfg.source}" + (f" (split {cfg.split!r})" if cfg.split else "")
                         + f"; {len(bad)} unreadable")
    return torch.from_numpy(np.stack(clips)), used, bad


def write_comparison_gif(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor, fps: float) -> None:
    """Originals (top row) above reconstructions (bottom row); uint8 ``[B, T, H, W, 3]`` each."""
    top = torch.cat(list(originals), dim=2)                                              # [T, H, B*W, 3]
    bottom = torch.cat(list(reconstructions), dim=2)
    write_gif(path, torch.cat([top, bottom], dim=1).numpy(), fps)                 # [T, 2H, B*W, 3]
