"""Evaluate a trained video tokenizer: PSNR, SSIM, codebook utilization, bits per pixel, compression ratio,
encode/decode throughput, and side-by-side originals / reconstructions.

    python recipes/eval_video_tokenizer.py model=outputs/demo/video_tokenizer/export \\
        data.source=outputs/demo/corpus/manifest.jsonl data.split=test out=outputs/demo/video_tokenizer/eval

Writes ``<out>/metrics.json`` and ``<out>/side_by_side.gif`` + ``.mp4`` (originals above, reconstructions below).
Clips are the first ``max_clips`` readable records of the split, each its first ``num_frames`` frames at ``fps``,
shorter side resized to ``size`` and centre-cropped; unreadable files are skipped and counted.

Metrics: PSNR (dB, of each clip's uint8 frames, capped at 100; mean over clips) and SSIM (Gaussian 11x11 window,
sigma 1.5, per frame and RGB channel, averaged), both :mod:`mmtok.metrics`; codebook utilization (distinct codes used
over the whole eval set / codebook size) and code perplexity, bits per pixel ``= T'H'W' log2(K) / (T H W)``,
compression ratio ``= 24 bits per RGB pixel / bpp``, encode and decode clips/s and frames/s (batch ``batch_size``,
after one warm-up batch).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


import numpy as np
import torch
from tqdm import tqdm

from mmtok.data.media import MediaError, write_video
from mmtok.frames import to_uint8
from mmtok.io import atomic_write, progress_enabled
from mmtok.metrics import psnr, ssim
from mmtok.video import VideoTokenizer
from recipes.common import build_arg_parser, load_config
from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records, write_comparison_gif


@dataclass
class EvalData:
    source: str = "outputs/demo/corpus/manifest.jsonl"
    split: Optional[str] = "test"
    num_frames: int = 17
    fps: float = 8.0
    size: int = 64


@dataclass
class EvalConfig:
    model: str = "outputs/demo/video_tokenizer/export"  # save_pretrained folder (the trainer's export_dir)
    out: str = "outputs/demo/video_tokenizer/eval"
    data: EvalData = field(default_factory=EvalData)
    max_clips: int = 64
    batch_size: int = 8
    num_side_by_side: int = 4
    num_threads: Optional[int] = None


def load_eval_clips(cfg: EvalConfig) -> tuple[torch.Tensor, list[dict[str, str]]]:
    data_cfg = VideoClipConfig(source=cfg.data.source, split=cfg.data.split, num_frames=cfg.data.num_frames,
                               fps=cfg.data.fps, size=cfg.data.size)
    data = RandomClips(find_records(data_cfg), data_cfg, seed=0)
    clips, bad = [], []
    for i in range(len(data)):
        if len(clips) == cfg.max_clips:
            break
        try:
            clips.append(data.load(i, None))
        except MediaError as e:
            bad.append({"id": data.records[i].id, "file": str(e.path), "reason": e.reason})
    if not clips:
        raise ValueError(f"no readable clips in {cfg.data.source} (split {cfg.data.split!r}); {len(bad)} bad files")
    return torch.from_numpy(np.stack(clips)), bad


@torch.no_grad()
def evaluate(model: VideoTokenizer, clips: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Metrics of ``model`` on uint8 clips ``[N, T, H, W, 3]``; also returns the reconstructions."""
    model.eval()
    n, t, h, w, _ = clips.shape
    codes, recons = [], []
    bar = tqdm(total=n, desc="eval", unit="clip", disable=not progress_enabled())
    model.encode(clips[:1])                      # warm-up (allocator, oneDNN primitive cache)
    model.decode(model.encode(clips[:1]))
    enc_time = dec_time = 0.0
    for i in range(0, n, batch_size):
        batch = clips[i:i + batch_size]
        t0 = time.perf_counter()
        c = model.encode(batch)
        t1 = time.perf_counter()
        r = to_uint8(model.decode(c))
        t2 = time.perf_counter()
        enc_time, dec_time = enc_time + t1 - t0, dec_time + t2 - t1
        codes.append(c)
        recons.append(r)
        bar.update(len(batch))
    bar.close()
    codes_all, recon = torch.cat(codes), torch.cat(recons)
    counts = torch.bincount(codes_all.flatten(), minlength=model.codebook_size).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    tl, hl, wl = codes_all.shape[1:]
    bpp = tl * hl * wl * math.log2(model.codebook_size) / (t * h * w)
    clip_psnr = psnr(recon, clips, (0.0, 255.0), per_item=True, max_db=100.0)                # [N]
    clip_ssim = ssim(recon.movedim(-1, -3), clips.movedim(-1, -3), (0.0, 255.0), per_item=True)  # [N]
    return {
        "num_clips": n, "clip_shape": [t, h, w], "code_shape": [tl, hl, wl],
        "codebook_size": model.codebook_size,
        "psnr": float(clip_psnr.mean()), "psnr_std": float(clip_psnr.std()) if n > 1 else 0.0,
        "ssim": float(clip_ssim.mean()),
        "codebook_utilization": float((counts > 0).double().mean()),
        "code_perplexity": float(entropy.exp()),
        "bits_per_pixel": bpp, "compression_ratio": 24.0 / bpp,
        "encode_clips_per_s": n / enc_time, "encode_frames_per_s": n * t / enc_time,
        "decode_clips_per_s": n / dec_time, "decode_frames_per_s": n * t / dec_time,
        "_reconstructions": recon,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser(__doc__.split("\n")[0]).parse_args(argv)
    cfg: EvalConfig = load_config(EvalConfig, args.config, args.overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {cfg.model} (expected a save_pretrained folder with config.json)")
    model = VideoTokenizer.from_pretrained(cfg.model).eval()
    clips, bad = load_eval_clips(cfg)
    metrics = evaluate(model, clips, cfg.batch_size)
    recon = metrics.pop("_reconstructions")
    metrics.update(model=str(cfg.model), source=cfg.data.source, split=cfg.data.split, bad_files=bad,
                   torch_threads=torch.get_num_threads())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    k = min(cfg.num_side_by_side, len(clips))
    write_comparison_gif(out / "side_by_side.gif", clips[:k], recon[:k], cfg.data.fps)
    grid = torch.cat([torch.cat(list(clips[:k]), dim=2), torch.cat(list(recon[:k]), dim=2)], dim=1).numpy()
    write_video(out / "side_by_side.mp4", grid, cfg.data.fps, crf=12)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    print(" | ".join(f"{key} {metrics[key]:.4g}" for key in
                     ("psnr", "ssim", "codebook_utilization", "bits_per_pixel", "compression_ratio",
                      "encode_frames_per_s", "decode_frames_per_s")))
    return metrics


if __name__ == "__main__":
    main()
