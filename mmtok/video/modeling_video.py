"""A MAGVIT-v2-style causal video tokenizer: causal 3D CNN encoder -> quantized codes -> causal 3D CNN decoder.

The quantizer is a config choice (``quantizer``): MAGVIT-v2's lookup-free quantization (``lfq``), its spherical
variant (``bsq``), or finite scalar quantization (``fsq``), which the Cosmos and VidTok tokenizers use because it
trains without auxiliary losses or codebook collapse. The code grid, the vocabulary range and ``from_pretrained``
follow the quantizer's ``codebook_size``.

MAGVIT-v2 (Yu et al. 2023, arXiv 2310.05737): every 3D convolution pads time from the past only, so latent frame
``j`` sees input frames ``<= f * j`` (``f`` = temporal factor) and the first frame is encoded on its own; an image is
a one-frame video and shares the code space of videos. A clip of ``1 + f*k`` frames gives ``1 + k`` latent frames.

Layout (``demo`` preset, shapes for a 9x32x32 clip, ``[B, C, T, H, W]``):

    video [B,3,9,32,32]
      -> space-to-depth 2x2                            [B,12, 9,16,16]
      -> conv (per frame)                              [B,32, 9,16,16]
      -> stage 1 res block (per frame), down s         [B,32, 9, 8, 8]
      -> stage 2 res block (per frame), down t+s       [B,64, 5, 4, 4]    (a causal 3D conv)
      -> stage 3 res block (causal 3D)                 [B,128,5, 4, 4]
      -> norm, SiLU, conv to d=4                       [B,4, 5, 4, 4]
      -> FSQ [8,8,8,8] (channel-last)                  codes [B,5,4,4] in [0, 4096)
    the decoder mirrors it with depth-to-space upsampling and GroupNorms modulated by the quantized latents.

The space-to-depth stem (``patch_size``) replaces MAGVIT-v2's full-resolution first stage: a pixel block folded into
channels loses nothing (it is a permutation), and every convolution then runs on ``patch_size^2`` times fewer
positions; the Cosmos tokenizer (arXiv 2501.03575) does the same with a Haar wavelet. A large patch costs sample
efficiency, though: the stem's weights are no longer shared across the pixels of a block, so strokes must be learnt at
every offset (on the demo corpus a 4x4 patch learns digits several times slower than 2x2).
``magvit2_128`` keeps ``patch_size=1``.

``frame_stages`` makes the first stages per-frame 2D convolutions and mixes time only at the coarse resolution (C-ViViT
and Cosmos factorize space and time the same way): the full-resolution work costs 2D convolutions, and at 4x4 a 3D
convolution is cheap. Causality is unchanged.

All GroupNorms normalize each frame separately: a norm over the whole clip would let future frames change the
statistics of past ones and break causality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from mmtok.frames import from_uint8, to_uint8
from mmtok.interface import check_codes, require_finite
from mmtok.pretrained import StrictLoadingMixin
from mmtok.quantizers import FSQ, LFQ
from mmtok.video.configuration_video import VideoTokenizerConfig


# ------------------------------------------------------------------------------------------------------ building blocks
def _groups(num_groups: int, channels: int) -> int:
    """The largest group count <= num_groups that divides channels."""
    g = min(num_groups, channels)
    while channels % g:
        g -= 1
    return g


def frame_group_norm(x: torch.Tensor, num_groups: int, eps: float = 1e-6) -> torch.Tensor:
    """GroupNorm of each frame on its own (no affine). ``x [B, C, T, H, W] -> [B, C, T, H, W]``."""
    b, c, t, h, w = x.shape
    xg = x.view(b, num_groups, c // num_groups, t, h, w)
    var, mean = torch.var_mean(xg, dim=(2, 4, 5), keepdim=True, unbiased=False)   # [B, G, 1, T, 1, 1]
    return ((xg - mean) * torch.rsqrt(var + eps)).view(b, c, t, h, w)


class FrameGroupNorm(nn.Module):
    """Per-frame GroupNorm with an optional per-channel affine."""

    def __init__(self, channels: int, num_groups: int, affine: bool = True):
        super().__init__()
        self.num_groups = _groups(num_groups, channels)
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frame_group_norm(x, self.num_groups)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        return y


def broadcast_latents(z: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """Nearest, causal resize of latent-rate features ``[B, C, T', H', W']`` to ``[B, C, t, h, w]``.

    Output frame ``i`` takes latent frame ``ceil(i / r)`` with ``r = (t - 1) / (T' - 1)``: the frame-0 latent
    covers frame 0 alone and latent ``j`` covers frames ``r(j-1)+1 .. rj``, mirroring the encoder's causal grid.
    """
    tz, hz, wz = z.shape[2:]
    if tz != t:
        if tz == 1 or (t - 1) % (tz - 1):
            raise ValueError(f"cannot map {tz} latent frames onto {t} frames")
        r = (t - 1) // (tz - 1)
        index = (torch.arange(t, device=z.device) + r - 1) // r                        # [t]
        z = z.index_select(2, index)
    if (hz, wz) != (h, w):
        z = z.repeat_interleave(h // hz, dim=3).repeat_interleave(w // wz, dim=4)
    return z


class AdaptiveFrameGroupNorm(nn.Module):
    """MAGVIT-v2's adaptive GroupNorm: ``norm(x) * (1 + gamma(z_q)) + beta(z_q)``, gamma/beta 1x1 convs of the
    quantized latents broadcast (causally) to the feature grid; gamma and beta start at zero (plain GroupNorm)."""

    def __init__(self, channels: int, num_groups: int, cond_channels: int):
        super().__init__()
        self.num_groups = _groups(num_groups, channels)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.to_scale_shift = nn.Conv3d(cond_channels, 2 * channels, kernel_size=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = frame_group_norm(x, self.num_groups)
        y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        scale, shift = self.to_scale_shift(cond).chunk(2, dim=1)                        # [B, C, T', H', W'] each
        t, h, w = x.shape[2:]
        return y * (1 + broadcast_latents(scale, t, h, w)) + broadcast_latents(shift, t, h, w)


class CausalConv3d(nn.Module):
    """3D convolution padded in time from the past only (the first frame repeated); in space padded with zeros or,
    with ``spatial_padding="circular"``, wrapped around (see :class:`VideoTokenizerConfig`).

    With temporal stride 2 and kernel 3, ``T = 1 + 2k`` frames give ``1 + k``: output ``j`` sees frames
    ``2j-2 .. 2j``, so output 0 sees frame 0 alone.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (3, 3),
                 stride: tuple[int, int] = (1, 1), spatial_padding: str = "zeros"):
        super().__init__()
        kt, ks = kernel_size
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, ks, ks), stride=(stride[0], stride[1], stride[1]),
                              padding=(0, ks // 2, ks // 2), padding_mode=spatial_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad and x.shape[2] == 1:
            # One frame (an image): the padding repeats it, so every temporal tap sees the same frame and the
            # convolution equals one with the taps summed; kt times cheaper, and exact up to rounding.
            conv = self.conv
            weight, padding = conv.weight.sum(2, keepdim=True), conv.padding
            if conv.padding_mode != "zeros":
                p = conv.padding[1]
                x, padding = F.pad(x, (p, p, p, p, 0, 0), mode=conv.padding_mode), 0
            return F.conv3d(x, weight, conv.bias, (1, *conv.stride[1:]), padding)
        if self.time_pad:
            first = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)                   # [B, C, kt-1, H, W]
            x = torch.cat([first, x], dim=2)
        return self.conv(x)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (1x1x1-projected) skip.

    With ``cond_channels`` the norms are adaptive (decoder).
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, kernel: tuple[int, int],
                 cond_channels: int | None = None, spatial_padding: str = "zeros"):
        super().__init__()
        self.adaptive = cond_channels is not None
        if self.adaptive:
            self.norm1 = AdaptiveFrameGroupNorm(in_channels, num_groups, cond_channels)
            self.norm2 = AdaptiveFrameGroupNorm(out_channels, num_groups, cond_channels)
        else:
            self.norm1 = FrameGroupNorm(in_channels, num_groups)
            self.norm2 = FrameGroupNorm(out_channels, num_groups)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel, spatial_padding=spatial_padding)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel, spatial_padding=spatial_padding)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x, cond) if self.adaptive else self.norm1(x)
        h = self.conv1(F.silu(h))
        h = self.norm2(h, cond) if self.adaptive else self.norm2(h)
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Upsample(nn.Module):
    """Depth-to-space upsampling: a causal conv to ``C * st * ss * ss`` channels, then channels -> (t, h, w).

    In time, ``1 + k`` frames become ``2 + 2k`` and the first one is dropped (``1 + 2k``): latent frame 0 stays
    frame 0 alone, as in the encoder.
    """

    def __init__(self, channels: int, out_channels: int, kernel: tuple[int, int], spatial: bool, temporal: bool,
                 spatial_padding: str = "zeros"):
        super().__init__()
        self.st, self.ss = (2 if temporal else 1), (2 if spatial else 1)
        self.conv = CausalConv3d(channels, out_channels * self.st * self.ss * self.ss, kernel,
                                 spatial_padding=spatial_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        st, ss = self.st, self.ss
        y = self.conv(x)                                                                 # [B, C*st*ss*ss, T, H, W]
        y = y.view(b, -1, st, ss, ss, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)           # [B, C, T, st, H, ss, W, ss]
        y = y.reshape(b, -1, t * st, h * ss, w * ss)
        return y[:, :, st - 1:] if st > 1 else y                                         # [B, C, st*(T-1)+1, ...]


# ------------------------------------------------------------------------------------------------- encoder / decoder
def stage_kernels(config: VideoTokenizerConfig) -> list[tuple[int, int]]:
    """``(temporal, spatial)`` kernel of each stage: the first ``config.frame_stages`` stages convolve each frame on
    its own (temporal extent 1); the rest are causal 3D. The resampling between stages ``i`` and ``i + 1`` uses stage
    ``i + 1``'s kernel (so a temporal resampling is always a temporal convolution)."""
    return [(1 if i < config.frame_stages else config.temporal_kernel_size, config.spatial_kernel_size)
            for i in range(len(config.channel_multipliers))]


class VideoEncoder(nn.Module):
    """Pixels ``[B, 3, T, H, W]`` in [-1, 1] -> pre-quantization latents ``[B, d, T', H', W']`` (for LFQ / BSQ
    per-frame normalized, no affine: MAGVIT-v2 puts a plain GroupNorm right before LFQ)."""

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__()
        kernels = stage_kernels(config)
        channels = [config.base_channels * m for m in config.channel_multipliers]
        pad = config.spatial_padding
        self.patch_size = config.patch_size
        self.conv_in = CausalConv3d(config.in_channels * config.patch_size ** 2, channels[0], kernels[0],
                                    spatial_padding=pad)
        self.blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        ch = channels[0]
        for i, out_ch in enumerate(channels):
            self.blocks.append(nn.ModuleList(
                ResBlock(ch if j == 0 else out_ch, out_ch, config.num_groups, kernels[i], spatial_padding=pad)
                for j in range(config.num_res_blocks)))
            ch = out_ch
            if i < len(channels) - 1:
                s, t = config.spatial_downsample[i], config.temporal_downsample[i]
                # A temporal stride-2 conv spans at least its stride, so that no frame is skipped: with
                # temporal_kernel_size=1 latent frame j then sees exactly frames 2j-1 and 2j (and nothing earlier).
                kernel = (max(kernels[i + 1][0], 2), kernels[i + 1][1]) if t else kernels[i + 1]
                self.downsamples.append(
                    CausalConv3d(ch, ch, kernel, stride=(2 if t else 1, 2 if s else 1), spatial_padding=pad)
                    if (s or t) else nn.Identity())
        self.norm_out = FrameGroupNorm(ch, config.num_groups)
        self.conv_out = CausalConv3d(ch, config.latent_channels, kernels[-1], spatial_padding=pad)
        self.normalize_latents = config.quantizer in ("lfq", "bsq")
        self.frame_norm_latents = config.fsq_latent_norm == "frame"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        p = self.patch_size
        if p > 1:   # space-to-depth: [B, 3, T, H, W] -> [B, 3*p*p, T, H/p, W/p]
            x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * p * p, t, h // p,
                                                                                              w // p)
        x = self.conv_in(x)
        for i, stage in enumerate(self.blocks):
            for block in stage:
                x = block(x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        x = self.conv_out(F.silu(self.norm_out(x)))                                      # [B, d, T', H', W']
        # MAGVIT-v2 puts a plain per-frame norm right before LFQ (its signs need a centred input). FSQ bounds its
        # input with tanh itself and by default takes it as is; ``fsq_latent_norm="frame"`` standardizes each channel
        # over the frame, which keeps every channel spread over its levels (circular padding collapses without it).
        if self.frame_norm_latents:
            return frame_group_norm(x, x.shape[1])
        return frame_group_norm(x, 1) if self.normalize_latents else x


class VideoDecoder(nn.Module):
    """Quantized latents ``[B, d, T', H', W']`` -> pixels ``[B, 3, T, H, W]`` (unbounded; clamp to [-1, 1] for
    display). Every norm is conditioned on the latents when ``config.adaptive_norm``."""

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__()
        kernels = stage_kernels(config)
        channels = [config.base_channels * m for m in config.channel_multipliers]
        d = config.latent_channels
        cond = d if config.adaptive_norm else None
        pad = config.spatial_padding
        self.patch_size = config.patch_size
        self.conv_in = CausalConv3d(d, channels[-1], kernels[-1], spatial_padding=pad)
        self.blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        ch = channels[-1]
        for i in reversed(range(len(channels))):
            self.blocks.append(nn.ModuleList(
                ResBlock(ch if j == 0 else channels[i], channels[i], config.num_groups, kernels[i], cond,
                         spatial_padding=pad)
                for j in range(config.num_res_blocks)))
            ch = channels[i]
            if i > 0:
                # The upsampling conv already narrows to the next stage's width: its output is st*ss*ss times
                # wider than its input's resolution, so narrowing after it would cost that factor more.
                s, t = config.spatial_downsample[i - 1], config.temporal_downsample[i - 1]
                self.upsamples.append(Upsample(ch, channels[i - 1], kernels[i], spatial=s, temporal=t,
                                               spatial_padding=pad) if (s or t) else nn.Identity())
                if s or t:
                    ch = channels[i - 1]
        self.norm_out = (AdaptiveFrameGroupNorm(ch, config.num_groups, d) if config.adaptive_norm
                         else FrameGroupNorm(ch, config.num_groups))
        self.conv_out = CausalConv3d(ch, config.in_channels * config.patch_size ** 2, kernels[0], spatial_padding=pad)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cond = z
        x = self.conv_in(z)
        for i, stage in enumerate(self.blocks):
            for block in stage:
                x = block(x, cond)
            if i < len(self.upsamples):
                x = self.upsamples[i](x)
        x = self.norm_out(x, cond) if isinstance(self.norm_out, AdaptiveFrameGroupNorm) else self.norm_out(x)
        x = self.conv_out(F.silu(x))                                                      # [B, 3*p*p, T, h, w]
        p = self.patch_size
        if p > 1:   # depth-to-space: [B, 3*p*p, T, h, w] -> [B, 3, T, h*p, w*p]
            b, _, t, h, w = x.shape
            x = x.view(b, -1, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3).reshape(b, -1, t, h * p, w * p)
        return x


# ------------------------------------------------------------------------------------------------------------- model
def build_quantizer(config: VideoTokenizerConfig) -> nn.Module:
    """The quantizer ``config.quantizer`` names, over ``config.latent_channels`` channels."""
    if config.quantizer == "fsq":
        return FSQ(levels=config.fsq_levels)
    return LFQ(codebook_size=config.codebook_size, entropy_loss_weight=config.entropy_loss_weight,
               commitment_loss_weight=config.commitment_loss_weight, diversity_gamma=config.diversity_gamma,
               spherical=config.quantizer == "bsq", entropy_anneal_steps=config.entropy_anneal_steps,
               entropy_anneal_factor=config.entropy_anneal_factor)


@dataclass
class VideoTokenizerOutput(ModelOutput):
    """Output of :meth:`VideoTokenizer.forward`.

    Attributes:
        reconstruction: decoded video ``[B, 3, T, H, W]`` (not clamped, so the loss sees overshoots).
        codes: code indices ``[B, T', H', W']`` (int64).
        quantizer_loss: the quantizer's weighted auxiliary loss (LFQ / BSQ: entropy + commitment; FSQ: zero).
        metrics: detached quantizer metrics (``utilization``, ``perplexity``, ...).
    """

    reconstruction: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    quantizer_loss: torch.Tensor | None = None
    metrics: dict | None = None


class VideoTokenizer(StrictLoadingMixin, PreTrainedModel):
    """MAGVIT-v2-style causal video tokenizer (LFQ, BSQ or FSQ codes).

    Implements :class:`mmtok.interface.ModalityTokenizer`: ``encode`` videos (or images, as 1-frame videos) to
    codes ``[B, T', H', W']``, ``decode`` codes back to ``[B, 3, T, H, W]`` in [-1, 1].

    Example::

        tok = VideoTokenizer.from_preset("demo")
        codes = tok.encode(frames_uint8)          # [B, 17, 64, 64, 3] uint8 -> [B, 5, 8, 8]
        video = tok.decode(codes)                 # [B, 3, 17, 64, 64] float in [-1, 1]
        tok.save_pretrained("out/video_tok")      # config.json + model.safetensors
    """

    config_class = VideoTokenizerConfig
    base_model_prefix = "video_tokenizer"
    main_input_name = "video"
    modality = "video"

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__(config)
        self.encoder = VideoEncoder(config)
        self.quantizer = build_quantizer(config)
        self.decoder = VideoDecoder(config)
        self.post_init()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VideoTokenizer":
        """A freshly initialized tokenizer of a named preset (``debug``, ``demo``, ``magvit2_128``)."""
        return cls(VideoTokenizerConfig.from_preset(name, **overrides))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default conv init (not transformers' N(0, 0.02), which is far too small for a deep CNN).
        if isinstance(module, nn.Conv3d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        if isinstance(module, AdaptiveFrameGroupNorm):
            init.zeros_(module.to_scale_shift.weight)
            init.zeros_(module.to_scale_shift.bias)
        if isinstance(module, (FrameGroupNorm, AdaptiveFrameGroupNorm)) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, LFQ):
            init.copy_(module.bit_shifts, torch.arange(module.num_bits))
        if isinstance(module, FSQ):
            module.reset_constants()

    # --------------------------------------------------------------------------------- interface properties
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (after the first, which covers one frame)."""
        return self.config.fps / self.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Code grid ``(T', H', W')`` for a clip of this size (validated, see :meth:`encode`)."""
        self._check_size(num_frames, height, width)
        f, s = self.temporal_factor, self.spatial_factor
        return 1 + (num_frames - 1) // f, height // s, width // s

    def pixel_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames: ``1 + f * (latent_frames - 1)``."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    # ----------------------------------------------------------------------------------------- input handling
    def _check_size(self, t: int, h: int, w: int) -> None:
        f, s = self.temporal_factor, self.spatial_factor
        if t < 1 or (t - 1) % f:
            raise ValueError(f"the video tokenizer needs 1 + {f}k frames (1, {1 + f}, {1 + 2 * f}, ...), got {t}; "
                             f"pass pad=True to repeat the last frame up to {1 + f * math.ceil((t - 1) / f)}")
        if h % s or w % s:
            raise ValueError(f"height and width must be divisible by the spatial factor {s}, got {h}x{w}; "
                             "pass pad=True to pad the edges")

    def preprocess(self, video: torch.Tensor, pad: bool = False) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` or float ``[B, 3, T, H, W]`` in [-1, 1] -> float ``[B, 3, T, H, W]``.

        With ``pad=True`` the clip is padded (last frame repeated, edges replicated) to a valid size instead of
        raising; crop the decoded video back to the input size.
        """
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
        c = self.config.in_channels
        if video.dtype == torch.uint8:
            if video.dim() != 5 or video.shape[-1] != c:
                raise ValueError(f"uint8 video must be [B, T, H, W, {c}] (channel-last frames), got shape "
                                 f"{tuple(video.shape)}")
            x = from_uint8(video)
        elif video.dtype.is_floating_point:
            if video.dim() != 5 or video.shape[1] != c:
                raise ValueError(f"float video must be [B, {c}, T, H, W] in [-1, 1], got shape {tuple(video.shape)}"
                                 + (" (channel-last? uint8 frames are [B, T, H, W, 3], floats [B, 3, T, H, W])"
                                    if video.dim() == 5 and video.shape[-1] == c else ""))
            require_finite(video, "video")
            x = video.float()
        else:
            raise TypeError(f"video must be uint8 [B, T, H, W, {c}] or float [B, {c}, T, H, W], got {video.dtype}")
        param = next(self.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        t, h, w = x.shape[2:]
        if pad:
            f, s = self.temporal_factor, self.spatial_factor
            pt = (-(t - 1)) % f
            ph, pw = (-h) % s, (-w) % s
            if pt:
                x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pt, -1, -1)], dim=2)
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2, 0, 0), mode="replicate")
            t, h, w = x.shape[2:]
        self._check_size(t, h, w)
        return x

    # ------------------------------------------------------------------------------------------ forward passes
    def forward(self, video: torch.Tensor, pad: bool = False, return_dict: bool = True) -> VideoTokenizerOutput:
        """Encode, quantize (straight-through) and decode: the training pass."""
        x = self.preprocess(video, pad=pad)                                              # [B, 3, T, H, W]
        z = self.encoder(x)                                                              # [B, d, T', H', W']
        q = self.quantizer(z.permute(0, 2, 3, 4, 1))                                     # quantizers are channel-last
        zq = q.quantized.permute(0, 4, 1, 2, 3)                                          # [B, d, T', H', W']
        recon = self.decoder(zq)                                                         # [B, 3, T, H, W]
        out = VideoTokenizerOutput(reconstruction=recon, codes=q.indices, quantizer_loss=q.loss, metrics=q.metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def encode(self, video: torch.Tensor, pad: bool = False) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` or float ``[B, 3, T, H, W]`` in [-1, 1] -> codes ``[B, T', H', W']`` (int64).

        ``T`` must be ``1 + f*k`` (``f = temporal_factor``; an image is ``T = 1``) and ``H, W`` multiples of
        ``spatial_factor``, unless ``pad=True``.
        """
        z = self.encoder(self.preprocess(video, pad=pad))
        return self.quantizer(z.permute(0, 2, 3, 4, 1)).indices

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, T', H', W']`` -> video ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 1 + f*(T'-1)``."""
        check_codes(codes, ("B", "T'", "H'", "W'"), self.codebook_size)
        zq = self.quantizer.indices_to_codes(codes.to(self.device)).permute(0, 4, 1, 2, 3)  # [B, d, T', H', W']
        return self.decoder(zq.to(self.dtype)).clamp(-1.0, 1.0)

    def decode_to_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> uint8 frames ``[B, T, H, W, 3]``."""
        return to_uint8(self.decode(codes))


AutoConfig.register(VideoTokenizerConfig.model_type, VideoTokenizerConfig, exist_ok=True)
AutoModel.register(VideoTokenizerConfig, VideoTokenizer, exist_ok=True)
