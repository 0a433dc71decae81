"""Rate-distortion of video tokenizers on held-out real clips: PSNR against bits per clip, beside baselines that need
no training, all measured in one run on the same clips.

    python bench/video_rate_distortion.py --manifest outputs/real_media/video.jsonl \\
        --tokenizer real64=outputs/real64/video_tokenizer/export --tokenizer real64_lfq=outputs/real64_lfq/... \\
        [--peer-budget SECONDS --peer-config recipes/configs/video_tokenizer_real64.yaml]
    python bench/video_rate_distortion.py --quick        # a tiny generated clip folder, a random debug tokenizer

Clips: up to ``--max-clips`` records of ``--split`` (default ``validation``: the real-media manifests split by
source, so these are sources no tokenizer trained on) taken in turn from each source, each its first
``--num-frames`` frames at ``--fps``, shorter side resized to ``--size`` and centre-cropped
(``recipes/eval_video_tokenizer.py``'s clips; a folder of videos works too, with ``--split none``).

Rows (every PSNR is :func:`mmtok.metrics.psnr` of each clip's uint8 frames, capped at 100 dB so that a lossless
reconstruction, which is infinite uncapped, keeps the mean finite, then averaged over clips; SSIM likewise):

- ``--tokenizer NAME=DIR``: a ``VideoTokenizer`` export. Bits per clip ``= T'H'W' log2(codebook size)``, exactly;
  also its codebook usage on these clips.
- ``thumbnail TxHxW`` (``--thumbnails``; default 5x8x8 and 5x16x16): area-downsampled RGB at 8 bits per value,
  upsampled back trilinearly (:func:`mmtok.baselines.thumbnail_roundtrip`); bits ``T H W * 3 * 8``, exactly.
- ``H.264 <= B``: libx264 through PyAV at the best CRF whose stream fits ``B`` bits, per clip
  (:func:`mmtok.baselines.h264_within_bits`), for every tokenizer's and thumbnail's ``B``. The bits are each
  stream's packets, averaged; a clip that does not fit even at CRF 51 is counted in ``over_budget``.
- ``magvit2-pytorch``: the peer of ``bench/video_tokenizer.py`` (same layers; 17x64x64 -> 5x8x8, 2^12 LFQ codes,
  3,840 bits per clip) trained from scratch for ``--peer-budget`` seconds of wall clock (give it the wall time the
  mmtok run took) on the data of ``--peer-config``, a video tokenizer training config: its ``data`` section
  (manifest, training split, augmentation) and batch size, so the peer sees what the mmtok tokenizer it races saw.
  It trains in a child process (see ``bench/video_tokenizer.py`` for why) and its row says "not installed" when
  ``magvit2_pytorch`` cannot be imported (an optional peer: ``make bench``).

Output: a markdown table, ``--out`` (default ``bench/results/video_rate_distortion.json``: every row with its
per-clip values and settings) and a plot beside it (``.png``: PSNR against bits per clip, log scale).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))     # this checkout's mmtok and recipes, whichever copy is installed
RESULTS = ROOT / "bench" / "results" / "video_rate_distortion.json"
PEER_CLIP = (17, 64, 64)          # the peer is built for 64x64 clips of 17 frames (bench/video_tokenizer.py)
PEER_LR = 1e-3                    # the peer's learning rate in bench/video_tokenizer.py's race


def parse_thumbnail(text: str) -> tuple[int, int, int]:
    try:
        t, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"a thumbnail is TxHxW, e.g. 5x8x8; got {text!r}") from e
    return t, h, w


def parse_tokenizer(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"a tokenizer is NAME=EXPORT_DIR, got {text!r}")
    return name, Path(path)


def clip_scores(recon: np.ndarray | torch.Tensor, clip: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB, capped at 100) and SSIM of one reconstructed uint8 clip ``[T, H, W, 3]``."""
    from mmtok.metrics import psnr, ssim

    r = torch.as_tensor(np.asarray(recon))[None]
    c = clip[None]
    return (float(psnr(r, c, (0.0, 255.0), per_item=True, max_db=100.0)[0]),
            float(ssim(r.movedim(-1, -3), c.movedim(-1, -3), (0.0, 255.0), per_item=True)[0]))


def summarize(name: str, kind: str, bits: Sequence[float], psnrs: Sequence[float], ssims: Sequence[float],
              **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "bits_per_clip": float(np.mean(bits)), "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "clip_bits": [int(b) if float(b).is_integer() else float(b) for b in bits],   # FSQ: 5^4 is 9.29 bits
            "clip_psnr": [round(p, 4) for p in psnrs], **extra}


# ----------------------------------------------------------------------------------------------------------- rows
def tokenizer_row(name: str, export: Path, clips: torch.Tensor, batch_size: int) -> dict[str, Any]:
    from mmtok.video import VideoTokenizer
    from recipes.eval_video_tokenizer import evaluate

    if not (export / "config.json").is_file():
        raise FileNotFoundError(f"tokenizer {name}: no export at {export} (expected a save_pretrained folder)")
    model = VideoTokenizer.from_pretrained(export).eval()
    m = evaluate(model, clips, batch_size)
    return summarize(name, "mmtok", [m["bits_per_clip"]] * len(clips), m["_clip_psnr"].tolist(),
                     m["_clip_ssim"].tolist(), export=str(export), quantizer=model.config.quantizer,
                     code_shape=m["code_shape"], codebook_size=m["codebook_size"],
                     codebook_usage=m["codebook_utilization"], encode_frames_per_s=m["encode_frames_per_s"],
                     decode_frames_per_s=m["decode_frames_per_s"])


def thumbnail_row(shape: tuple[int, int, int], clips: torch.Tensor) -> dict[str, Any]:
    from mmtok.baselines import thumbnail_roundtrip

    trips = [thumbnail_roundtrip(c, *shape) for c in clips]
    scores = [clip_scores(t.output, c) for t, c in zip(trips, clips)]
    return summarize("thumbnail {}x{}x{}".format(*shape), "thumbnail", [t.bits for t in trips],
                     [s[0] for s in scores], [s[1] for s in scores], thumbnail=list(shape))


def h264_row(budget: int, clips: torch.Tensor, fps: float, steps: int) -> dict[str, Any]:
    from mmtok.baselines import h264_within_bits

    trips = [h264_within_bits(c, fps, budget, steps=steps) for c in clips]
    scores = [clip_scores(t.output, c) for t, c in zip(trips, clips)]
    return summarize(f"H.264 <= {budget} bits", "h264", [t.bits for t in trips], [s[0] for s in scores],
                     [s[1] for s in scores], budget_bits=budget, over_budget=sum(t.bits > budget for t in trips),
                     crf=[t.settings["crf"] for t in trips])


def peer_row(args: argparse.Namespace, clips: torch.Tensor) -> dict[str, Any]:
    """magvit2-pytorch trained for ``--peer-budget`` seconds in a child process, scored on ``clips``."""
    base = {"name": "magvit2-pytorch", "kind": "peer"}
    if importlib.util.find_spec("magvit2_pytorch") is None:
        return {**base, "status": "not installed (pip install --no-deps magvit2-pytorch; see `make bench`)"}
    if tuple(clips.shape[1:4]) != PEER_CLIP:
        return {**base, "status": f"needs {'x'.join(map(str, PEER_CLIP))} clips, these are "
                                  f"{'x'.join(map(str, clips.shape[1:4]))}"}
    if args.peer_config is None:
        return {**base, "status": "no --peer-config (the data and batch size to train it with)"}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(clips, Path(tmp) / "clips.pt")
        job = {"budget": args.peer_budget, "config": str(args.peer_config), "clips": str(Path(tmp) / "clips.pt"),
               "threads": torch.get_num_threads()}
        out = subprocess.run([sys.executable, __file__, "--peer-worker", json.dumps(job)], capture_output=True,
                             text=True, env={**os.environ, "MMTOK_PROGRESS": "0"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()
        return {**base, "status": f"failed: {tail[-1] if tail else f'exit code {out.returncode}'}"}
    result = json.loads(lines[-1][len("RESULT "):])
    return {**summarize("magvit2-pytorch", "peer", [result.pop("bits_per_clip")] * len(clips),
                        result.pop("clip_psnr"), result.pop("clip_ssim")), "status": "ok", **result}


def peer_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The child process of :func:`peer_row`: train the peer on the config's training data, score ``clips``."""
    from omegaconf import OmegaConf

    from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records
    from mmtok.frames import from_uint8, to_uint8

    torch.set_num_threads(job["threads"])
    yaml = OmegaConf.load(job["config"])
    data_cfg: VideoClipConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(VideoClipConfig),
                                                                    yaml.get("data", {})))
    batch_size = int(yaml.get("train", {}).get("batch_size", 8))
    data = RandomClips(find_records(data_cfg), data_cfg, seed=0)
    data.batch(0, batch_size)         # decode before the peer's stand-in torchvision is in place (video_tokenizer.py)
    clips = torch.load(job["clips"])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from video_tokenizer import CODEBOOK, Peer

    torch.manual_seed(0)
    peer = Peer(gan=False)
    opt = torch.optim.AdamW(peer.parameters(), lr=PEER_LR, betas=(0.9, 0.99))
    peer.model.train()
    steps, t0 = 0, time.time()
    while time.time() - t0 < job["budget"]:
        for group in opt.param_groups:
            group["lr"] = PEER_LR * min(1.0, (steps + 1) / 20)
        loss, _ = peer.loss(from_uint8(data.batch(steps, batch_size)), gan=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
        opt.step()
        steps += 1
    peer.model.eval()
    with torch.no_grad():
        recon = torch.cat([to_uint8(peer.reconstruct(from_uint8(clips[i:i + 4])).clamp(-1, 1))
                           for i in range(0, len(clips), 4)])
        codes = peer.encode(from_uint8(clips[:1]))
    scores = [clip_scores(r, c) for r, c in zip(recon, clips)]
    return {"clip_psnr": [s[0] for s in scores], "clip_ssim": [s[1] for s in scores], "steps": steps,
            "budget_s": job["budget"], "batch_size": batch_size, "lr": PEER_LR, "trained_on": data_cfg.source,
            "bits_per_clip": math.prod(codes.shape[1:]) * math.log2(CODEBOOK), "code_shape": list(codes.shape[1:])}


# ----------------------------------------------------------------------------------------------------- reporting
def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | bits per clip | PSNR dB | SSIM | notes |", "|---|---|---|---|---|"]
    for r in rows:
        if "psnr" not in r:
            lines.append(f"| {r['name']} | - | - | - | {r['status']} |")
            continue
        notes = []
        if r["kind"] == "mmtok":
            notes.append(f"{r['quantizer']}, codes {'x'.join(map(str, r['code_shape']))} of "
                         f"{r['codebook_size']}, {100 * r['codebook_usage']:.0f}% used")
        if r["kind"] == "h264" and r["over_budget"]:
            notes.append(f"{r['over_budget']} clips over budget even at CRF 51")
        if r["kind"] == "peer":
            notes.append(f"{r['steps']} steps in {r['budget_s']:g} s")
        lines.append(f"| {r['name']} | {r['bits_per_clip']:,.0f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """PSNR against bits per clip (log scale), one labelled marker per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"mmtok": ("o", "tab:red"), "thumbnail": ("s", "tab:gray"), "h264": ("^", "tab:blue"),
              "peer": ("D", "tab:green")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if "psnr" not in r:
            continue
        marker, colour = styles[r["kind"]]
        ax.scatter(r["bits_per_clip"], r["psnr"], marker=marker, color=colour)
        ax.annotate(r["name"], (r["bits_per_clip"], r["psnr"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("bits per clip")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ quick mode
def quick_inputs(folder: Path) -> tuple[Path, Path]:
    """Three 9-frame 32x32 clips (gradients and a moving square) and a randomly initialised debug tokenizer."""
    from mmtok.data.media import write_video
    from mmtok.video import VideoTokenizer

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for k in range(3):
        frames = np.zeros((9, 32, 32, 3), np.uint8)
        for t in range(9):
            frames[t, ..., 0] = (yy * 6 + t * 10 * k) % 256
            frames[t, ..., 1] = (xx * 5 + 40 * k) % 256
            frames[t, ..., 2] = 60
            y, x = 4 + t * 2, 6 + k * 5
            frames[t, y:y + 8, x:x + 8] = rng.integers(120, 256, 3)
        write_video(folder / "clips" / f"clip{k}.mp4", frames, 8, crf=0)
    torch.manual_seed(0)
    VideoTokenizer.from_preset("debug").save_pretrained(folder / "debug_tokenizer")
    return folder / "clips", folder / "debug_tokenizer"


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=None, help="video manifest (.jsonl) or a folder of clips")
    parser.add_argument("--split", default="validation", help="manifest split to score ('none' for a folder)")
    parser.add_argument("--tokenizer", type=parse_tokenizer, action="append", default=[], metavar="NAME=DIR",
                        help="a VideoTokenizer export to score (repeatable)")
    parser.add_argument("--thumbnails", type=parse_thumbnail, nargs="*", default=None, metavar="TxHxW",
                        help="thumbnail baselines (default: 5x8x8 5x16x16)")
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-clips", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--h264-steps", type=int, default=10, help="CRF bisection steps per clip and budget")
    parser.add_argument("--peer-budget", type=float, default=0.0,
                        help="seconds to train magvit2-pytorch for (0: no peer row)")
    parser.add_argument("--peer-config", type=Path, default=None,
                        help="video tokenizer training YAML whose data (manifest, split, augmentation) and batch "
                             "size the peer trains with")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny generated clip folder and a random debug tokenizer: checks the bench runs")
    parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_worker:
        print("RESULT " + json.dumps(peer_worker(json.loads(args.peer_worker))))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)

    from recipes.eval_video_tokenizer import EvalConfig, EvalData, load_eval_clips

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.manifest, debug = quick_inputs(Path(tmp))
            args.split, args.num_frames, args.size = "none", 9, 32
            args.tokenizer = args.tokenizer or [("debug (untrained)", debug)]
            args.thumbnails = args.thumbnails or [(3, 4, 4), (3, 8, 8)]
            args.h264_steps = min(args.h264_steps, 4)
        if args.manifest is None:
            parser.error("--manifest is required (or --quick)")
        thumbnails = args.thumbnails if args.thumbnails is not None else [(5, 8, 8), (5, 16, 16)]
        split = None if args.split.lower() == "none" else args.split
        t0 = time.perf_counter()
        clips, bad, records = load_eval_clips(EvalConfig(
            data=EvalData(source=str(args.manifest), split=split, num_frames=args.num_frames, fps=args.fps,
                          size=args.size), max_clips=args.max_clips))
        print(f"{len(clips)} clips of {args.num_frames}x{args.size}x{args.size} from {args.manifest}"
              + (f" ({split})" if split else "") + (f", {len(bad)} unreadable" if bad else ""), flush=True)
        rows = []
        for name, export in args.tokenizer:
            print(f"[tokenizer] {name}", flush=True)
            rows.append(tokenizer_row(name, export, clips, args.batch_size))
        for shape in thumbnails:
            rows.append(thumbnail_row(shape, clips))
        budgets = sorted({math.floor(r["bits_per_clip"]) for r in rows})   # whole bits that fit
        for budget in budgets:
            print(f"[H.264] <= {budget} bits", flush=True)
            rows.append(h264_row(budget, clips, args.fps, args.h264_steps))
        if args.peer_budget > 0:
            print(f"[magvit2-pytorch] training {args.peer_budget:g} s", flush=True)
            rows.append(peer_row(args, clips))
    rows.sort(key=lambda r: (r.get("bits_per_clip", math.inf), r["name"]))
    result = {"setting": {"manifest": str(args.manifest), "split": split, "clip": [args.num_frames, args.size,
                                                                                    args.size],
                          "fps": args.fps, "num_clips": len(clips), "clip_ids": [r.id for r in records],
                          "unreadable": bad, "psnr": "per clip on uint8 frames, capped at 100 dB, then averaged",
                          "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 1),
                          "load_average": os.getloadavg(), "quick": args.quick},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = table(rows)
    print("\n" + text)
    png = plot(rows, args.out.with_suffix(".png"),
               f"{len(clips)} clips ({split or 'a folder'}) of {args.manifest.name}, "
               f"{args.num_frames}x{args.size}x{args.size} at {args.fps:g} fps")
    print(f"wrote {args.out} and {png}")
    result["table"], result["plot"] = text, str(png)
    return result


if __name__ == "__main__":
    main()
