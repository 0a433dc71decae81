"""Training-side loading: token shards -> task-mixture batches for the LM.

The shards (:mod:`mmtok.data.shards`) hold per-clip local codes, not task sequences; this module turns them into
VideoPoet-style sequences at training time, so the task mixture is a training setting:

1. **order**: every epoch visits the rows in a permutation drawn from ``(seed, epoch)``;
2. **task**: each row gets a task drawn with the configured mixture weights among the tasks its modalities allow
   (t2v needs a caption and video, v2a video and audio, vcont at least 2 latent frames, ...), a caption drawn among
   its captions, an optional text condition, and classifier-free-guidance condition dropout; the sequence comes from
   :func:`mmtok.sequence.build_example`;
3. **length grouping**: a window of ``batch_size * group_window`` consecutive examples is sorted by length and cut
   into batches, whose order inside the window is shuffled again (VideoPoet groups tasks by sequence length so
   batches carry almost no padding; with fixed-size clips, equal lengths mostly mean equal tasks);
4. **ranks**: every rank computes the same global batch sequence and takes batches ``rank, rank + world, ...``, so
   ranks see disjoint examples and the same number of steps;
5. **collate**: right-padded ``input_ids``, ``attention_mask``, ``loss_mask``, ``labels`` (-100 outside the loss),
   ``prefix_len``.

Everything is a pure function of ``(seed, epoch, position)``: two loaders with the same settings give identical
batches, and :meth:`TaskMixtureLoader.batches` started at ``start_step=s`` gives exactly the batches an uninterrupted
run gives from step ``s`` on (windows before it are skipped by arithmetic, without building them).

Memory-mapped :class:`datasets.Dataset` shards are read row by row on demand. With ``streaming=True`` (corpora larger
than RAM) rows arrive from a :class:`datasets.IterableDataset` split across ranks with
``datasets.distributed.split_dataset_by_node`` and shuffled with a buffer; then the number of steps per epoch is not
known in advance and ranks may differ by a batch at the end of an epoch.

A training loop takes its data through :class:`ShardTokenData` (a train-split and an eval-split loader behind
``micro_batches(step)`` and ``eval_batches()``), the interface :class:`mmtok.data.synthetic.SyntheticTokenData`, its
no-files stand-in, also has.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from mmtok.data.shards import load_token_dataset, read_dataset_info, row_codes
from mmtok.sequence import TASKS, build_example
from mmtok.vocab import UnifiedVocabulary

__all__ = ["LoaderConfig", "ShardTokenData", "TaskMixtureLoader", "collate_examples", "eligible_tasks"]

DEFAULT_MIXTURE = {"t2v": 1.0, "t2i": 0.25, "i2v": 0.5, "v2a": 1.0, "a2v": 0.5, "vcont": 0.5, "avcont": 0.25,
                   "v2t": 0.25}


@dataclass
class LoaderConfig:
    """Task-mixture batching settings (a recipe embeds this in its config).

    Attributes:
        tasks: task name -> mixture weight (unnormalized; tasks a row cannot serve are left out for that row).
        batch_size: sequences per batch per rank.
        seed: seed of every random choice.
        group_by_length: sort windows of examples by length before batching (less padding).
        group_window: batches per length-grouping window.
        cond_dropout: classifier-free-guidance condition dropout probability.
        text_condition_prob: probability of adding the caption as a condition to tasks where text is optional
            (i2v, v2a, a2v, vcont, avcont).
        max_length: longest sequence; a longer one is replaced by another task of the same row (counted in
            ``loader.too_long``), and a row too long for all its tasks is an error (``None``: no limit).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        drop_last: drop the last incomplete batch of an epoch (always done across ranks so steps match).
        shuffle_buffer: buffer size of the streaming shuffle.
        video_runs: write video conditions (v2a, v2t, vcont/avcont) in run-length form
            (:func:`mmtok.sequence.build_example`'s ``video_runs``); the vocabulary needs run tokens
            (``vocab.with_video_runs(n)``, ``bundle.with_video_runs()``). Outputs stay plain codes.
    """

    tasks: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXTURE))
    batch_size: int = 8
    seed: int = 0
    group_by_length: bool = True
    group_window: int = 16
    cond_dropout: float = 0.1
    text_condition_prob: float = 0.5
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    drop_last: bool = True
    shuffle_buffer: int = 1000
    video_runs: bool = False


def eligible_tasks(row: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    """The tasks of ``tasks`` a shard row can serve (needs from :data:`mmtok.sequence.TASKS`)."""
    has_text = any(len(t) > 0 for t in row["text_ids"])
    vshape, ashape = row["video_shape"], row["audio_shape"]
    has_video, has_audio = bool(vshape), bool(ashape)
    frames = vshape[0] if has_video else 0
    out = []
    for task in tasks:
        needs = set(TASKS[task].needs)
        if ("text" in needs and not has_text) or ("video" in needs and not has_video) or \
                ("audio" in needs and not has_audio):
            continue
        if task in ("i2v", "vcont", "avcont") and frames < 2:
            continue
        if task == "avcont" and ashape[1] < 2:
            continue
        out.append(task)
    return out


def collate_examples(examples: Sequence[Any], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Right-pad :class:`~mmtok.sequence.TaskExample` s into a batch.

    Returns ``input_ids`` [B, L] long, ``attention_mask`` [B, L] long (1 on real tokens), ``loss_mask`` [B, L] bool,
    ``labels`` [B, L] long (``input_ids`` with -100 where the loss mask is False), ``prefix_len`` [B] long,
    ``condition_dropped`` [B] bool, ``tasks`` list[str].
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e) for e in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    b = len(examples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    loss_mask = torch.zeros((b, length), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e)
        input_ids[i, :n] = e.input_ids
        attention[i, :n] = 1
        loss_mask[i, :n] = e.loss_mask
    return {
        "input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
        "labels": input_ids.masked_fill(~loss_mask, -100),
        "prefix_len": torch.tensor([e.prefix_len for e in examples], dtype=torch.long),
        "condition_dropped": torch.tensor([e.condition_dropped for e in examples], dtype=torch.bool),
        "tasks": [e.task for e in examples],
    }


class TaskMixtureLoader:
    """Deterministic, resumable, rank-split task-mixture batches over token shards.

    Args:
        data: a tokenized dataset folder (``recipes/tokenize_dataset.py`` output), or an already opened
            :class:`datasets.Dataset` / :class:`datasets.IterableDataset` of shard rows.
        vocab: the unified vocabulary (e.g. ``MultimodalTokenizer.vocab``); a folder's recorded vocabulary
            fingerprint is checked against it.
        config: :class:`LoaderConfig`.
        rank, world_size: this process's place among the data-parallel ranks (``accelerator.process_index``,
            ``accelerator.num_processes``).
        split: keep only rows of this split.
        streaming: open the folder as an iterable stream instead of memory-mapped files.
        audio_pattern, num_audio_levels: sequence settings (default: the dataset's recorded ones, else the
            builder's defaults); pass the bundle's to be sure they agree.

    Usage::

        loader = TaskMixtureLoader(tokens_dir, bundle.vocab, LoaderConfig(batch_size=8), rank=r, world_size=w)
        for step, batch in enumerate(loader.batches(start_step=resumed_step), start=resumed_step):
            ...
    """

    def __init__(self, data: Any, vocab: UnifiedVocabulary, config: LoaderConfig | None = None, *, rank: int = 0,
                 world_size: int = 1, split: str | None = None, streaming: bool = False,
                 audio_pattern: str | None = None, num_audio_levels: int | None = None) -> None:
        import datasets

        self.config = cfg = config if config is not None else LoaderConfig()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if cfg.batch_size < 1 or cfg.group_window < 1:
            raise ValueError("batch_size and group_window must be >= 1")
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; expected among {list(TASKS)}")
        if not cfg.tasks or any(w < 0 for w in cfg.tasks.values()) or sum(cfg.tasks.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {cfg.tasks}")
        if cfg.video_runs and not vocab.max_video_run:
            raise ValueError(f"video_runs=True needs a vocabulary with run tokens ({vocab.describe()}): pass "
                             "vocab.with_video_runs(n) or bundle.with_video_runs().vocab")
        info: dict[str, Any] = {}
        if isinstance(data, (str, os.PathLike)):
            info = read_dataset_info(data)
            recorded = info.get("vocab_fingerprint")
            # Shards hold local codes, which run tokens do not change: a vocabulary with them reads shards recorded
            # against its plain layout (the run tokens come after every other range).
            plain = vocab.without_video_runs()
            if recorded is not None and recorded not in (vocab.fingerprint, plain.fingerprint):
                plain.check_fingerprint(recorded, layout=info.get("vocab_layout"), what=f"token dataset {data}")
            data = load_token_dataset(data, split=split, streaming=streaming)
        elif split is not None:
            if isinstance(data, datasets.IterableDataset):
                data = data.filter(lambda s: s == split, input_columns="split")
            else:
                data = data.select([i for i, s in enumerate(data["split"]) if s == split])
        self.streaming = isinstance(data, datasets.IterableDataset)
        if self.streaming:
            from datasets.distributed import split_dataset_by_node

            data = split_dataset_by_node(data, rank=rank, world_size=world_size)
        self.data = data
        self.vocab = vocab
        self.rank, self.world_size = rank, world_size
        self.audio_pattern = audio_pattern or info.get("audio_pattern") or "frame_major"
        self.num_audio_levels = num_audio_levels if num_audio_levels is not None else info.get("num_audio_levels")
        self._tasks = [t for t, w in cfg.tasks.items() if w > 0]
        self._weights = np.array([cfg.tasks[t] for t in self._tasks], dtype=np.float64)
        # Rows that serve none of the tasks (e.g. clips without audio under a v2a-only mixture) are left out once,
        # here, so that every epoch has a known length; streaming skips them on the fly.
        self.num_unusable = 0
        self.too_long: Counter = Counter()
        self._cache: dict[tuple[int, int], list[list[Any]]] = {}
        if not self.streaming:
            cols = data.select_columns(["text_ids", "video_shape", "audio_shape", "id"])
            usable = [i for i, row in enumerate(cols) if eligible_tasks(row, self._tasks)]
            self.num_unusable = len(data) - len(usable)
            self._rows = np.asarray(usable, dtype=np.int64)
            if len(usable) == 0:
                raise ValueError(f"no row of the token dataset serves any of the tasks {self._tasks}"
                                 + (f" in split {split!r}" if split else ""))

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def examples_per_window(self) -> int:
        return self.config.batch_size * self.config.group_window

    def num_global_batches(self) -> int:
        """Batches in one epoch over all ranks (map-style data only)."""
        if self.streaming:
            raise TypeError("a streaming loader does not know its epoch length")
        n, b = len(self._rows), self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    def __len__(self) -> int:
        """Steps per epoch on each rank (equal on all ranks)."""
        return self.num_global_batches() // self.world_size

    # ------------------------------------------------------------------------------------------ examples
    def make_example(self, row: Mapping[str, Any], epoch: int, position: int) -> Any:
        """The task sequence of ``row`` at ``position`` of ``epoch`` (a pure function of those and the seed).

        When the drawn task gives a sequence over ``max_length``, the row's other eligible tasks are tried in an
        order drawn by the mixture weights (each such substitution is counted in ``self.too_long[task]``), so the
        epoch keeps its length; a row too long for every task raises an error naming it.
        """
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, position, 1])
        tasks = eligible_tasks(row, self._tasks)
        if not tasks:
            raise ValueError(f"row {row['id']!r} serves none of the tasks {self._tasks} (captions: "
                             f"{len(row['text_ids'])}, video {row['video_shape']}, audio {row['audio_shape']})")
        w = self._weights[[self._tasks.index(t) for t in tasks]]
        # a weighted draw without replacement: the first entry is the usual weighted draw, the rest the fallbacks
        order = rng.choice(len(tasks), size=len(tasks), replace=False, p=w / w.sum())
        codes = row_codes(row)
        captions = [t for t in codes["text"] if t]
        text = captions[int(rng.integers(len(captions)))] if captions else None
        text_draw, dropout_seed = rng.random(), int(rng.integers(2**63))
        lengths = {}
        for k in order:
            task = tasks[int(k)]
            layout = TASKS[task]
            use_text = "text" in layout.needs or (layout.optional_text and text is not None
                                                  and text_draw < cfg.text_condition_prob)
            example = build_example(
                task, self.vocab, text=text if use_text else None, video=codes["video"], audio=codes["audio"],
                cond_dropout=cfg.cond_dropout, rng=random.Random(dropout_seed),
                audio_pattern=self.audio_pattern, num_audio_levels=self.num_audio_levels,
                video_runs=cfg.video_runs)
            if cfg.max_length is None or len(example) <= cfg.max_length:
                example.row_id = row["id"]
                return example
            lengths[task] = len(example)
            self.too_long[task] += 1
        raise ValueError(f"row {row['id']!r} is over max_length={cfg.max_length} for every task it can serve "
                         f"({lengths}); raise max_length or use shorter clips")

    def _window_batches(self, examples: list[Any], epoch: int, window: int) -> list[list[Any]]:
        """Cut one window of examples into batches (length-grouped, then shuffled)."""
        b = self.config.batch_size
        order = list(range(len(examples)))
        if self.config.group_by_length:
            order.sort(key=lambda i: (len(examples[i]), i))
        batches = [[examples[i] for i in order[s:s + b]] for s in range(0, len(order), b)]
        if self.config.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        perm = np.random.default_rng([self.config.seed, epoch, window, 2]).permutation(len(batches))
        return [batches[i] for i in perm]

    # ------------------------------------------------------------------------------------------ iteration
    def _window(self, epoch: int, window: int) -> list[list[Any]]:
        """The batches (lists of examples) of one length-grouping window of an epoch (the last two are cached)."""
        key = (epoch, window)
        if key not in self._cache:
            n = len(self._rows)
            perm = self._rows[np.random.default_rng([self.config.seed, epoch, 0]).permutation(n)]
            lo = window * self.examples_per_window
            idx = perm[lo:lo + self.examples_per_window]
            rows = self.data.select(idx.tolist()) if len(idx) else []
            examples = [self.make_example(row, epoch, lo + j) for j, row in enumerate(rows)]
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._window_batches(examples, epoch, window)
        return self._cache[key]

    def global_batch(self, epoch: int, index: int) -> dict[str, Any]:
        """Global batch ``index`` of ``epoch`` (the same on every rank; map-style data only)."""
        if self.streaming:
            raise TypeError("a streaming loader has no random access to batches")
        if not 0 <= index < self.num_global_batches():
            raise IndexError(f"batch {index} out of range: an epoch has {self.num_global_batches()} batches")
        # every full window holds exactly group_window batches, so the window is found by arithmetic
        window, k = divmod(index, self.config.group_window)
        return self._collate(self._window(epoch, window)[k], epoch)

    def steps_per_epoch(self, grad_accum: int = 1) -> int:
        """Optimizer steps per epoch when each step takes ``grad_accum`` micro-batches on each rank."""
        return self.num_global_batches() // (self.world_size * grad_accum)

    def micro_batches(self, step: int, grad_accum: int = 1) -> list[dict[str, Any]]:
        """This rank's ``grad_accum`` micro-batches of optimizer step ``step`` (counted from the start of training).

        Step ``s`` takes global batches ``[s * W * A, (s + 1) * W * A)`` of the epoch stream (``W`` ranks, ``A``
        accumulation steps); micro-batch ``m`` of rank ``r`` is global batch ``s * W * A + m * W + r``. A pure
        function of (seed, step): resuming at any step needs no replay.
        """
        steps = self.steps_per_epoch(grad_accum)
        if steps == 0:
            raise ValueError(f"{len(self._rows)} usable rows give no optimizer step of {self.config.batch_size} x "
                             f"{self.world_size} ranks x {grad_accum} accumulation")
        epoch, s = divmod(step, steps)
        first = s * self.world_size * grad_accum
        out = []
        for m in range(grad_accum):
            batch = self.global_batch(epoch, first + m * self.world_size + self.rank)
            batch["step"] = step
            out.append(batch)
        return out

    def eval_batches(self, task: str, num_batches: int | None = None) -> list[dict[str, Any]]:
        """Fixed evaluation batches of one task: the rows that can serve it in dataset order, the first caption,
        no condition dropout, no optional text; this rank's share (global batch ``k`` goes to rank ``k % W``).

        ``num_batches`` caps the global batch count (``None``: every full batch)."""
        if self.streaming:
            raise TypeError("eval batches need map-style (memory-mapped) data")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        b = self.config.batch_size
        cols = self.data.select_columns(["text_ids", "video_shape", "audio_shape", "id"])
        rows = [i for i, row in enumerate(cols) if eligible_tasks(row, [task])]
        total = len(rows) // b if num_batches is None else min(num_batches, len(rows) // b)
        out = []
        for k in range(self.rank, total, self.world_size):
            examples = []
            for row in self.data.select(rows[k * b:(k + 1) * b]):
                codes = row_codes(row)
                text = next((t for t in codes["text"] if t), None) if "text" in TASKS[task].needs else None
                ex = build_example(task, self.vocab, text=text, video=codes["video"], audio=codes["audio"],
                                   audio_pattern=self.audio_pattern, num_audio_levels=self.num_audio_levels,
                                   video_runs=self.config.video_runs)
                ex.row_id = row["id"]
                examples.append(ex)
            out.append(self._collate(examples, -1))
        return out

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's batches of ``epoch``, from its ``start_step``-th on (rank ``r`` takes global batches
        ``r, r + W, ...``; all ranks stop after :meth:`__len__` steps)."""
        if self.streaming:
            yield from self._stream_batches(epoch, start_step)
            return
        for local in range(start_step, len(self)):
            yield self.global_batch(epoch, local * self.world_size + self.rank)

    def _stream_batches(self, epoch: int, start_step: int) -> Iterator[dict[str, Any]]:
        data = self.data.shuffle(seed=self.config.seed, buffer_size=self.config.shuffle_buffer)
        data.set_epoch(epoch)
        per_window = self.config.group_window
        window = start_step // per_window
        skip_rows = window * self.examples_per_window
        step = window * per_window
        buf: list[Any] = []
        position = 0
        for row in data:
            if not eligible_tasks(row, self._tasks):
                self.num_unusable += 1
                continue
            position += 1
            if position <= skip_rows:
                continue
            buf.append(self.make_example(row, epoch, position - 1))
            if len(buf) == self.examples_per_window:
                for batch in self._window_batches(buf, epoch, window):
                    if step >= start_step:
                        yield self._collate(batch, epoch)
                    step += 1
                buf, window = [], window + 1
        for batch in self._window_batches(buf, epoch, window) if buf else []:
            if step >= start_step:
                yield self._collate(batch, epoch)
            step += 1

    def batches(self, start_step: int = 0, num_epochs: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches across epochs from global step ``start_step`` (resume), forever or for ``num_epochs`` epochs.

        Every batch carries ``epoch`` and ``step`` (this rank's step count since the start of training).
        """
        if self.streaming:
            if start_step:
                raise ValueError("resuming a streaming loader needs the epoch: use epoch_batches(epoch, start_step)")
            epoch, step = 0, 0
            while num_epochs is None or epoch < num_epochs:
                for batch in self._stream_batches(epoch, 0):
                    batch["step"] = step
                    step += 1
                    yield batch
                epoch += 1
            return
        steps = len(self)
        if steps == 0:
            raise ValueError(f"{len(self._rows)} usable rows give no full batch of {self.config.batch_size} per "
                             f"rank on {self.world_size} ranks")
        epoch, offset = divmod(start_step, steps)
        step = start_step
        while num_epochs is None or epoch < num_epochs:
            for batch in self.epoch_batches(epoch, offset):
                batch["step"] = step
                step += 1
                yield batch
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()

    def _collate(self, examples: list[Any], epoch: int) -> dict[str, Any]:
        batch = collate_examples(examples, self.vocab.pad_id, self.config.pad_to_multiple_of)
        batch["ids"] = [e.row_id for e in examples]
        batch["epoch"] = epoch
        return batch


class ShardTokenData:
    """A training run's token data from pre-tokenized shards: a :class:`TaskMixtureLoader` over the train split
    and one over the eval split.

    Same contract as :class:`mmtok.data.synthetic.SyntheticTokenData`: ``micro_batches(step)`` is a pure function of
    (seed, step), so resuming needs no replay; ``eval_batches()`` gives fixed batches of the eval split per task.

    Args:
        shards: the token dataset folder (:mod:`mmtok.data.shards`).
        vocab: its vocabulary (the bundle's).
        config: the batching settings of both loaders (the tasks with weight > 0 are also the evaluated ones).
        train_split: rows of this split train (``None``: all rows).
        eval_split: rows of this split evaluate (``None``: no evaluation).
        eval_batches: global evaluation batches per task.
        grad_accum: micro-batches per optimizer step on each process.
        rank, world_size, audio_pattern, num_audio_levels: as :class:`TaskMixtureLoader`'s.
    """

    def __init__(self, shards: str | os.PathLike, vocab: UnifiedVocabulary, config: LoaderConfig, *,
                 train_split: str | None = "train", eval_split: str | None = "validation", eval_batches: int = 2,
                 grad_accum: int = 1, rank: int = 0, world_size: int = 1, audio_pattern: str | None = None,
                 num_audio_levels: int | None = None) -> None:
        kw = dict(rank=rank, world_size=world_size, audio_pattern=audio_pattern, num_audio_levels=num_audio_levels)
        self.train = TaskMixtureLoader(shards, vocab, config, split=train_split, **kw)
        self.eval = (TaskMixtureLoader(shards, vocab, config, split=eval_split, **kw)
                     if eval_split is not None else None)
        self.config, self.num_eval_batches, self.accum = config, eval_batches, grad_accum

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        """This rank's ``grad_accum`` micro-batches for optimizer step ``step``."""
        return self.train.micro_batches(step, self.accum)

    def eval_batches(self) -> dict[str, list[dict[str, Any]]]:
        """Per task, this rank's share of the ``eval_batches`` global eval batches ({} without an eval split)."""
        if self.eval is None:
            return {}
        return {task: self.eval.eval_batches(task, self.num_eval_batches)
                for task, weight in self.config.tasks.items() if weight > 0}
