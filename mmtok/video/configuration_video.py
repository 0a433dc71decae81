"""Configuration of the MAGVIT-v2-style causal video tokenizer (:mod:`mmtok.video.modeling_video`).

Named presets (``VideoTokenizerConfig.from_preset(name)``):

==============  =========================  ===================  =======  =============================================
preset          input -> codes             quantizer, codebook  params   use
==============  =========================  ===================  =======  =============================================
``debug``       9x16x16 -> 3x4x4           LFQ 2^6              0.2 M    unit tests (seconds)
``demo``        9x32x32 -> 5x4x4           FSQ 8^4 = 2^12       3.7 M    the demo network (``make demo`` codes each frame
                                                                          on its own: recipes/configs/video_tokenizer_demo.yaml)
``demo_lfq``    9x32x32 -> 5x4x4           LFQ 2^12             3.7 M    the demo network with MAGVIT-v2's quantizer
``magvit2_128`` 17x128x128 -> 5x16x16      LFQ 2^18             258 M    the VideoPoet setting (GPU)
==============  =========================  ===================  =======  =============================================

Why the demo preset uses FSQ: with the same network, data and budget, LFQ's binary bottleneck stays at blurry blobs
for thousands of steps, while FSQ (which the Cosmos and VidTok tokenizers chose for this reason) learns the glyphs'
shape and colour (docs/what_was_tried.md).

Why ``make demo`` codes each frame on its own (``frame_stages`` = every stage, no temporal downsampling): when a latent
frame spans two frames, a moving glyph's codes also carry how it moved, so text-to-video for a digit, colour and
direction never seen together needs code grids training never showed; per-frame codes draw it with grids the LM has
seen (docs/what_was_tried.md, thirteenth round). Real footage, where compressing time pays, keeps the temporal
stages.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

QUANTIZERS = ("lfq", "bsq", "fsq")
SPATIAL_PADDINGS = ("zeros", "circular")
FSQ_LATENT_NORMS = (None, "frame")

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny: 4x time, 4x space; for tests.
    "debug": dict(base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, patch_size=1,
                  spatial_downsample=(True, True), temporal_downsample=(True, True), codebook_size=2 ** 6,
                  num_groups=4, fps=8.0),
    # The embedded 32x32 corpus on 2 CPU cores: a 2x2 space-to-depth stem, two per-frame 2D stages (16x16, 8x8),
    # then a causal 3D stage at 4x4 that halves time: 9x32x32 -> 5x4x4 codes (80 per clip), FSQ 8^4 = 4,096 codes.
    "demo": dict(base_channels=32, channel_multipliers=(1, 2, 4), num_res_blocks=1, patch_size=2,
                 spatial_downsample=(True, True), temporal_downsample=(False, True), frame_stages=2,
                 quantizer="fsq", fsq_levels=(8, 8, 8, 8), num_groups=8, fps=8.0),
    "demo_lfq": dict(base_channels=32, channel_multipliers=(1, 2, 4), num_res_blocks=1, patch_size=2,
                     spatial_downsample=(True, True), temporal_downsample=(False, True), frame_stages=2,
                     quantizer="lfq", codebook_size=2 ** 12, num_groups=8, fps=8.0),
    # MAGVIT-v2 / VideoPoet: 17x128x128 -> 5x16x16, 2^18 codes (arXiv 2310.05737; widths and depth in the spirit of
    # its appendix, check the paper before relying on them). Untested at this size on CPU.
    "magvit2_128": dict(base_channels=128, channel_multipliers=(1, 2, 2, 4), num_res_blocks=4, patch_size=1,
                        spatial_downsample=(True, True, True), temporal_downsample=(False, True, True),
                        codebook_size=2 ** 18, num_groups=32, fps=8.0, entropy_anneal_steps=2000),
}


class VideoTokenizerConfig(PretrainedConfig):
    r"""Configuration of :class:`~mmtok.video.VideoTokenizer`.

    The encoder is a stack of stages; stage ``i`` has ``num_res_blocks`` residual blocks at
    ``base_channels * channel_multipliers[i]`` channels, and between stage ``i`` and ``i + 1`` the resolution is
    halved in space when ``spatial_downsample[i]`` and in time when ``temporal_downsample[i]``. The decoder mirrors it.

    Args:
        in_channels: image channels (3, RGB).
        base_channels: channels of the first stage.
        channel_multipliers: channel multiplier per stage.
        num_res_blocks: residual blocks per stage (encoder and decoder).
        patch_size: space-to-depth factor of the stem (``1`` = MAGVIT-v2's full-resolution first conv; ``2`` folds
            each 2x2 pixel block into channels first, which makes the first stage 4x cheaper, as the Cosmos
            tokenizer's wavelet stem does).
        spatial_downsample: ``len(channel_multipliers) - 1`` flags: 2x spatial downsampling after each stage.
        temporal_downsample: same, for 2x causal temporal downsampling (``T = 1 + 2k -> 1 + k``).
        temporal_kernel_size: temporal extent of every causal 3D convolution (padding comes from the past only).
            A temporal downsampling convolution spans at least 2 frames. ``1`` makes the codes local in time:
            latent frame ``j`` is computed from frames ``2j - 1, 2j`` alone (per 2x temporal downsampling), so the
            same content gives the same codes whatever came before it (the decoder then also decodes each latent
            frame on its own).
        spatial_kernel_size: spatial extent of the 3D convolutions.
        spatial_padding: how every convolution pads the frame's edges: ``"zeros"`` (MAGVIT-v2) or ``"circular"``
            (the frame wraps around). Circular padding makes the codes exactly equivariant to shifts of the frame by
            multiples of ``spatial_factor`` pixels: on a plain background, content moved by one latent cell gets the
            same codes moved by one cell, wherever it is, instead of codes that also encode the distance to the
            edge (on the demo corpus: one first-frame code pattern per digit and colour instead of nine). Real
            footage's opposite edges do not continue into each other, so zero padding is the usual choice there.
        frame_stages: how many leading encoder stages (and the mirrored trailing decoder stages) convolve each frame
            on its own (temporal kernel 1); the resampling into stage ``i + 1`` uses stage ``i + 1``'s
            kernel. Time is then mixed only at the coarser resolutions, where it is cheap:
            the full-resolution stages cost per-frame 2D convolutions (factorized space-then-time, as in C-ViViT and
            Cosmos' spatial-then-temporal layers). Temporal downsampling must come after these stages.
        quantizer: ``"lfq"`` (MAGVIT-v2's lookup-free quantization), ``"bsq"`` (LFQ on the unit sphere, arXiv
            2406.07548) or ``"fsq"`` (finite scalar quantization, arXiv 2309.15505, as the Cosmos and VidTok
            tokenizers use: no auxiliary loss and no collapse, so it learns in far fewer steps).
        codebook_size: LFQ / BSQ codebook size, a power of two; the latent has ``log2(codebook_size)`` channels.
            With ``quantizer="fsq"`` it is derived from ``fsq_levels`` (their product).
        fsq_levels: FSQ levels per latent channel (``quantizer="fsq"`` only), e.g. ``[8, 8, 8, 8]`` = 2^12 codes;
            the latent has ``len(fsq_levels)`` channels.
        fsq_latent_norm: ``quantizer="fsq"`` only: normalize each latent channel before FSQ's tanh bound, which keeps
            every channel spread over its levels. With ``spatial_padding="circular"`` on a plain background the
            plain latent drifted into one saturated corner of tanh within 100 steps (one code in use, no gradient
            back). ``None``: no norm (FSQ's plain form); ``"frame"``: zero mean and unit variance over each frame's
            positions, no affine (every code then also depends on the rest of its frame; a batch norm, local to
            each position at inference, trained as well but its running statistics cost 3 dB, see
            docs/what_was_tried.md).
        num_groups: groups of every GroupNorm (capped to the channel count). Norms are taken per frame so that
            they never mix time steps (a clip-wide norm would break causality).
        adaptive_norm: decoder GroupNorms are modulated by the quantized latents (MAGVIT-v2's adaptive GroupNorm).
        entropy_loss_weight, commitment_loss_weight, diversity_gamma, entropy_anneal_steps, entropy_anneal_factor,
            passed to :class:`mmtok.quantizers.LFQ` (LFQ and BSQ only).
        fps: frame rate of the training videos, for ``frame_rate`` (latent frames per second).
        preset: the preset name this config was built from (informative only).
    """

    model_type = "mmtok_video"

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        channel_multipliers: tuple[int, ...] | list[int] = (1, 2, 4, 4),
        num_res_blocks: int = 1,
        patch_size: int = 2,
        spatial_downsample: tuple[bool, ...] | list[bool] = (True, True, False),
        temporal_downsample: tuple[bool, ...] | list[bool] = (True, True, False),
        temporal_kernel_size: int = 3,
        spatial_kernel_size: int = 3,
        spatial_padding: str = "zeros",
        frame_stages: int = 0,
        quantizer: str = "lfq",
        codebook_size: int | None = 2 ** 10,
        fsq_levels: tuple[int, ...] | list[int] | None = None,
        fsq_latent_norm: str | None = None,
        num_groups: int = 8,
        adaptive_norm: bool = True,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        entropy_anneal_steps: int = 0,
        entropy_anneal_factor: float = 3.0,
        fps: float = 8.0,
        preset: str | None = None,
        **kwargs: Any,
    ):
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.channel_multipliers = list(channel_multipliers)
        self.num_res_blocks = num_res_blocks
        self.patch_size = patch_size
        self.spatial_downsample = [bool(x) for x in spatial_downsample]
        self.temporal_downsample = [bool(x) for x in temporal_downsample]
        self.temporal_kernel_size = temporal_kernel_size
        self.spatial_kernel_size = spatial_kernel_size
        self.spatial_padding = spatial_padding
        self.frame_stages = frame_stages
        self.quantizer = quantizer
        self.fsq_levels = [int(x) for x in fsq_levels] if fsq_levels is not None else None
        self.fsq_latent_norm = fsq_latent_norm
        if quantizer == "fsq" and self.fsq_levels:
            codebook_size = math.prod(self.fsq_levels)
        self.codebook_size = codebook_size
        self.num_groups = num_groups
        self.adaptive_norm = adaptive_norm
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.entropy_anneal_steps = entropy_anneal_steps
        self.entropy_anneal_factor = entropy_anneal_factor
        self.fps = fps
        self.preset = preset
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        n = len(self.channel_multipliers)
        if n < 1:
            raise ValueError("channel_multipliers must have at least one stage")
        for name in ("spatial_downsample", "temporal_downsample"):
            if len(getattr(self, name)) != n - 1:
                raise ValueError(f"{name} needs len(channel_multipliers) - 1 = {n - 1} flags, "
                                 f"got {getattr(self, name)}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            if not self.fsq_levels or min(self.fsq_levels) < 2:
                raise ValueError(f"quantizer='fsq' needs fsq_levels, a list of integers >= 2, got {self.fsq_levels}")
        elif self.codebook_size is None or self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two >= 2 ({self.quantizer.upper()}), got "
                             f"{self.codebook_size}")
        if not 0 <= self.frame_stages <= n:
            raise ValueError(f"frame_stages must be in [0, {n}] (the number of stages), got {self.frame_stages}")
        if any(self.temporal_downsample[:max(0, self.frame_stages - 1)]):
            raise ValueError(f"temporal downsampling needs temporal convolutions: the first frame_stages="
                             f"{self.frame_stages} stages are per-frame, so temporal_downsample can only be set "
                             f"from index {self.frame_stages - 1} on, got {self.temporal_downsample}")
        if self.fsq_latent_norm not in FSQ_LATENT_NORMS:
            raise ValueError(f"fsq_latent_norm must be one of {FSQ_LATENT_NORMS}, got {self.fsq_latent_norm!r}")
        if self.fsq_latent_norm is not None and self.quantizer != "fsq":
            raise ValueError(f"fsq_latent_norm applies to quantizer='fsq' only (LFQ and BSQ always take a per-frame "
                             f"norm), got quantizer={self.quantizer!r}")
        if self.spatial_padding not in SPATIAL_PADDINGS:
            raise ValueError(f"spatial_padding must be one of {SPATIAL_PADDINGS}, got {self.spatial_padding!r}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.temporal_kernel_size < 1 or self.spatial_kernel_size % 2 == 0:
            raise ValueError("temporal_kernel_size must be >= 1 and spatial_kernel_size odd, got "
                             f"{self.temporal_kernel_size}, {self.spatial_kernel_size}")

    # ------------------------------------------------------------------------------------------ derived sizes
    @property
    def latent_channels(self) -> int:
        """Channels of the latent: bits per LFQ / BSQ code, or the number of FSQ levels."""
        if self.quantizer == "fsq":
            return len(self.fsq_levels)
        return int(math.log2(self.codebook_size))

    @property
    def bits_per_code(self) -> float:
        """``log2(codebook_size)``: the information one code carries."""
        return math.log2(self.codebook_size)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along height and width."""
        return self.patch_size * 2 ** sum(self.spatial_downsample)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (a clip of ``1 + f*k`` frames has ``1 + k`` latent frames)."""
        return 2 ** sum(self.temporal_downsample)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VideoTokenizerConfig":
        """A named preset (``debug``, ``demo``, ``magvit2_128``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown video tokenizer preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})
