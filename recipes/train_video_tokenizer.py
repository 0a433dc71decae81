"""Train the causal video tokenizer (mmtok.video; LFQ, BSQ or FSQ codes) on video files and images.

    python recipes/train_video_tokenizer.py --config recipes/configs/video_tokenizer_demo.yaml
    accelerate launch recipes/train_video_tokenizer.py --config recipes/configs/video_tokenizer_demo.yaml \\
        data.source=corpus/manifest.jsonl train.steps=2000
    python recipes/train_video_tokenizer.py --config ... --resume          # continue the run folder's latest checkpoint

Losses (generator): ``l1 * |x - x^| + l2 * (x - x^)^2`` (each pixel weighted ``1 + loss.foreground_weight * f``
by how far it is from its frame's background, normalized per frame; 0 = the plain mean) + the quantizer's
auxiliary loss (LFQ / BSQ: entropy, annealed, and commitment; FSQ has none)
+ ``perceptual_weight * perceptual`` (a user-supplied TorchScript feature network; off by default) + from
``loss.disc_start`` on, ``disc_weight * adaptive_weight * hinge_g`` (VQGAN's adaptive weight). Discriminator: a 3D
patch discriminator trained with the hinge loss + ``lecam_weight * LeCam``.

Data: ``data.source`` is a JSON Lines manifest (``mmtok.data.ingest``; ``data.split`` filters it) or a folder of
videos and images. Each sample is a random clip of ``data.num_frames`` frames at ``data.fps`` from a random start,
shorter side resized to ``data.resize`` and randomly cropped to ``data.size``; an image becomes a still clip.
Unreadable files are skipped, counted (``data/bad_files`` in the logs) and listed in ``<run>/bad_files.json``.
With ``data.image_batch_size > 0`` training is joint image-video as MAGVIT-v2's: every ``data.image_every``-th step
is a batch of single frames from as many different clips (the causal encoder treats them as images), which shows the
model many more different scenes per unit of compute than full clips do.

The batch of step ``s`` depends only on ``(train.seed, s)`` and the model has no randomness, so ``--resume`` continues
exactly (on CPU, a resumed run's losses equal an uninterrupted run's). The run folder holds ``config.yaml``,
``metrics.jsonl`` + ``tensorboard/``, ``checkpoints/`` (atomic, ``latest`` pointer), ``samples/step_*.gif``
(originals above, reconstructions below) and, at the end, ``final/`` (``save_pretrained`` of the EMA weights when
``train.ema_decay > 0``), which ``VideoTokenizer.from_pretrained`` / ``AutoModel.from_pretrained`` load.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedDataParallelKwargs, set_seed  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mmtok.data.ingest import BadFileReport, ClipRecord, load_records  # noqa: E402
from mmtok.data.media import MediaError, probe, read_video, resize_and_crop, write_gif as write_frames_gif  # noqa: E402,E501
from mmtok.frames import to_uint8  # noqa: E402
from mmtok.io import progress_enabled  # noqa: E402
from mmtok.metrics import psnr  # noqa: E402
from mmtok.video import VideoTokenizer  # noqa: E402
from mmtok.video.losses import (  # noqa: E402
    LeCamEMA, PerceptualLoss, VideoDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss, reconstruction_loss)
from recipes.common import (  # noqa: E402
    ModelEMA, RunLogger, build_arg_parser, cpu_accelerator_kwargs, dump_config, load_checkpoint, load_config,
    save_checkpoint, warmup_cosine)


# ------------------------------------------------------------------------------------------------------------ config
@dataclass
class ModelConfig:
    preset: str = "demo"                     # VideoTokenizerConfig preset (debug, demo, magvit2_128)
    overrides: dict[str, Any] = field(default_factory=dict)   # VideoTokenizerConfig fields over the preset
    init_from: Optional[str] = None          # a save_pretrained folder to start from instead


@dataclass
class DataConfig:
    source: str = "outputs/demo/corpus/manifest.jsonl"   # manifest (.jsonl) or media folder
    split: Optional[str] = "train"           # manifest split to train on (ignored for folders)
    sample_split: Optional[str] = "validation"   # split the sample reconstructions come from (None: training data)
    num_frames: int = 17                     # 1 + 4k for the default presets
    crop_frames: Optional[int] = None        # train on random sub-clips of this many frames (1 + 4k; None: all).
                                             # The causal model takes any 1 + 4k frames, and shorter clips put more
                                             # different videos in a batch of the same cost.
    fps: float = 8.0
    size: int = 64                           # crop side
    resize: Optional[int] = None             # shorter side resized to this before the random crop (None: size)
    num_samples: int = 4                     # clips shown in samples/*.gif and scored for sample PSNR
    image_batch_size: int = 0                # > 0: joint image-video training (MAGVIT-v2): every image_every-th
    image_every: int = 2                     # step is a batch of this many single frames from different clips
    max_retries: int = 20                    # other clips tried when one is unreadable
    cache_mb: int = 1024                     # keep decoded short clips (whole file = one sample) in memory up to
                                             # this size: a small corpus is decoded once instead of every step


@dataclass
class LossConfig:
    l1: float = 1.0
    l2: float = 1.0
    foreground_weight: float = 0.0           # weight the pixels that differ from the frame's background (losses.py)
    perceptual_weight: float = 0.0
    perceptual_checkpoint: Optional[str] = None   # TorchScript feature network (see mmtok.video.losses)
    disc_weight: float = 0.1                 # 0 disables the GAN (and the discriminator)
    disc_start: int = 2000                   # generator step the adversarial loss starts at
    adaptive_disc_weight: bool = True        # VQGAN's gradient-norm balance
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999


@dataclass
class DiscConfig:
    channels: int = 32
    num_layers: int = 3
    lr: float = 1e-4


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.1                # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.0                   # 0: no EMA
    seed: int = 0
    mixed_precision: str = "no"              # no | bf16 | fp16 (accelerate)
    num_threads: Optional[int] = None        # torch threads (None: torch's default)
    log_every: int = 10
    checkpoint_every: int = 200
    sample_every: int = 200
    keep_checkpoints: int = 2


@dataclass
class TrainVideoTokenizerConfig:
    run_dir: str = "outputs/video_tokenizer"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# -------------------------------------------------------------------------------------------------------------- data
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file -> uint8 ``[1, size', size', 3]`` (shorter side resized to ``size``, centre-cropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            frame = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(path, f"not a readable image ({e})") from e
    return resize_and_crop(frame[None], size)


def find_records(cfg: DataConfig) -> list[ClipRecord]:
    """Records of a manifest (filtered by ``cfg.split``), or of a folder's videos and images."""
    source = Path(cfg.source)
    if not source.exists():
        raise FileNotFoundError(f"data.source not found: {source}")
    if source.is_file():
        return load_records(source, split=cfg.split)
    records = [r for r in load_records(source) if r.video is not None]
    for p in sorted(source.rglob("*")):
        if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in IMAGE_EXTENSIONS:
            records.append(ClipRecord(id=p.relative_to(source).as_posix(), video=p))
    return records


class RandomClips:
    """Random clips from video files and images, deterministic in ``(seed, step)``.

    ``batch(step, batch_size)`` walks a per-epoch permutation of the records; each clip gets a random start (when the
    file is long enough) and a random crop. Unreadable records are skipped for good, counted in ``report``, and
    replaced by the next record of the permutation.
    """

    def __init__(self, records: list[ClipRecord], cfg: DataConfig, seed: int, rank: int = 0, world: int = 1):
        self.records = [r for r in records if r.video is not None]
        if not self.records:
            raise ValueError(f"no video or image files in {cfg.source}"
                             + (f" (split {cfg.split!r})" if cfg.split else ""))
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        self.bad: set[int] = set()
        self.report = BadFileReport(total=len(self.records))
        self._durations: dict[int, float | None] = {}
        self._decoded: dict[int, np.ndarray] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def _duration(self, i: int) -> float | None:
        if i not in self._durations:
            try:
                info = probe(self.records[i].video)
                self._durations[i] = getattr(info, "duration", None)
            except MediaError:
                self._durations[i] = None
        return self._durations[i]

    def _whole_clip(self, i: int) -> np.ndarray:
        """Record ``i``'s ``cfg.num_frames`` frames, decoded once and kept while the cache has room."""
        frames = self._decoded.get(i)
        if frames is None:
            cfg, record = self.cfg, self.records[i]
            frames = read_video(record.video, fps=cfg.fps, num_frames=cfg.num_frames, size=cfg.resize or cfg.size,
                                start=record.start, pad=True)
            if self._decoded_bytes + frames.nbytes <= cfg.cache_mb * 2 ** 20:
                self._decoded[i] = frames
                self._decoded_bytes += frames.nbytes
        return frames

    def load(self, i: int, rng: np.random.Generator | None, num_frames: int | None = None) -> np.ndarray:
        """Record ``i`` -> uint8 ``[T, size, size, 3]`` (random start and crop with ``rng``, else the first frames
        centre-cropped); ``num_frames`` overrides ``cfg.num_frames`` (1: one frame, for image steps). Raises
        :class:`MediaError`."""
        cfg, record = self.cfg, self.records[i]
        n = num_frames or cfg.num_frames
        resize = cfg.resize or cfg.size
        if record.video.suffix.lower() in IMAGE_EXTENSIONS:
            frames = read_image(record.video, resize)
            frames = np.repeat(frames, n, axis=0)                                     # a still clip
        else:
            start = record.start
            end = record.end if record.end is not None else self._duration(i)
            whole = self._whole_clip(i) if end is not None and end - start <= cfg.num_frames / cfg.fps + 1e-3 \
                else None
            if whole is not None:   # a short record, decoded once: take the sample's frames from memory
                first = int(rng.integers(0, len(whole) - n + 1)) if rng is not None and len(whole) > n else 0
                frames = whole[first:first + n]
            else:
                span = n / cfg.fps
                if rng is not None and end is not None and end - start > span + 1e-3:
                    start = start + float(rng.uniform(0, end - start - span))
                frames = read_video(record.video, fps=cfg.fps, num_frames=n, size=resize, start=start, pad=True)
        h, w = frames.shape[1:3]
        if rng is not None:
            y, x = int(rng.integers(0, h - cfg.size + 1)), int(rng.integers(0, w - cfg.size + 1))
            if num_frames is None and cfg.crop_frames is not None and cfg.crop_frames < len(frames):
                s = int(rng.integers(0, len(frames) - cfg.crop_frames + 1))
                frames = frames[s:s + cfg.crop_frames]
        else:
            y, x = (h - cfg.size) // 2, (w - cfg.size) // 2
        return np.ascontiguousarray(frames[:, y:y + cfg.size, x:x + cfg.size])

    def batch(self, step: int, batch_size: int, num_frames: int | None = None) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` for optimizer step ``step`` (this rank's share of the global batch)."""
        n = len(self.records)
        out = []
        for j in range(batch_size):
            position = (step * batch_size * self.world + self.rank * batch_size + j)
            rng = np.random.default_rng([self.seed, step, self.rank, j, num_frames or 0])
            for attempt in range(self.cfg.max_retries + 1):
                epoch, k = divmod(position + attempt, n)
                i = int(np.random.default_rng([self.seed, epoch]).permutation(n)[k])
                if i in self.bad:
                    continue
                try:
                    out.append(self.load(i, rng, num_frames))
                    break
                except MediaError as e:
                    self.bad.add(i)
                    self.report.add(self.records[i].id, e.path, e.reason)
            else:
                raise RuntimeError(f"{self.cfg.max_retries + 1} unreadable clips in a row; see the bad-file report: "
                                   f"{self.report.summary()}")
        return torch.from_numpy(np.stack(out))


def sample_clips(cfg: DataConfig, train: RandomClips) -> torch.Tensor:
    """The fixed clips shown in ``samples/`` (first readable records of ``sample_split``, else of training)."""
    source = train
    if cfg.sample_split and Path(cfg.source).is_file():
        try:
            records = load_records(cfg.source, split=cfg.sample_split)
            if any(r.video is not None for r in records):
                source = RandomClips(records, cfg, seed=0)
        except ValueError:
            pass
    clips = []
    for i in range(len(source)):
        if len(clips) == cfg.num_samples:
            break
        try:
            clips.append(source.load(i, None))
        except MediaError:
            continue
    if not clips:
        raise ValueError(f"no readable clip for samples in {cfg.source}")
    return torch.from_numpy(np.stack(clips))


def write_gif(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor, fps: float) -> None:
    """Originals (top row) above reconstructions (bottom row); uint8 ``[B, T, H, W, 3]`` each."""
    top = torch.cat(list(originals), dim=2)                                              # [T, H, B*W, 3]
    bottom = torch.cat(list(reconstructions), dim=2)
    write_frames_gif(path, torch.cat([top, bottom], dim=1).numpy(), fps)                 # [T, 2H, B*W, 3]


def mean_clip_psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over clips of each clip's PSNR (dB, capped at 100) of videos ``[B, 3, T, H, W]`` in [-1, 1]."""
    return float(psnr(reconstruction.clamp(-1, 1), target, (-1.0, 1.0), per_item=True, max_db=100.0).mean())


# -------------------------------------------------------------------------------------------------------------- loop
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser(__doc__.split("\n")[0]).parse_args(argv)
    cfg: TrainVideoTokenizerConfig = load_config(TrainVideoTokenizerConfig, args.config, args.overrides)
    tc, lc = cfg.train, cfg.loss
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.set_flush_denormal(True)   # denormals make CPU convolutions crawl

    # The discriminator uses one of two convs per layer depending on the clip length (and image steps have no
    # temporal stride), so DDP must tolerate parameters without gradients.
    handlers = [*cpu_accelerator_kwargs().get("kwargs_handlers", []),
                DistributedDataParallelKwargs(find_unused_parameters=True)]
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, kwargs_handlers=handlers)
    run_dir = Path(cfg.run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir)
    accelerator.print(f"training the video tokenizer on {accelerator.num_processes} process(es), run folder {run_dir}")

    # ---- data
    records = find_records(cfg.data)
    data = RandomClips(records, cfg.data, tc.seed, accelerator.process_index, accelerator.num_processes)
    samples = sample_clips(cfg.data, data)

    # ---- models
    set_seed(tc.seed)
    if cfg.model.init_from:
        model = VideoTokenizer.from_pretrained(cfg.model.init_from)
    else:
        model = VideoTokenizer.from_preset(cfg.model.preset, **dict(cfg.model.overrides))
    model.train()
    use_gan = lc.disc_weight > 0
    disc = VideoDiscriminator(channels=cfg.disc.channels, num_layers=cfg.disc.num_layers) if use_gan else None
    lecam = LeCamEMA(lc.lecam_decay) if use_gan else None
    if lc.perceptual_weight > 0 and lc.perceptual_checkpoint is None:
        raise ValueError("loss.perceptual_weight > 0 needs loss.perceptual_checkpoint (a TorchScript feature network)")
    perceptual = PerceptualLoss(lc.perceptual_checkpoint) if lc.perceptual_weight > 0 else None
    ema = ModelEMA(model, tc.ema_decay) if tc.ema_decay > 0 else None

    opt_g = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    if use_gan:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.disc.lr, betas=(0.5, 0.9), weight_decay=0.0)
        model, disc, opt_g, opt_d = accelerator.prepare(model, disc, opt_g, opt_d)
    else:
        model, opt_g = accelerator.prepare(model, opt_g)
    if perceptual is not None:
        perceptual.to(accelerator.device)
    extra: dict[str, Any] = {}
    if ema is not None:
        extra["ema"] = ema
    if lecam is not None:
        lecam.to(accelerator.device)
        extra["lecam"] = lecam
    raw = accelerator.unwrap_model(model)
    last_layer = raw.decoder.conv_out.conv.weight

    # ---- resume
    step = 0
    if args.resume:
        state = load_checkpoint(accelerator, run_dir, extra=extra, allow_inexact=args.allow_inexact_resume)
        if state is None:
            accelerator.print(f"--resume: no checkpoint in {run_dir}, starting from scratch")
        else:
            step = int(state["step"])
            data.bad = set(state.get("bad_indices", []))
            data.report.entries = list(state.get("bad_files", []))
            accelerator.print(f"resumed from step {step}")
    logger = RunLogger(run_dir, enabled=accelerator.is_main_process, resume_step=step if args.resume else None)

    def trainer_state() -> dict[str, Any]:
        return {"bad_indices": sorted(data.bad), "bad_files": data.report.entries}

    @torch.no_grad()
    def write_samples(at: int) -> float:
        net = ema.module if ema is not None else raw
        was_training = net.training
        net.eval()
        target = net.preprocess(samples)
        recon = net.decode(net.encode(samples))
        score = mean_clip_psnr(recon, target)
        if accelerator.is_main_process:
            write_gif(run_dir / "samples" / f"step_{at:08d}.gif", samples, to_uint8(recon), cfg.data.fps)
        net.train(was_training)
        return score

    # ---- loop
    bar = tqdm(total=tc.steps, initial=step, desc="video tokenizer", unit="step",
               disable=not (progress_enabled() and accelerator.is_main_process))
    last: dict[str, Any] = {}
    while step < tc.steps:
        lr = warmup_cosine(step, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_ratio=tc.min_lr_ratio,
                           peak=tc.lr)
        for group in opt_g.param_groups:
            group["lr"] = lr
        image_step = cfg.data.image_batch_size > 0 and step % cfg.data.image_every == cfg.data.image_every - 1
        video = (data.batch(step, cfg.data.image_batch_size, num_frames=1) if image_step
                 else data.batch(step, tc.batch_size))
        gan_on = use_gan and step >= lc.disc_start

        # -- generator
        with accelerator.autocast():
            out = model(video)
            target = raw.preprocess(video)
            recon = out.reconstruction
            rec_loss = reconstruction_loss(recon, target, l1=lc.l1, l2=lc.l2, foreground_weight=lc.foreground_weight)
            nll = rec_loss
            if perceptual is not None:
                perc = perceptual(recon, target)
                nll = nll + lc.perceptual_weight * perc
            loss = nll + out.quantizer_loss
            if gan_on:
                g_loss = hinge_g_loss(disc(recon))
                weight = (adaptive_weight(nll, g_loss, last_layer) if lc.adaptive_disc_weight
                          else torch.ones((), device=recon.device))
                loss = loss + lc.disc_weight * weight * g_loss
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
        opt_g.step()
        if ema is not None:
            ema.update(raw)

        # -- discriminator
        if gan_on:
            with accelerator.autocast():
                logits_real = disc(target.detach())
                logits_fake = disc(recon.detach())
                d_loss = hinge_d_loss(logits_real, logits_fake)
                reg = lecam(logits_real, logits_fake)
                d_total = d_loss + lc.lecam_weight * reg
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(d_total)
            if tc.grad_clip > 0:
                accelerator.clip_grad_norm_(disc.parameters(), tc.grad_clip)
            opt_d.step()
            lecam.update(logits_real, logits_fake)

        step += 1
        bar.update()
        if step % tc.log_every == 0 or step == tc.steps:
            with torch.no_grad():
                batch_psnr = mean_clip_psnr(recon.detach(), target)
            last = {"loss": float(loss.detach()), "rec_loss": float(rec_loss.detach()),
                    "quantizer_loss": float(out.quantizer_loss.detach()),
                    "psnr": batch_psnr, "lr": lr, "data/bad_files": len(data.report), "image_step": int(image_step),
                    **{f"quantizer/{k}": float(v) for k, v in out.metrics.items()}}
            if hasattr(raw.quantizer, "entropy_weight"):   # LFQ / BSQ
                last["quantizer/entropy_weight"] = raw.quantizer.entropy_weight()
            if grad_norm is not None:
                last["grad_norm"] = float(grad_norm)
            if perceptual is not None:
                last["perceptual"] = float(perc.detach())
            if gan_on:
                last.update({"g_loss": float(g_loss.detach()), "adaptive_weight": float(weight),
                             "d_loss": float(d_loss.detach()), "lecam": float(reg.detach()),
                             "logits_real": float(logits_real.detach().mean()),
                             "logits_fake": float(logits_fake.detach().mean())})
            logger.log(step, last)
            bar.set_postfix(loss=f"{last['loss']:.4f}", psnr=f"{batch_psnr:.2f}")
        if step % tc.sample_every == 0 or step == tc.steps:
            logger.log(step, {"sample_psnr": write_samples(step)})
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            save_checkpoint(accelerator, run_dir, step, trainer_state(), keep=tc.keep_checkpoints, extra=extra)
    bar.close()

    # ---- export
    if accelerator.is_main_process:
        final = ema.module if ema is not None else raw
        final.save_pretrained(run_dir / "final")
        data.report.write(run_dir / "bad_files.json")
        if len(data.report):
            print(f"bad files: {data.report.summary()}")
    accelerator.wait_for_everyone()
    logger.close()
    return {"step": step, **last}


if __name__ == "__main__":
    main()
