"""Synthetic token data: task-mixture batches of random but learnable codes, for tests and smoke runs.

A stand-in for pre-tokenized shards (:class:`mmtok.data.loader.ShardTokenData`) that needs no media, no tokenizers
and no files: codes are drawn from ``(seed, split, index)`` and laid out as real task sequences by
:func:`mmtok.sequence.build_example`, over a vocabulary sized by :class:`SyntheticConfig`
(:func:`synthetic_vocabulary`). Both sources share one contract: ``micro_batches(step)`` is a pure function of
``(seed, step)`` (so a resumed run needs no replay) and ``eval_batches()`` gives fixed batches per task.

    vocab = synthetic_vocabulary(SyntheticConfig())
    data = SyntheticTokenData(vocab, SyntheticConfig(), tasks={"t2v": 1.0, "v2a": 1.0}, batch_size=8, seed=0)
    micro = data.micro_batches(step)          # this rank's grad_accum collated batches of optimizer step `step`
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from mmtok.data.loader import collate_examples
from mmtok.interface import CodeSpec
from mmtok.sequence import TaskExample, build_example
from mmtok.vocab import UnifiedVocabulary

__all__ = ["SyntheticConfig", "SyntheticTokenData", "synthetic_vocabulary"]


@dataclass
class SyntheticConfig:
    """Sizes of the synthetic token source (random codes laid out as real task sequences)."""
    num_examples: int = 256
    text_vocab: int = 64
    text_len: int = 6
    video_codebook: int = 64
    video_shape: list[int] = field(default_factory=lambda: [2, 3, 3])  # latent T', H', W'
    audio_codebook: int = 32
    audio_levels: int = 2
    audio_frames: int = 6


def synthetic_vocabulary(config: SyntheticConfig) -> UnifiedVocabulary:
    """The vocabulary the synthetic codes are laid out in (synthetic data has no tokenizers to take it from)."""
    s = config
    return UnifiedVocabulary(text=CodeSpec("text", s.text_vocab), video=CodeSpec("video", s.video_codebook),
                             audio=CodeSpec("audio", s.audio_codebook, num_codebooks=s.audio_levels))


class SyntheticTokenData:
    """Task-mixture batches of synthetic token sequences, a deterministic function of (seed, step, rank).

    Stand-in for the token-shard loader (:mod:`mmtok.data.loader`): the same batches (its
    :func:`~mmtok.data.loader.collate_examples`), the same determinism contract. Codes are random but structured
    (each video frame shifts the previous one, audio follows video, text names a "class"), so a model can learn and
    the loss falls.

    Sample ``j`` of the training stream is example ``perm_epoch[j % N]`` with ``epoch = j // N``; optimizer step
    ``s`` of a run with ``W`` processes, ``A`` accumulation steps and per-process batch ``b`` takes samples
    ``[s*G, (s+1)*G)`` with ``G = b*W*A``, micro-batch ``m`` of rank ``r`` the rows ``(m*W + r)*b ...``: the global
    batch does not depend on how it is split.

    Args:
        vocab: the vocabulary of :func:`synthetic_vocabulary` (or any with room for the configured codes).
        config: code sizes and the number of training examples.
        tasks: task name -> mixture weight (>= 0, positive sum; weight-0 tasks are left out).
        batch_size: sequences per process per micro-batch.
        max_length: longest sequence; a longer one is an error.
        cond_dropout: classifier-free-guidance condition dropout of training examples (none in evaluation).
        eval_batches: global evaluation batches per task.
        seed: seed of every random choice.
        rank, world_size: this process and the number of processes.
        grad_accum: micro-batches per optimizer step on each process.
        video_runs: video conditions in run-length form (``build_example``'s ``video_runs``; the vocabulary needs
            run tokens). Every synthetic frame shifts all codes of the one before it, so no cell repeats and the
            sequences equal the plain ones (the vocabulary still has the run tokens).
    """

    def __init__(self, vocab: UnifiedVocabulary, config: SyntheticConfig, *, tasks: Mapping[str, float],
                 batch_size: int = 8, max_length: int = 512, cond_dropout: float = 0.1, eval_batches: int = 2,
                 seed: int = 0, rank: int = 0, world_size: int = 1, grad_accum: int = 1, video_runs: bool = False):
        self.vocab, self.config, self.seed = vocab, config, seed
        self.video_runs = video_runs
        self.batch_size, self.max_length, self.cond_dropout = batch_size, max_length, cond_dropout
        self.num_eval_batches = eval_batches
        self.rank, self.world, self.accum = rank, world_size, grad_accum
        if any(w < 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {dict(tasks)}")
        self.tasks = [t for t, w in tasks.items() if w > 0]
        weights = torch.tensor([float(tasks[t]) for t in self.tasks])
        self.task_probs = (weights / weights.sum()).tolist()
        self.num_examples = config.num_examples
        self._cache: dict[tuple[str, int], TaskExample] = {}

    def _example(self, split: str, index: int, task: str | None = None) -> TaskExample:
        key = (split if task is None else f"{split}/{task}", index)
        if key not in self._cache:
            s = self.config
            rng = random.Random(f"{self.seed}/{key[0]}/{index}")
            task = task or rng.choices(self.tasks, weights=self.task_probs)[0]
            cls = rng.randrange(8)  # the "content" every modality of the example agrees on
            text = [(cls * 7 + i * 3) % s.text_vocab for i in range(s.text_len)]
            t, h, w = s.video_shape
            base = torch.arange(h * w).view(h, w) * (cls + 1)
            video = torch.stack([(base + k * (cls + 1)) % s.video_codebook for k in range(t)]).long()
            frames = torch.arange(s.audio_frames)
            audio = torch.stack([(frames * (cls + 1) + lvl * 5 + cls) % s.audio_codebook
                                 for lvl in range(s.audio_levels)]).long()
            ex = build_example(task, self.vocab, text=text, video=video, audio=audio,
                               cond_dropout=self.cond_dropout if split == "train" else 0.0, rng=rng,
                               video_runs=self.video_runs)
            if len(ex) > self.max_length:
                raise ValueError(f"a {task} example has {len(ex)} tokens > max_length={self.max_length}")
            self._cache[key] = ex
        return self._cache[key]

    def _train_sample(self, j: int) -> TaskExample:
        epoch, pos = divmod(j, self.num_examples)
        perm = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return self._example("train", int(perm[pos]))

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        """This rank's ``grad_accum`` micro-batches for optimizer step ``step``."""
        b = self.batch_size
        start = step * b * self.world * self.accum
        out = []
        for m in range(self.accum):
            first = start + (m * self.world + self.rank) * b
            out.append(collate_examples([self._train_sample(first + i) for i in range(b)], self.vocab.pad_id))
        return out

    def eval_batches(self) -> dict[str, list[dict[str, Any]]]:
        """Per task, this rank's share of the ``eval_batches`` global eval batches (fixed examples, no dropout)."""
        b = self.batch_size
        out = {}
        for task in self.tasks:
            out[task] = []
            for k in range(self.num_eval_batches):
                first = (k * self.world + self.rank) * b
                out[task].append(collate_examples([self._example("eval", first + i, task) for i in range(b)],
                                                  self.vocab.pad_id))
        return out
