"""Benchmark the mmtok video tokenizer against magvit2-pytorch's VideoTokenizer at the same setting.

    python bench/video_tokenizer.py [--quick] [--budget SECONDS] [--corpus DIR]

Setting (both models): 17x64x64 clips -> 5x8x8 codes (4x time, 8x space), LFQ codebook 2^12. Peer:
``magvit2_pytorch.VideoTokenizer(image_size=64, init_dim=32, max_dim=256, codebook_size=4096)`` with the layer stack
of its README (3 space and 2 time compressions, attention layers included), perceptual (VGG) loss off.

Measured, each model in its own subprocess (so peak RSS is its own), in the same run:
encode and decode time per clip (batch 1, median of reps), frames/s, one generator training step and one
discriminator step (batch 2, with each model's GAN on; median), peak resident memory, parameter count; then the
reconstruction PSNR of both after the same wall-clock training budget on the embedded Moving-Digits corpus
(batch 4, no GAN for either, each with its own loss: ours L1 + L2 + LFQ, the peer's MSE + LFQ), evaluated on 16
validation clips. Ratios are ours / peer for throughput (higher = better) and ours / peer for time and memory
(lower = better).

magvit2-pytorch imports torchvision (which would pull a CUDA torch here), so for the peer only, this script inserts a
minimal stand-in ``torchvision`` module exposing the two names the peer touches at import; the peer's VGG perceptual
loss is off, so the stand-in is never called. It also imports the peer's model module without the package's
``__init__`` (which drags in its trainer's dependencies). Both facts are recorded in the JSON.

Writes ``bench/results/video_tokenizer.json``. The machine's other load is recorded (load average) because on a
shared 2-core machine timings vary run to run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch

CLIP = (17, 64, 64)
CODEBOOK = 2 ** 12
PEER_LAYERS = (
    "residual", "compress_space", ("consecutive_residual", 2), "compress_space", ("consecutive_residual", 2),
    "linear_attend_space", "compress_space", ("consecutive_residual", 2), "attend_space", "compress_time",
    ("consecutive_residual", 2), "compress_time", ("consecutive_residual", 2), "attend_time",
)
PEER_NOTE = ("peer imported with a stand-in torchvision module (VGG16_Weights/vgg16 names only; its perceptual loss "
             "is off so it is never used) and without magvit2_pytorch/__init__.py (trainer dependencies)")


# ------------------------------------------------------------------------------------------------------ the models
def import_peer():
    """magvit2_pytorch.magvit2_pytorch.VideoTokenizer, with a stand-in torchvision (see the module docstring)."""
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")

        class VGG16_Weights:  # noqa: N801 - the peer's default argument value
            DEFAULT = None

        def vgg16(*args, **kwargs):
            raise RuntimeError("stand-in torchvision: no VGG here (perceptual loss must stay off)")

        models.VGG16_Weights, models.vgg16 = VGG16_Weights, vgg16
        tv.models = models
        sys.modules["torchvision"], sys.modules["torchvision.models"] = tv, models
    spec = importlib.util.find_spec("magvit2_pytorch")
    if spec is None:
        raise ImportError("magvit2-pytorch is not installed (pip install --no-deps magvit2-pytorch)")
    pkg = types.ModuleType("magvit2_pytorch")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("magvit2_pytorch", pkg)
    return importlib.import_module("magvit2_pytorch.magvit2_pytorch").VideoTokenizer


class Ours:
    name = "mmtok"

    def __init__(self, gan: bool):
        from mmtok.video import VideoTokenizer
        from mmtok.video.losses import LeCamEMA, VideoDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss

        # The peer's setting (17x64x64 -> 5x8x8, LFQ): the demo network's widths with a 4x4 stem and 3D stages.
        self.model = VideoTokenizer.from_preset(
            "demo_lfq", codebook_size=CODEBOOK, patch_size=4, spatial_downsample=(True, False),
            temporal_downsample=(True, True), frame_stages=0)
        self.disc = VideoDiscriminator(channels=32, num_layers=3) if gan else None
        self.lecam = LeCamEMA()
        self._fns = (adaptive_weight, hinge_d_loss, hinge_g_loss)

    def parameters(self):
        return list(self.model.parameters())

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, codes):
        return self.model.decode(codes)

    def loss(self, x, gan: bool):
        adaptive_weight, _, hinge_g_loss = self._fns
        out = self.model(x)
        rec = (out.reconstruction - x).abs().mean() + (out.reconstruction - x).pow(2).mean()
        loss = rec + out.quantizer_loss
        if gan:
            g = hinge_g_loss(self.disc(out.reconstruction))
            w = adaptive_weight(rec, g, self.model.decoder.conv_out.conv.weight)
            loss = loss + 0.1 * w * g
        return loss, out.reconstruction

    def disc_loss(self, x, recon):
        _, hinge_d_loss, _ = self._fns
        real, fake = self.disc(x), self.disc(recon.detach())
        return hinge_d_loss(real, fake) + 0.001 * self.lecam(real, fake)

    def disc_parameters(self):
        return list(self.disc.parameters())

    def reconstruct(self, x):
        return self.model.decode(self.model.encode(x))


class Peer:
    name = "magvit2-pytorch"

    def __init__(self, gan: bool):
        VideoTokenizer = import_peer()
        self.model = VideoTokenizer(image_size=64, init_dim=32, max_dim=256, codebook_size=CODEBOOK,
                                    layers=PEER_LAYERS, perceptual_loss_weight=0.0, use_gan=gan, flash_attn=False)

    def parameters(self):
        return list(self.model.parameters())

    def encode(self, x):
        return self.model.tokenize(x)

    def decode(self, codes):
        return self.model.decode_from_code_indices(codes)

    def loss(self, x, gan: bool):
        out = self.model(x, return_loss=True)            # (loss, loss_breakdown)
        return (out[0] if isinstance(out, tuple) else out), None

    def disc_loss(self, x, recon):
        out = self.model(x, return_discr_loss=True)
        return out[0] if isinstance(out, tuple) else out

    def disc_parameters(self):
        return list(self.model.discr_parameters())

    def reconstruct(self, x):
        return self.model.decode_from_code_indices(self.model.tokenize(x))


def build(which: str, gan: bool):
    return Ours(gan) if which == "ours" else Peer(gan)


# ---------------------------------------------------------------------------------------------------- measurements
def median_time(fn, reps: int) -> float:
    fn()                                                    # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed_worker(which: str, reps: int) -> dict:
    torch.manual_seed(0)
    m = build(which, gan=True)
    n_params = sum(p.numel() for p in m.parameters())
    x1 = torch.rand(1, 3, *CLIP) * 2 - 1
    x2 = torch.rand(2, 3, *CLIP) * 2 - 1
    m.model.eval()
    with torch.no_grad():
        codes = m.encode(x1)
        enc = median_time(lambda: m.encode(x1), reps)
        dec = median_time(lambda: m.decode(codes), reps)
    m.model.train()
    opt_g = torch.optim.Adam(m.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(m.disc_parameters(), lr=1e-4)
    state = {}

    def g_step():
        loss, recon = m.loss(x2, gan=True)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        state["recon"] = recon

    def d_step():
        loss = m.disc_loss(x2, state.get("recon") if state.get("recon") is not None else x2)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()

    g = median_time(g_step, max(2, reps // 2))
    d = median_time(d_step, max(2, reps // 2))
    return {"params_M": n_params / 1e6, "code_shape": list(codes.shape[1:]), "encode_ms_per_clip": enc * 1e3,
            "decode_ms_per_clip": dec * 1e3, "encode_frames_per_s": CLIP[0] / enc,
            "decode_frames_per_s": CLIP[0] / dec, "generator_step_s": g, "discriminator_step_s": d,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def corpus_clips(corpus: Path, split: str, n: int | None) -> torch.Tensor:
    from mmtok.data.ingest import read_manifest
    from mmtok.data.media import read_video
    from mmtok.frames import from_uint8

    records = read_manifest(corpus / "manifest.jsonl", split=split)[:n]
    frames = [read_video(r.video, fps=8, num_frames=CLIP[0], size=CLIP[1]) for r in records]
    return from_uint8(torch.from_numpy(np.stack(frames)))   # [N, 3, T, H, W] in [-1, 1]


def race_worker(which: str, budget: float, corpus: Path, lr: float) -> dict:
    # Clips first: the peer's stand-in torchvision has no __spec__, which breaks library availability probes that
    # the media readers' imports run.
    train, val = corpus_clips(corpus, "train", None), corpus_clips(corpus, "validation", 16)
    from mmtok.metrics import psnr
    torch.manual_seed(0)
    m = build(which, gan=False)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)
    m.model.train()
    steps, t0 = 0, time.time()
    while time.time() - t0 < budget:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps + 1) / 20)
        x = train[torch.from_numpy(rng.integers(0, len(train), 4))]
        loss, _ = m.loss(x, gan=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        steps += 1
    m.model.eval()
    with torch.no_grad():
        recon = torch.cat([m.reconstruct(val[i:i + 4]) for i in range(0, len(val), 4)]).clamp(-1, 1)
    val_psnr = float(psnr(recon, val, (-1.0, 1.0), per_item=True).mean())
    return {"budget_s": budget, "steps": steps, "lr": lr, "val_psnr": val_psnr}


def run_worker(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                         env={**os.environ, "MMTOK_PROGRESS": "0"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout) else
                f"exit code {out.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def ensure_corpus(corpus: Path | None) -> Path:
    if corpus is not None and (corpus / "manifest.jsonl").is_file():
        return corpus
    from mmtok.datasets.moving_digits import generate_corpus

    corpus = corpus or Path("/tmp/mmtok_bench_corpus")
    if not (corpus / "manifest.jsonl").is_file():
        generate_corpus(corpus, num_clips=300, seed=0, size=64, num_frames=17, num_workers=0, progress=False)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 60 s training budget")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model (default 180)")
    parser.add_argument("--corpus", type=Path, default=None, help="Moving-Digits folder (default: generate 300 clips)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "video_tokenizer.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["MMTOK_BENCH_THREADS"] = str(args.threads)
    elif os.environ.get("MMTOK_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["MMTOK_BENCH_THREADS"]))

    if args.worker:   # subprocess: one measurement of one model
        kind, which, *rest = args.worker
        result = speed_worker(which, int(rest[0])) if kind == "speed" else \
            race_worker(which, float(rest[0]), Path(rest[1]), float(rest[2]))
        print("RESULT " + json.dumps(result))
        return

    reps = 3 if args.quick else 7
    budget = args.budget or (60.0 if args.quick else 180.0)
    corpus = ensure_corpus(args.corpus)
    lrs = {"ours": 3e-3, "peer": 1e-3}
    results: dict = {"setting": {"clip": list(CLIP), "codebook_size": CODEBOOK,
                                 "torch_threads": torch.get_num_threads(),
                                 "load_average_start": os.getloadavg(), "peer_note": PEER_NOTE,
                                 "peer_layers": [list(x) if isinstance(x, tuple) else x for x in PEER_LAYERS],
                                 "corpus": str(corpus)}}
    for which in ("ours", "peer"):
        print(f"[speed] {which} ...", flush=True)
        results.setdefault(which, {})["speed"] = run_worker(["speed", which, str(reps)])
    for which in ("ours", "peer"):
        print(f"[train {budget:.0f}s] {which} ...", flush=True)
        results[which]["race"] = run_worker(["race", which, str(budget), str(corpus), str(lrs[which])])
    results["setting"]["load_average_end"] = os.getloadavg()

    ours, peer = results["ours"], results["peer"]
    ratios = {}
    if "error" not in ours["speed"] and "error" not in peer["speed"]:
        s, p = ours["speed"], peer["speed"]
        ratios = {"encode_throughput_x": p["encode_ms_per_clip"] / s["encode_ms_per_clip"],
                  "decode_throughput_x": p["decode_ms_per_clip"] / s["decode_ms_per_clip"],
                  "generator_step_time_ratio": s["generator_step_s"] / p["generator_step_s"],
                  "discriminator_step_time_ratio": s["discriminator_step_s"] / p["discriminator_step_s"],
                  "peak_rss_ratio": s["peak_rss_MB"] / p["peak_rss_MB"],
                  "params_ratio": s["params_M"] / p["params_M"]}
    if "error" not in ours["race"] and "error" not in peer["race"]:
        ratios["psnr_difference_dB"] = ours["race"]["val_psnr"] - peer["race"]["val_psnr"]
    results["ratios"] = ratios

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")

    def fmt(value, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"

    rows = [("params (M)", "params_M"), ("encode ms/clip", "encode_ms_per_clip"),
            ("decode ms/clip", "decode_ms_per_clip"),
            ("encode frames/s", "encode_frames_per_s"), ("generator step s", "generator_step_s"),
            ("discriminator step s", "discriminator_step_s"), ("peak RSS MB", "peak_rss_MB")]
    print(f"\n{'metric':<24}{'mmtok':>12}{'magvit2-pytorch':>18}")
    for label, key in rows:
        print(f"{label:<24}{fmt(ours['speed'].get(key), 12, 3)}{fmt(peer['speed'].get(key), 18, 3)}")
    for label, key in (("train steps in budget", "steps"), ("val PSNR dB", "val_psnr")):
        print(f"{label:<24}{fmt(ours['race'].get(key), 12, 2)}{fmt(peer['race'].get(key), 18, 2)}")
    for side in ("ours", "peer"):
        for part in ("speed", "race"):
            if "error" in results[side][part]:
                print(f"{side} {part} failed: {results[side][part]['error']}")
    print("ratios:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
