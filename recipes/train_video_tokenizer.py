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
model many more different scenes per unit of compute than full clips do. Augmentation (``data.crop_scale``,
``data.flip``, ``data.brightness`` / ``contrast`` / ``saturation`` / ``hue``, ``data.frame_steps``; all off by
default, on in the ``real*`` configs) is described in :class:`mmtok.data.video_clips.VideoClipConfig`.

Held-out scores: every ``train.eval_every`` steps the model (the EMA weights when kept) reconstructs
``train.eval_clips`` fixed clips of the held-out split ``data.sample_split`` (``val/psnr``; the real-media
manifests split by source, so these are footage the model never saw) and as many fixed clips of the training split
(``train_eval/psnr``), all centre crops spread over their sources, never augmented: the gap between the two is
overfitting, visible while it happens.

The batch of step ``s`` depends only on ``(train.seed, s)`` and the model has no randomness, so ``--resume`` continues
exactly (on CPU, a resumed run's losses equal an uninterrupted run's). The run folder holds ``config.yaml``,
``metrics.jsonl`` + ``tensorboard/``, ``checkpoints/`` (atomic, ``latest`` pointer), ``samples/step_*.gif``
(originals above, reconstructions below) and, at the end, the exported tokenizer in ``export_dir`` (default
``<run_dir>/export``, as the audio tokenizer and LM trainers; ``save_pretrained`` of the EMA weights when
``train.ema_decay > 0``), which ``VideoTokenizer.from_pretrained`` / ``AutoModel.from_pretrained`` load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm import tqdm

from mmtok.data.ingest import ClipRecord, load_records
from mmtok.data.prefetch import StepPrefetcher
from mmtok.data.video_clips import RandomClips, VideoClipConfig, find_records, fixed_clips, write_comparison_gif
from mmtok.frames import to_uint8
from mmtok.io import progress_enabled
from mmtok.metrics import psnr
from mmtok.video import VideoTokenizer
from mmtok.video.losses import (
    LeCamEMA, PerceptualLoss, VideoDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss, reconstruction_loss)
from recipes.common import (
    ModelEMA, RunLogger, build_arg_parser, cpu_accelerator_kwargs, demo_corpus, dump_config, export_path,
    load_checkpoint, load_config, save_checkpoint, warmup_cosine)


# ------------------------------------------------------------------------------------------------------------ config
@dataclass
class ModelConfig:
    preset: str = "demo"                     # VideoTokenizerConfig preset (debug, demo, magvit2_128)
    overrides: dict[str, Any] = field(default_factory=dict)   # VideoTokenizerConfig fields over the preset
    init_from: Optional[str] = None          # a save_pretrained folder to start from instead


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
    # threads preparing the next steps' batches while a step trains (mmtok.data.prefetch; the same batches): 2-4 on a
    # GPU, 0 on a CPU-only machine, where they would take cores from torch's threads
    data_workers: int = 0
    log_every: int = 10
    eval_every: int = 0                      # held-out (val/) and training-split (train_eval/) PSNR; 0: never
    eval_clips: int = 16                     # fixed clips of each split scored at eval_every
    save_every: int = 200
    sample_every: int = 200
    keep_checkpoints: int = 2


@dataclass
class TrainVideoTokenizerConfig:
    run_dir: str = "outputs/video_tokenizer"
    export_dir: Optional[str] = None         # default: <run_dir>/export
    # > 0: train on this many Moving-Digits clips generated under <run_dir>/corpus instead of data.source (set to
    # their manifest): what the debug config uses to run from a fresh clone. Needs the demo extra.
    demo_corpus_clips: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: VideoClipConfig = field(default_factory=VideoClipConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def held_out_records(cfg: VideoClipConfig) -> list[ClipRecord]:
    """The video records of the held-out split ``cfg.sample_split`` (none for a folder or without the split)."""
    if not cfg.sample_split or not Path(cfg.source).is_file():
        return []
    return [r for r in load_records(cfg.source, split=cfg.sample_split) if r.video is not None]


def sample_clips(cfg: VideoClipConfig, records: list[ClipRecord]) -> torch.Tensor:
    """The fixed clips shown in ``samples/``: held-out clips when the split has any, else training ``records``."""
    return fixed_clips(held_out_records(cfg) or records, cfg, cfg.num_samples)[0]


def evaluation_sets(cfg: VideoClipConfig, records: list[ClipRecord], count: int) -> dict[str, torch.Tensor]:
    """The clips scored at ``train.eval_every``: ``val`` (held-out split, when there is one) and ``train_eval``
    (training ``records``), ``count`` fixed clips each (:func:`~mmtok.data.video_clips.fixed_clips`)."""
    sets = {}
    held_out = held_out_records(cfg)
    if held_out:
        sets["val"] = fixed_clips(held_out, cfg, count)[0]
    sets["train_eval"] = fixed_clips(records, cfg, count)[0]
    return sets


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
    if cfg.demo_corpus_clips:
        with accelerator.main_process_first():
            cfg.data.source = str(demo_corpus(run_dir, cfg.demo_corpus_clips, seed=tc.seed))
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir)
    accelerator.print(f"training the video tokenizer on {accelerator.num_processes} process(es), run folder {run_dir}")

    # ---- data
    records = find_records(cfg.data)
    data = RandomClips(records, cfg.data, tc.seed, accelerator.process_index, accelerator.num_processes)
    samples = sample_clips(cfg.data, records)
    eval_sets = evaluation_sets(cfg.data, records, tc.eval_clips) if tc.eval_every > 0 else {}
    if tc.eval_every > 0 and "val" not in eval_sets:
        accelerator.print(f"no held-out split {cfg.data.sample_split!r} in {cfg.data.source}: only train_eval/psnr "
                          f"is scored")

    # ---- models
    set_seed(tc.seed)
    if cfg.model.init_from:
        model = VideoTokenizer.from_pretrained(cfg.model.init_from)
    else:
        # the tokenizer records the frame rate it is trained at (generation times audio and writes video by it)
        model = VideoTokenizer.from_preset(cfg.model.preset, **{"fps": cfg.data.fps, **dict(cfg.model.overrides)})
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
            data.restore_skipped(state)
            accelerator.print(f"resumed from step {step}")
    logger = RunLogger(run_dir, enabled=accelerator.is_main_process, resume_step=step if args.resume else None)

    def trainer_state() -> dict[str, Any]:
        return data.skipped_state()     # prefetch threads may be adding to it

    @torch.no_grad()
    def write_samples(at: int) -> float:
        net = ema.module if ema is not None else raw
        was_training = net.training
        net.eval()
        target = net.preprocess(samples)
        recon = net.decode(net.encode(samples))
        score = mean_clip_psnr(recon, target)
        if accelerator.is_main_process:
            write_comparison_gif(run_dir / "samples" / f"step_{at:08d}.gif", samples, to_uint8(recon), cfg.data.fps)
        net.train(was_training)
        return score

    @torch.no_grad()
    def score_eval_sets() -> dict[str, float]:
        net = ema.module if ema is not None else raw
        was_training = net.training
        net.eval()
        scores = {}
        for name, clips in eval_sets.items():
            values = []
            for i in range(0, len(clips), tc.batch_size):
                batch = clips[i:i + tc.batch_size]
                values.append(psnr(net.decode(net.encode(batch)).clamp(-1, 1), net.preprocess(batch), (-1.0, 1.0),
                                   per_item=True, max_db=100.0))
            scores[f"{name}/psnr"] = float(torch.cat(values).mean())
        net.train(was_training)
        return scores

    # ---- loop
    bar = tqdm(total=tc.steps, initial=step, desc="video tokenizer", unit="step",
               disable=not (progress_enabled() and accelerator.is_main_process))
    last: dict[str, Any] = {}

    def is_image_step(at: int) -> bool:
        return cfg.data.image_batch_size > 0 and at % cfg.data.image_every == cfg.data.image_every - 1

    def batch_of(at: int) -> torch.Tensor:
        return (data.batch(at, cfg.data.image_batch_size, num_frames=1) if is_image_step(at)
                else data.batch(at, tc.batch_size))

    batches = StepPrefetcher(batch_of, start=step, stop=tc.steps, workers=tc.data_workers)
    while step < tc.steps:
        lr = warmup_cosine(step, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_ratio=tc.min_lr_ratio,
                           peak=tc.lr)
        for group in opt_g.param_groups:
            group["lr"] = lr
        image_step = is_image_step(step)
        video = batches.get(step)
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
        if eval_sets and (step % tc.eval_every == 0 or step == tc.steps):
            last.update(score_eval_sets())
            logger.log(step, {k: v for k, v in last.items() if k.endswith("/psnr")})
        if step % tc.save_every == 0 or step == tc.steps:
            save_checkpoint(accelerator, run_dir, step, trainer_state(), keep=tc.keep_checkpoints, extra=extra)
    batches.close()
    bar.close()

    # ---- export
    if accelerator.is_main_process:
        final = ema.module if ema is not None else raw
        final.save_pretrained(export_path(run_dir, export_dir=cfg.export_dir))
        data.report.write(run_dir / "bad_files.json")
        if len(data.report):
            print(f"bad files: {data.report.summary()}")
    accelerator.wait_for_everyone()
    logger.close()
    return {"step": step, **last}


if __name__ == "__main__":
    main()
