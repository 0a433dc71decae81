"""Data pipeline throughput on this machine (2 cores): corpus generation, decoding, tokenization.

    .venv/bin/python bench/data.py [--clips 2000] [--decode-clips 400] [--tokenize-clips 256] [--workers 2]

Measures, on the embedded Moving-Digits corpus (17 frames 64x64 at 8 fps, 16 kHz mono PCM audio):

1. generation of the corpus (``mmtok.datasets.moving_digits.generate_corpus``, ``--workers`` processes) in clips/s and
   the total time for ``--clips`` clips (target: 2,000 clips in <= 2 minutes);
2. decoding clips into model inputs (``mmtok.data.ingest.load_clip``: frames resampled, resized/cropped, audio
   resampled) in clips/s, one process and ``--workers`` processes; peer: OpenCV's ``cv2.VideoCapture`` reading the
   same frames (video only: OpenCV does not decode audio), measured in the same run, reported as a ratio;
3. tokenization with ``recipes/tokenize_dataset.py`` (decode + text/video/audio tokenizers, shards written) for the
   ``debug`` and ``demo`` tokenizer presets (random weights: speed does not depend on training), in clips/s, and the
   projected time for the full corpus (target: the default corpus tokenizes in <= 2 minutes).

Prints a table and writes ``bench/results/data.json``. Numbers depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MMTOK_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from mmtok.data.ingest import ClipConfig, iter_clips, load_clip, read_manifest
from mmtok.datasets.moving_digits import generate_corpus


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker pools are joined before a stage returns)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, cpu: dict | None = None):
    """(result, wall seconds); with ``cpu`` given, also stores the stage's CPU seconds in ``cpu["seconds"]``.

    CPU time is what to compare across runs on a shared machine: wall time grows with other people's load, CPU time
    per clip does not (much). ``projected idle`` figures divide CPU time by the worker count.
    """
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    if cpu is not None:
        cpu["seconds"] = cpu_seconds() - c0
    return out, time.perf_counter() - t0


def bench_generate(root: Path, clips: int, workers: int) -> dict:
    cpu: dict = {}
    _, seconds = timed(lambda: generate_corpus(root / "corpus", clips, seed=0, num_workers=workers, progress=False),
                       cpu)
    size = sum(p.stat().st_size for p in (root / "corpus" / "clips").iterdir())
    idle = cpu["seconds"] / workers
    return {"clips": clips, "workers": workers, "seconds": seconds, "clips_per_s": clips / seconds,
            "cpu_seconds": cpu["seconds"], "projected_idle_seconds": idle, "mb_on_disk": size / 2**20,
            "target_seconds": 120.0, "meets_target": min(seconds, idle) <= 120.0}


def opencv_read(path: Path, size: int = 64) -> np.ndarray:
    """Peer decoder: all frames with cv2.VideoCapture, BGR->RGB, shorter side resize + centre crop (INTER_AREA)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        h, w = f.shape[:2]
        s = size / min(h, w)
        f = cv2.resize(f, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_AREA)
        y0, x0 = (f.shape[0] - size) // 2, (f.shape[1] - size) // 2
        frames.append(cv2.cvtColor(f[y0:y0 + size, x0:x0 + size], cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def bench_decode(root: Path, n: int, workers: int) -> dict:
    records = read_manifest(root / "corpus" / "manifest.jsonl")[:n]
    n = len(records)
    corpus = json.loads((root / "corpus" / "corpus.json").read_text())   # decode whole clips, as tokenization does
    frames, fps, size = int(corpus["num_frames"]), float(corpus["fps"]), int(corpus["size"])
    cfg = ClipConfig(fps=fps, num_frames=frames, size=size, sample_rate=16000)
    video_only = ClipConfig(fps=fps, num_frames=frames, size=size, sample_rate=None)
    cpu: dict = {}
    _, one = timed(lambda: [load_clip(r, cfg) for r in records], cpu)
    cpu_video: dict = {}
    _, one_video = timed(lambda: [load_clip(r, video_only) for r in records], cpu_video)
    _, par = timed(lambda: list(iter_clips(records, cfg, num_workers=workers, progress=False)))
    out = {"clips": n, "clips_per_s_1proc": n / one, "cpu_ms_per_clip": cpu["seconds"] / n * 1e3,
           "clips_per_s_1proc_video_only": n / one_video, f"clips_per_s_{workers}proc": n / par, "workers": workers}
    try:
        import cv2  # noqa: F401
    except ImportError:
        out["peer"] = "opencv not installed (pip install opencv-python-headless): no peer figure"
        return out
    cv2.setNumThreads(1)
    cpu_peer: dict = {}
    _, peer = timed(lambda: [opencv_read(r.video, size) for r in records], cpu_peer)
    mine = load_clip(records[0], video_only).frames
    theirs = opencv_read(records[0].video, size)
    out.update(peer="opencv-python-headless cv2.VideoCapture (video only)", peer_clips_per_s_1proc=n / peer,
               ratio_video_only_vs_peer=(n / one_video) / (n / peer),
               cpu_ms_per_clip_video_only=cpu_video["seconds"] / n * 1e3,
               peer_cpu_ms_per_clip=cpu_peer["seconds"] / n * 1e3,
               cpu_ratio_video_only_vs_peer=cpu_peer["seconds"] / cpu_video["seconds"],
               peer_mean_abs_pixel_diff=float(np.abs(mine.astype(int) - theirs.astype(int)).mean()))
    return out


def make_bundle(root: Path, preset: str) -> Path:
    from mmtok.audio import AudioTokenizer
    from mmtok.multimodal import MultimodalTokenizer
    from mmtok.text import TextTokenizer
    from mmtok.video import VideoTokenizer

    captions = [c for r in read_manifest(root / "corpus" / "manifest.jsonl") for c in r.captions]
    torch.manual_seed(0)
    bundle = MultimodalTokenizer(text=TextTokenizer.train(captions, vocab_size=256),
                                 video=VideoTokenizer.from_preset(preset).eval(),
                                 audio=AudioTokenizer.from_preset(preset).eval())
    out = root / f"bundle_{preset}"
    bundle.save_pretrained(out)
    return out


def tokenize_recipe(**settings: object) -> None:
    """Run ``recipes/tokenize_dataset.py`` with these settings as a user does (its own process; the CPU time of it and
    its workers is counted by :func:`cpu_seconds` once it has finished)."""
    cmd = [sys.executable, str(REPO / "recipes" / "tokenize_dataset.py"), *(f"{k}={v}" for k, v in settings.items())]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "MMTOK_PROGRESS": "0"})


def bench_tokenize(root: Path, preset: str, n: int, workers: int, total_clips: int) -> dict:
    from mmtok.data.shards import read_dataset_info

    bundle = make_bundle(root, preset)
    out = root / f"tokens_{preset}"
    corpus = json.loads((root / "corpus" / "corpus.json").read_text())   # whole clips, at the corpus's own size
    settings = dict(data=root / "corpus" / "manifest.jsonl", tokenizer=bundle, out=out,
                    shard_size=max(8, n // (4 * workers)), num_workers=workers, limit=n,
                    num_frames=corpus["num_frames"], fps=corpus["fps"], size=corpus["size"])
    cpu: dict = {}
    _, seconds = timed(lambda: tokenize_recipe(**settings), cpu)
    info = read_dataset_info(out)
    # startup (the interpreter, spawning workers, loading the bundle) is paid once: measure it with a tiny run to
    # project
    small = {**settings, "out": root / f"tokens_{preset}_small", "limit": workers * 2, "shard_size": 2}
    cpu_small: dict = {}
    _, startup = timed(lambda: tokenize_recipe(**small), cpu_small)
    rate = n / max(seconds - startup, 1e-9)
    projected = startup + total_clips / rate
    cpu_per_clip = max(cpu["seconds"] - cpu_small["seconds"], 1e-9) / max(n - workers * 2, 1)
    projected_idle = cpu_small["seconds"] / workers + total_clips * cpu_per_clip / workers
    return {"preset": preset, "clips": n, "workers": workers, "seconds": seconds, "clips_per_s": n / seconds,
            "startup_seconds": startup, "steady_clips_per_s": rate, "rows": info["num_rows"],
            "cpu_seconds": cpu["seconds"], "startup_cpu_seconds": cpu_small["seconds"],
            "cpu_seconds_per_clip": cpu_per_clip, "projected_seconds_for_corpus": projected,
            "projected_idle_seconds_for_corpus": projected_idle, "corpus_clips": total_clips,
            "target_seconds": 120.0, "meets_target": min(projected, projected_idle) <= 120.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=2000, help="corpus size generated (and projected for)")
    p.add_argument("--decode-clips", type=int, default=400)
    p.add_argument("--tokenize-clips", type=int, default=256)
    p.add_argument("--presets", default="debug,demo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "data.json"))
    args = p.parse_args()

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch": torch.__version__, "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="mmtok_bench_data_") as tmp:
        root = Path(tmp)
        print(f"generating {args.clips} clips ...", flush=True)
        results["generate"] = bench_generate(root, args.clips, args.workers)
        print("decoding ...", flush=True)
        results["decode"] = bench_decode(root, args.decode_clips, args.workers)
        results["tokenize"] = []
        for preset in [s for s in args.presets.split(",") if s]:
            print(f"tokenizing with the {preset} presets ...", flush=True)
            results["tokenize"].append(bench_tokenize(root, preset, args.tokenize_clips, args.workers, args.clips))

    g, d = results["generate"], results["decode"]
    rows = [("generate corpus", f"{g['clips']} clips, {g['workers']} proc", f"{g['clips_per_s']:.1f}",
             f"{g['seconds']:.1f} s wall, {g['cpu_seconds']:.1f} CPU-s -> ~{g['projected_idle_seconds']:.0f} s idle "
             f"(target <= 120 s: {'yes' if g['meets_target'] else 'NO'})")]
    rows.append(("decode (video+audio)", "1 proc", f"{d['clips_per_s_1proc']:.1f}",
                 f"{d['cpu_ms_per_clip']:.1f} CPU-ms/clip"))
    par_key = f"clips_per_s_{d['workers']}proc"
    rows.append(("decode (video+audio)", f"{d['workers']} proc", f"{d[par_key]:.1f}", "incl. process start-up"))
    peer_note = ""
    if "ratio_video_only_vs_peer" in d:
        peer_note = (f"{d['cpu_ms_per_clip_video_only']:.1f} CPU-ms/clip; speed x{d['ratio_video_only_vs_peer']:.2f} "
                     f"(CPU x{d['cpu_ratio_video_only_vs_peer']:.2f}) vs OpenCV")
    rows.append(("decode (video only)", "1 proc", f"{d['clips_per_s_1proc_video_only']:.1f}", peer_note))
    if "peer_clips_per_s_1proc" in d:
        rows.append(("  peer: OpenCV VideoCapture", "1 proc", f"{d['peer_clips_per_s_1proc']:.1f}",
                     f"{d['peer_cpu_ms_per_clip']:.1f} CPU-ms/clip; mean |pixel diff| "
                     f"{d['peer_mean_abs_pixel_diff']:.2f}"))
    for t in results["tokenize"]:
        rows.append((f"tokenize ({t['preset']} presets)", f"{t['clips']} clips, {t['workers']} proc",
                     f"{t['clips_per_s']:.1f} ({t['steady_clips_per_s']:.1f} steady)",
                     f"{t['cpu_seconds_per_clip'] * 1e3:.0f} CPU-ms/clip; {t['corpus_clips']} clips ~"
                     f"{t['projected_seconds_for_corpus']:.0f} s here, ~{t['projected_idle_seconds_for_corpus']:.0f} s "
                     f"idle (target <= 120 s: {'yes' if t['meets_target'] else 'NO'})"))
    widths = [max(len(r[i]) for r in rows + [("stage", "setting", "clips/s", "note")]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format("stage", "setting", "clips/s", "note"))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"load average (1 min) at start {results['machine']['load_average_at_start'][0]:.1f}, at end "
          f"{results['machine']['load_average_at_end'][0]:.1f} on {os.cpu_count()} CPUs: wall times scale with it")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
