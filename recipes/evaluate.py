"""Evaluate a trained mmtok model on the Moving-Digits corpus: generate, probe, and score against baselines.

    python recipes/evaluate.py --config recipes/configs/evaluate_demo.yaml
    python recipes/evaluate.py model=outputs/demo/lm/export corpus=outputs/demo/corpus out=outputs/demo/eval \\
        shards=outputs/demo/tokens num_t2v=16 num_v2a=16 [--force]

``model`` is an exported model directory (the LM and its tokenizer bundle side by side, as ``recipes/pretrain.py``
writes it); ``corpus`` the generated corpus (manifest, ground truth, ``corpus.json``). Every metric is reported beside
its chance or trivial baseline and beside the probe's score on the ground truth itself (the dataset's scoring in
``mmtok.datasets.moving_digits.evaluation``, the LM's losses and alignment metrics in ``lm.evaluation``):

=============================  ===============================================  ====================================
metric                         how                                              baseline
=============================  ===============================================  ====================================
t2v/{digit,color,direction}    probe on clips generated from test captions of   chance: 1/10, 1/6, 1/8
_accuracy                      combinations seen in training
t2v_held_out/...               the same on held-out combinations (those only    chance
                               in ``split``: test or validation)
t2v_phrasing/...               seen test clips prompted in held-out phrasings   chance
v2a/pitch_accuracy             tone pitch of audio generated for test clips     random digit (1/10)
v2a/click_f1                   bounce clicks within one frame (1/fps)           no clicks / random clicks
continuation/psnr,             the last ``T - context_frames`` frames generated copy the last observed frame
trajectory_error               from the first ``context_frames``
tokenizer/video_psnr, _ssim,   encode + decode of test clips                    blank frames; another clip's audio
audio_si_snr
tokenizer_recon/{digit,color,  the t2v / v2a probes on those reconstructions:   chance, as for t2v / v2a
direction,pitch}_accuracy,     the ceiling the tokenizers put on generation
click_f1
lm/loss_<task>                 token NLL on the shards' test split (if given)   uniform over the output's codes
align/{t2v,v2t,v2a,a2v}_R@k,   zero-shot retrieval with the alignment head      random ranking (k/N, (N+1)/2)
_median_rank                   (models trained with ``alignment.weight``)
align/zero_shot_digit_accuracy "a video of the digit seven" prompts, nearest     chance (1/10)
=============================  ===============================================  ====================================

Outputs in ``out``: ``metrics.json`` (``{"metrics": [...], "config": ..., "seconds": ...}``), ``metrics.md`` (the
table), ``samples.json`` + ``samples/`` (GIF / browser-playable MP4 with AAC audio / WAV of the first
``media_samples`` samples of each task beside the ground truth, for the demo page). ``metrics.json`` is written last
(atomically) and marks the evaluation done: a rerun skips unless ``--force``. The number of generated samples per task
is configurable (``num_*``), which is what keeps the demo in its time budget.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence


import numpy as np
import torch

from lm.evaluation import alignment_metrics, lm_task_losses
from mmtok.datasets.moving_digits import (
    LabeledClip, corpus_settings, digit_labels, digit_prompts, held_out_caption, load_clips, make_probe,
    score_continuation, score_t2v, score_v2a, tokenizer_reconstruction,
)
from mmtok.io import atomic_write, progress_enabled
from mmtok.metrics import Metric, metrics_table
from recipes.common import build_arg_parser, load_config

DONE_FILE = "metrics.json"


@dataclass
class SamplingSettings:
    """Sampling for every generation task (see ``lm.generation.SamplingConfig``)."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    cfg_scale: Optional[float] = None          # guidance hurt v2a and continuation on the demo (evaluate_demo.yaml)
    seed: int = 0


@dataclass
class EvalConfig:
    model: str = "outputs/demo/lm/export"      # exported model dir (LM + bundle)
    corpus: str = "outputs/demo/corpus"        # Moving-Digits corpus dir
    out: str = "outputs/demo/eval"
    shards: Optional[str] = None               # token shards for per-task LM losses and retrieval (None: skipped)
    num_alignment: int = 64                    # clips for zero-shot retrieval (models with an alignment head)
    split: str = "test"
    num_t2v: int = 48                          # t2v prompts from combinations seen in training
    num_t2v_held_out: int = 48                 # t2v prompts from held-out combinations
    num_t2v_phrasing: int = 48                 # t2v prompts in phrasings no training caption uses
    num_v2a: int = 48
    num_continuation: int = 48
    num_reconstruction: int = 64
    context_frames: int = 5                    # observed frames before continuation (a whole number of latent frames)
    lm_tasks: list[str] = field(default_factory=lambda: ["t2v", "v2a", "vcont"])
    lm_loss_batches: int = 4
    lm_loss_batch_size: int = 4
    batch_size: int = 8                        # generation batch (prompts / clips per call)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    # Text-to-video's own settings (None: ``sampling``). Video from a caption and audio or frames from a clip differ
    # in how much the condition should steer: guidance helped t2v on the demo and hurt v2a and continuation.
    t2v_sampling: Optional[SamplingSettings] = None
    media_samples: int = 4                     # samples per task written as media for the page (0: none)
    threads: Optional[int] = None              # torch CPU threads (None: torch's default)
    probe_seed: int = 0


# ------------------------------------------------------------------------------------------------------- media
def _write_clip(path: Path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
                sample_rate: int | None = None) -> str:
    from mmtok.data.media import write_video
    from mmtok.data.media import write_gif

    if path.suffix == ".gif":
        write_gif(path, frames, fps)
    else:
        write_video(path, frames, fps, audio=audio, sample_rate=sample_rate if audio is not None else None,
                    audio_codec="aac", faststart=True)
    return path.name


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> str:
    from mmtok.data.media import write_audio

    write_audio(path, np.asarray(wave, np.float32).reshape(1, -1), sample_rate)
    return path.name


# ------------------------------------------------------------------------------------------------- generation
def _batches(items: Sequence[Any], size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


def _sampling_kwargs(cfg: EvalConfig, offset: int, task: str = "") -> dict[str, Any]:
    s = cfg.t2v_sampling if task == "t2v" and cfg.t2v_sampling is not None else cfg.sampling
    return dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale,
                seed=None if s.seed is None else s.seed + offset)


def generate_t2v(gen: Any, clips: Sequence[LabeledClip], cfg: EvalConfig, num_frames: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for k, batch in enumerate(_batches(clips, cfg.batch_size)):
        result = gen.text_to_video([c.caption for c in batch], num_frames=num_frames,
                                   progress=progress_enabled(), **_sampling_kwargs(cfg, k, "t2v"))
        out += [result.frames(i).numpy() for i in range(len(result))]
    return out


def generate_v2a(gen: Any, clips: Sequence[LabeledClip], cfg: EvalConfig) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for k, batch in enumerate(_batches(clips, cfg.batch_size)):
        result = gen.video_to_audio([torch.from_numpy(c.frames) for c in batch], progress=progress_enabled(),
                                    **_sampling_kwargs(cfg, 1000 + k))
        out += [result.audio[i, 0].numpy() for i in range(len(result))]
    return out


def generate_continuation(gen: Any, clips: Sequence[LabeledClip], cfg: EvalConfig) -> list[np.ndarray]:
    """Whole continued clips (decoded context + new frames), uint8 ``[T, H, W, 3]`` each."""
    out: list[np.ndarray] = []
    for k, batch in enumerate(_batches(clips, cfg.batch_size)):
        new = len(batch[0].frames) - cfg.context_frames
        result = gen.continue_video([torch.from_numpy(c.frames[:cfg.context_frames]) for c in batch], new,
                                    progress=progress_enabled(), **_sampling_kwargs(cfg, 2000 + k))
        if result.new_frames_from != cfg.context_frames:
            raise RuntimeError(f"continuation starts at frame {result.new_frames_from}, expected "
                               f"{cfg.context_frames}")
        out += [result.frames(i).numpy() for i in range(len(result))]
    return out


# ------------------------------------------------------------------------------------------------------- run
def run(cfg: EvalConfig, force: bool = False) -> dict[str, Any]:
    """Generate, score and write ``metrics.json`` / ``metrics.md`` / ``samples.json`` into ``cfg.out``.

    Returns the metrics document. Skips (and returns the existing document) when ``metrics.json`` exists and
    ``force`` is False.
    """
    out = Path(cfg.out)
    done = out / DONE_FILE
    if done.is_file() and not force:
        print(f"evaluate: {done} exists, skipping (--force to redo)", flush=True)
        return json.loads(done.read_text())
    model_dir = Path(cfg.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir} (train with recipes/pretrain.py)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from lm.generation import MultimodalGenerator

    t0 = time.time()
    settings = corpus_settings(cfg.corpus)
    num_frames = int(settings["num_frames"])
    if not 1 <= cfg.context_frames < num_frames:
        raise ValueError(f"context_frames must be in [1, {num_frames}), got {cfg.context_frames}")
    print(f"evaluate: loading {model_dir}", flush=True)
    gen = MultimodalGenerator.from_pretrained(model_dir, num_frames=num_frames)
    probe = make_probe(cfg.corpus, seed=cfg.probe_seed)
    fps, sr = float(settings["fps"]), int(settings["sample_rate"])
    samples_dir = out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    metrics: list[Metric] = []
    samples: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    n_media = max(0, int(cfg.media_samples))

    def gt_media(c: LabeledClip) -> dict[str, str]:
        return {"truth_gif": _write_clip(samples_dir / f"gt_{c.id}.gif", c.frames, fps),
                "truth_mp4": _write_clip(samples_dir / f"gt_{c.id}.mp4", c.frames, fps, c.audio, sr)}

    # ---- text to video: seen and held-out combinations, and held-out phrasings, scored separately
    for prefix, count, held in (("t2v", cfg.num_t2v, False), ("t2v_held_out", cfg.num_t2v_held_out, True),
                                ("t2v_phrasing", cfg.num_t2v_phrasing, False)):
        if count <= 0:
            continue
        clips = load_clips(cfg.corpus, split=cfg.split, limit=count, held_out=held)
        if not clips:
            print(f"evaluate: no {'held-out' if held else 'seen'} clips in split {cfg.split!r}; {prefix} skipped",
                  flush=True)
            continue
        if prefix == "t2v_phrasing":   # the same clips, prompted in phrasings no training caption uses
            clips = [replace(c, caption=held_out_caption(c.truth["digit"], c.truth["color"], c.truth["direction"], i))
                     for i, c in enumerate(clips)]
        t = time.time()
        print(f"evaluate: {prefix}: {len(clips)} prompts", flush=True)
        videos = generate_t2v(gen, clips, cfg, num_frames)
        m, recs = score_t2v(probe, videos, [c.truth for c in clips], prefix=prefix,
                            references=[c.frames for c in clips])
        metrics += m
        for i, (c, r) in enumerate(zip(clips, recs)):
            r.update(id=c.id, prompt=c.caption, truth={k: c.truth[k] for k in ("digit", "color", "direction")})
            if i < n_media:
                r.update(gif=_write_clip(samples_dir / f"{prefix}_{i}.gif", videos[i], fps),
                         mp4=_write_clip(samples_dir / f"{prefix}_{i}.mp4", videos[i], fps), **gt_media(c))
        samples[prefix] = recs
        timings[prefix] = time.time() - t

    # ---- video to audio
    if cfg.num_v2a > 0 and gen.bundle.audio is not None:
        clips = load_clips(cfg.corpus, split=cfg.split, limit=cfg.num_v2a)
        t = time.time()
        print(f"evaluate: v2a: {len(clips)} clips", flush=True)
        waves = generate_v2a(gen, clips, cfg)
        m, recs = score_v2a(probe, waves, [c.truth for c in clips], references=[c.audio for c in clips],
                            seed=cfg.sampling.seed)
        metrics += m
        for i, (c, r) in enumerate(zip(clips, recs)):
            r.update(id=c.id, truth={"digit": c.truth["digit"]})
            if i < n_media:
                r.update(wav=_write_wav(samples_dir / f"v2a_{i}.wav", waves[i], sr),
                         mp4=_write_clip(samples_dir / f"v2a_{i}.mp4", c.frames, fps, waves[i], sr),
                         truth_wav=_write_wav(samples_dir / f"gt_{c.id}.wav", c.audio, sr), **gt_media(c))
        samples["v2a"] = recs
        timings["v2a"] = time.time() - t

    # ---- continuation
    if cfg.num_continuation > 0:
        clips = load_clips(cfg.corpus, split=cfg.split, limit=cfg.num_continuation)
        t = time.time()
        print(f"evaluate: continuation: {len(clips)} clips, {cfg.context_frames} observed frames", flush=True)
        continued = generate_continuation(gen, clips, cfg)
        k = cfg.context_frames
        m, recs = score_continuation([v[k:] for v in continued], [c.frames[:k] for c in clips],
                                     [c.frames[k:] for c in clips])
        metrics += m
        for i, (c, r) in enumerate(zip(clips, recs)):
            r.update(id=c.id, context_frames=k)
            if i < n_media:
                r.update(gif=_write_clip(samples_dir / f"continuation_{i}.gif", continued[i], fps), **gt_media(c))
        samples["continuation"] = recs
        timings["continuation"] = time.time() - t

    # ---- tokenizers
    if cfg.num_reconstruction > 0:
        t = time.time()
        print(f"evaluate: tokenizer reconstruction on {cfg.num_reconstruction} clips", flush=True)
        clips = load_clips(cfg.corpus, split=cfg.split, limit=cfg.num_reconstruction)
        metrics += tokenizer_reconstruction(gen.bundle, clips, batch_size=cfg.batch_size, probe=probe)
        timings["reconstruction"] = time.time() - t

    # ---- per-task LM losses
    if cfg.shards:
        t = time.time()
        print(f"evaluate: LM losses on {cfg.shards} ({cfg.split})", flush=True)
        metrics += lm_task_losses(gen.model, gen.bundle, cfg.shards, tasks=list(cfg.lm_tasks), split=cfg.split,
                                  batch_size=cfg.lm_loss_batch_size, num_batches=cfg.lm_loss_batches)
        timings["lm_losses"] = time.time() - t
        # ---- zero-shot retrieval and classification with the alignment head (when the model has one)
        if getattr(gen.model, "alignment", None) is not None and cfg.num_alignment > 0:
            t = time.time()
            print(f"evaluate: zero-shot retrieval on {cfg.num_alignment} clips", flush=True)
            metrics += alignment_metrics(gen.model, gen.bundle, cfg.shards, digit_labels(cfg.corpus), digit_prompts(),
                                         class_name="digit", split=cfg.split, limit=cfg.num_alignment)
            timings["alignment"] = time.time() - t

    doc = {"metrics": [m.to_dict() for m in metrics], "config": asdict(cfg), "seconds": round(time.time() - t0, 1),
           "stage_seconds": {k: round(v, 1) for k, v in timings.items()}, "model": str(model_dir),
           "corpus": str(cfg.corpus)}
    table = metrics_table(metrics)
    atomic_write(out / "samples.json", json.dumps(samples, indent=1, default=_json_default))
    atomic_write(out / "metrics.md", table)
    atomic_write(done, json.dumps(doc, indent=1, default=_json_default))  # last: marks the evaluation done
    print(table, flush=True)
    print(f"evaluate: wrote {done} in {doc['seconds']} s", flush=True)
    return doc


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_arg_parser("Evaluate a trained mmtok model on the Moving-Digits corpus.")
    parser.add_argument("--force", action="store_true", help="redo even when metrics.json exists")
    args = parser.parse_args(argv)
    cfg = load_config(EvalConfig, args.config, args.overrides)
    return run(cfg, force=args.force)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
