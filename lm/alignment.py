"""VATT-style contrastive alignment of video, audio and text on top of the mmtok token LM.

VATT (Akbari et al., arXiv 2104.11178) trains one embedding per modality into *hierarchical common spaces*: video
and audio meet in a video-audio space (512-d in the paper), and the video-audio video embedding is projected further
into a video-text space (256-d), where the text lands too. Video-audio pairs train with NCE; video-text pairs with
MIL-NCE (Miech et al., arXiv 1912.06430), whose numerator sums over *all* the positives of a clip (its captions).
DropToken drops a random fraction (VATT: 50%) of the video/audio tokens before the backbone, for efficiency.

Here the "modality encoders" are the LM backbone itself (:class:`lm.modeling_mmlm.MMLMModel`): every modality runs
through it on its own, as a short sequence ``<bos> <bo*> codes <eo*>`` (so the video embedding never sees the
caption that follows it in a t2v training sequence), its body's hidden states are pooled (mean, or a learned
attention pool) and projected. :class:`AlignmentHead` owns the pools, the projections and the temperature; it holds
no backbone, so it becomes a submodule of the LM (saved and loaded with it) or runs beside any backbone.

Reading order:

1. :class:`AlignmentConfig`: the knobs (pooling, ``va_dim``, ``vt_dim``, ``droptoken``, temperature).
2. :func:`extract_segments` (a modality's tokens of each row, in order, from the vocabulary id ranges),
   :func:`drop_tokens` (DropToken), :func:`masked_pool`.
3. :func:`mil_nce_loss` / :func:`nce_loss` and :func:`gather_across_processes` (negatives span all ranks).
4. :class:`AlignmentHead`: ``encode`` (codes -> unit embeddings), ``forward`` (a training batch -> the loss).
5. The model-level API: :func:`embed_video`, :func:`embed_audio`, :func:`embed_text`, :func:`similarity`,
   :func:`alignment_loss`, and the evaluation helpers :func:`zero_shot_retrieval`, :func:`zero_shot_classification`.

Id conventions: every ``*_ids`` argument holds *global* ids of the unified vocabulary (``vocab.to_global``), in the
modality's range; ``pad_token_id`` marks padding, any other id outside the range is an error. Video codes may come as
``[B, T', H', W']`` (flattened in (t, h, w) order) and audio codes as ``[B, levels, frames]`` (flattened frame-major).

Distributed training: with an initialised ``torch.distributed`` process group, embeddings are all-gathered with
``torch.distributed.nn.functional.all_gather`` (which keeps gradients), so every rank computes the same loss over the
global batch. Its backward sums the ranks' gradients into each rank's own embeddings, and DDP then averages over the
ranks: the parameter gradient equals that of one process on the union batch. Without a process group (or with one
process) gathering is a no-op. No accelerate / deepspeed import here.

Example::

    config = MMLMConfig.from_preset("demo", vocab=vocab, alignment=AlignmentConfig.from_vocabulary(vocab).to_dict())
    model = MMLMForCausalLM(config)                                   # model.alignment is the head
    out = alignment_loss(model, batch)                                # batch from TaskMixtureLoader
    (lm_loss + weight * out.loss).backward()
    v = embed_video(model, vocab.to_global("video", codes))           # [B, vt_dim], unit norm
    t = embed_text(model, caption_ids)                                # [B, vt_dim]
    similarity(t, v)                                                  # [B, B] cosine similarities
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AlignmentConfig",
    "AlignmentHead",
    "AlignmentOutput",
    "alignment_loss",
    "drop_tokens",
    "embed_audio",
    "embed_text",
    "embed_video",
    "extract_segments",
    "gather_across_processes",
    "masked_pool",
    "mil_nce_loss",
    "nce_loss",
    "similarity",
    "zero_shot_classification",
    "zero_shot_retrieval",
]

MODALITIES = ("video", "audio", "text")
POOLINGS = ("mean", "attention")
BOUNDARY_TOKENS = {"video": ("<bov>", "<eov>"), "audio": ("<boa>", "<eoa>"), "text": ("<bot>", "<eot>")}


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class AlignmentConfig:
    """Settings of the alignment head (recorded in ``MMLMConfig.alignment`` as a plain dict, see :meth:`to_dict`).

    Attributes:
        pooling: ``"mean"`` over the segment's hidden states, or ``"attention"`` (a learned per-modality score,
            softmax over the segment, weighted sum).
        va_dim: width of the video-audio space (VATT: 512).
        vt_dim: width of the video-text space (VATT: 256).
        droptoken: fraction of video/audio tokens dropped before the backbone in training (VATT: 0.5); 0 disables.
        temperature: initial softmax temperature tau of the NCE losses (logits are ``cos / tau``).
        learn_temperature: learn ``log(1 / tau)`` (CLIP-style), clamped so ``1 / tau <= max_logit_scale``.
        max_logit_scale: upper bound of ``1 / tau``.
        va_weight, vt_weight: weights of the video-audio NCE and the video-text MIL-NCE in the total loss.
        bidirectional: let every token of a modality sequence attend to the whole sequence (prefix-LM attention
            over it, as VATT's bidirectional encoders); ``False`` keeps the backbone causal.
        segment_tokens: ``{modality: [open_id, close_id]}`` boundary ids wrapped around each modality sequence
            (:meth:`from_vocabulary` fills them); ``None`` wraps nothing.
    """

    pooling: str = "mean"
    va_dim: int = 512
    vt_dim: int = 256
    droptoken: float = 0.5
    temperature: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    va_weight: float = 1.0
    vt_weight: float = 1.0
    bidirectional: bool = True
    segment_tokens: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"alignment pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.va_dim < 1 or self.vt_dim < 1:
            raise ValueError(f"va_dim and vt_dim must be >= 1, got {self.va_dim}, {self.vt_dim}")
        if not 0.0 <= self.droptoken < 1.0:
            raise ValueError(f"droptoken is the fraction of tokens dropped, in [0, 1), got {self.droptoken}")
        if not 0.0 < self.temperature:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1.0 / self.temperature <= self.max_logit_scale:
            raise ValueError(f"1 / temperature ({1 / self.temperature:.3g}) exceeds max_logit_scale "
                             f"({self.max_logit_scale})")
        if self.va_weight < 0 or self.vt_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got va_weight={self.va_weight}, vt_weight={self.vt_weight}")
        if self.segment_tokens is not None:
            tokens = {}
            for name, pair in self.segment_tokens.items():
                if name not in MODALITIES or len(pair) != 2:
                    raise ValueError(f"segment_tokens maps a modality of {MODALITIES} to [open_id, close_id], got "
                                     f"{name!r}: {pair!r}")
                tokens[name] = [int(pair[0]), int(pair[1])]
            self.segment_tokens = tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``MMLMConfig.alignment`` stores)."""
        return asdict(self)

    @classmethod
    def from_value(cls, value: "AlignmentConfig | Mapping[str, Any] | None") -> "AlignmentConfig":
        """An :class:`AlignmentConfig` from itself, a dict of its fields (unknown keys are an error), or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"alignment settings must be an AlignmentConfig or a dict, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown alignment setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(value))

    @classmethod
    def from_vocabulary(cls, vocab: Any, **kwargs: Any) -> "AlignmentConfig":
        """Settings whose ``segment_tokens`` are a vocabulary's boundary ids (``vocab.token_id("<bov>")`` ...).

        ``vocab`` is duck-typed (an ``mmtok.vocab.UnifiedVocabulary``): this module never imports :mod:`mmtok`.
        """
        tokens = {m: [int(vocab.token_id(o)), int(vocab.token_id(c))] for m, (o, c) in BOUNDARY_TOKENS.items()}
        return cls(segment_tokens=tokens, **kwargs)


# ---------------------------------------------------------------------------------------------- token helpers
def _as_range(r: Any, name: str) -> tuple[int, int]:
    if r is None:
        raise ValueError(f"no {name} id range: the model config records no modality_ranges[{name!r}] (build it "
                         f"with MMLMConfig.from_preset(..., vocab=vocab))")
    if isinstance(r, range):
        return int(r.start), int(r.stop)
    start, end = r
    return int(start), int(end)


def _check_ids_2d(ids: Any, what: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"{what} must be integer token ids, got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{what} must be [batch, tokens], got shape {tuple(ids.shape)}")
    return ids.long()


def extract_segments(input_ids: torch.Tensor, id_range: Any, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens whose id lies in ``id_range`` (``[start, end)``), in their order, left-aligned.

    A modality may occupy several segments of one sequence (vcont's two video segments, avcont's); they are
    concatenated, which for the builders of :mod:`mmtok.sequence` gives the whole clip back.

    Args:
        input_ids: ``[B, L]`` global ids.
        id_range: the modality's ``[start, end)`` (a pair or a ``range``).
        pad_id: id written at padded positions.

    Returns:
        ``ids [B, N]`` (``N`` = the most in-range tokens of any row, 0 when none) and ``mask [B, N]`` (True = token).
    """
    input_ids = _check_ids_2d(input_ids, "input_ids")
    start, end = _as_range(id_range, "segment")
    keep = (input_ids >= start) & (input_ids < end)  # [B, L]
    return _compact(input_ids, keep, pad_id)


def _compact(values: torch.Tensor, keep: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to its front, in order: ``values [B, L]``, ``keep [B, L]`` -> ``[B, N]`` x2."""
    counts = keep.sum(dim=1)  # [B]
    n = int(counts.max()) if keep.numel() else 0
    # A stable sort on "not kept" brings kept positions to the front and keeps their relative order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]  # [B, N]
    out = values.gather(1, order)  # [B, N]
    mask = torch.arange(n, device=values.device)[None, :] < counts[:, None]  # [B, N]
    return out.masked_fill(~mask, fill), mask


def drop_tokens(ids: torch.Tensor, mask: torch.Tensor, rate: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DropToken (VATT, arXiv 2104.11178, Sec. 3.1): drop a random ``rate`` of each row's tokens, keep the order.

    A row with ``n`` tokens keeps ``max(1, round((1 - rate) * n))`` of them (ties round half to even, as Python's
    ``round``), chosen uniformly without replacement.

    Args:
        ids: ``[B, N]`` token ids, left-aligned (``mask`` marks the real ones).
        mask: ``[B, N]`` bool.
        rate: fraction to drop, in ``[0, 1)``.
        generator: optional ``torch.Generator`` (on ``ids``' device) for reproducible draws.

    Returns:
        ``kept_ids [B, K]``, ``kept_mask [B, K]`` and ``positions [B, K]`` (each kept token's index in the input
        row, increasing, so the backbone can give it its original position); padded entries are 0 / False / 0.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"DropToken rate must be in [0, 1), got {rate}")
    if ids.shape != mask.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must have the same shape")
    mask = mask.bool()
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # [B, N]
    if rate > 0 and ids.numel():
        counts = mask.sum(dim=1)  # [B]
        keep_n = torch.where(counts > 0, torch.round((1 - rate) * counts.double()).long().clamp(min=1), counts)
        scores = torch.rand(ids.shape, generator=generator, device=ids.device).masked_fill(~mask, 2.0)  # [B, N]
        rank = scores.argsort(dim=1).argsort(dim=1)  # [B, N] rank of each token's score in its row
        keep = mask & (rank < keep_n[:, None])
    else:
        keep = mask
    kept_pos, kept_mask = _compact(positions, keep, 0)  # [B, K]
    kept_ids = ids.gather(1, kept_pos).masked_fill(~kept_mask, 0)
    return kept_ids, kept_mask, kept_pos


def masked_pool(hidden: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor | None = None,
                what: str = "segment") -> torch.Tensor:
    """Pool ``hidden [B, L, H]`` over the positions of ``mask [B, L]``: the mean, or a softmax(``scores [B, L]``)
    weighted sum (attention pooling). Every row needs at least one position (a clear error names the rows)."""
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} and mask {tuple(mask.shape)} disagree")
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"no {what} tokens to pool in row(s) {empty}: every sequence must contain the modality")
    if scores is None:
        weights = mask.to(hidden.dtype) / mask.sum(dim=1, keepdim=True).to(hidden.dtype)  # [B, L]
    else:
        weights = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=1).to(hidden.dtype)  # [B, L]
    return torch.einsum("bl,blh->bh", weights, hidden)  # [B, H]


# ------------------------------------------------------------------------------------------------------ losses
def mil_nce_loss(video: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                 logit_scale: torch.Tensor | float) -> torch.Tensor:
    """MIL-NCE (Miech et al., arXiv 1912.06430, Eq. 1), as VATT uses it for video-text.

    For video ``i`` with positive captions ``P(i)``::

        loss_i = -log( sum_{t in P(i)} e^{s(i,t)} / ( sum_t e^{s(i,t)} + sum_{j != i} sum_{t in P(i)} e^{s(j,t)} ) )

    i.e. the numerator sums over the clip's captions, and the negatives are the clip paired with every other caption
    and every other clip paired with the clip's captions. ``s = logit_scale * cos``. With one positive per row
    (``positives`` the identity) it is the symmetric NCE of :func:`nce_loss`.

    Args:
        video: ``[N, D]`` embeddings (normalised here).
        text: ``[M, D]`` embeddings.
        positives: ``[N, M]`` bool, ``positives[i, t]`` = caption ``t`` describes clip ``i``; every clip needs one.
        logit_scale: ``1 / temperature``.

    Returns:
        The mean over clips (a 0-d tensor).
    """
    if video.dim() != 2 or text.dim() != 2 or video.shape[1] != text.shape[1]:
        raise ValueError(f"video and text embeddings must be [N, D] and [M, D] with the same D, got "
                         f"{tuple(video.shape)} and {tuple(text.shape)}")
    if positives.shape != (video.shape[0], text.shape[0]):
        raise ValueError(f"positives must be [num_videos, num_texts] = {(video.shape[0], text.shape[0])}, got "
                         f"{tuple(positives.shape)}")
    if video.shape[0] == 0:
        raise ValueError("MIL-NCE needs at least one clip")
    positives = positives.bool()
    if not positives.any(dim=1).all():
        raise ValueError(f"clip(s) {(~positives.any(dim=1)).nonzero().flatten().tolist()} have no positive caption")
    logits = logit_scale * (F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T)  # [N, M]
    neg_inf = torch.finfo(logits.dtype).min
    numerator = logits.masked_fill(~positives, neg_inf).logsumexp(dim=1)  # [N]
    row = logits.logsumexp(dim=1)  # [N] clip i with every caption
    # other clips j != i with clip i's captions: entry [i, j] = logsumexp_{t in P(i)} s(j, t)
    pos_cols = logits[None, :, :].masked_fill(~positives[:, None, :], neg_inf)  # [N(i), N(j), M] = s(j, t)
    other = pos_cols.logsumexp(dim=2)  # [N(i), N(j)]
    other = other.masked_fill(torch.eye(len(other), dtype=torch.bool, device=other.device), neg_inf)
    denominator = torch.logaddexp(row, other.logsumexp(dim=1))  # [N]
    return (denominator - numerator).mean()


def nce_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """NCE over paired rows (VATT's video-audio loss): row ``i`` of ``a`` and of ``b`` form the positive pair, all
    other rows of the batch the negatives (both directions, one denominator), so ``nce_loss(a, b) == nce_loss(b, a)``.

    Args:
        a, b: ``[N, D]`` embeddings of the same N clips (normalised here).
        logit_scale: ``1 / temperature``.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"NCE pairs row i of both inputs: they must have the same shape [N, D], got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    return mil_nce_loss(a, b, eye, logit_scale)


# ------------------------------------------------------------------------------------------------- gathering
def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_across_processes(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate each tensor's rows over all processes, in rank order, keeping gradients.

    Row counts may differ between ranks (rows are padded to the largest count for the collective and cut after). A
    no-op without an initialised process group or with one process. Every rank must call it with the same number
    of tensors (of the same trailing shapes and dtypes). Floating tensors go through
    ``torch.distributed.nn.functional.all_gather`` (autograd-aware: the backward sums the ranks' gradients into
    each rank's slice); integer tensors (ids) through plain ``all_gather``.
    """
    rank, world = _world()
    if world == 1:
        return list(tensors)
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    device = tensors[0].device
    sizes_local = torch.tensor([t.shape[0] for t in tensors], device=device, dtype=torch.long)  # [T]
    sizes = [torch.zeros_like(sizes_local) for _ in range(world)]
    dist.all_gather(sizes, sizes_local)
    sizes = torch.stack(sizes)  # [world, T]
    out = []
    for k, t in enumerate(tensors):
        n_max = int(sizes[:, k].max())
        if n_max == 0:  # empty on every rank (a decision all ranks share): nothing to exchange
            out.append(t)
            continue
        pad = t.new_zeros((n_max - t.shape[0], *t.shape[1:]))
        padded = torch.cat([t, pad])  # [n_max, ...]
        if t.is_floating_point():
            parts = dist_fn.all_gather(padded)
        else:
            parts = [torch.zeros_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
        out.append(torch.cat([p[: int(sizes[r, k])] for r, p in enumerate(parts)]))
    return out


def _clip_keys(clip_ids: Sequence[Any] | torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """int64 keys identifying each row's clip (equal keys = same clip); unique per row (and rank) without ids."""
    if clip_ids is None:
        rank, _ = _world()
        return (rank << 40) + torch.arange(batch, device=device) + (1 << 62)  # cannot collide with hashed ids
    if len(clip_ids) != batch:
        raise ValueError(f"clip_ids has {len(clip_ids)} entries for a batch of {batch} sequences")
    if isinstance(clip_ids, torch.Tensor):
        return clip_ids.to(device=device, dtype=torch.long).flatten()
    keys = []
    for c in clip_ids:
        if isinstance(c, (int,)) and not isinstance(c, bool):
            keys.append(int(c))
        else:  # strings (row ids of the shards): a stable 62-bit hash, the same on every rank
            keys.append(int.from_bytes(hashlib.sha256(str(c).encode()).digest()[:8], "little") >> 2)
    return torch.tensor(keys, dtype=torch.long, device=device)


def _first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """Bool ``[N]``: True at the first row of each distinct key."""
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=keys.device)
    same = keys[:, None] == keys[None, :]  # [N, N]
    earlier = torch.tril(same, diagonal=-1).any(dim=1)
    return ~earlier


# ------------------------------------------------------------------------------------------------------ head
@dataclass
class AlignmentOutput:
    """What :meth:`AlignmentHead.forward` returns.

    Attributes:
        loss: ``va_weight * loss_va + vt_weight * loss_vt`` over the losses the (global) batch has pairs for; a
            zero that still depends on the head's parameters when it has none.
        loss_va: NCE of video-audio pairs (``None`` without any pair in the global batch).
        loss_vt: MIL-NCE of video-text pairs (``None`` without any).
        num_va, num_vt_clips, num_vt_captions: global numbers of distinct clips / captions the losses used.
        temperature: the current temperature (detached).
    """

    loss: torch.Tensor
    loss_va: torch.Tensor | None = None
    loss_vt: torch.Tensor | None = None
    num_va: int = 0
    num_vt_clips: int = 0
    num_vt_captions: int = 0
    temperature: float = float("nan")


class AlignmentHead(nn.Module):
    """Pools, projections and temperature of VATT's hierarchical common spaces, over an LM backbone's hidden states.

    ``video -> va`` and ``audio -> va`` are linear, ``text -> vt`` linear, and ``va video -> vt`` a two-layer MLP
    (VATT Sec. 3.2 projects the video-audio video embedding on into the video-text space); every output is L2
    normalised. The backbone is passed to :meth:`encode` / :meth:`forward`, never stored, so the head nests in the
    LM without a cycle.

    Args:
        hidden_size: the backbone's width.
        config: :class:`AlignmentConfig` (or a dict of its fields).
        modality_ranges: ``{"video": [start, end), "audio": ..., "text": ...}`` global ids (``MMLMConfig``'s).
        bos_token_id: id put first in every modality sequence (``None``: none).
        pad_token_id: padding id.
    """

    def __init__(self, hidden_size: int, config: AlignmentConfig | Mapping[str, Any] | None = None, *,
                 modality_ranges: Mapping[str, Any] | None = None, bos_token_id: int | None = None,
                 pad_token_id: int | None = 0) -> None:
        super().__init__()
        self.config = AlignmentConfig.from_value(config)
        c = self.config
        self.hidden_size = int(hidden_size)
        self.modality_ranges = {k: _as_range(v, k) for k, v in (modality_ranges or {}).items()}
        self.bos_token_id = bos_token_id
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.video_to_va = nn.Linear(hidden_size, c.va_dim)
        self.audio_to_va = nn.Linear(hidden_size, c.va_dim)
        self.text_to_vt = nn.Linear(hidden_size, c.vt_dim)
        self.va_to_vt = nn.Sequential(nn.Linear(c.va_dim, c.va_dim), nn.ReLU(), nn.Linear(c.va_dim, c.vt_dim))
        if c.pooling == "attention":
            self.attention_pool = nn.ModuleDict({m: nn.Linear(hidden_size, 1) for m in MODALITIES})
        log_scale = torch.tensor(math.log(1.0 / c.temperature))
        if c.learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @classmethod
    def from_model_config(cls, model_config: Any) -> "AlignmentHead":
        """The head an ``MMLMConfig`` describes (its ``alignment`` dict, width, id ranges, bos/pad ids)."""
        return cls(model_config.hidden_size, getattr(model_config, "alignment", None),
                   modality_ranges=model_config.modality_ranges, bos_token_id=model_config.bos_token_id,
                   pad_token_id=model_config.pad_token_id)

    def _init_weights(self, std: float = 0.02) -> None:
        """Re-draw the parameters: linear weights N(0, std), zero biases, ``log(1 / tau)`` from the config.

        Uses ``transformers.initialization`` so weights loaded from a checkpoint are left alone; the LM's
        ``_init_weights`` calls it for this module.
        """
        from transformers import initialization as init

        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.normal_(module.weight, mean=0.0, std=std)
                init.zeros_(module.bias)
        init.constant_(self.log_logit_scale, math.log(1.0 / self.config.temperature))

    # -------------------------------------------------------------------------------------------- pieces
    @property
    def logit_scale(self) -> torch.Tensor:
        """``1 / temperature``, clamped to ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach())

    def id_range(self, modality: str) -> tuple[int, int]:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return _as_range(self.modality_ranges.get(modality), modality)

    def pool(self, modality: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, H]`` pooled over ``mask [B, L]`` -> ``[B, H]`` (mean or attention, per the config)."""
        scores = None
        if self.config.pooling == "attention":
            scores = self.attention_pool[modality](hidden).squeeze(-1)  # [B, L]
        return masked_pool(hidden, mask, scores, what=modality)

    def project(self, modality: str, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled ``[B, H]`` -> unit embeddings: video ``{"va", "vt"}``, audio ``{"va"}``, text ``{"vt"}``."""
        if modality == "video":
            va = self.video_to_va(pooled)  # [B, va_dim]
            return {"va": F.normalize(va, dim=-1), "vt": F.normalize(self.va_to_vt(va), dim=-1)}  # [B, vt_dim]
        if modality == "audio":
            return {"va": F.normalize(self.audio_to_va(pooled), dim=-1)}  # [B, va_dim]
        if modality == "text":
            return {"vt": F.normalize(self.text_to_vt(pooled), dim=-1)}  # [B, vt_dim]
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def modality_sequences(self, modality: str, ids: torch.Tensor, mask: torch.Tensor,
                           positions: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Wrap each row's body as ``<bos> <open> body <close>``, right-padded.

        Args:
            ids: ``[B, K]`` body ids, left-aligned; ``mask [B, K]`` marks them.
            positions: ``[B, K]`` the body tokens' original indices (DropToken keeps them); default ``0..K-1``.

        Returns:
            ``input_ids [B, L]``, ``attention_mask [B, L]``, ``position_ids [B, L]`` (RoPE positions: a dropped
            token leaves a gap) and ``body_mask [B, L]`` (the positions to pool).
        """
        b, k = ids.shape
        device = ids.device
        prefix = ([] if self.bos_token_id is None else [int(self.bos_token_id)])
        suffix = []
        if self.config.segment_tokens and modality in self.config.segment_tokens:
            open_id, close_id = self.config.segment_tokens[modality]
            prefix, suffix = prefix + [open_id], [close_id]
        p, s = len(prefix), len(suffix)
        counts = mask.sum(dim=1)  # [B] kept body tokens
        if positions is None:
            positions = torch.arange(k, device=device).expand(b, k)
        # original body length: one past the last kept position (the close token follows the full body)
        body_len = torch.where(counts > 0, positions.masked_fill(~mask, -1).max(dim=1).values + 1 if k else counts,
                               counts)  # [B]
        length = p + k + s
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long, device=device)
        position_ids = torch.zeros((b, length), dtype=torch.long, device=device)
        attention_mask = torch.zeros((b, length), dtype=torch.long, device=device)
        body_mask = torch.zeros((b, length), dtype=torch.bool, device=device)
        if p:
            input_ids[:, :p] = torch.tensor(prefix, device=device)
            position_ids[:, :p] = torch.arange(p, device=device)
            attention_mask[:, :p] = 1
        input_ids[:, p:p + k] = ids.masked_fill(~mask, self.pad_token_id)
        position_ids[:, p:p + k] = (positions + p).masked_fill(~mask, 0)
        attention_mask[:, p:p + k] = mask.long()
        body_mask[:, p:p + k] = mask
        for j, tok in enumerate(suffix):
            col = (p + counts + j)[:, None]  # [B, 1] right after each row's kept body
            input_ids.scatter_(1, col, tok)
            position_ids.scatter_(1, col, (p + body_len + j)[:, None])
            attention_mask.scatter_(1, col, 1)
        return input_ids, attention_mask, position_ids, body_mask

    def encode(self, backbone: nn.Module, modality: str, ids: torch.Tensor, mask: torch.Tensor | None = None,
               droptoken: float | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Run the backbone on one modality alone and return its unit embeddings (see :meth:`project`).

        Args:
            backbone: an :class:`~lm.modeling_mmlm.MMLMModel` (anything with its forward signature).
            modality: ``"video"``, ``"audio"`` or ``"text"``.
            ids: ``[B, N]`` global ids of the modality, left-aligned; ``pad_token_id`` pads.
            mask: ``[B, N]`` real tokens; default: the ids in the modality's range (anything else but padding is an
                error).
            droptoken: rate of DropToken; default the config's when the head is training (video and audio only).
            generator: random source of DropToken.
        """
        ids = _check_ids_2d(ids, f"{modality} ids")
        start, end = self.id_range(modality)
        in_range = (ids >= start) & (ids < end)
        if mask is None:
            bad = ~in_range & (ids != self.pad_token_id)
            if bad.any():
                row = int(bad.nonzero()[0, 0])
                raise ValueError(f"{modality} ids must be global ids in [{start}, {end}) or the pad id "
                                 f"{self.pad_token_id}; row {row} has {ids[row][bad[row]][:5].tolist()} (local codes? "
                                 f"offset them with vocab.to_global({modality!r}, codes))")
            mask = in_range
        else:
            mask = mask.bool()
            if mask.shape != ids.shape:
                raise ValueError(f"{modality} mask {tuple(mask.shape)} must match ids {tuple(ids.shape)}")
            if (mask & ~in_range).any():
                raise ValueError(f"masked {modality} ids must lie in [{start}, {end})")
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"no {modality} tokens in sequence(s) {empty} of the batch: every row needs at least one")
        ids, mask = _compact(ids, mask, self.pad_token_id)  # left-align
        rate = droptoken if droptoken is not None else (self.config.droptoken if self.training else 0.0)
        positions = None
        if rate > 0 and modality in ("video", "audio"):
            ids, mask, positions = drop_tokens(ids, mask, rate, generator)
        input_ids, attention_mask, position_ids, body_mask = self.modality_sequences(modality, ids, mask, positions)
        kwargs: dict[str, Any] = {}
        if self.config.bidirectional and getattr(getattr(backbone, "config", None), "prefix_lm", False):
            kwargs["prefix_len"] = attention_mask.sum(dim=1)  # [B] the whole sequence is "prefix"
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **kwargs).last_hidden_state  # [B, L, H]
        return self.project(modality, self.pool(modality, hidden, body_mask))

    def _encode_rows(self, backbone: nn.Module, modality: str, seg_ids: torch.Tensor, seg_mask: torch.Tensor,
                     rows: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """:meth:`encode` of the selected rows; an empty selection still goes through the projections (so every
        rank uses the head's parameters, as DDP expects)."""
        if bool(rows.any()):
            return self.encode(backbone, modality, seg_ids[rows], seg_mask[rows], generator=generator)
        weight = self.video_to_va.weight
        pooled = weight.new_zeros((0, self.hidden_size))
        if self.config.pooling == "attention":
            pooled = pooled + 0 * self.attention_pool[modality].weight.sum()
        return self.project(modality, pooled)

    # ------------------------------------------------------------------------------------------- training
    def forward(self, backbone: nn.Module, input_ids: torch.Tensor,
                clip_ids: Sequence[Any] | torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> AlignmentOutput:
        """The contrastive loss of a batch of task sequences (e.g. a ``TaskMixtureLoader`` batch's ``input_ids``).

        Each row's video, audio and text tokens are found from the id ranges; rows with video and audio give
        video-audio pairs (NCE), rows with video and text give video-text pairs (MIL-NCE: the captions of all rows of
        the same clip are that clip's positives). Rows of the same clip (equal ``clip_ids``, e.g. the loader's
        ``ids``) count once as a clip, over all ranks. Embeddings are gathered over processes, so each rank returns
        the loss of the global batch.

        Args:
            backbone: the LM backbone (``MMLMModel``).
            input_ids: ``[B, L]`` global ids (right padding allowed).
            clip_ids: ``B`` clip identifiers (ints, strings or a tensor); default: every row its own clip.
            generator: random source of DropToken.
        """
        input_ids = _check_ids_2d(input_ids, "input_ids")
        b = input_ids.shape[0]
        device = input_ids.device
        keys = _clip_keys(clip_ids, b, device)  # [B]
        segs = {m: extract_segments(input_ids, self.id_range(m), self.pad_token_id) for m in MODALITIES}
        has = {m: segs[m][1].any(dim=1) for m in MODALITIES}  # [B] each
        va_rows = has["video"] & has["audio"]
        vt_rows = has["video"] & has["text"]
        video_rows = va_rows | vt_rows

        video = self._encode_rows(backbone, "video", *segs["video"], video_rows, generator)  # over video_rows
        audio = self._encode_rows(backbone, "audio", *segs["audio"], va_rows, generator)
        text = self._encode_rows(backbone, "text", *segs["text"], vt_rows, generator)
        in_va = va_rows[video_rows]  # which encoded videos belong to va / vt pairs
        in_vt = vt_rows[video_rows]

        # one row per pair: video-audio rows, and video-text rows (a video-text row's video and caption share a key)
        v_va, a_va, k_va, v_vt, t_vt, k_t = gather_across_processes(
            video["va"][in_va], audio["va"], keys[va_rows], video["vt"][in_vt], text["vt"], keys[vt_rows])
        k_v = k_t
        scale = self.logit_scale
        c = self.config
        out = AlignmentOutput(loss=torch.zeros((), device=device), temperature=float(1.0 / scale.detach()))
        total = 0.0 * (v_va.sum() + a_va.sum() + v_vt.sum() + t_vt.sum() + scale)  # keeps every parameter in the graph
        if k_va.numel():
            first = _first_occurrence(k_va)
            out.loss_va = nce_loss(v_va[first], a_va[first], scale)
            out.num_va = int(first.sum())
            total = total + c.va_weight * out.loss_va
        if k_v.numel():
            first = _first_occurrence(k_v)
            videos, video_keys = v_vt[first], k_v[first]
            positives = video_keys[:, None] == k_t[None, :]  # [clips, captions]
            out.loss_vt = mil_nce_loss(videos, t_vt, positives, scale)
            out.num_vt_clips, out.num_vt_captions = int(first.sum()), int(k_t.numel())
            total = total + c.vt_weight * out.loss_vt
        out.loss = total
        return out


# ------------------------------------------------------------------------------------------ model-level API
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


def _flatten_codes(ids: Any, modality: str) -> torch.Tensor:
    ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if modality == "video" and ids.dim() == 4:  # [B, T', H', W'] -> [B, T'*H'*W'] in (t, h, w) order
        return ids.flatten(1)
    if modality == "audio" and ids.dim() == 3:  # [B, levels, frames] -> frame-major [B, frames*levels]
        return ids.transpose(1, 2).flatten(1)
    return ids


def _embed(model: nn.Module, modality: str, ids: Any, attention_mask: torch.Tensor | None,
           head: AlignmentHead | None) -> dict[str, torch.Tensor]:
    head = _head(model, head)
    ids = _flatten_codes(ids, modality)
    device = next(head.parameters()).device
    mask = attention_mask.to(device) if attention_mask is not None else None
    return head.encode(_backbone(model), modality, torch.as_tensor(ids).to(device), mask)


def embed_video(model: nn.Module, video_ids: Any, attention_mask: torch.Tensor | None = None, *,
                space: str = "vt", head: AlignmentHead | None = None) -> torch.Tensor:
    """Unit video embeddings ``[B, vt_dim]`` (``space="vt"``, to compare with text) or ``[B, va_dim]`` (``"va"``,
    with audio).

    Args:
        model: ``MMLMForCausalLM`` / ``MMLMModel``; its ``.alignment`` is the head unless ``head`` is given.
        video_ids: global video ids ``[B, N]`` (``pad_token_id`` pads) or ``[B, T', H', W']``.
        attention_mask: optional ``[B, N]`` real tokens.
    DropToken applies only when the head is in training mode.
    """
    if space not in ("va", "vt"):
        raise ValueError(f"space must be 'va' (video-audio) or 'vt' (video-text), got {space!r}")
    return _embed(model, "video", video_ids, attention_mask, head)[space]


def embed_audio(model: nn.Module, audio_ids: Any, attention_mask: torch.Tensor | None = None, *,
                head: AlignmentHead | None = None) -> torch.Tensor:
    """Unit audio embeddings ``[B, va_dim]`` from global audio ids ``[B, N]`` or ``[B, levels, frames]``."""
    return _embed(model, "audio", audio_ids, attention_mask, head)["va"]


def embed_text(model: nn.Module, text_ids: Any, attention_mask: torch.Tensor | None = None, *,
               head: AlignmentHead | None = None) -> torch.Tensor:
    """Unit text embeddings ``[B, vt_dim]`` from global text ids ``[B, N]`` (``pad_token_id`` pads)."""
    return _embed(model, "text", text_ids, attention_mask, head)["vt"]


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a [N, D]`` with every row of ``b [M, D]`` -> ``[N, M]``."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"similarity needs [N, D] and [M, D] embeddings of one space, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)} (video-audio and video-text spaces have different widths)")
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # [N, M]


def alignment_loss(model: nn.Module, batch: Mapping[str, Any], head: AlignmentHead | None = None,
                   generator: torch.Generator | None = None) -> AlignmentOutput:
    """The contrastive loss of a training batch (``input_ids``, and the clip ``ids`` when the batch has them)."""
    head = _head(model, head)
    if "input_ids" not in batch:
        raise KeyError("the batch has no 'input_ids'")
    device = next(head.parameters()).device
    return head(_backbone(model), batch["input_ids"].to(device), clip_ids=batch.get("ids"), generator=generator)


# ------------------------------------------------------------------------------------------------ evaluation
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
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
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
def _embed_all(fn: Callable[..., torch.Tensor], model: nn.Module, ids: torch.Tensor, batch_size: int,
               **kw: Any) -> torch.Tensor:
    return torch.cat([fn(model, ids[i:i + batch_size], **kw).cpu() for i in range(0, ids.shape[0], batch_size)])


def zero_shot_retrieval(model: nn.Module, video_ids: Any, *, audio_ids: Any = None,
                        text_ids: Sequence[Sequence[int]] | torch.Tensor | None = None,
                        text_clip: Sequence[int] | torch.Tensor | None = None, head: AlignmentHead | None = None,
                        batch_size: int = 32, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Zero-shot retrieval on held-out clips: text->video, video->text, video->audio, audio->video.

    Args:
        video_ids: ``[N, ...]`` global video ids of N clips (see :func:`embed_video`).
        audio_ids: ``[N, ...]`` the same clips' global audio ids (adds ``v2a/*`` and ``a2v/*``).
        text_ids: ``M`` captions (global text ids; lists, or a padded ``[M, T]`` tensor); adds ``t2v/*`` and ``v2t/*``.
        text_clip: ``[M]`` the clip index of each caption (several captions per clip allowed); default ``0..N-1``.
        batch_size: clips per backbone forward.

    Returns:
        ``{"t2v/R@1": ..., "t2v/median_rank": ..., "v2t/...", "v2a/...", "a2v/..."}`` from
        :func:`mmtok.metrics.retrieval_metrics` (the best-ranked positive counts; median rank is 1-based).
    """
    from mmtok.metrics import retrieval_metrics

    head = _head(model, head)
    with _eval_mode(model, head):
        video_ids = _flatten_codes(video_ids, "video")
        n = video_ids.shape[0]
        out: dict[str, float] = {}
        if audio_ids is not None:
            audio_ids = _flatten_codes(audio_ids, "audio")
            if audio_ids.shape[0] != n:
                raise ValueError(f"audio_ids has {audio_ids.shape[0]} clips but video_ids has {n}: they must pair")
            v = _embed_all(embed_video, model, video_ids, batch_size, space="va", head=head)  # [N, va]
            a = _embed_all(embed_audio, model, audio_ids, batch_size, head=head)  # [N, va]
            out.update({f"v2a/{k}": x for k, x in retrieval_metrics(similarity(v, a), ks=ks).items()})
            out.update({f"a2v/{k}": x for k, x in retrieval_metrics(similarity(a, v), ks=ks).items()})
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
            v = _embed_all(embed_video, model, video_ids, batch_size, space="vt", head=head)  # [N, vt]
            t = _embed_all(embed_text, model, texts, batch_size, head=head)  # [M, vt]
            out.update({f"t2v/{k}": x for k, x in retrieval_metrics(similarity(t, v), positives.T, ks).items()})
            out.update({f"v2t/{k}": x for k, x in retrieval_metrics(similarity(v, t), positives, ks).items()})
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
    head = _head(model, head)
    with _eval_mode(model, head):
        video_ids = _flatten_codes(video_ids, "video")
        labels = torch.as_tensor(labels).long().flatten()
        if labels.shape[0] != video_ids.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {video_ids.shape[0]} clips")
        prompts = _pad_rows(prompt_ids, head.pad_token_id)
        classes = prompts.shape[0]
        if classes < 2:
            raise ValueError("zero-shot classification needs at least 2 class prompts")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"labels must lie in [0, {classes}) (one prompt per class)")
        v = _embed_all(embed_video, model, video_ids, batch_size, space="vt", head=head)  # [N, vt]
        t = _embed_all(embed_text, model, prompts, batch_size, head=head)  # [C, vt]
        predictions = similarity(v, t).argmax(dim=1)  # [N]
        return {"accuracy": float((predictions == labels).float().mean()), "chance": 1.0 / classes,
                "predictions": predictions}
