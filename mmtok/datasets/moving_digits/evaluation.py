"""Scoring on the Moving-Digits corpus: every metric beside a chance or trivial baseline.

Part of :mod:`mmtok.datasets.moving_digits` (the corpus: :mod:`~mmtok.datasets.moving_digits.corpus`; the probes:
:mod:`~mmtok.datasets.moving_digits.probes`). The scores read the *content* of generated media with
:class:`~mmtok.datasets.moving_digits.probes.MovingDigitsProbe` (digit classifier on the glyph, palette colour,
bouncing-trajectory fit, tone pitch, click onsets), so they say what a viewer would see.

Building blocks (each returns a :class:`mmtok.metrics.Metric` list and per-sample records; ``recipes/evaluate.py``
strings them together, generates with :class:`lm.generation.MultimodalGenerator`, adds the LM's own metrics from
:mod:`lm.evaluation` and writes ``metrics.json`` + ``metrics.md``):

* :func:`load_clips` - test clips (frames, audio, caption, ground truth) from a generated corpus.
* :func:`score_t2v` - digit / colour / direction accuracy of clips generated from captions; chance 1/10, 1/6, 1/8.
* :func:`score_v2a` - pitch (digit) accuracy and bounce-click F1 within one frame of generated soundtracks; baselines:
  a random digit (1/10) and the better of "no clicks" and "random clicks" (computed on the same clips).
* :func:`score_continuation` - PSNR and centre-of-mass trajectory error of continued frames against the ground truth,
  beside the copy-last-frame baseline.
* :func:`tokenizer_reconstruction` - video PSNR / SSIM and audio SI-SNR of a tokenizer bundle (encode + decode; any
  object with ``video``, ``audio`` and ``num_audio_levels``, e.g. :class:`mmtok.multimodal.MultimodalTokenizer`);
  baselines: blank (background) frames, and another clip's audio.
* :func:`digit_labels` and :func:`digit_prompts` - the clip labels and class prompts of zero-shot digit
  classification (``lm.evaluation.alignment_metrics`` scores them with a model's alignment head).
* :func:`probe_labels` and :data:`PROBE_LABELS` - the classes linear probes on clip embeddings predict (digit,
  colour, direction from the video; pitch from the audio), for ``lm.vatt_evaluation``.

A :class:`~mmtok.metrics.Metric` carries ``value``, ``baseline`` (with ``baseline_name``), ``higher_is_better``, ``n``
(samples) and ``reference`` (the same probe applied to the ground truth: the ceiling the probe itself allows), so a
reader can tell "learned" from "chance" and from "probe error".

Nothing here imports :mod:`lm`: the tokenizers come in as an argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmtok.datasets.moving_digits.corpus import COLORS, DIGIT_WORDS, DIRECTIONS, TONE_HZ, load_ground_truth
from mmtok.datasets.moving_digits.probes import MovingDigitsProbe, centroid_track, click_f1
from mmtok.frames import from_uint8, to_uint8
from mmtok.metrics import Metric, mean_interval, psnr, si_snr, ssim, wilson_interval

__all__ = ["LabeledClip", "corpus_settings", "load_clips", "make_probe", "score_t2v", "score_v2a",
           "score_continuation", "copy_last_frame", "trajectory_error", "tokenizer_reconstruction", "digit_labels",
           "digit_prompts", "PROBE_LABELS", "probe_labels"]


# ------------------------------------------------------------------------------------------------------ clips
@dataclass
class LabeledClip:
    """A Moving-Digits evaluation clip with its labels: ``frames`` uint8 ``[T, H, W, 3]``, ``audio`` float32 ``[N]``,
    its caption and its ground truth (digit, colour, motion, pitch, clicks; see
    :func:`~mmtok.datasets.moving_digits.corpus.load_ground_truth`).

    Not :class:`mmtok.data.ingest.Clip`, a decoded record of any corpus, which has no ground truth."""

    id: str
    caption: str
    frames: np.ndarray
    audio: np.ndarray
    truth: dict[str, Any]
    path: Path | None = None

    @property
    def held_out(self) -> bool:
        return bool(self.truth.get("held_out", False))


def corpus_settings(corpus_dir: str | Path) -> dict[str, Any]:
    """``corpus.json``'s settings (size, glyph_size, fps, sample_rate, num_frames) of a generated corpus."""
    path = Path(corpus_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"no corpus.json in {corpus_dir}: not a Moving-Digits corpus "
                                "(python data/moving_digits.py --out DIR)")
    meta = json.loads(path.read_text())
    cfg = meta.get("config", meta)
    return {k: cfg[k] for k in ("size", "glyph_size", "fps", "sample_rate", "num_frames") if k in cfg}


def load_clips(corpus_dir: str | Path, *, split: str = "test", limit: int | None = None,
               held_out: bool | None = None, num_frames: int | None = None) -> list[LabeledClip]:
    """The first ``limit`` clips of ``split`` (optionally only held-out / only seen combinations), decoded.

    Frames are read at the corpus' fps (``num_frames`` of them, default the corpus'), audio at its sample rate,
    trimmed / zero-padded to the clip's duration. Raises ``FileNotFoundError`` for a missing corpus.
    """
    from mmtok.data.media import read_audio, read_video

    corpus_dir = Path(corpus_dir)
    settings = corpus_settings(corpus_dir)
    truth = load_ground_truth(corpus_dir)
    fps, sr = float(settings["fps"]), int(settings["sample_rate"])
    frames_n = int(num_frames or settings["num_frames"])
    clips: list[LabeledClip] = []
    with open(corpus_dir / "manifest.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records:
        if rec.get("split") != split or rec["id"] not in truth:
            continue
        gt = truth[rec["id"]]
        if held_out is not None and bool(gt.get("held_out", False)) != held_out:
            continue
        path = corpus_dir / rec["video"]
        frames = read_video(path, fps=fps, num_frames=frames_n, pad=True)
        samples = round(frames_n / fps * sr)
        wave = read_audio(path, sample_rate=sr, mono=True)
        wave = np.pad(wave, (0, max(0, samples - len(wave))))[:samples].astype(np.float32)
        clips.append(LabeledClip(rec["id"], rec["caption"], frames, wave, gt, path))
        if limit is not None and len(clips) >= limit:
            break
    return clips


def make_probe(corpus_dir: str | Path, seed: int = 0) -> MovingDigitsProbe:
    """A probe matched to the corpus' frame size, glyph size, fps and sample rate."""
    s = corpus_settings(corpus_dir)
    return MovingDigitsProbe(size=int(s["size"]), glyph_size=s.get("glyph_size"), fps=float(s["fps"]),
                             sample_rate=int(s["sample_rate"]), seed=seed)


# ---------------------------------------------------------------------------------------------- text-to-video
def score_t2v(probe: MovingDigitsProbe, generated: Sequence[np.ndarray], truths: Sequence[dict[str, Any]],
              *, prefix: str = "t2v", references: Sequence[np.ndarray] | None = None
              ) -> tuple[list[Metric], list[dict[str, Any]]]:
    """Digit, colour and direction accuracy of generated clips (uint8 ``[T, H, W, 3]``) against their prompts'
    ground truth. ``references``: the ground-truth clips, probed the same way for the ``reference`` column."""
    if len(generated) != len(truths):
        raise ValueError(f"{len(generated)} generated clips for {len(truths)} prompts")
    readings = [probe.read_video(g) for g in generated]
    records = [{"digit": r.digit, "color": r.color, "direction": r.direction,
                "correct": {"digit": r.digit == t["digit"], "color": r.color == t["color"],
                            "direction": r.direction == t["direction"]}} for r, t in zip(readings, truths)]
    refs = None
    if references is not None:
        refs = [probe.read_video(c) for c in references]
    chance = {"digit": (1 / 10, "chance (1/10)"), "color": (1 / len(COLORS), f"chance (1/{len(COLORS)})"),
              "direction": (1 / len(DIRECTIONS), f"chance (1/{len(DIRECTIONS)})")}
    metrics = []
    for key in ("digit", "color", "direction"):
        hits = sum(bool(r["correct"][key]) for r in records)
        value = hits / len(records) if records else float("nan")
        ref = None
        if refs:
            ref = float(np.mean([getattr(r, key) == t[key] for r, t in zip(refs, truths)]))
        metrics.append(Metric(f"{prefix}/{key}_accuracy", value, chance[key][0], chance[key][1], True,
                              len(records), ref, interval=wilson_interval(hits, len(records))))
    return metrics, records


# ---------------------------------------------------------------------------------------------- video-to-audio
def score_v2a(probe: MovingDigitsProbe, generated: Sequence[np.ndarray], truths: Sequence[dict[str, Any]],
              *, prefix: str = "v2a", references: Sequence[np.ndarray] | None = None, seed: int = 0
              ) -> tuple[list[Metric], list[dict[str, Any]]]:
    """Pitch (digit) accuracy and click-timing F1 (tolerance: one video frame) of generated soundtracks.

    Baselines: a random digit (1/10); for clicks the better of predicting no clicks and predicting a random number
    (0-3) of clicks at uniformly random times, both scored on the same clips (seeded).
    """
    if len(generated) != len(truths):
        raise ValueError(f"{len(generated)} generated soundtracks for {len(truths)} clips")
    tol = 1.0 / probe.fps
    rng = np.random.default_rng(seed)
    records, f1s, none_f1, rand_f1 = [], [], [], []
    for wave, t in zip(generated, truths):
        reading = probe.read_audio(np.asarray(wave, np.float32).reshape(-1))
        truth_clicks = [float(x) for x in t.get("bounce_times", [])]
        f1 = click_f1(reading.click_times, truth_clicks, tol)
        duration = len(np.asarray(wave).reshape(-1)) / probe.sample_rate
        random_clicks = sorted(rng.uniform(0, duration, size=int(rng.integers(0, 4))).tolist())
        f1s.append(f1)
        none_f1.append(click_f1([], truth_clicks, tol))
        rand_f1.append(click_f1(random_clicks, truth_clicks, tol))
        records.append({"digit": reading.digit, "pitch_hz": reading.pitch_hz, "clicks": reading.click_times,
                        "true_clicks": truth_clicks, "click_f1": f1, "correct": {"digit": reading.digit == t["digit"]}})
    ref_pitch = ref_f1 = None
    if references is not None:
        ref_read = [probe.read_audio(np.asarray(w, np.float32).reshape(-1)) for w in references]
        ref_pitch = float(np.mean([r.digit == t["digit"] for r, t in zip(ref_read, truths)]))
        ref_f1 = float(np.mean([click_f1(r.click_times, [float(x) for x in t.get("bounce_times", [])], tol)
                                for r, t in zip(ref_read, truths)]))
    n = len(records)
    hits = sum(bool(r["correct"]["digit"]) for r in records)
    pitch = hits / n if n else float("nan")
    f1 = float(np.mean(f1s)) if n else float("nan")
    b_none = float(np.mean(none_f1)) if n else float("nan")
    b_rand = float(np.mean(rand_f1)) if n else float("nan")
    click_base, click_name = (b_none, f"no clicks ({b_none:.2f}; random clicks {b_rand:.2f})") if b_none >= b_rand \
        else (b_rand, f"random clicks ({b_rand:.2f}; no clicks {b_none:.2f})")
    return [Metric(f"{prefix}/pitch_accuracy", pitch, 0.1, "random digit (1/10)", True, n, ref_pitch,
                   interval=wilson_interval(hits, n)),
            Metric(f"{prefix}/click_f1", f1, click_base, click_name, True, n, ref_f1,
                   interval=mean_interval(f1s))], records


# ------------------------------------------------------------------------------------------------ continuation
def copy_last_frame(context: np.ndarray, num_frames: int) -> np.ndarray:
    """The trivial continuation: the context's last frame repeated ``num_frames`` times (``[num_frames, H, W, 3]``)."""
    context = np.asarray(context)
    if context.ndim != 4 or len(context) == 0:
        raise ValueError(f"context must be [T>=1, H, W, 3], got shape {context.shape}")
    return np.repeat(context[-1:], int(num_frames), axis=0)


def _frames_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames."""
    return float(psnr(torch.tensor(estimate), torch.tensor(truth), (0.0, 255.0)))


def trajectory_error(truth_track: np.ndarray, estimate_frames: np.ndarray, *, frame_diag: float) -> float:
    """Mean distance (pixels) between the true glyph centres ``[T, 2]`` and the ink centres of ``estimate_frames``.

    A frame where no glyph is visible counts as the frame diagonal (``frame_diag``), the worst possible miss.
    """
    track = centroid_track(np.asarray(estimate_frames))
    truth_track = np.asarray(truth_track, np.float64)
    if track.shape != truth_track.shape:
        raise ValueError(f"track shapes differ: truth {truth_track.shape}, estimate {track.shape}")
    dist = np.linalg.norm(track - truth_track, axis=1)
    return float(np.where(np.isnan(dist), frame_diag, dist).mean())


def score_continuation(generated_new: Sequence[np.ndarray], contexts: Sequence[np.ndarray],
                       truths_new: Sequence[np.ndarray]) -> tuple[list[Metric], list[dict[str, Any]]]:
    """PSNR and trajectory error of continued frames against the ground truth's frames, beside copy-last-frame.

    ``generated_new[i]``, ``truths_new[i]``: uint8 ``[K, H, W, 3]`` (only the new frames); ``contexts[i]``: the
    observed frames (the last one is what copy-last-frame repeats). The true track is the ink centre of the true
    frames (the same measurement applied to both).
    """
    if not (len(generated_new) == len(contexts) == len(truths_new)):
        raise ValueError("generated, contexts and truths must have the same length")
    records, p_gen, p_copy, e_gen, e_copy = [], [], [], [], []
    for gen, ctx, tru in zip(generated_new, contexts, truths_new):
        gen, tru = np.asarray(gen), np.asarray(tru)
        if gen.shape != tru.shape:
            raise ValueError(f"continuation shape {gen.shape} differs from the truth's {tru.shape}")
        copy = copy_last_frame(ctx, len(tru))
        diag = float(np.hypot(*tru.shape[1:3]))
        truth_track = centroid_track(tru)
        rec = {"psnr": _frames_psnr(gen, tru), "psnr_copy_last": _frames_psnr(copy, tru),
               "trajectory_error": trajectory_error(truth_track, gen, frame_diag=diag),
               "trajectory_error_copy_last": trajectory_error(truth_track, copy, frame_diag=diag)}
        records.append(rec)
        p_gen.append(rec["psnr"]); p_copy.append(rec["psnr_copy_last"])
        e_gen.append(rec["trajectory_error"]); e_copy.append(rec["trajectory_error_copy_last"])
    n = len(records)

    def mean(xs):
        return float(np.mean(xs)) if xs else float("nan")

    return [Metric("continuation/psnr", mean(p_gen), mean(p_copy), "copy last frame", True, n, unit="dB",
                   interval=mean_interval(p_gen)),
            Metric("continuation/trajectory_error", mean(e_gen), mean(e_copy), "copy last frame", False, n,
                   unit="px", interval=mean_interval(e_gen))], records


# ------------------------------------------------------------------------------------------------- tokenizers
RECON_PREFIX = "tokenizer_recon"   # the probes' metrics on tokenizer reconstructions


@torch.no_grad()
def tokenizer_reconstruction(bundle: Any, clips: Sequence[LabeledClip], *, batch_size: int = 4,
                             probe: MovingDigitsProbe | None = None) -> list[Metric]:
    """Video PSNR / SSIM and audio SI-SNR of the bundle's tokenizers on ``clips`` (audio at the LM's RVQ levels).

    Baselines: blank frames (each frame filled with its top-left pixel, the background) for PSNR / SSIM; another
    clip's audio (the clips rotated by one) for SI-SNR.

    With a ``probe``, the reconstructions are also read like generated media (``tokenizer_recon/{digit,color,
    direction,pitch}_accuracy``, ``tokenizer_recon/click_f1``): what a perfect LM could score through these
    tokenizers, the ceiling they put on the t2v and v2a metrics.
    """
    out: list[Metric] = []
    if not clips:
        return out
    if bundle.video is not None:
        vt = bundle.video
        ps, ss, bps, bss = [], [], [], []
        recon_frames: list[np.ndarray] = []
        for i in range(0, len(clips), batch_size):
            batch = np.stack([c.frames for c in clips[i:i + batch_size]])            # [B, T, H, W, 3]
            x = torch.from_numpy(batch)
            ref = from_uint8(x)                                                       # [B, 3, T, H, W] in [-1, 1]
            est = vt.decode(vt.encode(x)).float().clamp(-1, 1)[:, :, : ref.shape[2]]
            blank = ref[..., :1, :1].expand_as(ref)                                   # background colour
            for b in range(ref.shape[0]):
                r, e, z = (t[b].transpose(0, 1) for t in (ref, est, blank))          # [T, 3, H, W]
                ps.append(float(psnr(e, r, (-1.0, 1.0)))); ss.append(float(ssim(e, r, (-1.0, 1.0))))
                bps.append(float(psnr(z, r, (-1.0, 1.0)))); bss.append(float(ssim(z, r, (-1.0, 1.0))))
                if probe is not None:
                    recon_frames.append(to_uint8(est[b]).numpy())                     # uint8 [T, H, W, 3]
        n = len(ps)
        out += [Metric("tokenizer/video_psnr", float(np.mean(ps)), float(np.mean(bps)), "blank frames", True, n,
                       unit="dB"),
                Metric("tokenizer/video_ssim", float(np.mean(ss)), float(np.mean(bss)), "blank frames", True, n)]
        if probe is not None:
            out += score_t2v(probe, recon_frames, [c.truth for c in clips], prefix=RECON_PREFIX,
                             references=[c.frames for c in clips])[0]
    if bundle.audio is not None:
        at = bundle.audio
        levels = getattr(bundle, "num_audio_levels", None)
        waves = torch.from_numpy(np.stack([c.audio for c in clips]))                  # [B, N]
        vals, recon_waves = [], []
        for i in range(0, len(clips), batch_size):
            w = waves[i:i + batch_size, None]                                          # [B, 1, N]
            recon = at.decode(at.encode(w, num_quantizers=levels))[..., : w.shape[-1]]
            if recon.shape[-1] < w.shape[-1]:
                recon = torch.nn.functional.pad(recon, (0, w.shape[-1] - recon.shape[-1]))
            vals += si_snr(recon[:, 0], w[:, 0]).tolist()
            if probe is not None:
                recon_waves += list(recon[:, 0].float().numpy())
        other = waves.roll(1, dims=0)
        base = si_snr(other, waves).tolist() if len(clips) > 1 else [float("nan")]
        out.append(Metric("tokenizer/audio_si_snr", float(np.mean(vals)), float(np.mean(base)),
                          "another clip's audio", True, len(vals), unit="dB"))
        if probe is not None:
            out += score_v2a(probe, recon_waves, [c.truth for c in clips], prefix=RECON_PREFIX,
                             references=[c.audio for c in clips])[0]
    return out


# ------------------------------------------------------------------------------------------ zero-shot classes
def digit_labels(corpus_dir: str | Path) -> dict[str, int]:
    """``{clip id: digit}`` of every clip of a generated corpus (its ground truth): the class of each clip in zero-shot
    digit classification."""
    return {cid: int(r["digit"]) for cid, r in load_ground_truth(corpus_dir).items()}


def digit_prompts(template: str = "a video of the digit {}", names: Sequence[str] = DIGIT_WORDS) -> list[str]:
    """One text prompt per class, e.g. ``"a video of the digit seven"``."""
    if "{}" not in template:
        raise ValueError(f"the prompt template needs a '{{}}' for the class name, got {template!r}")
    return [template.format(n) for n in names]


# --------------------------------------------------------------------------------------------- linear probes
# What a linear probe on clip embeddings predicts, and from which modality's embedding: the glyph's digit, colour and
# initial direction are in the frames, the tone's pitch in the soundtrack (the pitch names the digit, so its classes
# are the digit's, read from the other modality).
PROBE_LABELS = {"digit": "video", "color": "video", "direction": "video", "pitch": "audio"}


def probe_labels(corpus_dir: str | Path) -> dict[str, dict[str, int]]:
    """``{label: {clip id: class}}`` of every clip of a generated corpus, for each label of :data:`PROBE_LABELS`:
    ``digit`` (0-9), ``color`` (index in :data:`COLORS`), ``direction`` (index in :data:`DIRECTIONS`, the initial
    motion the captions name) and ``pitch`` (index of the tone in :data:`TONE_HZ`)."""
    colors, directions = list(COLORS), list(DIRECTIONS)
    tones = [round(float(hz), 3) for hz in TONE_HZ]
    out: dict[str, dict[str, int]] = {name: {} for name in PROBE_LABELS}
    for cid, r in load_ground_truth(corpus_dir).items():
        out["digit"][cid] = int(r["digit"])
        out["color"][cid] = colors.index(r["color"])
        out["direction"][cid] = directions.index(r["direction"])
        out["pitch"][cid] = tones.index(round(float(r["tone_hz"]), 3))
    return out
