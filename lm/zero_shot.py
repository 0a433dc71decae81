"""Zero-shot evaluation with a trained alignment head (:class:`lm.modeling_alignment.AlignmentHead`).

* :func:`zero_shot_retrieval`: text->video, video->text, video->audio and audio->video retrieval on held-out clips.
* :func:`zero_shot_classification`: each clip's class is the most similar class prompt in the video-text space
  (CLIP/VATT-style zero shot).

Both take an ``MMLMForCausalLM`` (its ``.alignment`` is the head) or a bare ``MMLMModel`` with ``head=``, put them in
eval mode for the call (restoring each one's own mode afterwards) and embed in batches without gradients.
:func:`lm.evaluation.alignment_metrics` runs them on token shards beside their chance baselines.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from lm.modeling_alignment import AlignmentHead

__all__ = ["eval_mode", "zero_shot_classification", "zero_shot_retrieval"]


def _backbone(model: nn.Module) -> nn.Module:
    """The hidden-state backbone of an ``MMLMForCausalLM`` (its ``.model``) or the ``MMLMModel`` itself."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "embed_tokens"):
        return inner
    if hasattr(model, "embed_tokens"):
        return model
    raise TypeError(f"{type(model).__name__} is neither an MMLMForCausalLM nor an MMLMModel (no embed_tokens)")


def _head(model: nn.Module, head: AlignmentHead | None) -> AlignmentHead:
    head = head if head is not None else getattr(model, "alignment", None)
    if not isinstance(head, AlignmentHead):
        raise ValueError("no alignment head: pass head=AlignmentHead(...), or build the model with "
                         "MMLMConfig(alignment={...}) so that model.alignment exists")
    return head


def _pad_rows(rows: Sequence[Sequence[int]] | torch.Tensor, pad_id: int) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        return rows
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every text needs at least one token")
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block and restore each one's own training flag afterwards."""
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.train(flag)


@torch.no_grad()
def _embed_all(head: AlignmentHead, backbone: nn.Module, modality: str, ids: torch.Tensor, batch_size: int,
               space: str) -> torch.Tensor:
    """``head.encode`` in batches of ``batch_size`` rows -> the ``space`` embeddings ``[N, dim]`` on the CPU."""
    return torch.cat([head.encode(backbone, modality, ids[i:i + batch_size])[space].cpu()
                      for i in range(0, ids.shape[0], batch_size)])


def zero_shot_retrieval(model: nn.Module, video_ids: Any, *, audio_ids: Any = None,
                        text_ids: Sequence[Sequence[int]] | torch.Tensor | None = None,
                        text_clip: Sequence[int] | torch.Tensor | None = None, head: AlignmentHead | None = None,
                        batch_size: int = 32, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Zero-shot retrieval on held-out clips: text->video, video->text, video->audio, audio->video.

    Args:
        video_ids: ``[N, ...]`` global video ids of N clips (``[N, T', H', W']`` codes allowed).
        audio_ids: ``[N, ...]`` the same clips' global audio ids (adds ``v2a/*`` and ``a2v/*``).
        text_ids: ``M`` captions (global text ids; lists, or a padded ``[M, T]`` tensor); adds ``t2v/*`` and ``v2t/*``.
        text_clip: ``[M]`` the clip index of each caption (several captions per clip allowed); default ``0..N-1``.
        batch_size: clips per backbone forward.

    Returns:
        ``{"t2v/R@1": ..., "t2v/median_rank": ..., "v2t/...", "v2a/...", "a2v/..."}`` from
        :func:`mmtok.metrics.retrieval_metrics` (the best-ranked positive counts; median rank is 1-based).
    """
    from mmtok.metrics import retrieval_metrics

    head, backbone = _head(model, head), _backbone(model)
    with eval_mode(model, head):
        video_ids = torch.as_tensor(video_ids)  # [N, ...]: encode flattens each batch
        n = video_ids.shape[0]
        out: dict[str, float] = {}
        if audio_ids is not None:
            audio_ids = torch.as_tensor(audio_ids)
            if audio_ids.shape[0] != n:
                raise ValueError(f"audio_ids has {audio_ids.shape[0]} clips but video_ids has {n}: they must pair")
            v = _embed_all(head, backbone, "video", video_ids, batch_size, "va")  # [N, va]
            a = _embed_all(head, backbone, "audio", audio_ids, batch_size, "va")  # [N, va]
            out.update({f"v2a/{k}": x for k, x in retrieval_metrics(head.similarity(v, a), ks=ks).items()})
            out.update({f"a2v/{k}": x for k, x in retrieval_metrics(head.similarity(a, v), ks=ks).items()})
        if text_ids is not None:
            texts = _pad_rows(text_ids, head.pad_token_id)
            m = texts.shape[0]
            owner = torch.arange(m) if text_clip is None else torch.as_tensor(text_clip).long().flatten()
            if owner.shape != (m,):
                raise ValueError(f"text_clip must give one clip index per caption ({m}), got {tuple(owner.shape)}")
            if text_clip is None and m != n:
                raise ValueError(f"{m} captions for {n} clips: pass text_clip (the clip index of each caption)")
            if m and (int(owner.min()) < 0 or int(owner.max()) >= n):
                raise ValueError(f"text_clip indices must lie in [0, {n})")
            positives = owner[None, :] == torch.arange(n)[:, None]  # [N, M]
            if not positives.any(dim=1).all():
                raise ValueError("every clip needs at least one caption for video->text retrieval")
            v = _embed_all(head, backbone, "video", video_ids, batch_size, "vt")  # [N, vt]
            t = _embed_all(head, backbone, "text", texts, batch_size, "vt")  # [M, vt]
            out.update({f"t2v/{k}": x for k, x in retrieval_metrics(head.similarity(t, v), positives.T, ks).items()})
            out.update({f"v2t/{k}": x for k, x in retrieval_metrics(head.similarity(v, t), positives, ks).items()})
        if audio_ids is None and text_ids is None:
            raise ValueError("pass audio_ids and/or text_ids to retrieve against")
        return out


def zero_shot_classification(model: nn.Module, video_ids: Any, labels: Sequence[int] | torch.Tensor,
                             prompt_ids: Sequence[Sequence[int]] | torch.Tensor, *,
                             head: AlignmentHead | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Classify clips by the most similar class prompt in the video-text space (CLIP/VATT-style zero shot).

    Args:
        video_ids: ``[N, ...]`` global video ids.
        labels: ``[N]`` true class indices.
        prompt_ids: one prompt per class (global text ids), e.g. "a video of the digit seven" for each digit
            (a dataset's class prompts, encoded).

    Returns:
        ``{"accuracy", "chance" (1 / classes), "predictions" [N] tensor}``.
    """
    head, backbone = _head(model, head), _backbone(model)
    with eval_mode(model, head):
        video_ids = torch.as_tensor(video_ids)  # [N, ...]: encode flattens each batch
        labels = torch.as_tensor(labels).long().flatten()
        if labels.shape[0] != video_ids.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {video_ids.shape[0]} clips")
        prompts = _pad_rows(prompt_ids, head.pad_token_id)
        classes = prompts.shape[0]
        if classes < 2:
            raise ValueError("zero-shot classification needs at least 2 class prompts")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"labels must lie in [0, {classes}) (one prompt per class)")
        v = _embed_all(head, backbone, "video", video_ids, batch_size, "vt")  # [N, vt]
        t = _embed_all(head, backbone, "text", prompts, batch_size, "vt")  # [C, vt]
        predictions = head.similarity(v, t).argmax(dim=1)  # [N]
        return {"accuracy": float((predictions == labels).float().mean()), "chance": 1.0 / classes,
                "predictions": predictions}
