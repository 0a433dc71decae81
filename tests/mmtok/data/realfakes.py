"""A tiny corpus in the real-media format (``mmtok.datasets.real_media.build_corpus`` over generated "footage" and
"recordings"), for tests of what trains and scores on real media: seconds to build, split by source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmtok.data.media import write_audio, write_video
from mmtok.datasets.real_media import CorpusSettings, build_corpus, folder_sources

VIDEO_SOURCES = {"street": "train", "park": "train", "harbour": "validation", "market": "validation"}
AUDIO_SOURCES = {"voice": "train", "song": "train", "hum": "validation"}
SETTINGS = CorpusSettings(num_frames=17, fps=8.0, size=32, crf=10, sample_rate=16000, segment_seconds=1.0,
                          min_segment_seconds=0.5, max_clips_per_source=0)


def footage(seed: int, frames: int = 34, height: int = 40, width: int = 48) -> np.ndarray:
    """A smooth random colour texture panning one pixel a frame, with a bright square crossing it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 7, 3)).astype(np.float64)
    big_h, big_w = height + frames, width + frames
    yy = np.linspace(0, 5, big_h)[:, None]
    xx = np.linspace(0, 6, big_w)[None, :]
    y0, x0 = np.floor(yy).astype(int).clip(0, 4), np.floor(xx).astype(int).clip(0, 5)
    fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
    texture = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
               + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
    out = np.empty((frames, height, width, 3), np.uint8)
    colour = rng.integers(150, 256, 3)
    for t in range(frames):
        frame = texture[t:t + height, t:t + width].copy()
        y, x = (3 + t) % (height - 8), (5 + 2 * t) % (width - 8)
        frame[y:y + 8, x:x + 8] = colour
        out[t] = frame.round().clip(0, 255)
    return out


def recording(seed: int, seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """A gliding harmonic tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 50 * seed
    wave = sum(0.15 / k * np.sin(2 * np.pi * k * (f0 * t + 30 * t ** 2)) for k in (1, 2, 3))
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def tiny_real_corpus(root: Path) -> Path:
    """Four video sources (34 frames at 8 fps: two 17-frame clips each, 32x32) and three recordings (two 1-second
    segments each, 16 kHz), half of each held out by source; returns the corpus folder (``video.jsonl``,
    ``audio.jsonl``)."""
    media = root / "media"
    for seed, name in enumerate(VIDEO_SOURCES):
        write_video(media / f"{name}.mp4", footage(seed), 8, crf=0)
    for seed, name in enumerate(AUDIO_SOURCES):
        write_audio(media / f"{name}.wav", recording(seed), 16000)
    held_out = [f"{n}.mp4" for n, s in VIDEO_SOURCES.items() if s == "validation"] + \
        [f"{n}.wav" for n, s in AUDIO_SOURCES.items() if s == "validation"]
    sources = folder_sources(media, licence="CC0-1.0 (test media)", validation_fraction=0.0, validation=held_out)
    out = root / "corpus"
    build_corpus(out, sources, SETTINGS, progress=False)
    return out
