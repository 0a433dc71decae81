"""Evaluation of a trained mmtok LM that needs the model: per-task token losses and zero-shot alignment metrics,
each beside a chance or trivial baseline.

Dataset-agnostic: what a corpus knows (its clips, labels, probes and class prompts) comes in as arguments; the
Moving-Digits scoring of generated media lives with its corpus in :mod:`mmtok.datasets.moving_digits.evaluation`,
and the :class:`~mmtok.metrics.Metric` record and its tables in :mod:`mmtok.metrics`. ``recipes/evaluate.py`` strings
both together and writes ``metrics.json`` + ``metrics.md``.

* :func:`lm_task_losses` - per-task token NLL on token shards beside the NLL of a uniform guess over the output
  modality's codes.
* :func:`alignment_metrics` - zero-shot retrieval (text<->video, video<->audio) and classification from text prompts
  with the model's alignment head, beside a random ranking and chance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mmtok.metrics import Metric, wilson_interval

__all__ = ["lm_task_losses", "alignment_metrics"]


# ---------------------------------------------------------------------------------------------------- LM losses
@torch.no_grad()
def lm_task_losses(model: Any, bundle: Any, shards: str | Path, *, tasks: Sequence[str], split: str = "test",
                   batch_size: int = 4, num_batches: int = 4) -> list[Metric]:
    """Per-task token NLL of ``model`` on the token shards' ``split``, beside a uniform guess over the allowed ids
    (``ln |range|`` of each target token's modality: the video codebook, one RVQ level, the text pieces; boundary
    tokens are forced, 0 nats)."""
    from mmtok.data.loader import LoaderConfig, TaskMixtureLoader

    vocab = bundle.vocab
    sizes = {"video": len(vocab.range_of("video")) if bundle.video is not None else 1,
             "audio": len(vocab.range_of("audio", level=0)) if bundle.audio is not None else 1,
             "text": len(vocab.range_of("text")) if bundle.text is not None else 1, "special": 1}
    # the sequence form the model was trained on: a bundle exported by a run with data.video_runs has it set
    loader = TaskMixtureLoader(shards, vocab, LoaderConfig(tasks={t: 1.0 for t in tasks}, batch_size=batch_size,
                                                           cond_dropout=0.0,
                                                           video_runs=getattr(bundle, "video_runs", False)),
                               split=split, audio_pattern=bundle.audio_pattern,
                               num_audio_levels=bundle.num_audio_levels)
    out = []
    model.eval()
    for task in tasks:
        batches = loader.eval_batches(task, num_batches)
        nll = count = base = 0.0
        for batch in batches:
            o = model(input_ids=batch["input_ids"], loss_mask=batch["loss_mask"], prefix_len=batch["prefix_len"])
            n = float(o.num_loss_tokens) if hasattr(o, "num_loss_tokens") else float(batch["loss_mask"].sum())
            nll += float(o.loss) * n
            count += n
            targets = batch["input_ids"][batch["loss_mask"].bool()].tolist()
            base += sum(math.log(sizes.get(vocab.modality_of(t), 1)) for t in targets) * (n / max(len(targets), 1))
        out.append(Metric(f"lm/loss_{task}", nll / count if count else float("nan"),
                          base / count if count else float("nan"), "uniform over the output modality's codes",
                          False, int(count), unit="nats/token"))
    return out


def alignment_metrics(model: Any, bundle: Any, shards: str | Path, labels: Mapping[str, int],
                      class_prompts: Sequence[str], *, class_name: str = "class", split: str = "test",
                      limit: int = 64) -> list[Metric]:
    """Zero-shot retrieval (text<->video, video<->audio) and classification from text prompts with the model's
    VATT-style alignment head (``lm.modeling_alignment``, :mod:`lm.zero_shot`) on the token shards' ``split``.

    Args:
        labels: ``{clip id: class index}``; rows of the shards without a label are left out.
        class_prompts: one text prompt per class (class ``i`` is ``class_prompts[i]``), e.g. "a video of the digit
            seven"; a dataset supplies them with its labels.
        class_name: names the classification metric, ``align/zero_shot_<class_name>_accuracy``.
        limit: the first ``limit`` rows of ``split`` are read.

    Baselines: a random ranking (R@k = k/N, median rank (N+1)/2) and a random class (1/classes). Returns no rows when
    the model has no alignment head.
    """
    from lm.zero_shot import zero_shot_classification, zero_shot_retrieval
    from mmtok.data.shards import load_token_dataset, row_codes

    if getattr(model, "alignment", None) is None or bundle.video is None:
        return []
    vocab = bundle.vocab
    rows = load_token_dataset(shards, split=split)
    videos, audios, texts, owners, classes = [], [], [], [], []
    for row in rows.select(range(min(limit, len(rows)))):
        codes = row_codes(row)
        if codes["video"] is None or row["id"] not in labels:
            continue
        i = len(videos)
        videos.append(vocab.to_global("video", codes["video"]))
        if codes["audio"] is not None and bundle.audio is not None:
            audios.append(vocab.to_global("audio", codes["audio"][: bundle.num_audio_levels]))
        for caption in codes["text"]:
            texts.append(vocab.to_global("text", caption))
            owners.append(i)
        classes.append(int(labels[row["id"]]))
    n = len(videos)
    if n < 2:
        return []
    video_ids = torch.stack(videos)
    audio_ids = torch.stack(audios) if len(audios) == n else None
    retrieval = zero_shot_retrieval(model, video_ids, audio_ids=audio_ids, text_ids=texts or None,
                                    text_clip=owners or None)
    out = []
    for key, value in retrieval.items():
        direction, stat = key.split("/")
        if stat == "median_rank":
            out.append(Metric(f"align/{direction}_median_rank", value, (n + 1) / 2, "random ranking", False, n))
        else:
            k = int(stat.split("@")[1])
            queries = len(texts) if direction.startswith("t2") else n        # each caption queries once
            out.append(Metric(f"align/{direction}_{stat}", value, min(1.0, k / n), "random ranking", True, queries,
                              interval=wilson_interval(round(value * queries), queries)))
    prompt_ids = [vocab.to_global("text", bundle.text.encode(p)) for p in class_prompts]
    result = zero_shot_classification(model, video_ids, classes, prompt_ids)
    accuracy = float(result["accuracy"])
    out.append(Metric(f"align/zero_shot_{class_name}_accuracy", accuracy, float(result["chance"]),
                      f"chance (1/{len(prompt_ids)})", True, n, interval=wilson_interval(round(accuracy * n), n)))
    return out
