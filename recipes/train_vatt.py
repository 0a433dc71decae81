"""Train VATT (video, audio and text transformers on raw signals, arXiv 2104.11178) contrastively, then evaluate it.

    python recipes/train_vatt.py --config recipes/configs/vatt_demo.yaml \
        data.manifest=outputs/demo/corpus/manifest.jsonl run_dir=outputs/vatt_demo
    accelerate launch recipes/train_vatt.py --config recipes/configs/vatt_demo.yaml data.manifest=...
    python recipes/train_vatt.py --config ... --resume              # continue the run folder's latest checkpoint
    python recipes/train_vatt.py --config ... --eval-only [model.video.tome_r=4 eval.out=tome4.json]

Model (:class:`lm.modeling_vatt.VATTModel`): ``model.preset`` (``debug``, ``demo``) with ``model.video`` /
``model.audio`` / ``model.text`` (:class:`mmtok.encoders.PatchEncoderConfig` fields over each tower, e.g.
``model.video.attention=divided``) and ``model.overrides`` (other ``VATTConfig`` fields: ``droptoken``, ``va_dim``,
...); ``model.shared_backbone=true`` is the paper's modality-agnostic variant. ``model.init_from=<export>`` fine-tunes
a trained model; ``model.video`` then takes the token-reduction switches only (``rlt_threshold``, ``tome_r``,
``merge``, ``stts_*``: e.g. VTM's or STTS's scorers trained on a plain model, with ``model.overrides.droptoken=0``
for STTS). With ``--eval-only`` the same switches evaluate the export training-free.

Loss: NCE between each clip's video and audio, MIL-NCE between its video and all its captions (every caption a
manifest lists for the clip is a positive), DropToken on video and audio tokens in training (``droptoken``, VATT 0.5).
AdamW, linear warm-up then cosine decay, gradient clipping.

Data: ``data.manifest`` (JSON Lines, :mod:`mmtok.data.ingest`; ``demo_corpus_clips > 0`` generates a Moving-Digits
corpus in the run folder instead), its ``data.train_split`` decoded once into memory (:mod:`mmtok.data.av_clips`:
``data.num_frames`` frames at ``data.fps``, ``data.size`` square, audio at ``data.sample_rate``); undecodable records
are skipped and listed in ``<run>/bad_files.json``. Captions are SentencePiece ids (:class:`mmtok.text.TextTokenizer`,
trained on the training captions unless ``data.text_tokenizer`` names a saved one; kept in ``<run>/text_tokenizer``).
The batch of step ``s`` and its DropToken draws depend only on ``(train.seed, s)``, so ``--resume`` continues exactly.

Evaluation (:func:`lm.vatt_evaluation.evaluate_vatt`), at the end and with ``--eval-only``: zero-shot text->video,
video->text, video->audio and audio->video R@1 / R@5 over the first ``eval.test_clips`` clips of
``data.test_split``, and linear probes fitted on the pooled embeddings of ``eval.probe_train_clips`` training clips
for the labels of the corpus's ground truth (Moving-Digits: digit, colour and direction from the video, pitch from
the audio), each beside its chance level; ``val/*`` retrieval and losses on ``data.val_split`` every
``train.eval_every`` steps.

The run folder holds ``config.yaml``, ``metrics.jsonl`` + TensorBoard logs, ``checkpoints/`` (atomic, ``latest``
pointer), ``text_tokenizer/`` and, at the end, the export (``export_dir``, default ``<run_dir>/export``):
``VATTModel.from_pretrained``-loadable weights and config, the text tokenizer, ``clip_config.json`` (how clips are
decoded) and ``eval.json`` (``eval.out``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from lm.configuration_vatt import VATTConfig
from lm.modeling_vatt import REDUCTION_SWITCHES, VATTModel, pad_text_ids
from lm.vatt_evaluation import embed_clips, evaluate_vatt, load_vatt_export, retrieval_scores, save_clip_config
from mmtok.data.av_clips import AVClips, epoch_batch
from mmtok.data.ingest import ClipConfig
from mmtok.io import atomic_output, atomic_write, progress_enabled
from mmtok.text import TextTokenizer
from recipes.common import (
    RunLogger, build_arg_parser, cpu_accelerator_kwargs, demo_corpus, dump_config, export_path, latest_checkpoint,
    load_checkpoint, load_config, save_checkpoint, warmup_cosine)

# VATTConfig fields that fine-tuning (model.init_from) may change: they shape the loss, not the weights
FINETUNE_FIELDS = ("droptoken", "va_weight", "vt_weight")


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    preset: str = "demo"                     # VATTConfig preset: debug, demo
    shared_backbone: bool = False            # VATT-MA: one transformer for the three modalities
    video: dict[str, Any] = field(default_factory=dict)   # PatchEncoderConfig fields over the preset's video tower
    audio: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)    # vocab_size comes from the text tokenizer
    overrides: dict[str, Any] = field(default_factory=dict)   # other VATTConfig fields (droptoken, va_dim, ...)
    init_from: str | None = None             # a VATT export to fine-tune (model.video: reduction switches only)


@dataclass
class DataConfig:
    manifest: str | None = None              # JSON Lines manifest (mmtok.data.ingest)
    train_split: str | None = "train"        # None: every record
    val_split: str | None = "validation"     # val/* every train.eval_every steps (None: none)
    test_split: str | None = "test"          # the final evaluation's clips
    fps: float = 4.0
    num_frames: int = 5
    size: int = 32
    sample_rate: int = 16000
    max_train_clips: int = 0                 # 0: all
    num_workers: int = 0                     # decoding processes
    text_tokenizer: str | None = None        # a TextTokenizer folder (None: trained on the training captions)
    text_vocab_size: int = 256
    max_text_length: int = 32                # caption tokens kept


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64                     # clips per process per step (NCE negatives: the global batch)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05               # on linear layers' weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    seed: int = 0
    num_threads: int = 0                     # torch intra-op threads (0: torch's default)
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 2
    stop_at: int = 0                         # stop after this step as if interrupted (no export); 0: run to the end


@dataclass
class EvalConfig:
    test_clips: int = 512                    # first clips of data.test_split
    probe_train_clips: int = 1024            # first training clips the linear probes are fitted on
    val_clips: int = 64                      # first clips of data.val_split for val/*
    batch_size: int = 64
    ks: list[int] = field(default_factory=lambda: [1, 5])
    out: str | None = None                   # default <export_dir>/eval.json


@dataclass
class VATTTrainConfig:
    run_dir: str = "outputs/vatt"
    export_dir: str | None = None            # default: <run_dir>/export
    # > 0: train on this many Moving-Digits clips generated under <run_dir>/corpus (data.manifest set to theirs):
    # what the debug config uses to run from a fresh clone. Needs the demo extra.
    demo_corpus_clips: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------------------------------------------ data
def clip_config(cfg: DataConfig) -> ClipConfig:
    """How clips are decoded (recorded beside the export)."""
    return ClipConfig(fps=cfg.fps, num_frames=cfg.num_frames, size=cfg.size, sample_rate=cfg.sample_rate,
                      require_audio=True, pad=True)


def text_tokenizer(cfg: VATTTrainConfig, run: Path, clips: AVClips, accelerator: Accelerator) -> TextTokenizer:
    """The run's text tokenizer: ``<run>/text_tokenizer`` when it exists (a resumed run), else ``model.init_from``'s
    or ``data.text_tokenizer``'s, else SentencePiece trained on the training captions; saved in the run folder."""
    saved = run / "text_tokenizer"
    if (saved / "text.model").is_file():
        return TextTokenizer.from_pretrained(saved)
    source = cfg.model.init_from or cfg.data.text_tokenizer
    if source:
        tokenizer = TextTokenizer.from_pretrained(source)
    else:
        captions = [c for caps in clips.captions for c in caps]
        if not captions:
            raise ValueError("the training clips have no captions to train a text tokenizer on (and MIL-NCE needs "
                             "them): give the manifest captions, or data.text_tokenizer")
        tokenizer = TextTokenizer.train(captions, vocab_size=cfg.data.text_vocab_size, model_type="bpe")
    if accelerator.is_main_process:
        tokenizer.save_pretrained(saved)
    return tokenizer


def make_batch(clips: AVClips, caption_ids: list[list[list[int]]], index: list[int], *, samples: int,
               max_text_length: int, device: torch.device) -> dict[str, Any]:
    """The model inputs of clips ``index``: video, audio cut to ``samples``, every caption of each clip (with the
    clip it describes) and the clip ids (a clip drawn twice counts once)."""
    rows = [(j, ids) for j, i in enumerate(index) for ids in caption_ids[i]]
    batch: dict[str, Any] = {"pixel_values": clips.video(index).to(device),
                             "input_values": clips.audio[index, :samples].to(device),
                             "clip_ids": torch.tensor(index, device=device)}
    if rows:
        batch["input_ids"], batch["attention_mask"] = pad_text_ids([ids for _, ids in rows],
                                                                   max_length=max_text_length, device=device)
        batch["text_clip"] = torch.tensor([j for j, _ in rows], device=device)
    return batch


def probe_labels_of(manifest: str | Path) -> tuple[dict[str, dict[str, int]] | None, dict[str, str] | None]:
    """The linear-probe labels of a Moving-Digits corpus (its ``ground_truth.jsonl`` beside the manifest), or none."""
    folder = Path(manifest).parent
    if not (folder / "ground_truth.jsonl").is_file():
        return None, None
    from mmtok.datasets.moving_digits import PROBE_LABELS, probe_labels

    return probe_labels(folder), dict(PROBE_LABELS)


# ----------------------------------------------------------------------------------------------------- model
def build_model(cfg: ModelConfig, tokenizer: TextTokenizer) -> VATTModel:
    """A fresh model of ``cfg`` whose text tower reads ``tokenizer``'s ids, or ``cfg.init_from`` with the video
    tower's reduction switches and the fine-tuning fields of ``cfg.overrides``."""
    if cfg.init_from:
        fixed = sorted(set(cfg.overrides) - set(FINETUNE_FIELDS))
        if fixed or cfg.audio or cfg.text or cfg.shared_backbone:
            raise ValueError(f"model.init_from fine-tunes a saved model: only model.video's token-reduction switches "
                             f"and model.overrides {list(FINETUNE_FIELDS)} may change it (got overrides {fixed}"
                             f"{', model.audio' if cfg.audio else ''}{', model.text' if cfg.text else ''}"
                             f"{', model.shared_backbone' if cfg.shared_backbone else ''})")
        config = VATTConfig.from_pretrained(cfg.init_from)
        for key, value in cfg.overrides.items():
            setattr(config, key, value)
        config.validate()
        model = VATTModel.from_pretrained(cfg.init_from, config=config, video_switches=dict(cfg.video) or None)
        if model.config.text_config.vocab_size != tokenizer.codebook_size:
            raise ValueError(f"{cfg.init_from}'s text tower reads {model.config.text_config.vocab_size} ids, the text "
                             f"tokenizer has {tokenizer.codebook_size}")
        return model
    config = VATTConfig.from_preset(cfg.preset, shared_backbone=cfg.shared_backbone, video_config=dict(cfg.video),
                                    audio_config=dict(cfg.audio),
                                    text_config={**cfg.text, "vocab_size": tokenizer.codebook_size},
                                    **dict(cfg.overrides))
    return VATTModel(config)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the weights of linear layers; none on embeddings, norms, biases, temperature."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) in linear], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in linear], "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------- eval
def evaluation_data(cfg: VATTTrainConfig, train_clips: AVClips | None, clip_cfg: ClipConfig
                    ) -> tuple[AVClips, AVClips | None]:
    """The test clips and the probe's training clips (the first of the training split)."""
    manifest = cfg.data.manifest
    test = AVClips.load(manifest, cfg=clip_cfg, split=cfg.data.test_split, limit=cfg.eval.test_clips or None,
                        num_workers=cfg.data.num_workers)
    n = cfg.eval.probe_train_clips
    if train_clips is None:
        train_clips = AVClips.load(manifest, cfg=clip_cfg, split=cfg.data.train_split, limit=n or None,
                                   num_workers=cfg.data.num_workers)
    return test, train_clips.subset(range(min(n, len(train_clips)))) if n else None


def run_evaluation(model: VATTModel, tokenizer: TextTokenizer, cfg: VATTTrainConfig, test: AVClips,
                   probe_train: AVClips | None) -> dict[str, float]:
    labels, modalities = probe_labels_of(cfg.data.manifest)
    return evaluate_vatt(model, test, tokenizer=tokenizer, probe_train=probe_train, labels=labels,
                         label_modalities=modalities, batch_size=cfg.eval.batch_size, ks=cfg.eval.ks,
                         max_text_length=cfg.data.max_text_length)


def write_report(path: Path, metrics: dict[str, float], *, model: Path, steps: int | None,
                 video_switches: dict[str, Any]) -> Path:
    report = {"model": str(model), "steps": steps, "video_switches": video_switches, "metrics": metrics}
    return atomic_write(path, json.dumps(report, indent=1) + "\n")


def format_metrics(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.startswith(("t2v/R@", "v2a/R@", "probe/")) and not k.endswith("_chance")]
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)


def eval_only(cfg: VATTTrainConfig) -> dict[str, Any]:
    """Evaluate the run's export (``model.video``: token-reduction switches applied training-free)."""
    switches = dict(cfg.model.video)
    unknown = sorted(set(switches) - set(REDUCTION_SWITCHES))
    if unknown:
        raise ValueError(f"--eval-only evaluates the saved model: model.video may set only the token-reduction "
                         f"switches {list(REDUCTION_SWITCHES)}, got {unknown}")
    export = export_path(cfg.run_dir, export_dir=cfg.export_dir)
    if switches and cfg.eval.out is None:
        raise ValueError("set eval.out: an evaluation with model.video switches would replace the export's own "
                         "eval.json")
    if cfg.demo_corpus_clips:
        cfg.data.manifest = str(demo_corpus(cfg.run_dir, cfg.demo_corpus_clips, seed=cfg.train.seed))
    if not cfg.data.manifest:
        raise ValueError("--eval-only needs data.manifest (the corpus to evaluate on)")
    model, tokenizer, clip_cfg = load_vatt_export(export, video_switches=switches or None)
    test, probe_train = evaluation_data(cfg, None, clip_cfg)
    metrics = run_evaluation(model, tokenizer, cfg, test, probe_train)
    out = Path(cfg.eval.out) if cfg.eval.out else export / "eval.json"
    write_report(out, metrics, model=export, steps=None, video_switches=switches)
    print(format_metrics(metrics))
    return {"metrics": metrics, "eval_path": str(out)}


# ------------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_arg_parser(__doc__.split("\n")[0])
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the run's export (model.video: token-reduction switches) and write eval.out")
    args = parser.parse_intermixed_args(argv)   # flags may come after the first dotted override
    cfg: VATTTrainConfig = load_config(VATTTrainConfig, args.config, args.overrides)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if args.eval_only:
        return eval_only(cfg)
    return train(cfg, resume=args.resume, allow_inexact_resume=args.allow_inexact_resume)


def train(cfg: VATTTrainConfig, *, resume: bool = False, allow_inexact_resume: bool = False) -> dict[str, Any]:
    tc = cfg.train
    run = Path(cfg.run_dir)
    if not resume and latest_checkpoint(run) is not None:
        raise FileExistsError(f"{run} already holds a run with checkpoints: pass --resume to continue it, or choose "
                              "another run_dir")
    accelerator = Accelerator(**cpu_accelerator_kwargs())
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.demo_corpus_clips:
        with accelerator.main_process_first():
            cfg.data.manifest = str(demo_corpus(run, cfg.demo_corpus_clips, seed=tc.seed))
    if not cfg.data.manifest:
        raise ValueError("no training data: set data.manifest (or demo_corpus_clips > 0)")

    # ---- data: every clip decoded once, captions tokenized once
    clip_cfg = clip_config(cfg.data)
    train_clips = AVClips.load(cfg.data.manifest, cfg=clip_cfg, split=cfg.data.train_split,
                               limit=cfg.data.max_train_clips or None, num_workers=cfg.data.num_workers)
    val_clips = (AVClips.load(cfg.data.manifest, cfg=clip_cfg, split=cfg.data.val_split,
                              limit=cfg.eval.val_clips or None, num_workers=cfg.data.num_workers)
                 if cfg.data.val_split and cfg.eval.val_clips else None)
    with accelerator.main_process_first():
        tokenizer = text_tokenizer(cfg, run, train_clips, accelerator)
    caption_ids = [tokenizer.encode_batch(caps) if caps else [] for caps in train_clips.captions]

    # ---- model, optimizer, schedule
    set_seed(tc.seed)   # right before the weights are drawn, the same on every rank
    model = build_model(cfg.model, tokenizer)
    samples = model.usable_audio_length(train_clips.audio.shape[1])
    opt = torch.optim.AdamW(decay_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    model, opt = accelerator.prepare(model, opt)
    raw: VATTModel = accelerator.unwrap_model(model)
    # stepped by hand once per optimizer step; a pure function of the step, so resume restores it from the step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
        s, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_ratio=tc.min_lr_ratio))
    step = 0
    if resume:
        state = load_checkpoint(accelerator, run, allow_inexact=allow_inexact_resume)
        if state is None:
            accelerator.print(f"--resume: no checkpoint in {run}, starting from scratch")
        else:
            step = int(state["step"])
            sched.load_state_dict({**sched.state_dict(), "last_epoch": step, "_step_count": step + 1})
            accelerator.print(f"resumed from step {step}")
    if accelerator.is_main_process:
        dump_config(cfg, run)
        if len(train_clips.report):
            train_clips.report.write(run / "bad_files.json")
    logger = RunLogger(run, enabled=accelerator.is_main_process, resume_step=step if resume else None)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        """Losses (no DropToken) and retrieval on the validation clips."""
        raw.eval()
        index = list(range(len(val_clips)))
        val_ids = [tokenizer.encode_batch(caps) if caps else [] for caps in val_clips.captions]
        out = raw(**make_batch(val_clips, val_ids, index, samples=samples, max_text_length=cfg.data.max_text_length,
                               device=accelerator.device))
        emb = embed_clips(raw, val_clips, tokenizer=tokenizer, batch_size=cfg.eval.batch_size,
                          max_text_length=cfg.data.max_text_length)
        raw.train()
        row = {f"val/{k}": v for k, v in retrieval_scores(emb, ks=(1,)).items() if k.endswith("R@1")}
        for key in ("loss", "loss_va", "loss_vt"):
            if getattr(out, key) is not None:
                row[f"val/{key}"] = float(getattr(out, key))
        return row

    # ---- the loop
    last = min(tc.steps, tc.stop_at) if tc.stop_at > 0 else tc.steps
    bar = tqdm(total=tc.steps, initial=step, desc="vatt",
               disable=not (progress_enabled() and accelerator.is_main_process))
    model.train()
    window: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    while step < last:
        # everything random in this step (DropToken's draws, the batch) derives from (seed, step, rank)
        torch.manual_seed(tc.seed * 1_000_003 + step * 97 + rank)
        index = epoch_batch(len(train_clips), step, tc.batch_size, seed=tc.seed, rank=rank, world=world)
        out = model(**make_batch(train_clips, caption_ids, index, samples=samples,
                                 max_text_length=cfg.data.max_text_length, device=accelerator.device))
        opt.zero_grad(set_to_none=True)
        accelerator.backward(out.loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
        opt.step()
        sched.step()
        step += 1
        bar.update()
        # the loss is the global batch's on every rank (embeddings are gathered): no reduce needed
        parts = {"loss": out.loss, "loss_va": out.loss_va, "loss_vt": out.loss_vt,
                 "video_tokens": out.video_num_tokens.float().mean()}
        for key, value in parts.items():
            if value is not None:
                window[key] = window.get(key, 0.0) + float(value.detach())
        window_steps += 1
        if step % tc.log_every == 0 or step == last:
            elapsed = time.perf_counter() - window_start
            row = {f"train/{k}": v / window_steps for k, v in window.items()}
            row.update({"train/lr": sched.get_last_lr()[0], "train/temperature": float(out.temperature),
                        "train/clips_per_s": window_steps * tc.batch_size * world / max(elapsed, 1e-9)})
            if grad_norm is not None:
                row["train/grad_norm"] = float(grad_norm)
            logger.log(step, row)
            bar.set_postfix(loss=f"{row['train/loss']:.3f}")
            window, window_start, window_steps = {}, time.perf_counter(), 0
        if val_clips is not None and (step % tc.eval_every == 0 or step == tc.steps):
            # every rank: the loss gathers across processes (the same clips on each rank count once)
            logger.log(step, validate())
        if step % tc.save_every == 0 or step == last:
            save_checkpoint(accelerator, run, step, {"clips_seen": step * tc.batch_size * world},
                            keep=tc.keep_checkpoints)
    bar.close()

    result: dict[str, Any] = {"steps": step}
    if step < tc.steps:    # stopped early (train.stop_at): the checkpoint is the result
        logger.close()
        return result
    if accelerator.is_main_process:
        export = export_path(run, export_dir=cfg.export_dir)
        raw.eval()
        with atomic_output(export) as tmp:
            raw.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            save_clip_config(tmp, clip_cfg)
        test, probe_train = evaluation_data(cfg, train_clips, clip_cfg)
        metrics = run_evaluation(raw, tokenizer, cfg, test, probe_train)
        eval_path = Path(cfg.eval.out) if cfg.eval.out else export / "eval.json"
        write_report(eval_path, metrics, model=export, steps=step, video_switches=dict(cfg.model.video))
        logger.log(step, {f"test/{k}": v for k, v in metrics.items()})
        accelerator.print(format_metrics(metrics))
        result.update(metrics=metrics, export_dir=str(export), eval_path=str(eval_path),
                      skipped=len(train_clips.report))
    logger.close()
    accelerator.wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
