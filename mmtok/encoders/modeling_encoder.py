"""The continuous patch-token encoder: raw signal -> packed tokens -> pre-norm transformer blocks -> pooled embedding.

Reading order:

1. :class:`Attention`, :class:`Block`: a pre-norm ViT block (attention, MLP) over a packed batch, attention confined
   to each clip (:func:`mmtok.encoders.packing.packed_attention`). With token merging on, the block merges after
   attention, from the attention keys (ToMe's place for it), and attention adds ``log(size)`` to each key's logits.
2. :class:`DividedBlock`: TimeSformer's divided space-time attention (arXiv 2102.05095): temporal attention at each
   spatial place, then spatial attention within each frame, then the MLP. Its spatial attention and MLP carry the
   same parameter names as :class:`Block`'s, and its temporal attention's output projection starts at zero (as
   TimeSformer's ``temporal_fc``), so a divided encoder loaded from a joint one starts as that encoder. With one
   tubelet time step temporal attention has nothing to mix (a token attending only to itself would just add its
   value projection), so it is skipped: divided attention is then exactly joint attention.
3. :class:`PatchEncoderModel`: embeddings (:mod:`mmtok.encoders.embeddings`, RLT inside; ``embed``), then
   (``encode_embedded``) STTS before block ``stts_layer``, the blocks (ToMe / VTM inside), a final LayerNorm and the
   size-weighted mean of each clip's tokens.

Every tensor between the embeddings and the output is packed: ``[N, C]`` with ``N`` the total of all clips' tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from mmtok.audio_features import MelSpectrogram, mel_filterbank
from mmtok.encoders.configuration_encoder import PatchEncoderConfig, resolve_keep
from mmtok.encoders.embeddings import Embedded, build_embeddings
from mmtok.encoders.packing import Packing, packed_attention
from mmtok.encoders.rlt import RunLengthEmbedding
from mmtok.encoders.token_merging import SaliencyScorer, merge_tokens
from mmtok.encoders.token_selection import SpatioTemporalSelector
from mmtok.pretrained import StrictLoadingMixin

__all__ = ["Attention", "Block", "DividedBlock", "PatchEncoderModel", "PatchEncoderOutput", "init_special_parts"]


# ------------------------------------------------------------------------------------------------------- outputs
@dataclass
class PatchEncoderOutput(ModelOutput):
    """Output of :meth:`PatchEncoderModel.forward`. Tokens are packed: clip ``i`` owns rows
    ``cu_seqlens[i]:cu_seqlens[i + 1]`` of ``last_hidden_state`` and ``sizes``.

    Attributes:
        last_hidden_state: the kept tokens after the final norm, packed ``[N, C]``.
        pooler_output: one embedding per clip ``[B, C]``: the mean of its tokens weighted by their sizes (for RLT and
            merged tokens, the mean over the patches they stand for).
        sizes: ``[N]`` float, how many original patches (tubelets, audio patches, text tokens) each token stands for:
            RLT run lengths times ToMe / VTM merges; 1 for a plain or STTS-selected token.
        num_tokens: tokens kept per clip ``[B]`` (int64).
        cu_seqlens: ``[B + 1]`` (int64) cumulative ``num_tokens``, starting at 0.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None

    def to_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``last_hidden_state`` padded per clip: ``([B, max_tokens, C]`` zeros after each clip's tokens, ``mask
        [B, max_tokens]`` True on real tokens``)``."""
        packing = Packing(self.num_tokens, self.cu_seqlens, tuple(int(n) for n in self.num_tokens.tolist()))
        return packing.pad(self.last_hidden_state), packing.valid_mask()


# ------------------------------------------------------------------------------------------------------- blocks
class ZeroInitLinear(nn.Linear):
    """A linear layer the model initializes to zero (its branch starts as the identity of the residual stream)."""


class Attention(nn.Module):
    """Multi-head self-attention over a packed batch; also returns the keys (ToMe's similarity features).
    ``zero_init_proj`` starts the output projection at zero."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, zero_init_proj: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = (ZeroInitLinear if zero_init_proj else nn.Linear)(dim, dim)

    def forward(self, x: torch.Tensor, packing: Packing, *, key_bias: torch.Tensor | None = None,
                impl: str = "padded") -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[N, C]`` -> ``(out [N, C], keys [N, heads, head_dim])``."""
        n, c = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, c // self.heads).unbind(1)        # [N, h, d] each
        out = packed_attention(q, k, v, packing, key_bias=key_bias, impl=impl)          # [N, h, d]
        return self.proj(out.reshape(n, c)), k


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with joint attention over each clip's tokens, and ToMe / VTM merging."""

    def __init__(self, config: PatchEncoderConfig):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, config.num_attention_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, sizes: torch.Tensor, packing: Packing, *, grid: tuple[int, int, int] | None,
                merge_r: int = 0, proportional: bool = False, saliency: SaliencyScorer | None = None,
                impl: str = "padded") -> tuple[torch.Tensor, torch.Tensor, Packing]:
        """``x`` ``[N, C]``, ``sizes`` ``[N]`` -> the same after the block, with ``merge_r`` tokens per clip merged
        (VTM when ``saliency`` is given); ``proportional`` adds ``log(size)`` to every key's attention logits."""
        key_bias = sizes.log() if proportional else None                                 # [N]
        sal = saliency(x) if saliency is not None and merge_r > 0 else None              # [N] VTM, before attention
        if sal is not None:
            # VTM's saliency-guided attention: each key also weighs sigmoid(saliency), the weight the token carries
            # into a merge. It is what trains the scorer (the partition is a discrete choice); kept at inference so
            # a fine-tuned model runs as it was trained. A uniform score shifts every logit alike: no change.
            guide = F.logsigmoid(sal)
            key_bias = guide if key_bias is None else key_bias + guide
        h, keys = self.attn(self.norm1(x), packing, key_bias=key_bias, impl=impl)
        x = x + h
        if merge_r > 0:
            x, sizes, packing = merge_tokens(x, sizes, keys.mean(1), packing, merge_r, saliency=sal)
        return x + self.mlp(self.norm2(x)), sizes, packing


class DividedBlock(Block):
    """TimeSformer's divided space-time attention block: temporal attention, then spatial, then the MLP.

    ``attn`` / ``norm1`` (spatial) and ``mlp`` / ``norm2`` are :class:`Block`'s; ``temporal_attn`` and
    ``temporal_norm`` are the temporal attention's own (its ``proj`` starts at zero). Needs every clip's full
    ``(T', H', W')`` grid in ``(t, h, w)`` order.
    """

    def __init__(self, config: PatchEncoderConfig):
        super().__init__(config)
        self.temporal_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = Attention(config.hidden_size, config.num_attention_heads, config.qkv_bias,
                                       zero_init_proj=True)

    def forward(self, x: torch.Tensor, sizes: torch.Tensor, packing: Packing, *, grid: tuple[int, int, int] | None,
                merge_r: int = 0, proportional: bool = False, saliency: SaliencyScorer | None = None,
                impl: str = "padded") -> tuple[torch.Tensor, torch.Tensor, Packing]:
        if grid is None:  # the config refuses the switches that break the grid up
            raise ValueError("divided attention needs every clip's full tubelet grid")
        n, c = x.shape
        b, (t, h, w) = packing.num_clips, grid
        s = h * w
        if t > 1:  # with one time step temporal attention has nothing to mix: skipped, joint == divided
            xt = x.view(b, t, s, c).transpose(1, 2).reshape(n, c)                          # (b, s, t) order
            ht, _ = self.temporal_attn(self.temporal_norm(xt), Packing.uniform(b * s, t, x.device))
            x = x + ht.view(b, s, t, c).transpose(1, 2).reshape(n, c)
        hs, _ = self.attn(self.norm1(x), Packing.uniform(b * t, s, x.device))              # within each frame
        x = x + hs
        return x + self.mlp(self.norm2(x)), sizes, packing


# ------------------------------------------------------------------------------------------------------- model
@torch.no_grad()
def init_special_parts(module: nn.Module, config: PatchEncoderConfig) -> None:
    """The encoder's parts whose init is not transformers' default (call it after the default init of ``module``):
    the run-length embedding and zero-init projections start at zero, the log-mel filterbank (a non-persistent
    buffer, uninitialized after ``from_pretrained``) is recomputed from ``config``. transformers calls
    ``_init_weights`` on the modules that hold parameters or buffers themselves, so these are module types of their
    own. A model that holds encoder embeddings outside a :class:`PatchEncoderModel` (VATT's shared backbone) calls
    this from its own ``_init_weights``."""
    if isinstance(module, (RunLengthEmbedding, ZeroInitLinear)):
        init.zeros_(module.weight)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
    if isinstance(module, MelSpectrogram):
        init.copy_(module.fb, mel_filterbank(config.sample_rate, config.mel_n_fft, config.mel_bins))


class PatchEncoderModel(StrictLoadingMixin, PreTrainedModel):
    """A ViViT / TimeSformer-style encoder over video tubelets, audio patches or text ids, with RLT, ToMe / VTM and
    STTS token reduction as config switches (:class:`PatchEncoderConfig`).

    Example::

        config = PatchEncoderConfig.from_preset("debug", modality="video", rlt_threshold=0.05, tome_r=4)
        encoder = PatchEncoderModel(config)
        out = encoder(pixel_values=video)        # [B, 3, T, H, W] in [-1, 1]
        out.pooler_output                        # [B, C]
        out.last_hidden_state, out.sizes         # packed [N, C], [N]; out.to_padded() -> [B, n, C], mask
        encoder.save_pretrained("out/video_encoder")
    """

    config_class = PatchEncoderConfig
    base_model_prefix = "patch_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: PatchEncoderConfig):
        super().__init__(config)
        self.embeddings = build_embeddings(config)
        block = DividedBlock if config.attention == "divided" else Block
        self.blocks = nn.ModuleList(block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # one VTM saliency scorer per block, kept apart from the blocks so a plain checkpoint loads into a VTM model
        self.saliency = (nn.ModuleList(SaliencyScorer(config.hidden_size, config.layer_norm_eps)
                                       for _ in range(config.num_hidden_layers)) if config.merge == "vtm" else None)
        self.stts = (SpatioTemporalSelector(config.hidden_size, frames=config.stts_frames is not None,
                                            regions=config.stts_regions is not None,
                                            region_size=config.stts_region_size, num_samples=config.stts_samples,
                                            sigma=config.stts_sigma, eps=config.layer_norm_eps)
                     if config.uses_stts else None)
        self.post_init()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PatchEncoderModel":
        """A freshly initialized encoder of a named preset (``debug``, ``demo``, ``base``)."""
        return cls(PatchEncoderConfig.from_preset(name, **overrides))

    @classmethod
    def _new_weight_prefixes(cls, kwargs: dict) -> tuple[str, ...]:
        # from_pretrained(plain_dir, rlt_threshold=..., merge="vtm", stts_frames=...) adds these parts
        parts = []
        if kwargs.get("rlt_threshold") is not None:
            parts.append("embeddings.run_length.")
        if kwargs.get("merge") == "vtm":
            parts.append("saliency.")
        if kwargs.get("stts_frames") is not None or kwargs.get("stts_regions") is not None:
            parts.append("stts.")
        return tuple(parts)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # normal(0, initializer_range) linears and embeddings, unit LayerNorms
        init_special_parts(module, self.config)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> PatchEncoderOutput | tuple:
        """Encode one batch of the configured modality: :meth:`embed`, then :meth:`encode_embedded`.

        Args:
            pixel_values: ``modality="video"``: float video ``[B, 3, T, H, W]`` in [-1, 1] (``T`` a multiple of
                ``tubelet_size``, or any ``T`` with ``tubelet_padding="first_frame"``) or images ``[B, 3, H, W]``; ``H, W`` multiples of ``patch_size``.
            input_values: ``modality="audio"``: mono waveform ``[B, samples]`` (or ``[B, 1, samples]``), samples a
                multiple of the samples per token.
            input_ids: ``modality="text"``: ids ``[B, L]``; ``attention_mask`` ``[B, L]`` (1 = real token), else
                ``config.pad_token_id`` marks padding.
        """
        emb = self.embed(pixel_values=pixel_values, input_values=input_values, input_ids=input_ids,
                         attention_mask=attention_mask)
        out = self.encode_embedded(emb)
        return out if return_dict else out.to_tuple()

    def embed(self, pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
              input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> Embedded:
        """Raw input of the configured modality (arguments as :meth:`forward`) -> packed tokens with positions
        (RLT drops static tubelets here). Split from :meth:`encode_embedded` so a caller can act on the tokens in
        between (VATT's DropToken, :mod:`lm.modeling_vatt`)."""
        cfg = self.config
        given = {"pixel_values": pixel_values, "input_values": input_values, "input_ids": input_ids}
        wanted = {"video": "pixel_values", "audio": "input_values", "text": "input_ids"}[cfg.modality]
        extra = [k for k, v in given.items() if v is not None and k != wanted]
        if given[wanted] is None or extra:
            raise ValueError(f"a {cfg.modality} encoder takes {wanted} only, got "
                             f"{[k for k, v in given.items() if v is not None] or 'nothing'}")
        if attention_mask is not None and cfg.modality != "text":
            raise ValueError(f"attention_mask applies to text only; a {cfg.modality} batch's clips all have one size")
        self._check_switches()
        if cfg.modality == "video":
            return self.embeddings(pixel_values, cfg.rlt_threshold)
        if cfg.modality == "audio":
            return self.embeddings(input_values)
        return self.embeddings(input_ids, attention_mask)

    def encode_embedded(self, emb: Embedded, *, reduce: bool = True) -> PatchEncoderOutput:
        """The transformer on packed tokens: STTS before block ``stts_layer``, the blocks (ToMe / VTM inside), the
        final norm and the size-weighted mean of each clip's tokens.

        Args:
            emb: tokens from :meth:`embed`, or from another module's embeddings of the same width: VATT's
                modality-agnostic backbone (:mod:`lm.modeling_vatt`) runs audio and text tokens through a video
                encoder's blocks.
            reduce: apply this config's ToMe / VTM and STTS switches; ``False`` runs every token through every block
                (the shared backbone's audio and text: the switches are the video's).
        """
        cfg = self.config
        self._check_switches()
        x, sizes, packing, grid = emb
        stts = reduce and cfg.uses_stts
        if stts and grid is None:
            raise ValueError("STTS selects frames and regions of each clip's full tubelet grid, which these tokens no "
                             "longer form (dropped by RLT or DropToken, or not video)")
        merging = reduce and cfg.tome_r > 0
        merge_from = cfg.stts_layer if stts else 0
        for i, block in enumerate(self.blocks):
            if stts and i == cfg.stts_layer:
                x, sizes, packing, grid = self._select(Embedded(x, sizes, packing, grid))
            merge_r = cfg.tome_r if merging and i >= merge_from else 0
            x, sizes, packing = block(x, sizes, packing, grid=grid, merge_r=merge_r,
                                      proportional=merging and cfg.proportional_attention,
                                      saliency=self.saliency[i] if self.saliency is not None else None,
                                      impl=cfg.packed_attention)
            if merge_r:
                grid = None
        x = self.norm(x)                                                                   # [N, C]
        seg = packing.segment_ids()                                                        # [N]
        w = sizes.to(x.dtype)
        total = torch.zeros(packing.num_clips, x.shape[1], device=x.device, dtype=x.dtype).index_add_(
            0, seg, x * w[:, None])
        weight = torch.zeros(packing.num_clips, device=x.device, dtype=x.dtype).index_add_(0, seg, w)
        return PatchEncoderOutput(last_hidden_state=x, pooler_output=total / weight[:, None], sizes=sizes,
                                  num_tokens=packing.lengths, cu_seqlens=packing.cu_seqlens)

    def _check_switches(self) -> None:
        """The runtime switches must be valid together and have the modules they need."""
        cfg = self.config
        cfg.validate()
        if cfg.tome_r > 0 and cfg.merge == "vtm" and self.saliency is None:
            raise ValueError("merge='vtm' needs the saliency scorers this model was built without; build it (or "
                             "from_pretrained) with merge='vtm'")
        built = (self.stts is not None and self.stts.frame_scorer is not None,
                 self.stts is not None and self.stts.region_scorer is not None)
        if (cfg.stts_frames is not None and not built[0]) or (cfg.stts_regions is not None and not built[1]):
            raise ValueError("this STTS stage's scorer was not built: build the model (or from_pretrained) with the "
                             "stts_frames / stts_regions it should use")

    def _select(self, emb: Embedded) -> Embedded:
        """STTS on the full grid: keep ``K_t`` frames, then ``K_s`` regions of each; sizes of kept tokens are 1."""
        cfg = self.config
        t, h, w = emb.grid
        b = emb.packing.num_clips
        keep_t = resolve_keep(cfg.stts_frames, t, "frames") if cfg.stts_frames is not None else None
        regions = (h // cfg.stts_region_size) * (w // cfg.stts_region_size)
        keep_s = resolve_keep(cfg.stts_regions, regions, "regions") if cfg.stts_regions is not None else None
        kept = self.stts(emb.tokens.view(b, t, h, w, -1), keep_t, keep_s)                  # [B, T*, n*, C]
        n = kept.shape[1] * kept.shape[2]
        grid = (kept.shape[1], h, w) if keep_s is None else None
        tokens = kept.reshape(b * n, -1)
        return Embedded(tokens, torch.ones(b * n, device=tokens.device), Packing.uniform(b, n, tokens.device), grid)


AutoConfig.register(PatchEncoderConfig.model_type, PatchEncoderConfig, exist_ok=True)
AutoModel.register(PatchEncoderConfig, PatchEncoderModel, exist_ok=True)
