"""VATT: video, audio and text transformers on raw signals, aligned contrastively (Akbari et al., arXiv 2104.11178).

Reading order:

1. :func:`drop_tokens_packed`: DropToken (VATT Sec. 3.1) on a packed batch of embedded tokens: each clip keeps a
   random subset of its tokens (the LM head's :func:`lm.modeling_alignment.drop_tokens` rule and draw), packed again.
   Packing makes this a gather: clips keep different numbers of tokens (after RLT) and nothing is padded.
2. :class:`VATTModel`: three :class:`mmtok.encoders.PatchEncoderModel` towers (or, ``shared_backbone``, VATT-MA's
   one transformer with per-modality embeddings), each clip pooled to one vector (the size-weighted mean of its
   tokens: VATT's towers aggregate with a learned ``[AGG]`` token instead; the mean stays exact under ToMe's merged
   token sizes),
   then VATT's hierarchical common spaces and losses from :class:`lm.modeling_alignment.ContrastiveProjections`
   (the implementation the LM's alignment head uses): video and audio meet in the video-audio space (NCE), the
   video-audio video embedding goes on through an MLP into the video-text space, where the captions land (MIL-NCE,
   every caption of a clip a positive).

VATT or the LM's alignment head (:mod:`lm.modeling_alignment`)? The head aligns the LM's own hidden states of
*discrete codes*: it needs the tokenizers and the LM, and serves the LM (retrieval and classification beside
generation). VATT reads raw pixels and waveforms with encoders of its own: a standalone embedding model for
retrieval and linear probes, trained in minutes, and the place to measure continuous-token reduction (RLT, ToMe,
VTM, STTS), which the discrete pipeline cannot use.

Example::

    config = VATTConfig.from_preset("demo", text_config={"vocab_size": tokenizer.codebook_size})
    model = VATTModel(config)
    out = model(pixel_values=video, input_values=audio, input_ids=ids, attention_mask=mask, text_clip=owner)
    out.loss.backward()                                   # NCE(video, audio) + MIL-NCE(video, captions)
    model.embed_video(video)                              # [B, vt_dim], unit norm (eval mode: no DropToken)
    model.config.video_config.tome_r = 4                  # training-free ToMe from the next forward on
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from lm.alignment_losses import clip_keys
from lm.configuration_vatt import VATTConfig
from lm.modeling_alignment import ContrastiveProjections, drop_tokens
from mmtok.encoders import Embedded, Packing, PatchEncoderModel, PatchEncoderOutput, build_embeddings
from mmtok.encoders.modeling_encoder import init_special_parts
from mmtok.pretrained import StrictLoadingMixin, check_model_folder

__all__ = ["REDUCTION_SWITCHES", "VATTModel", "VATTOutput", "drop_tokens_packed", "pad_text_ids"]

# The video tower's settings from_pretrained(..., video_switches=...) may change on a saved model: the token
# reduction methods, none of which changes the shape of a saved weight.
REDUCTION_SWITCHES = ("rlt_threshold", "rlt_max_run", "tome_r", "merge", "proportional_attention", "stts_frames",
                      "stts_regions", "stts_region_size", "stts_layer", "stts_samples", "stts_sigma",
                      "packed_attention")


def drop_tokens_packed(emb: Embedded, rate: float, generator: torch.Generator | None = None) -> Embedded:
    """DropToken on a packed batch: each clip of ``n`` tokens keeps ``max(1, round((1 - rate) * n))`` of them, chosen
    uniformly, in their order (their sizes and position embeddings go with them). The result has no token grid.

    Args:
        emb: packed tokens (:meth:`mmtok.encoders.PatchEncoderModel.embed`).
        rate: fraction dropped, in ``[0, 1)``.
        generator: optional random source (on the tokens' device).
    """
    packing = emb.packing
    rows = packing.pad(torch.arange(packing.total, device=emb.tokens.device))          # [B, M] packed row of each
    kept, kept_mask, _ = drop_tokens(rows, packing.valid_mask(), rate, generator)     # [B, K]
    keep = kept[kept_mask]                                                            # [N'] clip by clip, in order
    return Embedded(emb.tokens[keep], emb.sizes[keep], Packing.from_lengths(kept_mask.sum(1)), None)


def pad_text_ids(rows: Sequence[Sequence[int]], *, max_length: int | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists (e.g. :meth:`mmtok.text.TextTokenizer.encode_batch`) -> ``input_ids [M, L]`` (0 after each
    row) and ``attention_mask [M, L]`` (1 on real tokens), each row cut to ``max_length``."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every text needs at least one token")
    rows = [list(r)[:max_length] if max_length else list(r) for r in rows]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class VATTOutput(ModelOutput):
    """Output of :meth:`VATTModel.forward`; a modality's fields are ``None`` when its input was not given.

    Attributes:
        loss: ``va_weight * loss_va + vt_weight * loss_vt`` (``None`` without any video-audio or video-text pair, or
            with ``return_loss=False``).
        loss_va: NCE of the video-audio pairs; ``loss_vt``: MIL-NCE of the videos against their captions.
        video_pooled: ``[B, C_video]`` each clip's pooled video tower output (what linear probes read).
        video_va, video_vt: ``[B, va_dim]`` / ``[B, vt_dim]`` unit video embeddings in the two spaces.
        audio_pooled, audio_va: ``[B, C_audio]`` / ``[B, va_dim]``.
        text_pooled, text_vt: ``[M, C_text]`` / ``[M, vt_dim]``.
        video_num_tokens, audio_num_tokens: ``[B]`` tokens each clip kept after the tower (after RLT, DropToken,
            STTS and merging).
        temperature: the current temperature (0-d, detached).
    """

    loss: torch.Tensor | None = None
    loss_va: torch.Tensor | None = None
    loss_vt: torch.Tensor | None = None
    video_pooled: torch.Tensor | None = None
    video_va: torch.Tensor | None = None
    video_vt: torch.Tensor | None = None
    audio_pooled: torch.Tensor | None = None
    audio_va: torch.Tensor | None = None
    text_pooled: torch.Tensor | None = None
    text_vt: torch.Tensor | None = None
    video_num_tokens: torch.Tensor | None = None
    audio_num_tokens: torch.Tensor | None = None
    temperature: torch.Tensor | None = None


class VATTPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    """Config class, strict loading and the init of the parts transformers' default init does not cover."""

    config: VATTConfig
    config_class = VATTConfig
    base_model_prefix = "vatt"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # the towers are PreTrainedModels: transformers dispatches their modules to their own _init_weights
        super()._init_weights(module)
        if isinstance(module, ContrastiveProjections):  # its temperature is a bare parameter
            module._init_weights(self.config.projection_std)
        if self.config.shared_backbone:  # the audio embeddings live here, outside a tower (log-mel filterbank)
            init_special_parts(module, self.config.audio_config)


class VATTModel(VATTPreTrainedModel):
    """VATT's three towers (or one shared backbone), DropToken, and the NCE / MIL-NCE training loss.

    Submodules: ``video_model`` (a :class:`~mmtok.encoders.PatchEncoderModel`; with ``shared_backbone`` it is the
    backbone every modality runs through), ``audio_model`` and ``text_model`` (towers of their own), or
    ``audio_embeddings`` and ``text_embeddings`` (``shared_backbone``), and ``projections``
    (:class:`~lm.modeling_alignment.ContrastiveProjections`).
    """

    def __init__(self, config: VATTConfig):
        super().__init__(config)
        self.video_model = PatchEncoderModel(config.video_config)
        if config.shared_backbone:
            self.audio_embeddings = build_embeddings(config.audio_config)
            self.text_embeddings = build_embeddings(config.text_config)
        else:
            self.audio_model = PatchEncoderModel(config.audio_config)
            self.text_model = PatchEncoderModel(config.text_config)
        self.projections = ContrastiveProjections(config.video_config.hidden_size, config.audio_config.hidden_size,
                                                  config.text_config.hidden_size, config.alignment_config())
        self.post_init()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VATTModel":
        """A freshly initialized model of a named preset (``debug``, ``demo``); see :meth:`VATTConfig.from_preset`."""
        return cls(VATTConfig.from_preset(name, **overrides))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any,
                        video_switches: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Load a saved model (strictly: see :class:`mmtok.pretrained.StrictLoadingMixin`).

        Args:
            video_switches: token-reduction settings of the video tower (:data:`REDUCTION_SWITCHES`, e.g.
                ``{"rlt_threshold": 0.05}``, ``{"tome_r": 4, "merge": "vtm"}``, ``{"stts_frames": 0.5}``) applied to
                the saved config before the model is built. Parts they need that the checkpoint lacks start from their
                init: RLT's run-length embedding at zero (the paper's training-free RLT), VTM's and STTS's scorers
                at random (fine-tune them). Switches that need no new part can also be set on a built model
                (``model.config.video_config.tome_r = 4``).
        """
        if video_switches:
            unknown = sorted(set(video_switches) - set(REDUCTION_SWITCHES))
            if unknown:
                raise ValueError(f"video_switches sets {unknown}, which change the architecture of the saved video "
                                 f"tower; it takes the token-reduction settings {list(REDUCTION_SWITCHES)}")
            if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
                check_model_folder(pretrained_model_name_or_path)   # a clear error before the config is read
            config = kwargs.pop("config", None) or VATTConfig.from_pretrained(pretrained_model_name_or_path)
            for key, value in video_switches.items():
                setattr(config.video_config, key, value)
            config.validate()
            kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _new_weight_prefixes(cls, kwargs: dict) -> tuple[str, ...]:
        # an explicit config (from_pretrained(..., video_switches=...) passes one) may switch on video reduction
        # methods whose parts the checkpoint lacks
        config = kwargs.get("config")
        if not isinstance(config, VATTConfig):
            return ()
        video = config.video_config
        switches = {"rlt_threshold": video.rlt_threshold, "merge": video.merge, "stts_frames": video.stts_frames,
                    "stts_regions": video.stts_regions}
        return tuple(f"video_model.{p}" for p in PatchEncoderModel._new_weight_prefixes(switches))

    # ------------------------------------------------------------------------------------------------ towers
    def _encode(self, modality: str, **inputs: Any) -> PatchEncoderOutput:
        """One modality through its tower (or the shared backbone), DropToken on video and audio in training."""
        cfg = self.config
        if cfg.shared_backbone and modality != "video":
            embeddings = self.audio_embeddings if modality == "audio" else self.text_embeddings
            emb = (embeddings(inputs["input_values"]) if modality == "audio"
                   else embeddings(inputs["input_ids"], inputs.get("attention_mask")))
            tower, reduce = self.video_model, False
        else:
            tower = getattr(self, f"{modality}_model")
            emb, reduce = tower.embed(**inputs), True
        if self.training and cfg.droptoken > 0 and modality in ("video", "audio"):
            if modality == "video" and cfg.video_config.uses_stts:
                raise ValueError("DropToken and STTS both choose the video tokens, and STTS needs the full grid: "
                                 "train with droptoken=0 to fine-tune STTS")
            emb = drop_tokens_packed(emb, cfg.droptoken)
        return tower.encode_embedded(emb, reduce=reduce)

    def _embeddings(self, modality: str, **inputs: Any) -> tuple[PatchEncoderOutput, dict[str, torch.Tensor]]:
        out = self._encode(modality, **inputs)
        return out, self.projections.project(modality, out.pooler_output)

    def embed_video(self, pixel_values: torch.Tensor, *, space: str = "vt") -> torch.Tensor:
        """Video embeddings: ``space="vt"`` ``[B, vt_dim]`` (to compare with text), ``"va"`` ``[B, va_dim]`` (with
        audio), both unit norm, or ``"pooled"`` ``[B, C]`` (the tower's pooled output, for linear probes).
        ``pixel_values``: ``[B, 3, T, H, W]`` in [-1, 1]. DropToken applies only in training mode."""
        return self._pick(self._embeddings("video", pixel_values=pixel_values), space, ("va", "vt"))

    def embed_audio(self, input_values: torch.Tensor, *, space: str = "va") -> torch.Tensor:
        """Audio embeddings ``[B, va_dim]`` (unit norm) or ``"pooled"``; ``input_values``: waveforms
        ``[B, samples]``."""
        return self._pick(self._embeddings("audio", input_values=input_values), space, ("va",))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   space: str = "vt") -> torch.Tensor:
        """Text embeddings ``[M, vt_dim]`` (unit norm) or ``"pooled"``; ``input_ids`` ``[M, L]`` SentencePiece ids
        (:class:`mmtok.text.TextTokenizer`), ``attention_mask`` ``[M, L]`` (1 = token; see :func:`pad_text_ids`)."""
        return self._pick(self._embeddings("text", input_ids=input_ids, attention_mask=attention_mask), space,
                          ("vt",))

    @staticmethod
    def _pick(result: tuple[PatchEncoderOutput, dict[str, torch.Tensor]], space: str,
              spaces: tuple[str, ...]) -> torch.Tensor:
        out, projected = result
        if space == "pooled":
            return out.pooler_output
        if space not in spaces:
            raise ValueError(f"space must be one of {[*spaces, 'pooled']}, got {space!r}")
        return projected[space]

    def usable_audio_length(self, samples: int) -> int:
        """The longest waveform length up to ``samples`` that the audio tower takes (a multiple of its samples per
        token): crop clips to it."""
        embeddings = self.audio_embeddings if self.config.shared_backbone else self.audio_model.embeddings
        step = embeddings.samples_per_patch
        if samples < step:
            raise ValueError(f"{samples} samples are fewer than one audio token ({step} samples)")
        return samples // step * step

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                text_clip: Sequence[int] | torch.Tensor | None = None,
                clip_ids: Sequence[Any] | torch.Tensor | None = None, return_loss: bool = True,
                return_dict: bool = True) -> VATTOutput | tuple:
        """Embed the given modalities and, with a video-audio or video-text pair among them, compute VATT's loss.

        Args:
            pixel_values: ``[B, 3, T, H, W]`` video in [-1, 1] (images ``[B, 3, H, W]`` too).
            input_values: ``[B, samples]`` the same clips' waveforms.
            input_ids: ``[M, L]`` caption ids, ``attention_mask`` ``[M, L]`` (1 = token).
            text_clip: ``[M]`` the clip (row of ``pixel_values``) each caption describes, several captions per clip
                allowed (MIL-NCE takes them all as that clip's positives); default ``0..B-1`` (one caption a clip).
            clip_ids: ``B`` clip identifiers (ints, strings or a tensor): rows (or ranks) of the same clip count once
                in the loss; default every row its own clip.
            return_loss: compute the loss (needs a video-audio or video-text pair).
        """
        out = VATTOutput()
        if pixel_values is None and input_values is None and input_ids is None:
            raise ValueError("pass at least one of pixel_values (video), input_values (audio) and input_ids (text)")
        if pixel_values is not None:
            enc, proj = self._embeddings("video", pixel_values=pixel_values)
            out.video_pooled, out.video_va, out.video_vt = enc.pooler_output, proj["va"], proj["vt"]
            out.video_num_tokens = enc.num_tokens
        if input_values is not None:
            enc, proj = self._embeddings("audio", input_values=input_values)
            out.audio_pooled, out.audio_va, out.audio_num_tokens = enc.pooler_output, proj["va"], enc.num_tokens
        if input_ids is not None:
            enc, proj = self._embeddings("text", input_ids=input_ids, attention_mask=attention_mask)
            out.text_pooled, out.text_vt = enc.pooler_output, proj["vt"]
        elif attention_mask is not None:
            raise ValueError("attention_mask belongs to input_ids (text), which were not given")
        out.temperature = self.projections.logit_scale.detach().reciprocal()
        if return_loss and out.video_va is not None and (out.audio_va is not None or out.text_vt is not None):
            self._loss(out, text_clip, clip_ids)
        elif text_clip is not None and (out.video_va is None or out.text_vt is None):
            raise ValueError("text_clip pairs captions with video clips: pass both pixel_values and input_ids")
        return out if return_dict else out.to_tuple()

    def _loss(self, out: VATTOutput, text_clip: Any, clip_ids: Any) -> None:
        """Fill ``out.loss`` (and its parts) from the embeddings in ``out``."""
        b, device = out.video_va.shape[0], out.video_va.device
        keys = clip_keys(clip_ids, b, device)                                              # [B]
        empty_va = out.video_va.new_zeros((0, self.config.va_dim))
        if out.audio_va is not None:
            if out.audio_va.shape[0] != b:
                raise ValueError(f"input_values holds {out.audio_va.shape[0]} clips but pixel_values holds {b}: row i "
                                 "of each is the same clip")
            va = (out.video_va, out.audio_va, keys)
        else:
            va = (empty_va, empty_va, keys[:0])
        if out.text_vt is not None:
            m = out.text_vt.shape[0]
            owner = torch.arange(m) if text_clip is None else torch.as_tensor(text_clip).long().flatten()
            if text_clip is None and m != b:
                raise ValueError(f"{m} captions for {b} clips: pass text_clip (the clip index of each caption)")
            if owner.shape != (m,):
                raise ValueError(f"text_clip must give one clip index per caption ({m}), got {tuple(owner.shape)}")
            if m and (int(owner.min()) < 0 or int(owner.max()) >= b):
                raise ValueError(f"text_clip indices must lie in [0, {b}) (rows of pixel_values)")
            vt = (out.video_vt, keys, out.text_vt, keys[owner.to(device)])
        else:
            empty_vt = out.video_vt.new_zeros((0, self.config.vt_dim))
            vt = (empty_vt, keys[:0], empty_vt, keys[:0])
        result = self.projections.contrastive_loss(*va, *vt)
        out.loss, out.loss_va, out.loss_vt = result.loss, result.loss_va, result.loss_vt


AutoConfig.register(VATTConfig.model_type, VATTConfig, exist_ok=True)
AutoModel.register(VATTConfig, VATTModel, exist_ok=True)
