"""The mmtok token LM: a Llama-style decoder over the unified video/audio/text vocabulary, with prefix-LM attention.

Reading order:

1. :func:`prefix_lm_overlay` / :func:`prefix_lm_mask`: the VideoPoet prefix-LM attention pattern (arXiv 2312.14125,
   Sec. 3.2): every token sees the whole conditioning prefix (bidirectional over the first ``prefix_len`` tokens),
   and the output segment is causal.
2. :class:`MMLMModel`: embeddings -> transformers' Llama decoder blocks (RMSNorm, RoPE, SwiGLU, grouped-query
   attention through transformers' attention interface, so SDPA / eager / flash all work) -> final RMSNorm. The
   blocks are composed, not re-implemented: a Llama block is the right block, and it keeps training speed equal
   to ``LlamaForCausalLM`` (``bench/lm.py`` measures it).
3. :class:`MMLMForCausalLM`: the output head, the loss (mean token NLL over ``loss_mask``, VideoPoet trains on the
   output segment only), per-modality NLL from the config's id ranges, and HF ``generate`` (KV cache included)
   through :class:`~transformers.GenerationMixin`.

Written against transformers >= 5.24 (``pyproject.toml`` pins ``>=5.24,<6``): the KV cache is the ``cache`` argument
and output field everywhere, as in 5.24's own Llama; ``past_key_values`` is still taken, with transformers'
deprecation warning, exactly as ``LlamaModel`` takes it.

Batch conventions (the ones ``mmtok.sequence`` builds): ``input_ids [B, L]``; ``loss_mask [B, L]`` is 1 where the
token at that position is a training target (predicted from the position before it); ``prefix_len [B]`` counts
the conditioning tokens at the start of each row; padding goes at the end (``pad_token_id``, ``loss_mask`` 0), so
causal attention already keeps real tokens from seeing it and no ``attention_mask`` is needed for training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from lm.configuration_mmlm import MMLMConfig
from lm.modeling_alignment import AlignmentHead, AlignmentOutput
from mmtok.pretrained import StrictLoadingMixin

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------ prefix-LM mask
def prefix_lm_overlay(prefix_len: torch.Tensor) -> Callable:
    """Mask function (transformers' ``(batch, head, q, kv) -> bool`` form) that opens the prefix to every query.

    OR-ed with the causal mask it gives the prefix LM: query ``q`` of row ``b`` sees key ``kv`` iff
    ``kv <= q or kv < prefix_len[b]``. Indices are absolute positions, so it stays right with a KV cache.
    """

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx < prefix_len[batch_idx]

    return inner_mask


def prefix_lm_mask(prefix_len: torch.Tensor, q_len: int, kv_len: int | None = None, past_len: int = 0) -> torch.Tensor:
    """The prefix-LM pattern as an explicit boolean tensor ``[B, q_len, kv_len]`` (True = may attend).

    The reference definition (tests compare the model's attention against it); queries sit at absolute positions
    ``past_len .. past_len + q_len - 1`` and keys at ``0 .. kv_len - 1``.
    """
    kv_len = past_len + q_len if kv_len is None else kv_len
    q = torch.arange(past_len, past_len + q_len, device=prefix_len.device)[None, :, None]  # [1, q, 1]
    kv = torch.arange(kv_len, device=prefix_len.device)[None, None, :]  # [1, 1, kv]
    return (kv <= q) | (kv < prefix_len[:, None, None])  # [B, q, kv]


# ------------------------------------------------------------------------------------------------------- outputs
@dataclass
class MMLMCausalLMOutput(CausalLMOutputWithPast):
    """:class:`~transformers.modeling_outputs.CausalLMOutputWithPast` plus per-modality statistics.

    Attributes (beyond the parent's ``loss``, ``logits``, ``cache``, ``hidden_states``, ``attentions``):
        modality_nll: ``{modality: mean NLL (nats) of the loss-masked target tokens in its id range}`` (detached;
            ``nan`` where the batch has no such target).
        modality_tokens: ``{modality: number of those targets}`` (0-d int64 tensors), so callers can average
            exactly over several batches (``sum(nll * tokens) / sum(tokens)``).
        num_loss_tokens: number of targets the loss averaged over (0-d int64).
    """

    modality_nll: dict[str, torch.Tensor] | None = None
    modality_tokens: dict[str, torch.Tensor] | None = None
    num_loss_tokens: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------- level-shared code rows
class LevelSharedRows(nn.Module):
    """A shared term for a block of code rows whose codes are tuples of quantizer levels (FSQ, arXiv 2309.15505).

    Code ``c`` of a ``levels`` codebook is the digits ``d_i = (c // prod(levels[:i])) % levels[i]`` (FSQ's index
    order); its shared row is ``sum_i table[offset_i + d_i]``, one learned vector per (level, value). Added to the
    code's own row of an embedding or output head (``add_to``), it lets codes that share level values, which decode
    alike, share what the model learns about them. Rows ``[start, start + prod(levels))`` of the weight get it.
    """

    def __init__(self, levels: list[int], dim: int, start: int):
        super().__init__()
        self.levels = [int(v) for v in levels]
        self.start, self.size = int(start), math.prod(self.levels)
        self.table = nn.Embedding(sum(self.levels), dim)

    @property
    def digits(self) -> torch.Tensor:
        """``[codes, levels]`` rows of ``table`` each code is made of. Computed, not a buffer: ``from_pretrained``
        builds models on the meta device, where a non-persistent buffer would stay uninitialized."""
        device = self.table.weight.device
        basis = torch.tensor([math.prod(self.levels[:i]) for i in range(len(self.levels))], device=device)
        offsets = torch.tensor([sum(self.levels[:i]) for i in range(len(self.levels))], device=device)
        codes = torch.arange(self.size, device=device)[:, None]
        return codes // basis % torch.tensor(self.levels, device=device) + offsets

    def rows(self) -> torch.Tensor:
        """The shared term of every code, ``[codes, dim]``."""
        return self.table(self.digits).sum(1)

    def add_to(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` ``[V, dim]`` with the shared term added to its code rows (a new tensor; gradients reach both)."""
        end = self.start + self.size
        return torch.cat([weight[:self.start], weight[self.start:end] + self.rows().to(weight.dtype), weight[end:]])


def _level_shared_rows(config: MMLMConfig) -> LevelSharedRows | None:
    if config.video_code_levels is None:
        return None
    return LevelSharedRows(config.video_code_levels, config.hidden_size, config.modality_ranges["video"][0])


# ----------------------------------------------------------------------------------------- video token positions
def video_positions(input_ids: torch.Tensor, video_range: tuple[int, int] | list[int], bos_token_id: int, *,
                    run_range: tuple[int, int] | list[int] | None = None) -> torch.Tensor:
    """Each video token's index among the video cells since the last ``<bos>`` of its row, ``-1`` for other tokens.

    ``input_ids`` ``[B, L]`` -> ``[B, L]`` (int64). Video codes are laid out ``(t, h, w)``, so with a latent grid
    of ``h x w`` cells index ``i`` is frame ``i // (h * w)``, cell ``i % (h * w)``; counting from ``<bos>`` keeps
    the frames of a continuation's two video segments in order and restarts with each packed sequence. Generation
    with a KV cache passes the tail of this over the whole sequence (``MMLMForCausalLM`` does it for ``generate``).

    ``run_range``: the ``[start, end)`` ids of run tokens (run-length video, :mod:`mmtok.run_length`), id
    ``start + k - 1`` standing for ``k`` cells. A run token gets the index of its first cell and counts all ``k``, so
    each code gets the index it has in the plain form.
    """
    lo, hi = int(video_range[0]), int(video_range[1])
    is_video = (input_ids >= lo) & (input_ids < hi)                                       # [B, L]
    cells = is_video.long()                                                              # cells each token covers
    if run_range is not None:
        r_lo, r_hi = int(run_range[0]), int(run_range[1])
        is_run = (input_ids >= r_lo) & (input_ids < r_hi)
        cells = torch.where(is_run, input_ids - r_lo + 1, cells)
        is_video = is_video | is_run
    before = cells.cumsum(1) - cells                                                     # video cells before each
    at_bos = torch.where(input_ids == bos_token_id, before, torch.zeros_like(before))
    base = at_bos.cummax(1).values                                                       # count at the last <bos>
    return torch.where(is_video, before - base, torch.full_like(before, -1))


class VideoPositionEmbedding(nn.Module):
    """A learned vector per latent cell ``(h, w)`` plus one per latent frame, added to video token embeddings."""

    def __init__(self, grid: list[int], dim: int):
        super().__init__()
        self.frames, self.cells = int(grid[0]), int(grid[1]) * int(grid[2])
        self.cell = nn.Embedding(self.cells, dim)
        self.frame = nn.Embedding(self.frames, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` ``[B, L]`` from :func:`video_positions` -> ``[B, L, dim]`` (zeros where ``-1``)."""
        p = positions.clamp(min=0)
        out = self.cell(p % self.cells) + self.frame((p // self.cells).clamp(max=self.frames - 1))
        return out * (positions >= 0).unsqueeze(-1).to(out.dtype)


# ---------------------------------------------------------------------------------------------------- the model
class MMLMPreTrainedModel(StrictLoadingMixin, LlamaPreTrainedModel):
    """Llama's attention-backend flags and output capture (``LlamaPreTrainedModel``), plus the mmlm config, strict
    loading and the alignment head's init."""

    @classmethod
    def _new_weight_prefixes(cls, kwargs: dict[str, Any]) -> tuple[str, ...]:
        # from_pretrained(..., alignment=...) adds the alignment head to an LM saved without one
        return ("alignment.",) if kwargs.get("alignment") is not None else ()

    config: MMLMConfig
    config_class = MMLMConfig
    # the prefix mask and the input checks read tensor values (prefix_len.max(), the first mask column)
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AlignmentHead):  # its temperature is a bare parameter
            module._init_weights(self.config.initializer_range)


class MMLMModel(MMLMPreTrainedModel):
    """Token embeddings -> ``num_hidden_layers`` Llama decoder blocks -> RMSNorm; returns hidden states ``[B, L, H]``.

    The Llama blocks read their sizes from :class:`MMLMConfig`, which carries the same field names as
    ``LlamaConfig``.
    """

    def __init__(self, config: MMLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.embed_levels = _level_shared_rows(config)   # optional shared rows of the video codes
        self.embed_video_positions = (VideoPositionEmbedding(config.video_grid, config.hidden_size)
                                      if config.video_grid is not None else None)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def video_token_positions(self, input_ids: torch.Tensor, last: int | None = None) -> torch.Tensor | None:
        """:func:`video_positions` of ``input_ids`` ``[B, L]`` (the whole sequence so far), its last ``last``
        columns when given (what a cached step passes as ``video_positions``); ``None`` without ``video_grid``."""
        if self.embed_video_positions is None:
            return None
        pos = video_positions(input_ids, self.config.modality_ranges["video"], self.config.bos_token_id,
                              run_range=self.config.modality_ranges.get("video_run"))
        return pos if last is None else pos[:, pos.shape[1] - last:]

    def build_attention_mask(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                             cache: Cache | None, position_ids: torch.Tensor,
                             prefix_len: torch.Tensor | None) -> Any:
        """The mask handed to every attention layer, in the form the configured attention backend wants.

        Causal, OR-ed with :func:`prefix_lm_overlay` when a prefix reaches into this chunk of queries; ``None``
        when SDPA's own ``is_causal`` does the job (no prefix, no padding), which keeps the plain causal path as
        fast as Llama's.
        """
        or_mask = None
        if prefix_len is not None and self.config.prefix_lm:
            past = cache.get_seq_length() if cache is not None else 0
            # Queries at or after the longest prefix see the prefix anyway (causally): no overlay needed, e.g. in
            # every decoding step after the prompt.
            if int(prefix_len.max()) > past:
                impl = self.config._attn_implementation
                # Batches whose first column is real (no left padding: training, the alignment head, one prompt)
                # get the pattern as a tensor in one vectorised step: every query then sees key 0, so no row is
                # fully masked. transformers' create_causal_mask evaluates the overlay through vmap, ~8 ms per
                # forward of a demo batch, an eighth of a demo training step.
                first_real = attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask[:, 0].all()))
                if first_real and impl in ("sdpa", "eager"):
                    allowed = prefix_lm_mask(prefix_len, inputs_embeds.shape[1], past_len=past)[:, None]  # [B,1,q,kv]
                    if attention_mask is not None:
                        allowed = allowed & attention_mask.bool()[:, None, None, :]  # padding keys never attended
                    if impl == "sdpa":
                        return allowed
                    return torch.zeros(allowed.shape, dtype=inputs_embeds.dtype, device=allowed.device).masked_fill(
                        ~allowed, torch.finfo(inputs_embeds.dtype).min)
                or_mask = prefix_lm_overlay(prefix_len)
        return create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids, or_mask_function=or_mask)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        prefix_len: torch.LongTensor | None = None,
        video_positions: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Run the decoder.

        Args:
            input_ids: ``[B, L]`` global token ids (or ``inputs_embeds [B, L, H]``).
            attention_mask: optional ``[B, past + L]`` padding mask (1 = real token), as in transformers.
            position_ids: optional ``[B, L]`` RoPE positions; default ``past .. past + L - 1``.
            cache: a transformers :class:`~transformers.Cache` to extend (generation); ``past_key_values`` is taken
                for it with transformers' deprecation warning, as in ``LlamaModel``.
            use_cache: return the (new) cache.
            prefix_len: optional ``[B]`` number of conditioning tokens per row (bidirectional attention over them);
                ignored when ``config.prefix_lm`` is False.
            video_positions: optional ``[B, L]`` (:func:`video_positions` of the whole sequence, this call's tail),
                for a model with ``config.video_grid``; computed from ``input_ids`` when not given, which needs the
                whole sequence, so a call that extends a KV cache must pass it.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            _check_ids(input_ids, self.config.vocab_size)
            if self.embed_levels is None:
                inputs_embeds = self.embed_tokens(input_ids)  # [B, L, H]
            else:
                inputs_embeds = F.embedding(input_ids, self.embed_levels.add_to(self.embed_tokens.weight),
                                            self.padding_idx)  # [B, L, H]
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if self.embed_video_positions is not None:
            if video_positions is None:
                if input_ids is None or past > 0:
                    raise ValueError("this model has video_grid: pass video_positions (lm.modeling_mmlm."
                                     "video_positions of the whole sequence) with inputs_embeds or a filled KV cache")
                video_positions = self.video_token_positions(input_ids)
            if video_positions.shape != inputs_embeds.shape[:2]:
                raise ValueError(f"video_positions must be [B, L] = {tuple(inputs_embeds.shape[:2])}, got "
                                 f"{tuple(video_positions.shape)}")
            inputs_embeds = inputs_embeds + self.embed_video_positions(video_positions.to(inputs_embeds.device))
        if prefix_len is not None:
            prefix_len = _check_prefix_len(prefix_len, inputs_embeds.shape[0], past + inputs_embeds.shape[1])
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)

        mask = self.build_attention_mask(inputs_embeds, attention_mask, cache, position_ids, prefix_len)
        hidden_states = inputs_embeds  # [B, L, H]
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)  # (cos, sin) [B, L, head_dim]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                                  position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)  # [B, L, H]
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class MMLMForCausalLM(MMLMPreTrainedModel, GenerationMixin):
    """:class:`MMLMModel` + a linear head over the unified vocabulary; loss over ``loss_mask``; HF ``generate``.

    Example::

        config = MMLMConfig.from_preset("demo", vocab=bundle.vocab)
        model = MMLMForCausalLM(config)
        out = model(input_ids, loss_mask=loss_mask, prefix_len=prefix_len)   # out.loss, out.modality_nll
        ids = model.generate(prompt_ids, prefix_len=prompt_len, max_new_tokens=256, do_sample=True, top_k=100)
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MMLMConfig):
        super().__init__(config)
        self.model = MMLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head_levels = _level_shared_rows(config)    # optional shared rows of the video codes
        if config.alignment is not None:  # VATT-style contrastive head (lm/modeling_alignment.py), saved with the model
            self.alignment = AlignmentHead.from_model_config(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def check_vocabulary(self, vocab_or_bundle: Any) -> None:
        """Raise an error naming both layouts when a tokenizer bundle / vocabulary differs from the model's."""
        self.config.check_vocabulary(vocab_or_bundle)

    # Contrastive alignment (needs ``config.alignment``; see lm/modeling_alignment.py, VATT arXiv 2104.11178): the
    # head's methods on this model's backbone. Compare embeddings with ``model.alignment.similarity(a, b)``.
    def _alignment_head(self) -> AlignmentHead:
        head = getattr(self, "alignment", None)
        if not isinstance(head, AlignmentHead):
            raise ValueError("no alignment head: build the model with MMLMConfig(alignment={...}) (or load it with "
                             "from_pretrained(..., alignment={...})) so that model.alignment exists")
        return head

    def embed_video(self, video_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    space: str = "vt") -> torch.Tensor:
        """Unit video embeddings ``[B, vt_dim]`` (``space="vt"``, to compare with text) or ``[B, va_dim]``
        (``"va"``, with audio).

        Args:
            video_ids: global video ids ``[B, N]`` (``pad_token_id`` pads) or ``[B, T', H', W']``.
            attention_mask: optional ``[B, N]`` real tokens.
        DropToken applies only when the head is in training mode.
        """
        if space not in ("va", "vt"):
            raise ValueError(f"space must be 'va' (video-audio) or 'vt' (video-text), got {space!r}")
        return self._alignment_head().encode(self.model, "video", video_ids, attention_mask)[space]

    def embed_audio(self, audio_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit audio embeddings ``[B, va_dim]`` from global audio ids ``[B, N]`` or ``[B, levels, frames]``."""
        return self._alignment_head().encode(self.model, "audio", audio_ids, attention_mask)["va"]

    def embed_text(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit text embeddings ``[B, vt_dim]`` from global text ids ``[B, N]`` (``pad_token_id`` pads)."""
        return self._alignment_head().encode(self.model, "text", text_ids, attention_mask)["vt"]

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs: Any) -> dict[str, Any]:
        """transformers' inputs for one ``generate`` step, plus ``video_positions`` (for ``config.video_grid``),
        taken over the whole sequence so far: a cached step only sees its new tokens."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        step_ids = inputs.get("input_ids")
        if self.config.video_grid is not None and step_ids is not None:
            inputs["video_positions"] = self.model.video_token_positions(input_ids, last=step_ids.shape[1])
        return inputs

    def alignment_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> AlignmentOutput:
        """The contrastive loss of a training batch (``input_ids``, and the clip ``ids`` when the batch has them)."""
        head = self._alignment_head()
        if "input_ids" not in batch:
            raise KeyError("the batch has no 'input_ids'")
        device = next(head.parameters()).device
        return head(self.model, batch["input_ids"].to(device), clip_ids=batch.get("ids"), generator=generator)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        loss_mask: torch.Tensor | None = None,
        prefix_len: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MMLMCausalLMOutput:
        """Logits, and the loss when ``labels`` or ``loss_mask`` is given.

        Args:
            input_ids: ``[B, L]`` global token ids.
            labels: ``[B, L]`` targets aligned with ``input_ids`` (shifted inside; ``-100`` = no loss). Defaults to
                ``input_ids`` when only ``loss_mask`` is given.
            loss_mask: ``[B, L]`` 1 where the token is a target (VideoPoet: the output segment); combined with
                ``labels != -100``. Without it every labelled position after the first counts. Float values
                weigh each target's NLL (0 = not a target); the loss is then the weighted mean.
            prefix_len: ``[B]`` conditioning length per row (prefix-LM attention).
            logits_to_keep: compute logits only for the last N positions (``generate`` passes 1).
            num_items_in_batch: divide the summed NLL by this instead of this batch's target count, so gradient
                accumulation and data parallelism average over the whole global batch exactly.
            Others: as :meth:`MMLMModel.forward`.

        Returns:
            :class:`MMLMCausalLMOutput`; ``logits`` are ``[B, L', vocab]``.
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, prefix_len=prefix_len, **kwargs)
        hidden_states = outputs.last_hidden_state  # [B, L, H]

        loss = modality_nll = modality_tokens = num_loss_tokens = None
        if labels is None and loss_mask is not None:
            if input_ids is None:
                raise ValueError("loss_mask without labels needs input_ids (the targets)")
            labels = input_ids
        if labels is not None:
            logits = self.head(hidden_states)  # [B, L, V]
            loss, modality_nll, modality_tokens, num_loss_tokens = self._loss(logits, labels, loss_mask,
                                                                              num_items_in_batch)
        else:
            logits = self.head(slice_logits_to_keep(hidden_states, logits_to_keep))  # [B, L', V]

        return MMLMCausalLMOutput(loss=loss, logits=logits, cache=outputs.cache,
                                  hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                  modality_nll=modality_nll, modality_tokens=modality_tokens,
                                  num_loss_tokens=num_loss_tokens)

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V]`` of hidden states ``[..., H]``: ``lm_head``, plus the video codes' shared rows."""
        if self.head_levels is None:
            return self.lm_head(hidden_states)
        return F.linear(hidden_states, self.head_levels.add_to(self.lm_head.weight))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None,
              num_items_in_batch: int | torch.Tensor | None):
        """Masked next-token NLL, plus per-modality NLL of the same targets."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must be [batch, seq_len] = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        # Shift the targets, not the logits: position t predicts token t+1, and the last position predicts nothing.
        # (Slicing logits[:, :-1] would copy the whole [B, L, V] tensor.)
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # [B, L]
        valid = targets != IGNORE_INDEX
        weight = None
        if loss_mask is not None:
            if loss_mask.shape != labels.shape:
                raise ValueError(f"loss_mask must have the shape of input_ids {tuple(labels.shape)}, "
                                 f"got {tuple(loss_mask.shape)}")
            shifted = F.pad(loss_mask[:, 1:], (0, 1), value=0)  # [B, L], aligned with targets
            valid = valid & (shifted > 0)
            if shifted.is_floating_point():  # weights (a 0/1 mask needs no check and no multiply)
                if bool((loss_mask < 0).any()):
                    raise ValueError("loss_mask weights must be >= 0")
                weight = shifted.float() * valid
        safe_targets = targets.masked_fill(~valid, 0)
        nll = F.cross_entropy(logits.float().flatten(0, 1), safe_targets.flatten(),
                              reduction="none").view_as(targets)  # [B, L]
        nll = nll * valid
        count = valid.sum()
        total = count.clamp(min=1) if weight is None else weight.sum().clamp(min=1e-12)
        denom = num_items_in_batch if num_items_in_batch is not None else total
        if isinstance(denom, torch.Tensor):
            denom = denom.to(nll.device)
        loss = (nll if weight is None else nll * weight).sum() / denom

        modality_nll, modality_tokens = {}, {}
        with torch.no_grad():
            for name, (start, end) in (self.config.modality_ranges or {}).items():
                in_range = valid & (safe_targets >= start) & (safe_targets < end)
                n = in_range.sum()
                modality_tokens[name] = n
                modality_nll[name] = (nll.detach() * in_range).sum() / n if n > 0 else nll.new_tensor(float("nan"))
        return loss, modality_nll, modality_tokens, count


# ---------------------------------------------------------------------------------------------------- checks
def _check_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor (int64), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (the model's vocabulary), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]: is the data tokenized with another "
                         f"vocabulary?")


def _check_prefix_len(prefix_len: Any, batch: int, total_len: int) -> torch.Tensor:
    prefix_len = torch.as_tensor(prefix_len)
    if prefix_len.dim() == 0:
        prefix_len = prefix_len.expand(batch)
    if prefix_len.shape != (batch,) or prefix_len.is_floating_point():
        raise ValueError(f"prefix_len must be an integer tensor [batch={batch}], got {prefix_len.dtype} "
                         f"{tuple(prefix_len.shape)}")
    if int(prefix_len.min()) < 0 or int(prefix_len.max()) > total_len:
        raise ValueError(f"prefix_len must lie in [0, {total_len}] (the sequence length), got {prefix_len.tolist()}")
    return prefix_len.long()


# ------------------------------------------------------------------------------------------------- registration
AutoConfig.register(MMLMConfig.model_type, MMLMConfig, exist_ok=True)
AutoModel.register(MMLMConfig, MMLMModel, exist_ok=True)
AutoModelForCausalLM.register(MMLMConfig, MMLMForCausalLM, exist_ok=True)

__all__ = ["MMLMPreTrainedModel", "MMLMModel", "MMLMForCausalLM", "MMLMCausalLMOutput", "prefix_lm_mask",
           "prefix_lm_overlay"]
