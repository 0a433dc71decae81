"""Configuration of the continuous patch-token encoder (:class:`mmtok.encoders.PatchEncoderModel`).

One config class serves the three modalities (``modality`` = ``"video"``, ``"audio"`` or ``"text"``): they share the
transformer and differ only in how raw input becomes tokens. The token-reduction methods are switches of the same
config, each off by default, usable alone or together where the combination is well defined (see
:meth:`PatchEncoderConfig.validate`).

Presets (:meth:`PatchEncoderConfig.from_preset`, any modality):

==========  ======  ======  =====  =========  ===================  ===============================================
preset      hidden  layers  heads  mlp ratio  tubelet (t x p x p)  use
==========  ======  ======  =====  =========  ===================  ===============================================
``debug``       32       2      2          2  2 x 4 x 4            unit tests (seconds on CPU)
``demo``       128       4      4          4  1 x 4 x 4            the Moving-Digits corpus (9x32x32 clips: 576
                                                                   tokens), 16 kHz audio in 500-sample patches
``base``       768      12     12          4  2 x 16 x 16          ViViT-B / TimeSformer-B sized (GPU), untested
==========  ======  ======  =====  =========  ===================  ===============================================

Switches read (and validated) at every forward, so a benchmark can change them on a built or loaded model
(``model.config.tome_r = 8``): ``rlt_threshold``, ``tome_r``, ``proportional_attention``, ``stts_frames`` /
``stts_regions`` (for a stage whose scorer was built), ``stts_layer``, ``packed_attention``. The others fix the
architecture when the model is built; ``from_pretrained(folder, tome_r=8, merge="vtm", ...)`` adds the parts a switch
needs (RLT's run-length embedding, VTM's and STTS's scorers) to a checkpoint saved without them.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

from transformers import PretrainedConfig

MODALITIES = ("video", "audio", "text")
ATTENTIONS = ("joint", "divided")
MERGES = ("tome", "vtm")
AUDIO_INPUTS = ("waveform", "log_mel")
PACKED_ATTENTIONS = ("padded", "block_mask", "per_clip")
TUBELET_PADDINGS = ("none", "first_frame")

PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0, tubelet_size=2,
                  patch_size=4, max_grid=[8, 8, 8], audio_patch_size=64, max_sequence_length=256,
                  vocab_size=256),
    # The demo corpus is 9 frames of 32x32 at 8 fps (odd length: one-frame tubelets) with 16 kHz audio; 500-sample
    # audio patches are the demo audio codec's 32 Hz frames.
    "demo": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4.0, tubelet_size=1,
                 patch_size=4, max_grid=[16, 8, 8], audio_patch_size=500, max_sequence_length=512,
                 vocab_size=1024),
    # ViViT-B (ViT-Base) sizes with 2x16x16 tubelets (arXiv 2103.15691); VATT's raw-audio patches are 128
    # samples (arXiv 2104.11178).
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4.0, tubelet_size=2,
                 patch_size=16, max_grid=[16, 14, 14], audio_patch_size=128, max_sequence_length=2048,
                 vocab_size=32000),
}


class PatchEncoderConfig(PretrainedConfig):
    r"""Configuration of :class:`~mmtok.encoders.PatchEncoderModel`, a ViT-style encoder over raw-signal patches.

    Args:
        modality: ``"video"`` (float video ``[B, 3, T, H, W]`` in [-1, 1], or images ``[B, 3, H, W]``),
            ``"audio"`` (mono waveform ``[B, samples]``) or ``"text"`` (ids ``[B, L]``).
        hidden_size: token width.
        num_hidden_layers: transformer blocks.
        num_attention_heads: heads per attention layer (must divide ``hidden_size``).
        mlp_ratio: MLP inner width over ``hidden_size``.
        layer_norm_eps: epsilon of the LayerNorms (pre-norm blocks, final norm).
        qkv_bias: biases on the query/key/value projection.
        initializer_range: std of the normal init of linear layers and embeddings.
        attention: ``"joint"`` (every token attends to every token of its clip; ViViT model 1) or ``"divided"``
            (TimeSformer, arXiv 2102.05095: per block, attention over time at each spatial position, then over
            space within each frame, each with its own projections). Divided attention needs the full tubelet
            grid, so it is video only and refuses RLT, ToMe / VTM and STTS's region stage.
        packed_attention: how attention runs over a packed batch whose clips hold different numbers of tokens:
            ``"padded"`` (each clip padded to the longest, one batched call with a key padding mask; cost ``B``
            times the longest clip's square: the default, as a training batch of clips of similar lengths is the
            common case), ``"block_mask"`` (one call over all tokens with a block-diagonal mask; cost grows with the
            square of the total, fine for a few short clips) or ``"per_clip"`` (one call per clip; cost is the sum of
            squares, in as many calls: for a few clips of very different lengths). Batches whose clips are all the
            same length always run as one batched call without a mask.
        in_channels: video channels (3).
        tubelet_size: frames per tubelet ``t`` (ViViT's tubelet embedding, arXiv 2103.15691). ``T`` must be a
            multiple of it (or see ``tubelet_padding``); an image (``T = 1``) is repeated to one still tubelet.
        tubelet_padding: ``"none"`` (a ``T`` that is not a multiple of ``t`` is an error) or ``"first_frame"``: the
            clip is preceded by copies of its first frame up to the next multiple, so its first tubelet holds the
            first frame and every later one ``t`` new frames (the ``1 + t k`` layout of causal video tokenizers,
            MAGVIT-v2 arXiv 2310.05737; an image is the case ``T = 1``). Lets 2-frame tubelets, which carry motion
            inside each token, read odd-length clips.
        patch_size: tubelet side ``p`` in pixels; ``H`` and ``W`` must be multiples of it.
        max_grid: largest tubelet grid ``[T', H', W']`` (``T' = T / t``, ``H' = H / p``, ``W' = W / p``): the sizes
            of the learned temporal and spatial position tables (their sum is a token's position embedding).
        sample_rate: audio rate in Hz (used by the log-mel front end).
        audio_input: ``"waveform"`` (raw samples, as VATT) or ``"log_mel"`` (log of
            :class:`mmtok.audio_features.MelSpectrogram`).
        audio_patch_size: samples per audio token (``"waveform"``) or mel frames per token (``"log_mel"``).
        mel_bins, mel_n_fft, mel_hop_length: the log-mel front end's filters, FFT size and hop (``"log_mel"`` only).
        max_sequence_length: most tokens of an audio clip or a text (size of their position table).
        vocab_size: text ids ``[0, vocab_size)`` the token table holds (the SentencePiece pieces).
        pad_token_id: text id marking padding when no ``attention_mask`` is passed (padding is removed before the
            embedding, so it may lie outside the table, e.g. ``-1``); ``None``: every id is a real token.
        rlt_threshold: run-length tokenization (RLT, arXiv 2411.05222), video only: a tubelet whose mean absolute
            pixel difference (on the [-1, 1] scale) from the tubelet at the same place one time step earlier is
            below this is dropped before the encoder; ``None`` is off, ``0`` drops nothing. Clips then hold
            different numbers of tokens and are packed.
        rlt_max_run: size of RLT's learned run-length embedding (how many time steps a kept token stands for; longer
            runs share the last row). Built only when ``rlt_threshold`` is set, zero at init, so switching RLT on for
            a model trained without it is the paper's training-free RLT.
        tome_r: token merging (ToMe, arXiv 2210.09461): tokens merged per block and clip (at most half a clip's
            tokens per block); ``0`` is off. Not with divided attention.
        merge: ``"tome"`` (bipartite soft matching on alternating token sets) or ``"vtm"`` (learnable,
            saliency-aware video token merging, arXiv 2410.23782: a learned score per token decides which tokens
            receive merges and weighs the merged average; see :mod:`mmtok.encoders.token_merging`). ``"vtm"`` builds
            one saliency scorer per block.
        proportional_attention: while ToMe / VTM is on, add ``log(size)`` to the attention logits of every key so a
            merged token weighs as the tokens it stands for (ToMe, Sec. 3).
        stts_frames: spatio-temporal token selection (STTS, arXiv 2111.11591), video only: frames (tubelet time
            steps) kept by the temporal stage, as a count (int) or a fraction of ``T'`` (float in (0, 1]); ``None``
            skips the stage.
        stts_regions: regions kept per kept frame by the spatial stage, a count or a fraction of the frame's
            regions; ``None`` skips the stage. Not with divided attention (each frame keeps other regions).
        stts_region_size: side of a region (anchor) in tokens; ``H'`` and ``W'`` must be multiples of it.
        stts_layer: STTS selects before this block (``0``: on the embedded tokens). With ToMe / VTM, merging then
            starts at this block (merging first would break the frame grid STTS scores).
        stts_samples: noisy samples of the perturbed-maximum top-K in training.
        stts_sigma: noise std of the perturbed-maximum top-K (scores are min-max normalised to [0, 1] first).
        preset: the preset name this config was built from (informative only).
    """

    model_type = "mmtok_patch_encoder"

    def __init__(
        self,
        modality: str = "video",
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        attention: str = "joint",
        packed_attention: str = "padded",
        in_channels: int = 3,
        tubelet_size: int = 2,
        tubelet_padding: str = "none",
        patch_size: int = 8,
        max_grid: list[int] | tuple[int, ...] = (16, 16, 16),
        sample_rate: int = 16000,
        audio_input: str = "waveform",
        audio_patch_size: int = 128,
        mel_bins: int = 64,
        mel_n_fft: int = 400,
        mel_hop_length: int = 160,
        max_sequence_length: int = 512,
        vocab_size: int = 1000,
        pad_token_id: int | None = None,
        rlt_threshold: float | None = None,
        rlt_max_run: int = 8,
        tome_r: int = 0,
        merge: str = "tome",
        proportional_attention: bool = True,
        stts_frames: int | float | None = None,
        stts_regions: int | float | None = None,
        stts_region_size: int = 1,
        stts_layer: int = 0,
        stts_samples: int = 100,
        stts_sigma: float = 0.05,
        preset: str | None = None,
        **kwargs: Any,
    ):
        self.modality = modality
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = float(mlp_ratio)
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.attention = attention
        self.packed_attention = packed_attention
        self.in_channels = in_channels
        self.tubelet_size = tubelet_size
        self.tubelet_padding = tubelet_padding
        self.patch_size = patch_size
        self.max_grid = [int(v) for v in max_grid]
        self.sample_rate = sample_rate
        self.audio_input = audio_input
        self.audio_patch_size = audio_patch_size
        self.mel_bins = mel_bins
        self.mel_n_fft = mel_n_fft
        self.mel_hop_length = mel_hop_length
        self.max_sequence_length = max_sequence_length
        self.vocab_size = vocab_size
        self.rlt_threshold = rlt_threshold
        self.rlt_max_run = rlt_max_run
        self.tome_r = tome_r
        self.merge = merge
        self.proportional_attention = proportional_attention
        self.stts_frames = stts_frames
        self.stts_regions = stts_regions
        self.stts_region_size = stts_region_size
        self.stts_layer = stts_layer
        self.stts_samples = stts_samples
        self.stts_sigma = stts_sigma
        self.preset = preset
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.validate()

    # ------------------------------------------------------------------------------------------ validation
    @property
    def uses_stts(self) -> bool:
        """Whether either STTS stage is on."""
        return self.stts_frames is not None or self.stts_regions is not None

    def validate(self) -> None:
        """Raise ``ValueError`` for a bad value or a combination of switches that is not defined.

        Refused combinations, and why:

        - divided attention with RLT, ToMe / VTM or STTS regions: temporal attention runs over the same spatial
          position in every frame, which needs every clip's full ``T' x H' x W'`` grid; those methods leave each clip
          (or each frame) a different, incomplete set. STTS's frame stage keeps whole frames, so it is allowed.
        - divided attention, RLT or STTS on audio or text: they are defined on a video's tubelet grid.
        - RLT with STTS: STTS scores whole frames and regions of the full grid, which RLT has already broken up.
        """
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        for name, allowed in (("attention", ATTENTIONS), ("merge", MERGES), ("audio_input", AUDIO_INPUTS),
                              ("packed_attention", PACKED_ATTENTIONS), ("tubelet_padding", TUBELET_PADDINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        for name in ("tubelet_size", "patch_size", "audio_patch_size", "max_sequence_length", "vocab_size",
                     "rlt_max_run", "stts_region_size", "stts_samples", "mel_bins", "mel_n_fft", "mel_hop_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.max_grid) != 3 or min(self.max_grid) < 1:
            raise ValueError(f"max_grid must be [T', H', W'] of ints >= 1, got {self.max_grid}")
        if not isinstance(self.tome_r, Integral) or self.tome_r < 0:
            raise ValueError(f"tome_r must be an int >= 0 (0 = no merging), got {self.tome_r!r}")
        if self.rlt_threshold is not None and self.rlt_threshold < 0:
            raise ValueError(f"rlt_threshold must be >= 0 or None (off), got {self.rlt_threshold}")
        for name in ("stts_frames", "stts_regions"):
            _check_keep(name, getattr(self, name))
        if not 0 <= self.stts_layer < self.num_hidden_layers:
            raise ValueError(f"stts_layer must be in [0, {self.num_hidden_layers}) (the block STTS selects before), "
                             f"got {self.stts_layer}")
        if self.stts_sigma <= 0:
            raise ValueError(f"stts_sigma must be > 0, got {self.stts_sigma}")

        video_only = [name for name, on in (("attention='divided'", self.attention == "divided"),
                                            ("rlt_threshold", self.rlt_threshold is not None),
                                            ("STTS (stts_frames / stts_regions)", self.uses_stts)) if on]
        if self.modality != "video" and video_only:
            raise ValueError(f"{', '.join(video_only)} work(s) on a video's tubelet grid; modality={self.modality!r} "
                             f"has none")
        if self.attention == "divided":
            clash = [name for name, on in (("RLT (rlt_threshold)", self.rlt_threshold is not None),
                                           ("token merging (tome_r > 0)", self.tome_r > 0),
                                           ("STTS regions (stts_regions)", self.stts_regions is not None)) if on]
            if clash:
                raise ValueError(f"divided space-time attention needs every clip's full T' x H' x W' tubelet grid "
                                 f"(temporal attention runs over one spatial position in every frame), which "
                                 f"{' and '.join(clash)} break(s) up; use attention='joint' (STTS's frame stage "
                                 f"keeps whole frames and works with divided attention)")
        if self.rlt_threshold is not None and self.uses_stts:
            raise ValueError("RLT and STTS cannot be combined: STTS scores whole frames and regions of the full "
                             "tubelet grid, and RLT has already dropped a different set of tubelets from each clip")

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "PatchEncoderConfig":
        """A named size (``debug``, ``demo``, ``base``) with optional field overrides (``modality=...``, switches)."""
        if name not in PRESETS:
            raise ValueError(f"unknown patch encoder preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})


def _check_keep(name: str, value: Any) -> None:
    """An STTS keep setting: ``None``, a count >= 1 or a fraction in (0, 1]."""
    if value is None or (isinstance(value, Integral) and not isinstance(value, bool) and value >= 1):
        return
    if isinstance(value, Real) and not isinstance(value, (bool, Integral)) and 0 < value <= 1:
        return
    raise ValueError(f"{name} must be None (off), a count >= 1 or a fraction in (0, 1], got {value!r}")


def resolve_keep(value: int | float, total: int, what: str) -> int:
    """How many of ``total`` items an STTS keep setting keeps (a fraction rounds, and keeps at least one)."""
    if isinstance(value, Integral):
        if value > total:
            raise ValueError(f"STTS keeps {value} {what}, but the input has only {total}")
        return int(value)
    return max(1, min(total, round(value * total)))


__all__ = ["PatchEncoderConfig", "PRESETS", "MODALITIES", "resolve_keep"]
