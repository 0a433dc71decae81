"""VATT-style contrastive alignment of video, audio and text on top of the mmtok token LM: the head.

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

The alignment code by job:

* :mod:`lm.configuration_alignment`: :class:`~lm.configuration_alignment.AlignmentConfig`, the knobs (pooling,
  ``va_dim``, ``vt_dim``, ``droptoken``, temperature).
* this module: :func:`extract_segments` (a modality's tokens of each row, in order, from the vocabulary id ranges),
  :func:`drop_tokens` (DropToken), :func:`masked_pool`; :class:`ContrastiveProjections` (projections, temperature,
  ``contrastive_loss``; shared with :class:`lm.modeling_vatt.VATTModel`, VATT's own towers); then
  :class:`AlignmentHead`: ``encode`` (codes -> unit embeddings), ``forward`` (a training batch -> the loss),
  ``similarity``.
* :mod:`lm.alignment_losses`: MIL-NCE / NCE and the gathering over processes (negatives span all ranks).
* :mod:`lm.zero_shot`: zero-shot retrieval and classification with a trained head.
* :class:`lm.modeling_mmlm.MMLMForCausalLM` carries the head as ``model.alignment`` and calls it on its own backbone:
  ``embed_video``, ``embed_audio``, ``embed_text``, ``alignment_loss``.

Id conventions: every ``*_ids`` argument holds *global* ids of the unified vocabulary (``vocab.to_global``), in the
modality's range; ``pad_token_id`` marks padding, any other id outside the range is an error. Video codes may come as
``[B, T', H', W']`` (flattened in (t, h, w) order) and audio codes as ``[B, levels, frames]`` (flattened frame-major).
With a vocabulary that has run tokens (``modality_ranges["video_run"]``) the run tokens belong to the video: a
run-length video condition (:mod:`mmtok.run_length`) is read whole, codes and runs in order, and the backbone's
``video_grid`` positions count each run's cells.

Example::

    config = MMLMConfig.from_preset("demo", vocab=vocab, alignment=AlignmentConfig.from_vocabulary(vocab).to_dict())
    model = MMLMForCausalLM(config)                                   # model.alignment is the head
    out = model.alignment_loss(batch)                                 # batch from TaskMixtureLoader
    (lm_loss + weight * out.loss).backward()
    v = model.embed_video(vocab.to_global("video", codes))            # [B, vt_dim], unit norm
    t = model.embed_text(caption_ids)                                 # [B, vt_dim]
    model.alignment.similarity(t, v)                                  # [B, B] cosine similarities
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lm.alignment_losses import clip_keys, first_occurrence, gather_across_processes, mil_nce_loss, nce_loss
from lm.configuration_alignment import MODALITIES, AlignmentConfig

__all__ = ["AlignmentHead", "AlignmentOutput", "ContrastiveProjections", "drop_tokens", "extract_segments",
           "masked_pool"]


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


def _flatten_codes(ids: Any, modality: str) -> torch.Tensor:
    ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if modality == "video" and ids.dim() == 4:  # [B, T', H', W'] -> [B, T'*H'*W'] in (t, h, w) order
        return ids.flatten(1)
    if modality == "audio" and ids.dim() == 3:  # [B, levels, frames] -> frame-major [B, frames*levels]
        return ids.transpose(1, 2).flatten(1)
    return ids


def extract_segments(input_ids: torch.Tensor, id_range: Any, pad_id: int = 0, *,
                     extra_ranges: Sequence[Any] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens whose id lies in ``id_range`` (``[start, end)``), in their order, left-aligned.

    A modality may occupy several segments of one sequence (vcont's two video segments, avcont's); they are
    concatenated, which for the builders of :mod:`mmtok.sequence` gives the whole clip back (a run-length video
    condition included, when ``extra_ranges`` holds the run tokens' range: the codes and runs in order).

    Args:
        input_ids: ``[B, L]`` global ids.
        id_range: the modality's ``[start, end)`` (a pair or a ``range``).
        pad_id: id written at padded positions.
        extra_ranges: more ``[start, end)`` ranges whose tokens belong to the segment (the video's run tokens).

    Returns:
        ``ids [B, N]`` (``N`` = the most in-range tokens of any row, 0 when none) and ``mask [B, N]`` (True = token).
    """
    input_ids = _check_ids_2d(input_ids, "input_ids")
    keep = torch.zeros_like(input_ids, dtype=torch.bool)  # [B, L]
    for r in (id_range, *extra_ranges):
        start, end = _as_range(r, "segment")
        keep |= (input_ids >= start) & (input_ids < end)
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


class ContrastiveProjections(nn.Module):
    """The projections, temperature and losses of VATT's hierarchical common spaces, on pooled embeddings.

    ``video -> va`` and ``audio -> va`` are linear, ``text -> vt`` linear, and ``va video -> vt`` a two-layer MLP
    (VATT Sec. 3.2 projects the video-audio video embedding on into the video-text space); every output is L2
    normalised. Two users, one implementation: :class:`AlignmentHead` (the LM's head, every modality pooled from the
    LM backbone, so all widths are ``hidden_size``) and :class:`lm.modeling_vatt.VATTModel` (three towers, each of
    its own width).

    Args:
        video_dim, audio_dim, text_dim: widths of the pooled embeddings fed to each projection.
        config: :class:`AlignmentConfig` (or a dict of its fields); ``va_dim``, ``vt_dim``, the temperature settings
            and the loss weights are read here.
    """

    def __init__(self, video_dim: int, audio_dim: int, text_dim: int,
                 config: AlignmentConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = AlignmentConfig.from_value(config)
        c = self.config
        self.video_to_va = nn.Linear(video_dim, c.va_dim)
        self.audio_to_va = nn.Linear(audio_dim, c.va_dim)
        self.text_to_vt = nn.Linear(text_dim, c.vt_dim)
        self.va_to_vt = nn.Sequential(nn.Linear(c.va_dim, c.va_dim), nn.ReLU(), nn.Linear(c.va_dim, c.vt_dim))
        log_scale = torch.tensor(math.log(1.0 / c.temperature))
        if c.learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    def _init_weights(self, std: float | None = 0.02) -> None:
        """Re-draw the parameters: linear weights N(0, std), zero biases, ``log(1 / tau)`` from the config.

        ``std=None`` draws each linear layer's weights with std ``1 / sqrt(fan_in)``, so every projection's output has
        its input's scale (CLIP, arXiv 2103.00020, initializes its projections so). With a small fixed std the
        two-layer ``va -> vt`` MLP's output is ~1e-3 of its input, and the L2 normalization after it multiplies the
        gradient of its last bias by ~1e3: a fresh VATT's video-text embeddings collapsed onto that bias in the first
        steps. Uses ``transformers.initialization`` so weights loaded from a checkpoint are left alone; the owning
        model's ``_init_weights`` calls it for this module (its temperature is a bare parameter).
        """
        from transformers import initialization as init

        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.normal_(module.weight, mean=0.0, std=module.in_features ** -0.5 if std is None else std)
                init.zeros_(module.bias)
        init.constant_(self.log_logit_scale, math.log(1.0 / self.config.temperature))

    @property
    def logit_scale(self) -> torch.Tensor:
        """``1 / temperature``, clamped to ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach())

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

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every row of ``a [N, D]`` with every row of ``b [M, D]`` -> ``[N, M]``."""
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"similarity needs [N, D] and [M, D] embeddings of one space, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)} (video-audio and video-text spaces have different widths)")
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # [N, M]

    def contrastive_loss(self, video_va: torch.Tensor, audio_va: torch.Tensor, va_keys: torch.Tensor,
                         video_vt: torch.Tensor, video_keys: torch.Tensor, text_vt: torch.Tensor,
                         text_keys: torch.Tensor) -> AlignmentOutput:
        """VATT's loss over the global batch: NCE of video-audio pairs plus MIL-NCE of videos against captions.

        Every argument may have zero rows (that loss is then left out), but every process must call this, with the
        same tensors present: the embeddings are gathered across processes first, so each rank returns the loss of
        the global batch (:func:`~lm.alignment_losses.gather_across_processes`).

        Args:
            video_va, audio_va: ``[P, va_dim]`` the two sides of P video-audio pairs; ``va_keys`` ``[P]`` their clip
                (:func:`~lm.alignment_losses.clip_keys`): a clip seen on several rows (or ranks) counts once.
            video_vt: ``[V, vt_dim]`` videos with clip keys ``video_keys`` ``[V]`` (repeats count once).
            text_vt: ``[M, vt_dim]`` captions with the keys of the clips they describe, ``text_keys`` ``[M]``: the
                MIL-NCE positives of a video are all the captions with its key (VATT, arXiv 2104.11178, Sec. 3.3);
                videos without any caption are left out of that loss.

        Returns:
            :class:`AlignmentOutput`: ``va_weight * loss_va + vt_weight * loss_vt``, each part and its counts. With
            no pair at all the loss is a zero that still depends on every input and the temperature (so each rank
            uses the same parameters, as DDP expects).
        """
        v_va, a_va, k_va, v_vt, k_v, t_vt, k_t = gather_across_processes(
            video_va, audio_va, va_keys, video_vt, video_keys, text_vt, text_keys)
        scale = self.logit_scale
        c = self.config
        out = AlignmentOutput(loss=torch.zeros((), device=scale.device), temperature=float(1.0 / scale.detach()))
        total = 0.0 * (v_va.sum() + a_va.sum() + v_vt.sum() + t_vt.sum() + scale)  # keeps every parameter in the graph
        if k_va.numel():
            first = first_occurrence(k_va)
            out.loss_va = nce_loss(v_va[first], a_va[first], scale)
            out.num_va = int(first.sum())
            total = total + c.va_weight * out.loss_va
        captioned = first_occurrence(k_v) & (k_v[:, None] == k_t[None, :]).any(dim=1)  # [V]
        if bool(captioned.any()):
            videos, keys = v_vt[captioned], k_v[captioned]
            positives = keys[:, None] == k_t[None, :]  # [clips, captions]
            out.loss_vt = mil_nce_loss(videos, t_vt, positives, scale)
            out.num_vt_clips, out.num_vt_captions = int(captioned.sum()), int(k_t.numel())
            total = total + c.vt_weight * out.loss_vt
        out.loss = total
        return out


class AlignmentHead(ContrastiveProjections):
    """Pools, projections and temperature of VATT's hierarchical common spaces, over an LM backbone's hidden states.

    The projections, temperature and losses are :class:`ContrastiveProjections`'; this adds the per-modality pools
    and runs each modality through the LM backbone on its own. The backbone is passed to :meth:`encode` /
    :meth:`forward`, never stored, so the head nests in the LM without a cycle.

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
        super().__init__(hidden_size, hidden_size, hidden_size, config)
        self.hidden_size = int(hidden_size)
        self.modality_ranges = {k: _as_range(v, k) for k, v in (modality_ranges or {}).items()}
        self.bos_token_id = bos_token_id
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        if self.config.pooling == "attention":
            self.attention_pool = nn.ModuleDict({m: nn.Linear(hidden_size, 1) for m in MODALITIES})

    @classmethod
    def from_model_config(cls, model_config: Any) -> "AlignmentHead":
        """The head an ``MMLMConfig`` describes (its ``alignment`` dict, width, id ranges, bos/pad ids)."""
        return cls(model_config.hidden_size, getattr(model_config, "alignment", None),
                   modality_ranges=model_config.modality_ranges, bos_token_id=model_config.bos_token_id,
                   pad_token_id=model_config.pad_token_id)

    # -------------------------------------------------------------------------------------------- pieces
    def id_range(self, modality: str) -> tuple[int, int]:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return _as_range(self.modality_ranges.get(modality), modality)

    def extra_ranges(self, modality: str) -> list[tuple[int, int]]:
        """Id ranges whose tokens also belong to a modality's segments: the run tokens of run-length video
        (``modality_ranges["video_run"]``, a vocabulary built with them), so a run-length condition is read whole."""
        if modality == "video" and "video_run" in self.modality_ranges:
            return [self.modality_ranges["video_run"]]
        return []

    def _in_modality(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``[B, N]`` -> bool ``[B, N]``: the tokens of the modality (its range and :meth:`extra_ranges`)."""
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for start, end in (self.id_range(modality), *self.extra_ranges(modality)):
            keep |= (ids >= start) & (ids < end)
        return keep

    def pool(self, modality: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, H]`` pooled over ``mask [B, L]`` -> ``[B, H]`` (mean or attention, per the config)."""
        scores = None
        if self.config.pooling == "attention":
            scores = self.attention_pool[modality](hidden).squeeze(-1)  # [B, L]
        return masked_pool(hidden, mask, scores, what=modality)

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

    def encode(self, backbone: nn.Module, modality: str, ids: Any, mask: torch.Tensor | None = None,
               droptoken: float | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Run the backbone on one modality alone and return its unit embeddings (see :meth:`project`).

        ``MMLMForCausalLM.embed_video`` / ``embed_audio`` / ``embed_text`` call this with the LM's own backbone.

        Args:
            backbone: an :class:`~lm.modeling_mmlm.MMLMModel` (anything with its forward signature).
            modality: ``"video"``, ``"audio"`` or ``"text"``.
            ids: ``[B, N]`` global ids of the modality; ``pad_token_id`` pads. Video codes may come as
                ``[B, T', H', W']`` and audio codes as ``[B, levels, frames]`` (see the module's id conventions);
                ``[B, N]`` video may be in run-length form (codes and the run tokens of
                ``modality_ranges["video_run"]``). Moved to the head's device.
            mask: ``[B, N]`` real tokens; default: the ids in the modality's range (anything else but padding is an
                error).
            droptoken: rate of DropToken; default the config's when the head is training (video and audio only).
            generator: random source of DropToken.
        """
        device = next(self.parameters()).device
        ids = _check_ids_2d(_flatten_codes(ids, modality).to(device), f"{modality} ids")
        mask = mask.to(device) if mask is not None else None
        start, end = self.id_range(modality)
        in_range = self._in_modality(modality, ids)  # run tokens count as video (run-length conditions)
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
                raise ValueError(f"masked {modality} ids must lie in [{start}, {end})"
                                 + (f" or a run-token range {self.extra_ranges(modality)}"
                                    if self.extra_ranges(modality) else ""))
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
        keys = clip_keys(clip_ids, b, device)  # [B]
        segs = {m: extract_segments(input_ids, self.id_range(m), self.pad_token_id, extra_ranges=self.extra_ranges(m))
                for m in MODALITIES}
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
        return self.contrastive_loss(video["va"][in_va], audio["va"], keys[va_rows],
                                     video["vt"][in_vt], keys[vt_rows], text["vt"], keys[vt_rows])
