"""Evaluate a trained video tokenizer: PSNR, SSIM, codebook utilization, bits per pixel, compression ratio,
encode/decode throughput, and side-by-side originals / reconstructions.

    python recipes/eval_video_tokenizer.py model=outputs/demo/video_tokenizer/export \\
        data.source=outputs/demo/corpus/manifest.jsonl data.split=test out=outputs/demo/video_tokenizer/eval

    python recipes/eval_video_tokenizer.py model=outputs/real64/video_tokenizer/export \
        data.source=outputs/real_media/video.jsonl data.split=validation out=outputs/real64/eval
    python recipes/eval_video_tokenizer.py model=... data.source=my/clips data.split=null out=...   # a folder

Writes ``<out>/metrics.json`` and ``<out>/side_by_side.gif`` + ``.mp4`` (originals above, reconstructions below).
``data.source`` is a manifest (``data.split`` picks the split; the real-media ``video.jsonl`` splits by source) or
a folder of videos and images (no split). Clips are up to ``max_clips`` readable records, taken in turn from each
source of the split (:func:`mmtok.data.ingest.interleave_sources`), each its first ``num_frames`` frames at ``fps``,
shorter side resized to ``size`` and centre-cropped; unreadable files are skipped and counted.

Metrics: PSNR (dB, of each clip's uint8 frames, capped at 100; mean over clips) and SSIM (Gaussian 11x11 window,
sigma 1.5, per frame and RGB channel, averaged), both :mod:`mmtok.metrics`; codebook utilization (distinct codes used
over the whole eval set / codebook size) and code perplexity, bits per clip ``= T'H'W' log2(K)``, bits per pixel
``= bits per clip / (T H W)``, compression ratio ``= 24 bits per RGB pixel / bpp``, encode and decode clips/s and
frames/s (batch ``batch_size``, after one warm-up batch); and PSNR and SSIM per source (``per_source``) when the
manifest names its records' sources. Temporal redundancy of the codes, what the LM's run-length conditions
(:mod:`mmtok.run_length`, ``data.video_runs``) can gain on this footage: ``repeated_code_fraction`` (cells of latent
frames 1..T'-1 equal to the same cell one latent frame earlier) and ``run_length_ratio`` (tokens of each clip's
run-length form over its cells, runs up to a whole latent frame; 1.0: nothing saved).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


import torch
from tqdm import tqdm

from mmtok.data.ingest import ClipRecord
from mmtok.data.media import write_video
from mmtok.frames import to_uint8
from mmtok.io import atomic_write, progress_enabled
from mmtok.metrics import psnr, ssim
from mmtok.run_length import run_length_encode_video
from mmtok.video import VideoTokenizer
from recipes.common import build_arg_parser, load_config
from mmtok.data.video_clips import VideoClipConfig, find_records, fixed_clips, write_comparison_gif


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


def load_eval_clips(cfg: EvalConfig) -> tuple[torch.Tensor, list[dict[str, str]], list[ClipRecord]]:
    """The evaluation clips (uint8 ``[N, T, H, W, 3]``), the unreadable records skipped, and the records of the
    clips, in order."""
    data_cfg = VideoClipConfig(source=cfg.data.source, split=cfg.data.split, num_frames=cfg.data.num_frames,
                               fps=cfg.data.fps, size=cfg.data.size)
    clips, records, bad = fixed_clips(find_records(data_cfg), data_cfg, cfg.max_clips)
    return clips, bad, records


@torch.no_grad()
def evaluate(model: VideoTokenizer, clips: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Metrics of ``model`` on uint8 clips ``[N, T, H, W, 3]``; also returns the reconstructions and each clip's PSNR
    and SSIM (``_reconstructions``, ``_clip_psnr``, ``_clip_ssim``: tensors, popped before the metrics are saved)."""
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
    bits_per_clip = tl * hl * wl * math.log2(model.codebook_size)
    bpp = bits_per_clip / (t * h * w)
    clip_psnr = psnr(recon, clips, (0.0, 255.0), per_item=True, max_db=100.0)                # [N]
    clip_ssim = ssim(recon.movedim(-1, -3), clips.movedim(-1, -3), (0.0, 255.0), per_item=True)  # [N]
    repeated = (codes_all[:, 1:] == codes_all[:, :-1]).double().mean() if tl > 1 else torch.tensor(0.0)
    run_tokens = sum(len(run_length_encode_video(c)) for c in codes_all)
    return {
        "num_clips": n, "clip_shape": [t, h, w], "code_shape": [tl, hl, wl],
        "codebook_size": model.codebook_size,
        "psnr": float(clip_psnr.mean()), "psnr_std": float(clip_psnr.std()) if n > 1 else 0.0,
        "ssim": float(clip_ssim.mean()),
        "codebook_utilization": float((counts > 0).double().mean()),
        "code_perplexity": float(entropy.exp()),
        "repeated_code_fraction": float(repeated), "run_length_ratio": run_tokens / codes_all.numel(),
        "bits_per_clip": bits_per_clip, "bits_per_pixel": bpp, "compression_ratio": 24.0 / bpp,
        "encode_clips_per_s": n / enc_time, "encode_frames_per_s": n * t / enc_time,
        "decode_clips_per_s": n / dec_time, "decode_frames_per_s": n * t / dec_time,
        "_reconstructions": recon, "_clip_psnr": clip_psnr, "_clip_ssim": clip_ssim,
    }


def per_source(records: list[ClipRecord], clip_psnr: torch.Tensor, clip_ssim: torch.Tensor) -> dict[str, dict]:
    """Mean PSNR and SSIM of each source's clips (the manifest's ``source`` field; empty when no record has one)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if "source" in r.meta:
            groups.setdefault(str(r.meta["source"]), []).append(i)
    return {name: {"clips": len(idx), "psnr": float(clip_psnr[idx].mean()), "ssim": float(clip_ssim[idx].mean())}
            for name, idx in sorted(groups.items())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser(__doc__.split("\n")[0]).parse_args(argv)
    cfg: EvalConfig = load_config(EvalConfig, args.config, args.overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {cfg.model} (expected a save_pretrained folder with config.json)")
    model = VideoTokenizer.from_pretrained(cfg.model).eval()
    clips, bad, records = load_eval_clips(cfg)
    metrics = evaluate(model, clips, cfg.batch_size)
    recon = metrics.pop("_reconstructions")
    sources = per_source(records, metrics.pop("_clip_psnr"), metrics.pop("_clip_ssim"))
    metrics.update(model=str(cfg.model), source=cfg.data.source, split=cfg.data.split, bad_files=bad,
                   torch_threads=torch.get_num_threads(), clip_ids=[r.id for r in records],
                   **({"per_source": sources} if sources else {}))
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
