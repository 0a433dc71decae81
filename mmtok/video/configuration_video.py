"""Configuration of the MAGVIT-v2-style causal video tokenizer (:mod:`mmtok.video.modeling_video`).

Named presets (``VideoTokenizerConfig.from_preset(name)``):

==============  ===========================  ==============  =========  ==========================================
preset          input -> codes               codebook        params     use
==============  ===========================  ==============  =========  ==========================================
``debug``       9x16x16 -> 3x4x4             2^6             0.19 M     unit tests (seconds)
``demo``        17x64x64 -> 5x8x8            2^12            4.3 M      ``make demo`` on the Moving-Digits corpus
``magvit2_128`` 17x128x128 -> 5x16x16        2^18            258 M      the VideoPoet setting (GPU)
==============  ===========================  ==============  =========  ==========================================
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny: 4x time, 4x space; for tests.
    "debug": dict(base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, patch_size=1,
                  spatial_downsample=(True, True), temporal_downsample=(True, True), codebook_size=2 ** 6,
                  num_groups=4, fps=8.0),
    # The embedded 64x64 corpus on 2 CPU cores: a 4x4 space-to-depth stem (no full-resolution convolutions), then
    # one 2x stage in space and two in time: 17x64x64 -> 5x8x8 codes, 2^12 codes.
    "demo": dict(base_channels=32, channel_multipliers=(1, 2, 4), num_res_blocks=1, patch_size=4,
                 spatial_downsample=(True, False), temporal_downsample=(True, True), codebook_size=2 ** 12,
                 num_groups=8, fps=8.0),
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
        spatial_kernel_size: spatial extent of the 3D convolutions.
        codebook_size: LFQ codebook size, a power of two; the latent has ``log2(codebook_size)`` channels.
        num_groups: groups of every GroupNorm (capped to the channel count). Norms are taken per frame so that
            they never mix time steps (a clip-wide norm would break causality).
        adaptive_norm: decoder GroupNorms are modulated by the quantized latents (MAGVIT-v2's adaptive GroupNorm).
        entropy_loss_weight, commitment_loss_weight, diversity_gamma, entropy_anneal_steps, entropy_anneal_factor,
            spherical: passed to :class:`mmtok.quantizers.LFQ`.
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
        codebook_size: int = 2 ** 10,
        num_groups: int = 8,
        adaptive_norm: bool = True,
        entropy_loss_weight: float = 0.1,
        commitment_loss_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        entropy_anneal_steps: int = 0,
        entropy_anneal_factor: float = 3.0,
        spherical: bool = False,
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
        self.codebook_size = codebook_size
        self.num_groups = num_groups
        self.adaptive_norm = adaptive_norm
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        self.entropy_anneal_steps = entropy_anneal_steps
        self.entropy_anneal_factor = entropy_anneal_factor
        self.spherical = spherical
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
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two >= 2 (LFQ), got {self.codebook_size}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.temporal_kernel_size < 1 or self.spatial_kernel_size % 2 == 0:
            raise ValueError("temporal_kernel_size must be >= 1 and spatial_kernel_size odd, got "
                             f"{self.temporal_kernel_size}, {self.spatial_kernel_size}")

    # ------------------------------------------------------------------------------------------ derived sizes
    @property
    def latent_channels(self) -> int:
        """Channels of the latent = bits per LFQ code."""
        return int(math.log2(self.codebook_size))

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
