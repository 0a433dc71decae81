"""Train the SoundStream/EnCodec-style audio tokenizer from scratch.

    python recipes/train_audio_tokenizer.py --config recipes/configs/audio_tokenizer_demo.yaml \\
        data.manifest=data/moving_digits/manifest.jsonl run_dir=runs/audio_tok
    accelerate launch recipes/train_audio_tokenizer.py --config ... [dotted.key=value ...]
    python recipes/train_audio_tokenizer.py --config ... --resume        # continue from the latest checkpoint

Losses (EnCodec, arXiv 2210.13438, section 3.4): time-domain L1, multi-scale mel L1 (windows 2^5 .. 2^11; the
log-mel term is optional, ``loss.mel_log``), the RVQ's commitment loss, and, from ``loss.adversarial_start`` on
when ``loss.adversarial > 0``, a multi-scale STFT discriminator with hinge + feature-matching losses; fixed weights (``loss.*``).
Data: audio files or the audio tracks of video files (``data.paths`` files/folders, or a ``data.manifest``),
decoded with PyAV, resampled to the codec's rate, mono, random crops of ``data.crop_seconds``; files that cannot be
decoded are skipped, counted and listed in ``<run>/bad_files.json``.

The run folder gets the resolved ``config.yaml``, ``metrics.jsonl`` + TensorBoard logs, atomic checkpoints
(``checkpoints/``, resumed exactly: each step's batch and randomness derive from ``(seed, step)``), sample WAVs every
``train.sample_every`` steps (``samples/``), and at the end the exported tokenizer in ``export_dir`` (default
``<run_dir>/export``, as the video tokenizer and LM trainers; ``AudioTokenizer.from_pretrained``-loadable; the EMA
weights when ``train.ema_decay > 0``) with ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from mmtok.audio.evaluation import evaluate_codec, format_table
from mmtok.data.audio_clips import AudioClips
from mmtok.io import atomic_write, progress_enabled
from recipes.common import (
    ModelEMA, RunLogger, build_arg_parser, cpu_accelerator_kwargs, demo_corpus, dump_config, export_path,
    load_checkpoint, load_config, save_checkpoint, warmup_cosine,
)


# --------------------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    """Which tokenizer: a preset plus field overrides (see ``mmtok.audio.AudioTokenizerConfig``)."""

    preset: str = "demo"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where audio comes from: a manifest (JSON Lines, ``audio``/``video`` paths) and/or files and folders."""

    manifest: str | None = None
    paths: list[str] = field(default_factory=list)
    split: str | None = "train"            # manifest split used for training (None = all records)
    val_split: str | None = "validation"   # manifest split for periodic evaluation (None = hold out train files)
    crop_seconds: float = 1.0               # random crop length (rounded down to whole frames)
    # Crops start on a whole codec frame (hop) from the file's start, as tokenization sees clips (from sample 0).
    # For media whose events sit on a fixed grid (the demo corpus: tones with whole periods per frame, strikes on
    # frame boundaries) this keeps every frame's waveform in one phase; off for general audio (any offset).
    crop_on_frames: bool = False
    max_files: int = 0                      # 0 = all
    num_val_clips: int = 16


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1               # cosine decay to lr * min_lr_ratio
    seed: int = 0
    num_threads: int = 0                    # torch intra-op threads (0 = torch's default)
    log_every: int = 10
    eval_every: int = 250
    save_every: int = 250
    sample_every: int = 250
    keep_checkpoints: int = 2
    ema_decay: float = 0.0                  # 0 disables the EMA copy
    stop_at: int = 0                        # stop after this step as if interrupted (no export); 0 = run to the end


@dataclass
class LossConfig:
    l1: float = 1.0                          # time-domain L1
    mel: float = 1.0                         # multi-scale mel (L1 on mel magnitudes)
    mel_scales: list[int] = field(default_factory=lambda: list(range(5, 12)))
    # L1 on log-mel (EnCodec uses it). Off by default: measured here, even at 0.1 it drives a fresh codec to silence
    # and SI-SNR stays below 0 dB on tones that L1 + mel fits to 20 dB in 100 steps. Raise it for fine-tuning.
    mel_log: float = 0.0
    commitment: float = 1.0                  # multiplies the RVQ's (already weighted) commitment loss
    adversarial: float = 0.0                 # generator hinge loss weight; 0 disables the discriminator
    feature_matching: float = 3.0
    adversarial_start: int = 0               # step the discriminator starts at
    disc_lr: float = 3e-4
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 512, 256])
    disc_channels: int = 32


@dataclass
class AudioTokenizerTrainConfig:
    run_dir: str = "runs/audio_tokenizer"
    export_dir: str | None = None           # default: <run_dir>/export
    # > 0: train on this many Moving-Digits clips generated under <run_dir>/corpus instead of data.manifest / paths
    # (set to their manifest / cleared): what the debug config uses to run from a fresh clone. Needs the demo extra.
    demo_corpus_clips: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)


# ----------------------------------------------------------------------------------------------------------- data
# ------------------------------------------------------------------------------------------------------ training
def build_model(cfg: ModelConfig):
    from mmtok.audio import AudioTokenizer

    return AudioTokenizer.from_preset(cfg.preset, **dict(cfg.overrides))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_arg_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    cfg: AudioTokenizerTrainConfig = load_config(AudioTokenizerTrainConfig, args.config, args.overrides)
    return train(cfg, resume=args.resume, allow_inexact_resume=args.allow_inexact_resume)


def train(cfg: AudioTokenizerTrainConfig, resume: bool = False, allow_inexact_resume: bool = False) -> dict[str, Any]:
    from accelerate import Accelerator
    from tqdm import tqdm

    from mmtok.audio.discriminator import (
        MultiScaleSTFTDiscriminator, discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss,
    )
    from mmtok.audio_features import MultiScaleMelLoss
    from mmtok.metrics import si_snr

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run = Path(cfg.run_dir)
    accelerator = Accelerator(**cpu_accelerator_kwargs())
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    sr, hop = model.sample_rate, model.hop_length
    crop = max(1, int(cfg.data.crop_seconds * sr) // hop) * hop

    # Data: training files, and validation clips (a manifest split, or the last files when there is none).
    if cfg.demo_corpus_clips:
        cfg.data.manifest, cfg.data.paths = str(demo_corpus(run, cfg.demo_corpus_clips, seed=cfg.train.seed)), []
    train_data = AudioClips(paths=cfg.data.paths, manifest=cfg.data.manifest, split=cfg.data.split, sample_rate=sr,
                            max_files=cfg.data.max_files)
    if len(train_data) == 0:
        raise ValueError("no training audio: set data.manifest and/or data.paths")
    train_indices = list(range(len(train_data)))
    if cfg.data.manifest and cfg.data.val_split:
        val_data = AudioClips(manifest=cfg.data.manifest, split=cfg.data.val_split, sample_rate=sr,
                              max_files=cfg.data.num_val_clips)
        val_clips = val_data.load_all()
    else:
        n_val = min(cfg.data.num_val_clips, max(1, len(train_data) // 10)) if len(train_data) > 1 else 0
        val_idx = train_indices[len(train_data) - n_val:]
        train_indices = train_indices[: len(train_data) - n_val] or val_idx
        val_clips = [w for w in (train_data.get(i) for i in val_idx) if w is not None]
    val_clips = [c[: max(crop, hop)] for c in val_clips]

    disc = None
    if cfg.loss.adversarial > 0:
        disc = MultiScaleSTFTDiscriminator(cfg.loss.disc_n_ffts, cfg.loss.disc_channels)
    mel_loss = MultiScaleMelLoss(sr, scales=cfg.loss.mel_scales, log_weight=cfg.loss.mel_log).to(accelerator.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            weight_decay=cfg.train.weight_decay)
    tc = cfg.train
    if disc is not None:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr, betas=tuple(cfg.train.betas))
        model, disc, opt, opt_d = accelerator.prepare(model, disc, opt, opt_d)
    else:
        model, opt = accelerator.prepare(model, opt)
    # Stepped by hand once per optimizer step: through prepare it would step once per process. The schedule is a
    # pure function of the step, so resume restores it from the step (the optimizer state holds the current lr).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(
        step, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_ratio=tc.min_lr_ratio))
    raw = accelerator.unwrap_model(model)
    ema = ModelEMA(raw, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    extra = {"ema": ema} if ema is not None else None

    step = 0
    if resume:
        state = load_checkpoint(accelerator, run, extra=extra, allow_inexact=allow_inexact_resume)
        if state is None:
            accelerator.print(f"--resume: no checkpoint in {run}, starting from scratch")
        else:
            step = int(state["step"])
            sched.load_state_dict({**sched.state_dict(), "last_epoch": step, "_step_count": step + 1})
            accelerator.print(f"resumed from step {step}")
    if accelerator.is_main_process:
        dump_config(cfg, run)
    logger = RunLogger(run, enabled=accelerator.is_main_process, resume_step=step if resume else None)

    def evaluate_now(module) -> dict[str, Any]:
        levels = sorted({1, min(2, raw.num_quantizers), min(4, raw.num_quantizers), raw.num_quantizers})
        module.eval()
        result = evaluate_codec(module, val_clips, levels)
        module.train()
        return result

    bar = tqdm(total=cfg.train.steps, initial=step, desc="audio tokenizer", disable=not (
        progress_enabled() and accelerator.is_main_process))
    model.train()
    losses_window: list[float] = []
    last = min(cfg.train.steps, cfg.train.stop_at) if cfg.train.stop_at > 0 else cfg.train.steps
    while step < last:
        # Everything random in this step derives from (seed, step, rank): exact resume, distinct shards per rank.
        torch.manual_seed(cfg.train.seed * 1_000_003 + step * 97 + accelerator.process_index)
        gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + step * 31 + accelerator.process_index)
        wav = train_data.random_batch(gen, cfg.train.batch_size, crop, train_indices,
                                      align=hop if cfg.data.crop_on_frames else 1).to(accelerator.device)
        adv_on = disc is not None and step >= cfg.loss.adversarial_start

        out = model(wav)
        recon = out.reconstruction                                            # [B, 1, N]
        l1 = (recon - wav).abs().mean()
        mel = mel_loss(recon, wav)
        loss = cfg.loss.l1 * l1 + cfg.loss.mel * mel + cfg.loss.commitment * out.quantizer_loss
        metrics: dict[str, Any] = {"l1": l1.detach(), "mel": mel.detach(),
                                   "commitment": out.quantizer_loss.detach()}
        if adv_on:
            fake_logits, fake_feats = disc(recon)
            with torch.no_grad():
                _, real_feats = disc(wav)
            g_adv = generator_hinge_loss(fake_logits)
            fm = feature_matching_loss(real_feats, fake_feats)
            loss = loss + cfg.loss.adversarial * g_adv + cfg.loss.feature_matching * fm
            metrics.update(g_adv=g_adv.detach(), feature_matching=fm.detach())
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.train.grad_clip > 0:
            metrics["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        if adv_on:
            real_logits, _ = disc(wav)
            fake_logits, _ = disc(recon.detach())
            d_loss = discriminator_hinge_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            opt_d.step()
            metrics["d_loss"] = d_loss.detach()
        if ema is not None:
            ema.update(raw)
        step += 1
        bar.update()
        losses_window.append(float(loss.detach()))

        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            q = {f"rvq_{k}": v for k, v in out.metrics.items()}
            metrics.update(loss=sum(losses_window) / len(losses_window), lr=sched.get_last_lr()[0], **q)
            losses_window.clear()
            metrics["si_snr_batch"] = float(si_snr(recon.detach(), wav).mean())
            logger.log(step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", mel=f"{float(mel.detach()):.3f}")
        if accelerator.is_main_process and val_clips and (step % cfg.train.eval_every == 0):
            result = evaluate_now(ema.module if ema is not None else raw)
            logger.log(step, {f"val/si_snr_q{n}": r["si_snr"] for n, r in result["levels"].items()}
                       | {f"val/mel_q{n}": r["mel_distance"] for n, r in result["levels"].items()})
        if accelerator.is_main_process and val_clips and step % cfg.train.sample_every == 0:
            write_samples(ema.module if ema is not None else raw, val_clips[0], run / "samples", step)
        if step % cfg.train.save_every == 0 or step == last:
            save_checkpoint(accelerator, run, step, {"samples_seen": step * cfg.train.batch_size},
                            keep=cfg.train.keep_checkpoints, extra=extra)
    bar.close()

    result: dict[str, Any] = {"steps": step}
    if step < cfg.train.steps:    # stopped early (train.stop_at): the checkpoint is the result
        logger.close()
        return result
    if accelerator.is_main_process:
        final = ema.module if ema is not None else raw
        export = export_path(run, export_dir=cfg.export_dir)
        final.eval()
        final.save_pretrained(export)
        if val_clips:
            result = {**evaluate_now(final), "steps": step}
            final.eval()
            atomic_write(export / "eval.json", json.dumps(result, indent=1))
            accelerator.print(format_table(result))
        if train_data.skipped:
            atomic_write(run / "bad_files.json", json.dumps(train_data.skipped, indent=1))
            accelerator.print(f"skipped {len(train_data.skipped)} bad files: {train_data.report()}")
        result["skipped"] = len(train_data.skipped)
        result["export_dir"] = str(export)
    logger.close()
    accelerator.wait_for_everyone()
    return result


@torch.no_grad()
def write_samples(model, clip: torch.Tensor, folder: Path, step: int) -> None:
    """WAVs of ``clip`` reconstructed with 1, 2, 4 and all RVQ levels (and the original once)."""
    from mmtok.data.media import write_audio

    was_training = model.training
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "original.wav").exists():
        write_audio(folder / "original.wav", clip.numpy(), model.sample_rate)
    codes = model.encode(clip[None, None])
    for n in sorted({1, min(2, model.num_quantizers), min(4, model.num_quantizers), model.num_quantizers}):
        wav = model.decode(codes[:, :n])[0, 0, : clip.numel()].cpu().numpy()
        write_audio(folder / f"step_{step:08d}_q{n}.wav", wav, model.sample_rate)
    model.train(was_training)


if __name__ == "__main__":
    main()
