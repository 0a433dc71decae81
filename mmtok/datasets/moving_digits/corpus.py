"""Moving-Digits: the embedded, offline, deterministic audio-visual corpus behind ``make demo`` and the tests.

The corpus generator of the :mod:`mmtok.datasets.moving_digits` package (which also holds the probes that read this
content back out of media, :mod:`~mmtok.datasets.moving_digits.probes`, and the dataset's scoring,
:mod:`~mmtok.datasets.moving_digits.evaluation`); ``data/moving_digits.py`` is its command line.

Each clip shows one coloured digit glyph (a scikit-learn ``load_digits`` 8x8 image scaled up, 16x16 at the default
32x32) moving at constant speed in one of 8 compass directions on a plain background and bouncing off the frame
edges: 9 frames at 8 fps. The audio (16 kHz mono) is a bell-like tone whose pitch identifies the digit, struck at
the start and again at every bounce (the bounce "click": a sharp onset that then decays), so video-to-audio has
content (pitch) and timing (clicks) to get right.

Why a strike and not a separate click sound: a small codec trained for minutes learns stationary tones and their
loudness quickly, but not short isolated transients. Overfitting eight clips for 300 steps, the demo codec left a
60 ms 4 kHz tick or a 15 ms noise burst at 100% error (it outputs silence there), while it fitted a decaying tone to
9% error. Struck again, the digit's own tone marks the bounce with an onset the codec keeps.

The defaults are sized for ``make demo`` on two CPU cores: a 32x32 frame and 9 frames give 5x4x4 = 80 video codes per
clip with the demo video tokenizer, so the LM's sequences stay short; the glyph keeps all the information the 8x8
source has. Larger frames and longer clips are parameters (``size``, ``num_frames``).
Captions name digit, colour and motion with varied phrasing (training clips may add captions that name only part of
it, ``partial_captions``). Some digit-colour-direction combinations occur only in the test split, to measure
compositional generalization, and others only in the validation split, to tune it without the test prompts.

Layout written by :func:`generate_corpus` under ``out_dir``::

    clips/<id>.mp4          H.264 video + PCM audio (sample exact, so strike times are exact)
    manifest.jsonl          one line per clip: MANIFEST_FIELDS
    ground_truth.jsonl      one line per clip: GROUND_TRUTH_FIELDS
    splits.json             {"train": [ids], "validation": [ids], "test": [ids], "held_out_test": [ids],
                             "held_out_combinations": [[digit, color, direction], ...],
                             "held_out_validation": [ids], "held_out_validation_combinations": [...]}
    corpus.json             the generation parameters (seed, sizes, palette, directions, tone frequencies)

Everything is a pure function of the seed and the parameters: the same seed gives byte-identical ``manifest.jsonl``,
``ground_truth.jsonl``, ``splits.json`` and ``corpus.json`` for any number of worker processes. Clip parameters are
drawn in the parent process; workers only render and encode (``multiprocessing``, one process per core).

Coordinates: ``x`` grows to the right, ``y`` downwards (image rows), in pixels of the output frame. ``boxes`` holds
the glyph box's top-left corner ``[x, y]`` per frame (the box is ``glyph_size`` square); ``centroids`` the ink centre
of mass ``[x, y]`` per frame (pixel centres at integer + 0.5). A bounce at frame ``k`` means the glyph reflected off an
edge between frames ``k - 1`` and ``k``; its strike sounds at ``k / fps`` seconds. ``direction`` and ``velocity`` are
the *initial* motion (what the captions name); after a bounce the glyph moves mirrored on that axis.

Ground-truth record (``ground_truth.jsonl``, one per clip): ``id``, ``split``, ``held_out`` (a combination that
occurs only in this clip's split, test or validation), ``digit`` (0-9), ``digit_word``, ``color`` (a :data:`COLORS`
name), ``color_rgb``, ``direction`` (a :data:`DIRECTIONS` name), ``velocity`` ``[vx, vy]`` px/frame, ``speed``,
``glyph_size``, ``glyph_sample_index`` (row of ``load_digits``), ``boxes`` ``[[x, y]] * T``, ``centroids``
``[[x, y]] * T``, ``bounce_frames``, ``bounce_times`` (s), ``tone_hz``, ``num_frames``, ``fps``, ``width``,
``height``.

Manifest record (``manifest.jsonl``, the format :mod:`mmtok.data.ingest` reads): ``id``, ``video`` (relative to the
manifest), ``caption``, ``captions``, ``split``, ``start``, ``end``, ``fps``, ``num_frames``, ``sample_rate``,
``width``, ``height``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmtok.data.media import write_video
from mmtok.io import atomic_write, progress_enabled

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "DIGIT_WORDS",
    "GROUND_TRUTH_FIELDS",
    "HELD_OUT_TEMPLATES",
    "MANIFEST_FIELDS",
    "TONE_HZ",
    "CorpusConfig",
    "ClipSpec",
    "default_glyph_size",
    "digit_frequency",
    "generate_corpus",
    "held_out_caption",
    "load_ground_truth",
    "make_captions",
    "make_partial_captions",
    "PARTIAL_TEMPLATES",
    "render_audio",
    "render_frames",
    "sample_clip_specs",
    "typical_glyphs",
]

# 4 added ``frames_per_grid_step`` (its default, 2, draws the clips of version 3).
GENERATOR_VERSION = 4
# The seed of the clip-parameter stream: unchanged since version 2, so a corpus keeps its clips across versions (3 added
# held-out validation combinations and partial captions, drawn from streams of their own).
_CLIP_STREAM = 2

# Palette: name -> RGB. Saturated, mutually distinct colours, all readable on the black background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 245),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 220),
}

# Compass direction -> (unit x, unit y) with y pointing down the image, and phrasings.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "east": (1.0, 0.0),
    "north-east": (math.sqrt(0.5), -math.sqrt(0.5)),
    "north": (0.0, -1.0),
    "north-west": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "west": (-1.0, 0.0),
    "south-west": (-math.sqrt(0.5), math.sqrt(0.5)),
    "south": (0.0, 1.0),
    "south-east": (math.sqrt(0.5), math.sqrt(0.5)),
}
_DIRECTION_PHRASES = {
    "east": "to the right", "north-east": "up and to the right", "north": "up",
    "north-west": "up and to the left", "west": "to the left", "south-west": "down and to the left",
    "south": "down", "south-east": "down and to the right",
}

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

MANIFEST_FIELDS = ("id", "video", "caption", "captions", "split", "start", "end", "fps", "num_frames",
                   "sample_rate", "width", "height")
GROUND_TRUTH_FIELDS = ("id", "split", "held_out", "digit", "digit_word", "color", "color_rgb", "direction",
                       "velocity", "speed", "glyph_size", "glyph_sample_index", "boxes", "centroids",
                       "bounce_frames", "bounce_times", "tone_hz", "num_frames", "fps", "width", "height")


def default_glyph_size(size: int) -> int:
    """The glyph box side for a ``size`` frame: half the frame (at least 8, the source glyphs' resolution)."""
    return max(8, size // 2)


# The tone of each digit: about a minor third apart (ratios 1.17-1.29), 224 .. 1216 Hz, every one a multiple of 32 Hz.
# A 32 Hz frame (500 samples at 16 kHz, the demo codec's hop) then holds whole periods of every tone and its second
# harmonic, so a steady tone looks the same in every codec frame, and strikes, at multiples of 1/8 s, start on frame
# boundaries: the codec learns one waveform per digit instead of tracking phase across frames.
TONE_HZ = (224, 288, 352, 416, 512, 608, 736, 864, 1024, 1216)


def digit_frequency(digit: int) -> float:
    """The tone (Hz) that identifies ``digit`` (:data:`TONE_HZ`)."""
    return float(TONE_HZ[digit])


@dataclass
class CorpusConfig:
    """Generation parameters (all recorded in ``corpus.json``).

    Attributes:
        num_clips: number of clips.
        seed: the seed every random choice derives from.
        size: frame height and width in pixels.
        glyph_size: glyph box side in pixels (``None`` -> :func:`default_glyph_size`, half of ``size``).
        num_frames: frames per clip (``1 + 2k`` for the demo video tokenizer, ``1 + 4k`` for the others).
        fps: frame rate.
        sample_rate: audio rate in Hz (mono).
        background: RGB of the plain background.
        held_out_fraction: fraction of digit-colour-direction combinations that appear only in the test split.
        held_out_validation_fraction: fraction of the other combinations that appear only in the validation split, so
            that generalisation to unseen combinations can be measured and tuned without the test prompts.
        val_fraction, test_fraction: of the remaining clips, the fractions in validation and test.
        speed_range: glyph speed in frame widths per frame (uniform in this range).
        glyphs_per_digit: how many of scikit-learn's handwritten samples of each digit the clips draw from, the most
            typical first (closest to the digit's mean image, see :func:`typical_glyphs`); ``None`` for all (~180 per
            digit). Fewer hands make a digit's look predictable from its name, which is what text-to-video can learn
            in a CPU budget (docs/what_was_tried.md); the probe still reads digits with a classifier trained on all
            of them.
        position_grid: when set (pixels, even), the glyph starts on a multiple of it and moves exactly
            ``position_grid / frames_per_grid_step`` pixels per frame along each axis it moves on (``speed_range`` is
            then unused), so every ``frames_per_grid_step``-th frame is back on the grid. With a tokenizer whose cells are ``position_grid`` pixels and whose latent frames span two
            frames (the demo's: 8 px, 2 frames), a glyph then looks the same to every latent frame wherever it is:
            a digit is a few recurring codes instead of a new pattern at each of 64 sub-cell offsets (it lowers the
            LM's loss; docs/what_was_tried.md measures what it does to the demo). ``None``: any start, any speed.
        frames_per_grid_step: with ``position_grid``, the frames a glyph takes to move one grid step: 2 (half a step
            per frame) for a tokenizer whose latent frames span two frames, 1 (a whole step per frame) for one that
            codes each frame on its own (the demo's: a frame's codes then depend on what it shows, never on the
            motion, so a glyph moving in a direction never seen with its digit and colour is drawn with codes the
            LM has seen; docs/what_was_tried.md, thirteenth round).
        clear_steps: the glyph starts far enough from the edges it heads for that it moves this many frames before
            its first bounce, so the first frames show the direction the captions name (a glyph that bounces on its
            first step looks like one that started the other way).
        captions_per_clip: how many different phrasings each clip carries (the first is ``caption``).
        partial_captions: how many captions naming only part of the content (:data:`PARTIAL_TEMPLATES`: the
            motion without the digit or the colour, or the digit and colour without the motion) each *training*
            clip carries after its full ones (validation and test clips keep full captions only). Meant to teach
            the direction words apart from the digit and colour; on the demo it lowered every direction figure,
            held-out combinations most (docs/what_was_tried.md, ninth round), so it is off by default.
        tone_amplitude: peak level of the tone (right after a strike).
        strike_decay: time constant (s) of the tone's decay after each strike.
        crf: H.264 quality of the clips (lower = closer to the rendered frames).
    """

    num_clips: int = 2000
    seed: int = 0
    size: int = 32
    glyph_size: int | None = None
    num_frames: int = 9
    fps: int = 8
    sample_rate: int = 16000
    background: tuple[int, int, int] = (0, 0, 0)
    held_out_fraction: float = 0.05
    held_out_validation_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    speed_range: tuple[float, float] = (0.06, 0.12)
    glyphs_per_digit: int | None = None
    position_grid: int | None = None
    frames_per_grid_step: int = 2
    clear_steps: int = 2
    captions_per_clip: int = 3
    partial_captions: int = 0
    tone_amplitude: float = 0.5
    strike_decay: float = 0.15
    crf: int = 12

    def __post_init__(self) -> None:
        if self.glyph_size is None:
            self.glyph_size = default_glyph_size(self.size)
        if not 8 <= self.glyph_size < self.size:
            raise ValueError(f"glyph_size must be in [8, size), got {self.glyph_size} for size {self.size}")
        if self.size % 2:
            raise ValueError(f"size must be even (H.264 4:2:0), got {self.size}")
        if self.num_clips < 1 or self.num_frames < 1 or self.fps <= 0 or self.sample_rate < 1:
            raise ValueError(f"num_clips, num_frames, fps and sample_rate must be positive: {self}")
        if self.glyphs_per_digit is not None and self.glyphs_per_digit < 1:
            raise ValueError(f"glyphs_per_digit must be >= 1 or None, got {self.glyphs_per_digit}")
        if self.position_grid is not None and (
                self.position_grid < 2 or self.position_grid % 2 or (self.size - self.glyph_size) % self.position_grid):
            raise ValueError(f"position_grid must be even, >= 2 and divide size - glyph_size = "
                             f"{self.size - self.glyph_size}, got {self.position_grid}")
        if self.frames_per_grid_step not in (1, 2):
            raise ValueError(f"frames_per_grid_step must be 1 or 2, got {self.frames_per_grid_step}")
        if self.clear_steps < 0:
            raise ValueError(f"clear_steps must be >= 0, got {self.clear_steps}")
        if self.strike_decay <= 0:
            raise ValueError(f"strike_decay must be positive, got {self.strike_decay}")
        if not (0 <= self.held_out_fraction and 0 <= self.held_out_validation_fraction
                and self.held_out_fraction + self.held_out_validation_fraction < 1):
            raise ValueError("need held_out_fraction, held_out_validation_fraction >= 0 with a sum below 1")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("need val_fraction + test_fraction < 1")
        if not 0 <= self.partial_captions <= len(PARTIAL_TEMPLATES):
            raise ValueError(f"partial_captions must be in [0, {len(PARTIAL_TEMPLATES)}], got {self.partial_captions}")
        self.background = tuple(int(c) for c in self.background)  # type: ignore[assignment]
        self.speed_range = tuple(float(s) for s in self.speed_range)  # type: ignore[assignment]


@dataclass
class ClipSpec:
    """Everything needed to render one clip (drawn by :func:`sample_clip_specs`; workers render from it alone)."""

    id: str
    index: int
    split: str
    held_out: bool
    digit: int
    color: str
    direction: str
    glyph_sample_index: int
    glyph: list[list[float]]          # 8x8 intensities in [0, 16] from load_digits
    start_xy: tuple[float, float]     # glyph box top-left at frame 0
    speed: float                      # pixels per frame
    velocity: tuple[float, float]     # [vx, vy] pixels per frame at frame 0
    captions: list[str]
    boxes: list[list[int]] = field(default_factory=list)
    bounce_frames: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- captions
_TEMPLATES = (
    "a {color} {word} drifts {phrase}",
    "the digit {digit} in {color}, heading {compass}",
    "a {color} number {word} moving {phrase}",
    "{Word} in {color} travels {phrase}",
    "a {color} {digit} glides {compass}",
    "the number {digit}, colored {color}, moves {phrase}",
    "{color} digit {word} bouncing around, starting {compass}ward",
    "a {word} painted {color} slides {phrase}",
    "the {color} figure {digit} heads {compass}",
    "watch a {color} {word} float {phrase}",
)


# Phrasings that never occur in the corpus's captions (other word orders, other verbs and nouns, numerals and words):
# the evaluation prompts with them to measure whether a model follows the content words or memorized the templates.
HELD_OUT_TEMPLATES = (
    "moving {phrase}, a {color} {word}",
    "there is a {word} in {color} going {phrase}",
    "{color} {digit} sliding {compass}",
    "see the {color} numeral {word} travel {phrase}",
    "a {digit} coloured {color}, on its way {compass}",
    "{Word}, {color}, drifting {phrase}",
    "one {color} figure {word} that heads {phrase}",
    "{compass}: the {color} number {digit}",
)


# Captions naming only part of a clip's content, for training clips (``CorpusConfig.partial_captions``): the motion
# with the digit, the colour or neither, or the digit and colour without the motion. No full or held-out template
# is among them (tests check it).
PARTIAL_TEMPLATES = (
    "something moves {phrase}",
    "a shape heading {compass}",
    "a {word} drifts {phrase}",
    "the digit {digit}, heading {compass}",
    "a {color} shape moving {phrase}",
    "something {color} glides {compass}",
    "a {color} {word}",
    "the {color} digit {digit}",
)


def _caption_fields(digit: int, color: str, direction: str) -> dict[str, Any]:
    return dict(digit=digit, word=DIGIT_WORDS[digit], Word=DIGIT_WORDS[digit].capitalize(), color=color,
                compass=direction, phrase=_DIRECTION_PHRASES[direction])


def make_captions(digit: int, color: str, direction: str, rng: np.random.Generator, n: int = 3) -> list[str]:
    """``n`` different phrasings naming the digit, colour and initial motion direction."""
    fields = _caption_fields(digit, color, direction)
    picks = rng.choice(len(_TEMPLATES), size=min(n, len(_TEMPLATES)), replace=False)
    return [_TEMPLATES[int(i)].format(**fields) for i in picks]


def make_partial_captions(digit: int, color: str, direction: str, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` different captions from :data:`PARTIAL_TEMPLATES`, each naming only part of the content."""
    fields = _caption_fields(digit, color, direction)
    picks = rng.choice(len(PARTIAL_TEMPLATES), size=n, replace=False) if n else []
    return [PARTIAL_TEMPLATES[int(i)].format(**fields) for i in picks]


def held_out_caption(digit: int, color: str, direction: str, index: int) -> str:
    """The ``index``-th (cyclically) of :data:`HELD_OUT_TEMPLATES` for this content: a phrasing no training caption
    uses."""
    return HELD_OUT_TEMPLATES[index % len(HELD_OUT_TEMPLATES)].format(**_caption_fields(digit, color, direction))


# ------------------------------------------------------------------------------------------------- trajectory
def _trajectory(start: tuple[float, float], velocity: tuple[float, float], limit: float,
                num_frames: int) -> tuple[list[list[int]], list[int]]:
    """Integer box positions per frame and the frames at which a bounce happened (reflection off [0, limit])."""
    pos = [float(start[0]), float(start[1])]
    vel = [float(velocity[0]), float(velocity[1])]
    boxes, bounces = [[int(round(pos[0])), int(round(pos[1]))]], []
    for k in range(1, num_frames):
        bounced = False
        for a in (0, 1):
            pos[a] += vel[a]
            if pos[a] < 0:
                pos[a], vel[a], bounced = -pos[a], -vel[a], True
            elif pos[a] > limit:
                pos[a], vel[a], bounced = 2 * limit - pos[a], -vel[a], True
        boxes.append([int(round(pos[0])), int(round(pos[1]))])
        if bounced:
            bounces.append(k)
    return boxes, bounces


def _clear_range(velocity: float, limit: float, steps: int) -> tuple[float, float]:
    """The start coordinates ``[low, high]`` from which ``steps`` frames at ``velocity`` px/frame stay in
    ``[0, limit]`` (``low > high`` when none can)."""
    travel = abs(velocity) * steps
    return (0.0, limit - travel) if velocity > 0 else (travel, limit) if velocity < 0 else (0.0, limit)


def _clear_start(u: float, velocity: float, limit: float, steps: int) -> float:
    """A start coordinate in ``[0, limit]`` (``u`` uniform in [0, 1) picks it) from which ``steps`` frames at
    ``velocity`` px/frame stay inside; the centre when no start can (a speed too high for the frame)."""
    low, high = _clear_range(velocity, limit, steps)
    if low > high:
        return limit / 2
    return low + u * (high - low)


def _grid_start(u: float, velocity: float, limit: int, steps: int, grid: int) -> int:
    """:func:`_clear_start` on a grid: the grid points in ``[0, limit]`` from which ``steps`` frames stay inside
    (``u`` picks one; the nearest grid point to the centre when none can)."""
    low, high = _clear_range(velocity, limit, steps)
    points = [p for p in range(0, limit + 1, grid) if low <= p <= high]
    if not points:
        return int(round(limit / 2 / grid)) * grid
    return points[min(int(u * len(points)), len(points) - 1)]


def _glyph_alpha(glyph: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upscaling of an 8x8 [0, 16] digit to ``side x side`` alpha in [0, 1]."""
    g = np.asarray(glyph, np.float64) / 16.0
    src = (np.arange(side) + 0.5) * (g.shape[0] / side) - 0.5  # output pixel centres in source coordinates
    src = np.clip(src, 0, g.shape[0] - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, g.shape[0] - 1)
    w = src - i0
    rows = g[i0] * (1 - w)[:, None] + g[i1] * w[:, None]                 # [side, 8]
    out = rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]       # [side, side]
    return np.clip(out, 0.0, 1.0)


def render_frames(spec: ClipSpec, cfg: CorpusConfig) -> np.ndarray:
    """The clip's frames, ``uint8 [num_frames, size, size, 3]``."""
    alpha = _glyph_alpha(np.asarray(spec.glyph), cfg.glyph_size)[..., None]   # [g, g, 1]
    color = np.asarray(COLORS[spec.color], np.float64)
    bg = np.asarray(cfg.background, np.float64)
    patch = (bg * (1 - alpha) + color * alpha)                                 # [g, g, 3]
    frames = np.empty((cfg.num_frames, cfg.size, cfg.size, 3), np.uint8)
    frames[:] = np.asarray(cfg.background, np.uint8)
    g = cfg.glyph_size
    for t, (x, y) in enumerate(spec.boxes):
        frames[t, y:y + g, x:x + g] = np.round(patch).astype(np.uint8)
    return frames


def _centroids(spec: ClipSpec, cfg: CorpusConfig) -> list[list[float]]:
    alpha = _glyph_alpha(np.asarray(spec.glyph), cfg.glyph_size)
    ys, xs = np.mgrid[0:cfg.glyph_size, 0:cfg.glyph_size] + 0.5
    cx = float((alpha * xs).sum() / alpha.sum())
    cy = float((alpha * ys).sum() / alpha.sum())
    return [[round(x + cx, 3), round(y + cy, 3)] for x, y in spec.boxes]


def render_audio(spec: ClipSpec, cfg: CorpusConfig) -> np.ndarray:
    """The clip's audio, ``float32 [round(num_frames / fps * sample_rate)]``: the digit's tone (with a soft second
    harmonic), struck at time 0 and at every bounce: a 4 ms attack to ``tone_amplitude``, then an exponential decay
    with time constant ``strike_decay`` until the next strike; 10 ms fade-out at the end."""
    sr = cfg.sample_rate
    n = int(round(cfg.num_frames / cfg.fps * sr))
    t = np.arange(n) / sr
    f = digit_frequency(spec.digit)
    tone = 0.8 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)
    env = np.zeros(n)
    attack = max(1, int(0.004 * sr))
    for start in [0] + [int(round(k / cfg.fps * sr)) for k in spec.bounce_frames]:
        if start >= n:
            continue
        level = env[start - 1] if start > 0 else 0.0                     # the decayed level the strike rises from
        decay = np.exp(-np.arange(n - start) / (cfg.strike_decay * sr))
        ramp = np.minimum(1.0, np.arange(1, n - start + 1) / attack)
        env[start:] = level * decay * (1 - ramp) + decay * ramp
    fade = min(n // 2, int(0.01 * sr))
    env[n - fade:] *= np.linspace(1.0, 0.0, fade, endpoint=False)
    return np.clip(cfg.tone_amplitude * env * tone, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------- sampling
def _load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(int)


def typical_glyphs(images: np.ndarray, targets: np.ndarray, digit: int) -> np.ndarray:
    """Indices of ``digit``'s samples, most typical first: by distance to the mean image of that digit's samples.

    An untypical hand (a 5 that looks like a 9) read back through a lossy tokenizer is where a probe errs first, and
    with few hands per digit one such hand costs a whole digit.
    """
    index = np.flatnonzero(targets == digit)
    flat = images[index].reshape(len(index), -1)
    distance = ((flat - flat.mean(0)) ** 2).sum(1)
    return index[np.argsort(distance, kind="stable")]


def _held_out_combinations(rng: np.random.Generator, fraction: float,
                           exclude: set[tuple[int, str, str]] = frozenset()) -> list[tuple[int, str, str]]:
    """``fraction`` of all digit-colour-direction combinations (rounded), drawn from those not in ``exclude``."""
    every = [(d, c, m) for d in range(10) for c in COLORS for m in DIRECTIONS]
    combos = [c for c in every if c not in exclude]
    k = int(round(fraction * len(every)))
    picks = sorted(rng.choice(len(combos), size=k, replace=False).tolist()) if k else []
    return [combos[i] for i in picks]


def sample_clip_specs(cfg: CorpusConfig) -> tuple[list[ClipSpec], list[tuple[int, str, str]]]:
    """Draw every clip's parameters from ``cfg.seed`` (in order, in this process): specs and the test-only held-out
    combinations (the validation-only ones are the specs with ``held_out`` and split ``validation``)."""
    images, targets = _load_glyphs()
    by_digit = [np.flatnonzero(targets == d) if cfg.glyphs_per_digit is None
                else typical_glyphs(images, targets, d)[:cfg.glyphs_per_digit] for d in range(10)]
    rng = np.random.default_rng([cfg.seed, _CLIP_STREAM])
    held = _held_out_combinations(rng, cfg.held_out_fraction)
    held_set = set(held)
    held_validation = set(_held_out_combinations(np.random.default_rng([cfg.seed, _CLIP_STREAM, 1]),
                                                 cfg.held_out_validation_fraction, exclude=held_set))
    partial_rng = np.random.default_rng([cfg.seed, _CLIP_STREAM, 2])
    colors, directions = list(COLORS), list(DIRECTIONS)
    limit = cfg.size - cfg.glyph_size
    width = len(str(cfg.num_clips - 1))
    specs = []
    for i in range(cfg.num_clips):
        digit = int(rng.integers(10))
        color = colors[int(rng.integers(len(colors)))]
        direction = directions[int(rng.integers(len(directions)))]
        sample = int(by_digit[digit][int(rng.integers(len(by_digit[digit])))])
        where = rng.uniform(size=2)
        speed = float(rng.uniform(*cfg.speed_range)) * cfg.size
        ux, uy = DIRECTIONS[direction]
        if cfg.position_grid:
            # a whole or half grid step per frame along each axis the direction moves on (exact: positions stay on it)
            step = cfg.position_grid / cfg.frames_per_grid_step
            velocity = tuple(math.copysign(step, v) if abs(v) > 1e-9 else 0.0 for v in (ux, uy))
            speed = math.hypot(*velocity)
            start = tuple(float(_grid_start(float(u), v, limit, cfg.clear_steps, cfg.position_grid))
                          for u, v in zip(where, velocity))
        else:
            velocity = (ux * speed, uy * speed)
            start = tuple(_clear_start(float(u), v, limit, cfg.clear_steps) for u, v in zip(where, velocity))
        captions = make_captions(digit, color, direction, rng, cfg.captions_per_clip)
        u = float(rng.uniform())
        combo = (digit, color, direction)
        held_out = combo in held_set or combo in held_validation
        if combo in held_set:
            split = "test"
        elif combo in held_validation:
            split = "validation"
        elif u < cfg.val_fraction:
            split = "validation"
        elif u < cfg.val_fraction + cfg.test_fraction:
            split = "test"
        else:
            split = "train"
        if split == "train":
            captions += make_partial_captions(digit, color, direction, partial_rng, cfg.partial_captions)
        boxes, bounces = _trajectory(start, velocity, limit, cfg.num_frames)
        specs.append(ClipSpec(
            id=f"md{i:0{max(width, 5)}d}", index=i, split=split, held_out=held_out, digit=digit, color=color,
            direction=direction, glyph_sample_index=sample, glyph=images[sample].tolist(), start_xy=start,
            speed=speed, velocity=velocity, captions=captions, boxes=boxes, bounce_frames=bounces))
    return specs, held


# ---------------------------------------------------------------------------------------------------- writing
def _manifest_record(spec: ClipSpec, cfg: CorpusConfig) -> dict[str, Any]:
    return {
        "id": spec.id, "video": f"clips/{spec.id}.mp4", "caption": spec.captions[0], "captions": spec.captions,
        "split": spec.split, "start": 0.0, "end": round(cfg.num_frames / cfg.fps, 6), "fps": cfg.fps,
        "num_frames": cfg.num_frames, "sample_rate": cfg.sample_rate, "width": cfg.size, "height": cfg.size,
    }


def _ground_truth_record(spec: ClipSpec, cfg: CorpusConfig) -> dict[str, Any]:
    return {
        "id": spec.id, "split": spec.split, "held_out": spec.held_out, "digit": spec.digit,
        "digit_word": DIGIT_WORDS[spec.digit], "color": spec.color, "color_rgb": list(COLORS[spec.color]),
        "direction": spec.direction, "velocity": [round(v, 4) for v in spec.velocity],
        "speed": round(spec.speed, 4), "glyph_size": cfg.glyph_size, "glyph_sample_index": spec.glyph_sample_index,
        "boxes": spec.boxes, "centroids": _centroids(spec, cfg), "bounce_frames": spec.bounce_frames,
        "bounce_times": [round(k / cfg.fps, 6) for k in spec.bounce_frames],
        "tone_hz": round(digit_frequency(spec.digit), 3), "num_frames": cfg.num_frames, "fps": cfg.fps,
        "width": cfg.size, "height": cfg.size,
    }


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _render_one(args: tuple[ClipSpec, CorpusConfig, str, bool]) -> str:
    spec, cfg, out_dir, overwrite = args
    path = Path(out_dir) / "clips" / f"{spec.id}.mp4"
    if path.exists() and not overwrite:  # clips are written atomically: an existing file is complete
        return spec.id
    write_video(path, render_frames(spec, cfg), cfg.fps, audio=render_audio(spec, cfg),
                sample_rate=cfg.sample_rate, crf=cfg.crf, threads=1)
    return spec.id


def generate_corpus(out_dir: str | os.PathLike, num_clips: int = 2000, seed: int = 0, size: int = 32, *,
                    num_workers: int | None = None, overwrite: bool = False, progress: bool | None = None,
                    **kwargs: Any) -> Path:
    """Generate the Moving-Digits corpus into ``out_dir`` and return the manifest path.

    Args:
        out_dir: output folder (created).
        num_clips, seed, size: see :class:`CorpusConfig`; further :class:`CorpusConfig` fields as keywords.
        num_workers: processes rendering and encoding clips (default: the CPU count; 0 renders in this process).
        overwrite: re-encode clips that already exist (by default existing clips, written atomically, are kept,
            so an interrupted generation continues where it stopped).
        progress: show a tqdm bar (default: :func:`mmtok.io.progress_enabled`).

    The metadata files are written last (atomically), so their presence marks a complete corpus.
    """
    cfg = CorpusConfig(num_clips=num_clips, seed=seed, size=size, **kwargs)
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    specs, held = sample_clip_specs(cfg)
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if progress is None:
        progress = progress_enabled()
    jobs = [(s, cfg, str(out), overwrite) for s in specs]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="moving digits", unit="clip", disable=not progress)
    if num_workers <= 0 or len(jobs) < 2:
        for job in jobs:
            _render_one(job)
            bar.update()
    else:
        # spawn: safe even when the caller has torch (and its threads) loaded.
        with mp.get_context("spawn").Pool(min(num_workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_render_one, jobs, chunksize=16):
                bar.update()
            pool.close()
            pool.join()
    bar.close()

    splits: dict[str, Any] = {name: [s.id for s in specs if s.split == name]
                              for name in ("train", "validation", "test")}
    splits["held_out_test"] = [s.id for s in specs if s.held_out and s.split == "test"]
    splits["held_out_combinations"] = [list(c) for c in held]
    splits["held_out_validation"] = [s.id for s in specs if s.held_out and s.split == "validation"]
    splits["held_out_validation_combinations"] = sorted(
        {(s.digit, s.color, s.direction) for s in specs if s.held_out and s.split == "validation"})
    meta = asdict(cfg)
    meta.update(generator="mmtok.datasets.moving_digits", generator_version=GENERATOR_VERSION,
                colors={k: list(v) for k, v in COLORS.items()},
                directions={k: [round(v[0], 6), round(v[1], 6)] for k, v in DIRECTIONS.items()},
                tone_hz={str(d): round(digit_frequency(d), 3) for d in range(10)},
                manifest_fields=list(MANIFEST_FIELDS), ground_truth_fields=list(GROUND_TRUTH_FIELDS),
                counts={k: len(v) for k, v in splits.items() if not k.endswith("_combinations")})
    atomic_write(out / "ground_truth.jsonl", "".join(_dumps(_ground_truth_record(s, cfg)) + "\n" for s in specs))
    atomic_write(out / "splits.json", json.dumps(splits, sort_keys=True, indent=1) + "\n")
    atomic_write(out / "corpus.json", json.dumps(meta, sort_keys=True, indent=1) + "\n")
    manifest = out / "manifest.jsonl"
    atomic_write(manifest, "".join(_dumps(_manifest_record(s, cfg)) + "\n" for s in specs))
    return manifest


def load_ground_truth(corpus_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``ground_truth.jsonl`` of a generated corpus as ``{clip id: record}``."""
    path = Path(corpus_dir) / "ground_truth.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth at {path}; generate the corpus first")
    with open(path) as f:
        return {r["id"]: r for r in map(json.loads, f) if r}

