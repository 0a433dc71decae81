"""Pretrain the mmtok token LM on task-mixture batches of token sequences.

    python recipes/pretrain.py --config recipes/configs/pretrain_debug.yaml [dotted.key=value ...]
    accelerate launch --config_file recipes/configs/accelerate/<setup>.yaml recipes/pretrain.py --config ...
    python recipes/pretrain.py --config ... --resume          # continue the run folder's latest checkpoint

The loop below is the whole training procedure: AdamW (torch.optim) with weight-decay groups, linear warmup then
cosine decay, gradient accumulation and clipping, bf16 autocast where the hardware has it, periodic evaluation with
per-task and per-modality NLL, atomic checkpoints (``recipes.common.save_checkpoint``), exact resume, JSONL +
TensorBoard logs, and a final export folder (``export_dir``, default ``<run_dir>/export``, as the video and audio
tokenizer trainers) that ``AutoModelForCausalLM.from_pretrained`` loads (with the tokenizer bundle or vocabulary
beside the model, and a model card).

Exactness: the batch of optimizer step ``s`` is a pure function of (seed, s), so a resumed run sees the same data;
the loss of a step is the NLL summed over the *global* batch divided by the global count of target tokens (all
ranks, all accumulation micro-batches), so 1 process, N processes, accumulation and DeepSpeed ZeRO train on the same
objective and log the same losses up to float rounding.

Data: ``data.source=synthetic`` builds task sequences from seeded random codes (``mmtok.data.synthetic``; tests,
smoke runs, no input files); ``data.source=shards`` reads the pre-tokenized shards through ``mmtok.data.loader``
(the data issue). Both go through :func:`build_data_source`, the one place to swap the data in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch


from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from lm import MMLMConfig, MMLMForCausalLM
from lm.modeling_mmlm import video_positions
from mmtok.data.loader import LoaderConfig, ShardTokenData
from mmtok.data.synthetic import SyntheticConfig, SyntheticTokenData, synthetic_vocabulary
from mmtok.io import atomic_output, atomic_write, progress_enabled
from recipes.common import (
    ModelEMA,
    RunLogger,
    build_arg_parser,
    cpu_accelerator_kwargs,
    dump_config,
    export_path,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    save_checkpoint,
    warmup_cosine,
)


# ---------------------------------------------------------------------------------------------------- config
DEFAULT_TASKS = {"t2v": 1.0, "v2a": 1.0, "v2t": 1.0}


@dataclass
class ModelConfig:
    preset: str = "debug"  # lm.PRESETS: debug, demo, base, videopoet_1b
    init_from: str | None = None  # an exported model folder to continue from (its vocabulary must match the data)
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # any MMLMConfig field, e.g. {num_hidden_layers: 8}


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" | "shards"
    shards: str | None = None  # folder of token shards (data.source=shards)
    bundle: str | None = None  # MultimodalTokenizer folder; its vocabulary lays out the ids (and is exported)
    train_split: str | None = "train"  # shard rows of this split train (data.source=shards; None: all rows)
    eval_split: str | None = "validation"  # ... and these evaluate (None: no evaluation)
    # task -> mixture weight; empty means DEFAULT_TASKS. Config layers merge dicts key by key, so a task a YAML
    # file lists is removed on the command line with weight 0 (data.tasks.v2t=0).
    tasks: dict[str, float] = field(default_factory=dict)
    batch_size: int = 8  # sequences per process per micro-batch
    max_len: int = 512  # longer sequences are an error (shards: skipped and counted by the loader)
    cond_dropout: float = 0.1  # classifier-free-guidance condition dropout
    eval_batches: int = 2  # global eval batches per task
    # Loss weight of the target video tokens of each latent frame (frame k of a sequence's video, counted from its
    # <bos>; frames past the list weigh 1), e.g. [1.0, 4.0]: a t2v clip's first move (latent frame 1) counts 4x.
    # Training loss only (the eval losses stay plain means). Empty: every target token weighs 1.
    video_frame_loss_weights: list[float] = field(default_factory=list)
    # Fraction of the target video tokens whose *input* copy (what later positions read) is replaced by a random
    # video code in training; the targets themselves stay. 0: off.
    video_input_noise: float = 0.0
    # Video conditions (v2a, v2t, vcont/avcont) in lossless run-length form (mmtok.run_length): a stretch of cells
    # equal to the previous latent frame's becomes one <run_k> token. The vocabulary gets run tokens <run_1> ..
    # <run_{H'W'}> appended (bundle.with_video_runs()), and the exported bundle keeps the setting, so generation and
    # evaluation prompt the model the way it trained (a bundle saved with the setting keeps it). Outputs stay plain.
    video_runs: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # sizes of data.source=synthetic


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "auto"  # "auto" (launcher's setting, else bf16 on a bf16 GPU, else fp32) | "no" | "bf16"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    # 0: no EMA. Otherwise the weights' exponential moving average (this decay per optimizer step) is what the run
    # evaluates and exports: an average of the last ~1 / (1 - decay) steps' weights, which on the demo generalised to
    # held-out digit-colour-direction combinations better than the last weights (docs/what_was_tried.md, thirteenth
    # round). Not with DeepSpeed (its partitioned weights have no whole copy to average).
    ema_decay: float = 0.0


@dataclass
class AlignmentTrainConfig:
    """VATT-style contrastive alignment (lm/modeling_alignment.py) trained with the LM."""
    weight: float = 0.0  # > 0: add weight * contrastive loss (batches with video+audio or video+text rows)
    only: bool = False  # alignment-only: freeze the LM, train the head alone on the contrastive loss
    # Add the contrastive loss on every N-th optimizer step only. Its text-only and video-only backbone passes cost
    # about as much as the LM step itself (0.44 s against 0.26 s per demo step on 2 cores); on the demo, every 4th
    # step with the saved time given to LM steps retrieved better than every step (docs/what_was_tried.md).
    every: int = 1
    head: dict[str, Any] = field(default_factory=dict)  # lm.configuration_alignment.AlignmentConfig fields (va_dim...)


@dataclass
class PretrainConfig:
    run_dir: str = "outputs/pretrain"
    export_dir: str | None = None  # default: <run_dir>/export
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    alignment: AlignmentTrainConfig = field(default_factory=AlignmentTrainConfig)


# ------------------------------------------------------------------------------------------------------ data
def weigh_video_frames(batch: dict[str, Any], weights: Sequence[float], *, video_range: tuple[int, int],
                       bos_id: int, cells_per_frame: int, run_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """``batch`` with a float ``loss_mask``: each target video token of latent frame ``k`` weighs ``weights[k]``
    (frames past the list weigh 1; other targets 1). A frame is ``cells_per_frame`` consecutive video cells; a run
    token of ``run_range`` (run-length conditions) counts the cells it stands for."""
    if any(w < 0 for w in weights):
        raise ValueError(f"data.video_frame_loss_weights must be >= 0, got {list(weights)}")
    pos = video_positions(batch["input_ids"], video_range, bos_id, run_range=run_range)  # [B, L], -1 off video
    table = torch.tensor(list(weights) + [1.0], dtype=torch.float32)
    frame = (pos // cells_per_frame).clamp(max=len(weights))  # [B, L]; len(weights) = "past the list"
    per_token = torch.where(pos >= 0, table[frame.clamp(min=0)], torch.ones_like(pos, dtype=torch.float32))
    return {**batch, "loss_mask": batch["loss_mask"].float() * per_token}


def frame_weighted(batches: list[dict[str, Any]], cfg: DataConfig, vocab: Any,
                   cells_per_frame: int) -> list[dict[str, Any]]:
    """``batches`` with ``data.video_frame_loss_weights`` applied (unchanged when it is empty)."""
    if not cfg.video_frame_loss_weights:
        return batches
    r = vocab.range_of("video")
    runs = vocab.range_of("video_run") if vocab.has("video_run") else None
    return [weigh_video_frames(b, cfg.video_frame_loss_weights, video_range=(r.start, r.stop), bos_id=vocab.bos_id,
                               cells_per_frame=cells_per_frame,
                               run_range=(runs.start, runs.stop) if runs is not None else None) for b in batches]


def noise_video_inputs(batch: dict[str, Any], rate: float, *, video_range: tuple[int, int],
                       generator: torch.Generator) -> dict[str, Any]:
    """``batch`` plus ``model_input_ids``: ``input_ids`` with a fraction ``rate`` of the target video tokens
    replaced by uniformly random video codes, and ``labels``, the clean targets. The model then predicts every
    target from a context whose video codes are partly wrong, so no exact code pattern can key what comes next."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"data.video_input_noise must be in [0, 1), got {rate}")
    ids = batch["input_ids"]
    lo, hi = video_range
    target_video = (batch["loss_mask"] > 0) & (ids >= lo) & (ids < hi)  # [B, L]
    flip = target_video & (torch.rand(ids.shape, generator=generator) < rate)
    noisy = torch.where(flip, torch.randint(lo, hi, ids.shape, generator=generator), ids)
    return {**batch, "model_input_ids": noisy, "labels": ids.masked_fill(~(batch["loss_mask"] > 0), -100)}


class TrainingBatches:
    """A data source whose training micro-batches carry ``data.video_frame_loss_weights`` and
    ``data.video_input_noise`` (evaluation stays plain). The noise of step ``s`` is drawn from ``(seed, s)``, so a
    resumed run draws the same."""

    def __init__(self, data: Any, cfg: DataConfig, vocab: Any, cells_per_frame: int, seed: int):
        self.data, self.cfg, self.vocab, self.cells_per_frame, self.seed = data, cfg, vocab, cells_per_frame, seed

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        batches = frame_weighted(self.data.micro_batches(step), self.cfg, self.vocab, self.cells_per_frame)
        if self.cfg.video_input_noise > 0:
            r = self.vocab.range_of("video")
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            batches = [noise_video_inputs(b, self.cfg.video_input_noise, video_range=(r.start, r.stop), generator=g)
                       for b in batches]
        return batches

    def eval_batches(self) -> dict[str, list[dict[str, Any]]]:
        return self.data.eval_batches()


def load_bundle(cfg: DataConfig) -> tuple[Any, Any]:
    """(vocabulary, ``MultimodalTokenizer`` or None): the bundle of ``data.bundle``, else (synthetic data, which
    has no tokenizers) a vocabulary laid out from ``data.synthetic``. With ``data.video_runs`` the vocabulary has
    run tokens for runs up to a whole latent frame (and the bundle writes run-length conditions)."""
    if cfg.bundle is not None:
        if not Path(cfg.bundle).is_dir():
            raise FileNotFoundError(f"data.bundle: tokenizer bundle folder not found: {cfg.bundle}")
        from mmtok.multimodal import MultimodalTokenizer

        bundle = MultimodalTokenizer.from_pretrained(cfg.bundle)
        if cfg.video_runs and not bundle.video_runs:
            if bundle.latent_hw is None:
                raise ValueError("data.video_runs needs the bundle's video latent size (latent_hw) to size the run "
                                 "tokens")
            bundle = bundle.with_video_runs()
        return bundle.vocab, bundle
    if cfg.source != "synthetic":
        raise ValueError("data.bundle is required with data.source=shards (the shards' tokenizer bundle)")
    vocab = synthetic_vocabulary(cfg.synthetic)
    if cfg.video_runs:
        _, h, w = cfg.synthetic.video_shape
        vocab = vocab.with_video_runs(h * w)
    return vocab, None


def build_data_source(cfg: DataConfig, vocab: Any, bundle: Any, seed: int, rank: int, world: int,
                      grad_accum: int) -> Any:
    """The run's data: an object with ``micro_batches(step)`` and ``eval_batches()`` (the one place to swap data).

    ``data.source=synthetic``: :class:`mmtok.data.synthetic.SyntheticTokenData`; ``data.source=shards``:
    :class:`mmtok.data.loader.ShardTokenData`. Both are pure functions of (seed, step), so resuming needs no replay.
    """
    if cfg.source == "synthetic":
        data = SyntheticTokenData(vocab, cfg.synthetic, tasks=cfg.tasks, batch_size=cfg.batch_size,
                                  max_length=cfg.max_len, cond_dropout=cfg.cond_dropout,
                                  eval_batches=cfg.eval_batches, seed=seed, rank=rank, world_size=world,
                                  grad_accum=grad_accum, video_runs=cfg.video_runs)
        _, h, w = cfg.synthetic.video_shape
        cells_per_frame = h * w
    elif cfg.source == "shards":
        if cfg.shards is None or not Path(cfg.shards).exists():
            raise FileNotFoundError(f"data.shards: token shard folder not found: {cfg.shards}")
        loader_cfg = LoaderConfig(tasks=dict(cfg.tasks), batch_size=cfg.batch_size, seed=seed,
                                  cond_dropout=cfg.cond_dropout, max_length=cfg.max_len,
                                  video_runs=bool(getattr(bundle, "video_runs", False)))
        data = ShardTokenData(cfg.shards, bundle.vocab, loader_cfg, train_split=cfg.train_split,
                              eval_split=cfg.eval_split, eval_batches=cfg.eval_batches, grad_accum=grad_accum,
                              rank=rank, world_size=world, audio_pattern=bundle.audio_pattern,
                              num_audio_levels=bundle.num_audio_levels)
        if cfg.video_frame_loss_weights and bundle.latent_hw is None:
            raise ValueError("data.video_frame_loss_weights needs the bundle's video latent size (latent_hw)")
        cells_per_frame = bundle.latent_hw[0] * bundle.latent_hw[1] if bundle.latent_hw is not None else 0
    else:
        raise ValueError(f"data.source must be 'synthetic' or 'shards', got {cfg.source!r}")
    if cfg.video_frame_loss_weights or cfg.video_input_noise > 0:
        return TrainingBatches(data, cfg, vocab, cells_per_frame, seed)
    return data


# ------------------------------------------------------------------------------------------- optimization
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices of linear layers; none on embeddings, norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_mixed_precision(choice: str) -> str | None:
    if choice != "auto":
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # the launcher's config decides
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The LM's arguments: ``model_input_ids`` (noised inputs) with clean ``labels`` when the batch has them."""
    inputs = {k: batch[k].to(device) for k in ("input_ids", "loss_mask", "prefix_len")}
    if "model_input_ids" in batch:
        inputs["input_ids"] = batch["model_input_ids"].to(device)
        inputs["labels"] = batch["labels"].to(device)
    return inputs


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, accelerator: Accelerator, batches: dict[str, list[dict[str, Any]]],
             modalities: list[str]) -> dict[str, float]:
    """Token NLL per task and per modality over the eval set, summed over all ranks (exact means)."""
    model.eval()
    # Every rank runs the same number of forwards (DDP syncs buffers and ZeRO-3 gathers weights in each one).
    counts = torch.tensor([len(b) for b in batches.values()], device=accelerator.device)
    counts = accelerator.gather(counts[None]).view(-1, len(batches)).min(dim=0).values.tolist()
    sums = torch.zeros(2 * len(batches) + 2 * len(modalities), dtype=torch.float64, device=accelerator.device)
    for t, (task, task_batches) in enumerate(batches.items()):
        for batch in task_batches[:counts[t]]:
            out = model(**model_inputs(batch, accelerator.device))
            n = out.num_loss_tokens.double()
            sums[2 * t] += out.loss.double() * n
            sums[2 * t + 1] += n
            for m, name in enumerate(modalities):
                k = out.modality_tokens[name].double()
                sums[2 * len(batches) + 2 * m] += torch.nan_to_num(out.modality_nll[name].double()) * k
                sums[2 * len(batches) + 2 * m + 1] += k
    sums = accelerator.reduce(sums, "sum")
    model.train()
    metrics: dict[str, float] = {}
    total, count = 0.0, 0.0
    for t, task in enumerate(batches):
        s, n = sums[2 * t].item(), sums[2 * t + 1].item()
        total, count = total + s, count + n
        metrics[f"eval/loss_{task}"] = s / n if n else float("nan")
    metrics["eval/loss"] = total / count if count else float("nan")
    for m, name in enumerate(modalities):
        s, n = sums[2 * len(batches) + 2 * m].item(), sums[2 * len(batches) + 2 * m + 1].item()
        if n:
            metrics[f"eval/nll_{name}"] = s / n
    return metrics


# ---------------------------------------------------------------------------------------------------- export
MODEL_CARD = """---
library_name: transformers
tags: [mmtok, multimodal, video, audio, prefix-lm]
---
# mmtok token LM ({preset})

A decoder-only prefix LM (Llama blocks) over one vocabulary of text, video and audio tokens, trained with
`recipes/pretrain.py` for {steps} steps on tasks {tasks}.

- parameters: {params:,}; hidden {hidden}, {layers} layers, {heads} heads ({kv_heads} key/value heads)
- vocabulary: {vocab_size} ids, layout fingerprint `{fingerprint}`; ranges {ranges}
- final eval: {final_eval}

```python
import lm                                    # registers model_type "mmlm" with the Auto classes
from transformers import AutoModelForCausalLM
from mmtok.multimodal import MultimodalTokenizer
from mmtok.vocab import UnifiedVocabulary
model = AutoModelForCausalLM.from_pretrained("{export_name}")
{tokenizer_lines}
```
"""


def export(accelerator: Accelerator, model, cfg: PretrainConfig, vocab: Any, bundle: Any,
           final_eval: dict[str, float], state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model (safetensors), the tokenizer bundle beside it and a model card, atomically.

    ``AutoModelForCausalLM.from_pretrained(dir)`` and ``MultimodalTokenizer.from_pretrained(dir)`` both load it.
    Synthetic runs have no tokenizers: they write the vocabulary alone (``vocab.json``, the bundle's file name).
    """
    export_dir = export_path(cfg.run_dir, export_dir=cfg.export_dir)
    if state_dict is None:  # the weights to export (default: the model's own)
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 shards; every rank must call it
    if accelerator.is_main_process:
        with atomic_output(export_dir) as tmp:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            model_files = {p.name for p in tmp.iterdir()}
            if bundle is not None:
                bundle.save_pretrained(tmp)
                tokenizer_lines = (f"tokenizer = MultimodalTokenizer.from_pretrained(\"{export_dir.name}\")"
                                   "   # checks the vocabulary layout\nmodel.check_vocabulary(tokenizer)")
            else:
                vocab.to_json(tmp / "vocab.json")
                tokenizer_lines = (f"vocab = UnifiedVocabulary.from_json(\"{export_dir.name}/vocab.json\")"
                                   "   # synthetic run: no tokenizers\nmodel.check_vocabulary(vocab)")
            c = unwrapped.config
            card = MODEL_CARD.format(
                preset=cfg.model.preset, steps=cfg.train.steps, tasks=", ".join(cfg.data.tasks),
                params=sum(p.numel() for p in unwrapped.parameters()), hidden=c.hidden_size,
                layers=c.num_hidden_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                vocab_size=c.vocab_size, fingerprint=c.vocab_fingerprint,
                ranges=", ".join(f"{k} [{a}, {b})" for k, (a, b) in (c.modality_ranges or {}).items()),
                final_eval=", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in final_eval.items()) or "n/a",
                export_name=export_dir.name, tokenizer_lines=tokenizer_lines)
            atomic_write(tmp / "README.md", card)
            if not model_files <= {p.name for p in tmp.iterdir()}:
                raise RuntimeError(f"the tokenizer bundle removed model files from {tmp}")
    accelerator.wait_for_everyone()
    return export_dir


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_arg_parser(__doc__.split("\n")[0]).parse_args(argv)
    cfg: PretrainConfig = load_config(PretrainConfig, args.config, args.overrides)
    tc = cfg.train
    if not cfg.data.tasks:
        cfg.data.tasks = dict(DEFAULT_TASKS)
    if not args.resume and latest_checkpoint(cfg.run_dir) is not None:
        raise FileExistsError(f"{cfg.run_dir} already holds a run with checkpoints: pass --resume to continue it, or "
                              "choose another run_dir")

    accelerator = Accelerator(gradient_accumulation_steps=tc.grad_accum,
                              mixed_precision=resolve_mixed_precision(tc.mixed_precision),
                              **cpu_accelerator_kwargs())
    world, rank = accelerator.num_processes, accelerator.process_index
    run_dir = Path(cfg.run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir)

    # ---- data and model
    vocab, bundle = load_bundle(cfg.data)
    data = build_data_source(cfg.data, vocab, bundle, tc.seed, rank, world, tc.grad_accum)
    # Seed right before the weights are drawn: imports above may consume the global RNG, differently depending
    # on how the script was started, and every rank and launcher must draw the same initial weights.
    set_seed(tc.seed)
    ac = cfg.alignment
    use_alignment = ac.weight > 0 or ac.only
    if ac.weight < 0:
        raise ValueError(f"alignment.weight must be >= 0, got {ac.weight}")
    if ac.every < 1 or (ac.only and ac.every != 1):
        raise ValueError(f"alignment.every must be >= 1 (and 1 with alignment.only: the head is all that trains), "
                         f"got {ac.every}")
    if ac.only and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("alignment.only (frozen LM) is not supported under DeepSpeed; use DDP or one process")
    align_kwargs = {}
    if use_alignment:  # the head's settings, recorded in the model config (kept if init_from already has a head)
        from lm.configuration_alignment import AlignmentConfig

        align_kwargs["alignment"] = AlignmentConfig.from_vocabulary(vocab, **dict(ac.head)).to_dict()
    if cfg.model.init_from:
        if use_alignment and MMLMConfig.from_pretrained(cfg.model.init_from).alignment is not None:
            align_kwargs = {}
        # strict: only a head added here (align_kwargs) may be missing from the saved weights
        model = MMLMForCausalLM.from_pretrained(cfg.model.init_from, attn_implementation=cfg.model.attn_implementation,
                                                **align_kwargs)
        model.check_vocabulary(vocab)
    else:
        config = MMLMConfig.from_preset(cfg.model.preset, vocab=vocab, **dict(cfg.model.overrides), **align_kwargs)
        config.max_position_embeddings = max(config.max_position_embeddings, cfg.data.max_len)
        model = MMLMForCausalLM._from_config(config, attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    if ac.only:  # alignment-only mode: the LM is frozen, only the head trains (param_groups skips frozen weights)
        model.requires_grad_(False)
        model.alignment.requires_grad_(True)
    modalities = list(model.config.modality_ranges or {})

    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # fill the "auto" batch keys we know here
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds["train_batch_size"] = cfg.data.batch_size * world * tc.grad_accum
        ds["gradient_clipping"] = tc.grad_clip
    if tc.ema_decay > 0 and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("train.ema_decay needs whole weights on every process; DeepSpeed partitions them "
                         "(set train.ema_decay=0)")
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEMA(accelerator.unwrap_model(model), tc.ema_decay) if tc.ema_decay > 0 else None
    extra = {"ema": ema} if ema is not None else {}
    # The scheduler is stepped by hand once per optimizer step (not through prepare, which would step it once per
    # process) and checkpointed with the rest.
    # Its state travels as JSON in trainer_state.json (registering it with accelerate would pickle it).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(
        step, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_ratio=tc.min_lr_ratio))

    start_step = 0
    if args.resume:
        if latest_checkpoint(run_dir) is None:
            raise FileNotFoundError(f"--resume: {run_dir} has no complete checkpoint")
        state = load_checkpoint(accelerator, run_dir, extra=extra, allow_inexact=args.allow_inexact_resume)
        start_step = int(state["step"])
        # The schedule is a pure function of the step: a checkpoint without the scheduler's state resumes from it.
        scheduler.load_state_dict(state.get("scheduler") or {**scheduler.state_dict(), "last_epoch": start_step,
                                                             "_step_count": start_step + 1})
        accelerator.print(f"resumed from step {start_step}")
    logger = RunLogger(run_dir, enabled=accelerator.is_main_process,
                       resume_step=start_step if args.resume else None)
    eval_batches = data.eval_batches()

    # ---- the loop
    bar = tqdm(total=tc.steps, initial=start_step, disable=not (accelerator.is_main_process and progress_enabled()),
               desc="pretrain", dynamic_ncols=True)
    new_window = lambda: {"loss": 0.0, "steps": 0, "tokens": 0, "time": time.perf_counter(),  # noqa: E731
                          "align_loss": 0.0, "align_steps": 0, "align_temperature": float("nan")}
    window = new_window()
    metrics: dict[str, float] = {}
    for step in range(start_step, tc.steps):
        micro = data.micro_batches(step)
        align_now = use_alignment and step % ac.every == 0
        # Normalize by the global number of target tokens of this optimizer step (all micro-batches, all ranks).
        local = torch.tensor(sum(float(b["loss_mask"][:, 1:].sum()) for b in micro), device=accelerator.device)
        global_tokens = accelerator.reduce(local, "sum").clamp(min=1)
        step_loss = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for batch in micro:
            with accelerator.accumulate(model):
                total_loss = torch.zeros((), device=accelerator.device)
                if not ac.only:
                    out = model(**model_inputs(batch, accelerator.device), num_items_in_batch=global_tokens)
                    # out.loss = this micro-batch's NLL sum / global tokens. DDP/ZeRO average gradients over ranks
                    # and accelerate/DeepSpeed divide by the accumulation steps; scaling by both keeps the gradient
                    # that of the global mean NLL.
                    total_loss = out.loss * (world * tc.grad_accum)
                    step_loss += out.loss.detach()
                if align_now:
                    # The contrastive loss is already the global batch's on every rank (embeddings are all-gathered
                    # and the gather's backward sums the ranks' gradients), so DDP's average needs no rescaling.
                    align = accelerator.unwrap_model(model).alignment_loss(batch)
                    total_loss = total_loss + (ac.weight if ac.weight > 0 else 1.0) * align.loss
                    window["align_loss"] += align.loss.detach() / tc.grad_accum
                    window["align_temperature"] = align.temperature
                elif use_alignment and world > 1 and accelerator.distributed_type != DistributedType.DEEPSPEED:
                    # DDP expects a gradient for every parameter in each backward: give the idle head zeros
                    head = accelerator.unwrap_model(model).alignment
                    total_loss = total_loss + 0.0 * sum(p.sum() for p in head.parameters())
                accelerator.backward(total_loss)
                if ac.only and world > 1 and accelerator.sync_gradients:
                    # no DDP forward ran (the LM is frozen): average the head's gradients across ranks as DDP would
                    for p in accelerator.unwrap_model(model).alignment.parameters():
                        p.grad = accelerator.reduce(p.grad, "mean")
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        scheduler.step()
        done = step + 1
        window["loss"] += step_loss
        window["steps"] += 1
        window["align_steps"] += int(align_now)
        window["tokens"] += int(global_tokens)
        bar.update(1)

        if done % tc.log_every == 0 or done == tc.steps:
            loss = accelerator.reduce(window["loss"], "sum").item() / window["steps"]
            elapsed = time.perf_counter() - window["time"]
            row = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                   "train/target_tokens_per_s": window["tokens"] / max(elapsed, 1e-9)}
            if grad_norm is not None:
                row["train/grad_norm"] = float(grad_norm)
            if ac.only:  # the LM does not train
                row.pop("train/loss")
            if use_alignment and window["align_steps"]:  # the same global value on every rank: no reduce
                row["train/align_loss"] = float(window["align_loss"]) / window["align_steps"]
                row["train/align_temperature"] = window["align_temperature"]
            logger.log(done, row)
            bar.set_postfix(loss=f"{loss:.3f}")
            window = new_window()
        if eval_batches and (done % tc.eval_every == 0 or done == tc.steps):
            metrics = evaluate(ema.module if ema is not None else model, accelerator, eval_batches, modalities)
            logger.log(done, metrics)
        if done % tc.save_every == 0 and done < tc.steps:
            save_checkpoint(accelerator, run_dir, done, {"step": done, "scheduler": scheduler.state_dict()},
                            keep=tc.keep_checkpoints, extra=extra)
    bar.close()

    save_checkpoint(accelerator, run_dir, tc.steps, {"step": tc.steps, "scheduler": scheduler.state_dict()},
                    keep=tc.keep_checkpoints, extra=extra)
    export_dir = export(accelerator, model, cfg, vocab, bundle, metrics,
                        state_dict=ema.module.state_dict() if ema is not None else None)
    accelerator.print(f"exported to {export_dir}")
    logger.close()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
