"""Read the content back out of Moving-Digits media: which digit, which colour, which way it moves, which tone,
when the clicks fall. The evaluation recipe applies these probes to generated clips and to ground truth alike, so a
score says what a viewer would see, not how close the tokens were. Part of :mod:`mmtok.datasets.moving_digits`
(the corpus these probes match is :mod:`~mmtok.datasets.moving_digits.corpus`; the scoring that applies them,
:mod:`~mmtok.datasets.moving_digits.evaluation`).

* digit: a small MLP trained here on the scikit-learn glyphs rendered exactly as the corpus renders them (random
  colour, position, blur and noise), applied to a crop around the glyph's ink centre in each frame; the clip's answer
  is the frame-averaged probability. It reads 99-100% of ground-truth clips (a linear classifier read 98%, and
  mistook blurred but legible reconstructions more often).
* colour: the mean colour of the brightest glyph pixels, matched to the palette by direction in RGB space.
* direction: the ink centre-of-mass track compared with the bouncing trajectory simulated for each of the 8
  directions (so a bounce does not fool it).
* pitch: the strongest spectral peak, matched to the nearest digit tone on a log-frequency scale.
* clicks: the bounce strikes, onsets where the tone's loudness jumps (it is struck again and decays in between).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmtok.datasets.moving_digits.corpus import COLORS, DIRECTIONS, _glyph_alpha, _load_glyphs, \
    default_glyph_size, digit_frequency
from mmtok.frames import to_uint8

__all__ = ["AudioReading", "MovingDigitsProbe", "VideoReading", "centroid_track", "click_f1", "glyph_features",
           "ink_mask", "read_clicks", "read_color", "read_direction", "read_pitch"]

_FEATURE_SIDE = 12
_PALETTE = np.array(list(COLORS.values()), np.float64)
_PALETTE_NAMES = list(COLORS)
_DIRECTION_NAMES = list(DIRECTIONS)


@dataclass
class VideoReading:
    digit: int
    digit_confidence: float
    color: str
    direction: str
    track: np.ndarray          # [T, 2] ink centre (x, y) per frame, NaN where a frame shows no glyph


@dataclass
class AudioReading:
    digit: int
    pitch_hz: float
    click_times: list[float]


# ---------------------------------------------------------------------------------------------------- frames
def ink_mask(frames: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """``[T, H, W]`` True where a pixel is brighter than ``threshold`` of full scale (the background is dark)."""
    return frames.astype(np.float32).max(axis=-1) > threshold * 255


def centroid_track(frames: np.ndarray, min_pixels: int = 6) -> np.ndarray:
    """Intensity-weighted ink centre ``[T, 2]`` as (x, y) pixel coordinates (pixel centres at +0.5)."""
    frames = _as_frames(frames)
    weight = frames.astype(np.float64).max(axis=-1) / 255.0                   # [T, H, W]
    weight = np.where(ink_mask(frames), weight, 0.0)
    t, h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    total = weight.sum(axis=(1, 2))
    track = np.full((t, 2), np.nan)
    ok = (weight > 0).sum(axis=(1, 2)) >= min_pixels
    track[ok, 0] = (weight[ok] * xs).sum(axis=(1, 2)) / total[ok]
    track[ok, 1] = (weight[ok] * ys).sum(axis=(1, 2)) / total[ok]
    return track


def glyph_features(frame: np.ndarray, center: np.ndarray, glyph_size: int) -> np.ndarray:
    """A ``glyph_size`` crop around ``center`` of one frame, as normalised grey levels at 12x12."""
    grey = frame.astype(np.float32).max(axis=-1) / 255.0                       # [H, W]
    half = glyph_size / 2
    x0, y0 = int(round(center[0] - half)), int(round(center[1] - half))
    padded = np.pad(grey, glyph_size)
    crop = padded[y0 + glyph_size:y0 + 2 * glyph_size, x0 + glyph_size:x0 + 2 * glyph_size]
    resize = _area_matrix(glyph_size, _FEATURE_SIDE)
    small = resize @ crop @ resize.T                                          # [12, 12]
    peak = small.max()
    return (small / peak if peak > 0 else small).reshape(-1)


def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` matrix averaging the input cells each output cell overlaps (area resampling)."""
    edges_in = np.arange(size_in + 1) / size_in
    edges_out = np.arange(size_out + 1) / size_out
    overlap = np.clip(np.minimum(edges_out[1:, None], edges_in[None, 1:])
                      - np.maximum(edges_out[:-1, None], edges_in[None, :-1]), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def read_color(frames: np.ndarray) -> str:
    """The palette colour closest in direction to the mean colour of the brightest glyph pixels."""
    frames = _as_frames(frames).astype(np.float64)
    bright = frames.max(axis=-1)
    level = np.quantile(bright[ink_mask(frames.astype(np.uint8))], 0.5) if ink_mask(frames.astype(np.uint8)).any() \
        else 255
    pixels = frames[bright >= level]
    if len(pixels) == 0:
        return _PALETTE_NAMES[0]
    mean = pixels.mean(axis=0)
    mean = mean / (np.linalg.norm(mean) + 1e-9)
    palette = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)
    return _PALETTE_NAMES[int(np.argmax(palette @ mean))]


def read_direction(track: np.ndarray, size: int, glyph_size: int) -> str:
    """The initial direction whose simulated bouncing trajectory best fits the observed centre track."""
    valid = ~np.isnan(track).any(axis=1)
    if valid.sum() < 2:
        return _DIRECTION_NAMES[0]
    steps = np.linalg.norm(np.diff(track[valid], axis=0), axis=1)
    speed0 = float(np.median(steps)) if len(steps) else 1.0
    first = int(np.argmax(valid))
    # The ink centre sits near, not at, the box centre: search the start corner around the estimate too.
    corner = track[first] - glyph_size / 2
    limit = size - glyph_size
    offsets = np.arange(-3.0, 3.01, 1.5)
    best, best_err = _DIRECTION_NAMES[0], np.inf
    for name, (ux, uy) in DIRECTIONS.items():
        for speed in speed0 * np.array([0.7, 0.85, 1.0, 1.15, 1.3]):
            for dx in offsets:
                for dy in offsets:
                    start = np.clip(corner + (dx, dy), 0, limit)
                    boxes, early = _simulate(start, (ux * speed, uy * speed), limit, len(track) - first)
                    offset = (track[first] - boxes[0])                # keeps the frame-0 fit exact
                    err = np.nanmean(((boxes + offset - track[first:]) ** 2).sum(axis=1))
                    # A glyph at an edge heading into it looks like one heading away: without evidence either
                    # way, prefer the reading with no bounce on the first step.
                    err += early * 0.5 * speed0 ** 2
                    if err < best_err:
                        best, best_err = name, err
    return best


def _simulate(start: np.ndarray, velocity: tuple[float, float], limit: float,
              num_frames: int) -> tuple[np.ndarray, bool]:
    """Box corners ``[num_frames, 2]`` of a glyph bouncing inside ``[0, limit]`` (the corpus's physics, unrounded),
    and whether it bounced on the first step."""
    pos = np.array(start, np.float64)
    vel = np.array(velocity, np.float64)
    out = np.empty((num_frames, 2))
    out[0] = pos
    early = False
    for k in range(1, num_frames):
        pos += vel
        low, high = pos < 0, pos > limit
        pos[low], pos[high] = -pos[low], 2 * limit - pos[high]
        vel[low | high] *= -1
        early = early or (k == 1 and bool((low | high).any()))
        out[k] = pos
    return out, early


# ------------------------------------------------------------------------------------------------------ audio
def read_pitch(wave: np.ndarray, sample_rate: int) -> tuple[int, float]:
    """(digit, frequency in Hz) of the strongest spectral peak between 150 Hz and 1.5 kHz."""
    wave = np.asarray(wave, np.float64).reshape(-1)
    if wave.size < 64:
        raise ValueError(f"audio too short to read a pitch: {wave.size} samples")
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    freqs = np.fft.rfftfreq(wave.size, 1.0 / sample_rate)
    band = (freqs >= 150) & (freqs <= 1500)
    peak = float(freqs[band][np.argmax(spectrum[band])])
    tones = np.log2([digit_frequency(d) for d in range(10)])
    return int(np.argmin(np.abs(tones - np.log2(max(peak, 1.0))))), peak


def read_clicks(wave: np.ndarray, sample_rate: int, hop_s: float = 0.005, rise_s: float = 0.03,
                min_rise: float = 1.8, min_gap_s: float = 0.06, skip_s: float = 0.05) -> list[float]:
    """Times (s) of the bounce strikes: onsets where the loudness rises by at least ``min_rise`` times within
    ``rise_s`` (the tone is struck again and decays in between).

    The envelope is the RMS over ``hop_s`` windows; an onset is a local maximum of the rise ``env[i] / min(env[i -
    rise_s .. i])`` above ``min_rise``, at least ``min_gap_s`` after the previous one. The first ``skip_s`` seconds are
    skipped: every clip is struck at time 0, which marks no bounce. A clip too quiet to have a tone gives none.
    """
    wave = np.asarray(wave, np.float64).reshape(-1)
    hop = max(1, int(hop_s * sample_rate))
    frames = wave[: (wave.size // hop) * hop].reshape(-1, hop)
    env = np.sqrt((frames ** 2).mean(axis=1))
    if env.size == 0 or env.max() < 1e-3:
        return []
    floor = 1e-3 * env.max()                                   # ignore rises out of near-silence noise
    back = max(1, int(round(rise_s / hop_s)))
    rise = np.zeros_like(env)
    for i in range(1, env.size):
        prev = env[max(0, i - back):i].min()
        rise[i] = env[i] / max(prev, floor)
    times, last = [], -np.inf
    for i in range(1, env.size):
        t = i * hop / sample_rate
        right = rise[i + 1] if i + 1 < env.size else 0.0
        if t < skip_s or rise[i] < min_rise or rise[i] < rise[i - 1] or rise[i] < right:
            continue
        if t - last >= min_gap_s:
            times.append(t)
            last = t
    return times


def click_f1(predicted: list[float], truth: list[float], tolerance: float) -> float:
    """F1 of predicted against true event times, each true event matched at most once within ``tolerance`` s.

    Two empty lists score 1.0 (nothing to find, nothing claimed).
    """
    if not predicted and not truth:
        return 1.0
    unmatched = sorted(truth)
    hits = 0
    for p in sorted(predicted):
        if not unmatched:
            break
        j = int(np.argmin([abs(p - t) for t in unmatched]))
        if abs(p - unmatched[j]) <= tolerance:
            hits += 1
            unmatched.pop(j)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


# -------------------------------------------------------------------------------------------------- the probe
class MovingDigitsProbe:
    """Reads digit, colour and direction from frames and digit and clicks from audio.

    Args:
        size: frame side in pixels; glyph_size: glyph box side (default: the corpus default for ``size``).
        fps, sample_rate: the corpus clock, for click times.
        seed: seeds the classifier's training renders.
        renders_per_glyph: training renders (random colour, position, blur, noise) of each scikit-learn glyph.
        hidden_units: width of the digit classifier's hidden layer.
    """

    def __init__(self, size: int = 32, glyph_size: int | None = None, fps: float = 8, sample_rate: int = 16000,
                 seed: int = 0, renders_per_glyph: int = 6, hidden_units: int = 256):
        self.renders_per_glyph = renders_per_glyph
        self.hidden_units = hidden_units
        self.size = size
        self.glyph_size = glyph_size or default_glyph_size(size)
        self.fps = fps
        self.sample_rate = sample_rate
        self.seed = seed
        self._classifier = None

    # The classifier is trained on first use (about ten seconds): renders of each of the 1,797 glyphs.
    def classifier(self):
        if self._classifier is None:
            from sklearn.neural_network import MLPClassifier

            features, labels = self._training_set(self.renders_per_glyph)
            self._classifier = MLPClassifier(hidden_layer_sizes=(self.hidden_units,), max_iter=300,
                                             random_state=self.seed).fit(features, labels)
        return self._classifier

    def _training_set(self, renders_per_glyph: int) -> tuple[np.ndarray, np.ndarray]:
        images, targets = _load_glyphs()
        rng = np.random.default_rng(self.seed)
        g, limit = self.glyph_size, self.size - self.glyph_size
        feats, labels = [], []
        for image, target in zip(images, targets):
            alpha = _glyph_alpha(image, g)
            for _ in range(renders_per_glyph):
                frame = np.zeros((self.size, self.size, 3), np.float64)
                x, y = rng.integers(0, limit + 1, size=2)
                color = _PALETTE[rng.integers(len(_PALETTE))]
                frame[y:y + g, x:x + g] = alpha[..., None] * color
                sigma = rng.uniform(0.0, 1.2)
                if sigma > 0.2:
                    frame = _blur(frame, sigma)
                frame = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
                center = centroid_track(frame[None])[0]
                if np.isnan(center).any():
                    continue
                feats.append(glyph_features(frame, center, g))
                labels.append(int(target))
        return np.stack(feats), np.asarray(labels)

    def read_video(self, frames: np.ndarray | torch.Tensor) -> VideoReading:
        """Probe a clip, uint8 ``[T, H, W, 3]`` (or float ``[3, T, H, W]`` in [-1, 1])."""
        frames = _as_frames(frames)
        track = centroid_track(frames)
        valid = np.flatnonzero(~np.isnan(track).any(axis=1))
        if valid.size == 0:
            return VideoReading(digit=-1, digit_confidence=0.0, color=_PALETTE_NAMES[0],
                                direction=_DIRECTION_NAMES[0], track=track)
        feats = np.stack([glyph_features(frames[t], track[t], self.glyph_size) for t in valid])
        probs = self.classifier().predict_proba(feats).mean(axis=0)
        digit = int(self.classifier().classes_[int(np.argmax(probs))])
        return VideoReading(digit=digit, digit_confidence=float(probs.max()), color=read_color(frames),
                            direction=read_direction(track, self.size, self.glyph_size), track=track)

    def read_audio(self, wave: np.ndarray | torch.Tensor) -> AudioReading:
        """Probe a mono waveform at ``sample_rate``."""
        wave = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        digit, pitch = read_pitch(wave, self.sample_rate)
        return AudioReading(digit=digit, pitch_hz=pitch, click_times=read_clicks(wave, self.sample_rate))


def _blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``[H, W, C]`` image (the look of a decoder's reconstruction)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(frame, sigma=(sigma, sigma, 0), mode="nearest")


def _as_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` from uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` in [-1, 1]."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype.is_floating_point and frames.dim() != 4:
            raise ValueError(f"float frames must be [3, T, H, W] in [-1, 1], got {tuple(frames.shape)}")
        frames = to_uint8(frames).numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    return frames
