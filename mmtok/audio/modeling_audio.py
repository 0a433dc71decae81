"""A SoundStream/EnCodec-style neural audio codec: SEANet conv encoder -> residual VQ codes -> SEANet conv decoder.

SoundStream (Zeghidour et al. 2021, arXiv 2107.03312) and EnCodec (Defossez et al. 2022, arXiv 2210.13438): a 1-D
convolutional encoder downsamples the waveform by ``hop = prod(ratios)`` into a latent sequence, a residual VQ turns
each latent frame into ``n_q`` codes (coarse to fine, so any prefix of the levels decodes), and a mirrored decoder
with transposed convolutions makes the waveform again. Trained with quantizer dropout, one model serves every
bitrate ``kbps = n_q * log2(codebook_size) * frame_rate / 1000``.

Layout (``soundstream_24k`` preset, 24 kHz, ratios (2, 4, 5, 8), shapes ``[B, C, N]``):

    wav [B,1,N]                    (N padded up to a multiple of hop = 2 * 4 * 5 * 8 = 320)
      -> conv k7                   [B,32,N]
      -> per stride s in (2, 4, 5, 8): 3 residual units (dil 1,3,9), ELU, conv k2s stride s  (channels double)
                                   [B,512,N/320]
      -> ELU, conv k7 -> latent    [B,128,F]       F = N / 320 (75 frames per second)
      -> RVQ (channel-last)        codes [B,8,F] in [0, 1024)
    decoder: conv k7 -> [B,512,F], then per stride ELU, transposed conv (kernel 2s), residual units,
      ELU, conv k7 -> [B,1,N]

``patch_size`` folds that many consecutive samples into channels before the first conv, so the convs run at
``rate / patch_size`` (the ``demo`` preset folds a whole 500-sample frame and runs every conv at 32 Hz).

Streaming (``causal=True``): every conv pads from the past only, so frame ``t`` depends on samples ``< (t+1)*hop``.
:meth:`AudioTokenizer.stream_encoder` / :meth:`AudioTokenizer.stream_decoder` carry each conv's unconsumed input
(and each transposed conv's overlap-add tail and the LSTM's state) between chunks in a :class:`StreamState`, and
compute exactly the same windows as the whole-signal pass: chunked encoding gives the codes of whole encoding and
chunked decoding the same samples, whatever the chunk sizes.

Speed (inference, i.e. without autograd): the convs run the CPU kernels of :mod:`mmtok.audio.cpu_kernels`
(time-major activations for oneDNN's channels-last convolutions, cached weights, matmul forms of the one-channel
first and last convs, a 1x1 conv that adds into the residual inside the kernel), and ELUs and residual adds overwrite
activations that nothing reads again (each fresh full-rate tensor costs tens of MB of page faults). Training keeps
the plain channel-first convs, whose backward is faster. Both compute the same function (tests compare them). At
EnCodec's size this encodes and decodes about 1.5x faster than ``transformers.EncodecModel`` on 2 CPU cores
(``bench/audio_tokenizer.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from mmtok.audio import cpu_kernels
from mmtok.audio.configuration_audio import AudioTokenizerConfig
from mmtok.audio.spectral import SpectralDecoder, SpectralEncoder
from mmtok.interface import check_codes, require_finite
from mmtok.pretrained import StrictLoadingMixin
from mmtok.quantizers import ResidualVQ
from mmtok.quantizers.vq import VectorQuantizer

# A streaming state: module -> what that module carries to the next chunk (a tensor, or (h, c) for an LSTM).
StreamState = dict


# ------------------------------------------------------------------------------------------------------ building blocks
class StreamConv1d(nn.Module):
    """``Conv1d`` (optionally weight-normalized) with causal or centred padding and a streaming mode.

    Total padding is ``effective_kernel - stride``, all on the left when causal, so an input of ``L = k * stride``
    samples gives exactly ``k`` outputs and output ``t`` sees inputs ``< (t + 1) * stride``.
    With a ``state`` dict the conv instead prepends what it kept from the previous chunk (initially the causal zero
    padding), emits every complete window and keeps the rest. Without autograd the conv runs
    :mod:`mmtok.audio.cpu_kernels`' inference kernels and its output is time-major (see
    :func:`~mmtok.audio.cpu_kernels.time_major`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 causal: bool = True, weight_norm: bool = True):
        super().__init__()
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.conv = parametrizations.weight_norm(conv) if weight_norm else conv
        self.causal = causal
        self.stride = stride
        self.dilation = dilation
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.padding_total = self.effective_kernel - stride
        if self.padding_total < 0:
            raise ValueError(f"kernel ({kernel_size}, dilation {dilation}) must cover the stride {stride}")

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, L // stride]
        if state is None:
            return self._whole(x)
        if self.padding_total == 0 and self.stride == 1:    # 1x1 conv: nothing to carry
            return self._conv(x, 0) if x.shape[-1] else x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        buffer = state.get(self)
        if buffer is None:                                  # the causal left padding
            buffer = x.new_zeros(x.shape[0], x.shape[1], self.padding_total)
        x = torch.cat([buffer.transpose(1, 2), x.transpose(1, 2)], dim=1).transpose(1, 2)   # [B, C_in, kept + L]
        n = (x.shape[-1] - self.effective_kernel) // self.stride + 1 if x.shape[-1] >= self.effective_kernel else 0
        state[self] = x[..., n * self.stride:]
        if n == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        return self._conv(x[..., : (n - 1) * self.stride + self.effective_kernel], 0)

    def add_into(self, out: torch.Tensor, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """``out += self(x, state)`` in place, and returns ``out``. Without autograd a 1x1 conv fuses the add
        (:func:`~mmtok.audio.cpu_kernels.conv1x1_add_`): its output is never made."""
        if self.effective_kernel == 1 and self.stride == 1 and not torch.is_grad_enabled() \
                and cpu_kernels.conv1x1_add_(self, out, x):
            return out
        return out.add_(self(x, state))

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        """The whole-signal pass, padding inside the convolution instead of copying a padded input.

        Causal: the conv pads ``padding_total`` zeros on both sides; the outputs whose windows reach into the right
        padding are dropped, which leaves exactly the outputs of left padding alone. Centred: the left share is
        padded on both sides and the surplus outputs on the right are dropped likewise. The slice is materialized
        by whatever elementwise op follows (an ELU or a residual add), so the padded copy of the input, the largest
        tensor in the layer, is never made.
        """
        left = self.padding_total if self.causal else self.padding_total - self.padding_total // 2
        length = x.shape[-1] + self.padding_total                       # the padded length of F.pad
        n = (length - self.effective_kernel) // self.stride + 1 if length >= self.effective_kernel else 0
        y = self._conv(x, left)                                         # [B, C_out, >= n]
        return y[..., :n] if y.shape[-1] != n else y

    def _conv(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, n = (L + 2 * padding - effective_kernel) // stride + 1], time-major unless
        # training; ``padding`` zeros on both sides.
        conv = self.conv
        if not torch.is_grad_enabled():
            return cpu_kernels.conv1d(self, x, self.stride, self.dilation, padding)
        # Training keeps the channel-first layout: its backward would otherwise shuttle gradients between layouts.
        weight = conv.weight                                            # [C_out, C_in, K] (weight norm applied)
        if conv.in_channels == 1:                                       # SEANet's first conv, as a matmul
            return cpu_kernels.conv1d_one_input_channel(x, weight, conv.bias, self.stride, self.dilation, padding)
        return F.conv1d(x, weight, conv.bias, self.stride, padding, self.dilation)


class StreamConvTranspose1d(nn.Module):
    """Transposed conv (kernel ``2 * stride``) that upsamples ``T`` frames to exactly ``T * stride`` samples.

    The full transposed conv makes ``(T - 1) * stride + kernel`` samples; the last ``kernel - stride`` are still
    missing the contribution of the next frame. Causal mode trims them (EnCodec); streaming mode keeps them and adds
    them to the start of the next chunk (overlap-add), so chunked output equals whole output.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, causal: bool = True,
                 weight_norm: bool = True):
        super().__init__()
        conv = nn.ConvTranspose1d(in_channels, out_channels, 2 * stride, stride=stride)
        self.convtr = parametrizations.weight_norm(conv) if weight_norm else conv
        self.causal = causal
        self.stride = stride
        self.trim = conv.kernel_size[0] - stride

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        # x: [B, C_in, T] -> [B, C_out, T * stride]
        t = x.shape[-1]
        if t == 0:
            return x.new_zeros(x.shape[0], self.convtr.out_channels, 0)
        if state is None:
            y = self._conv_transpose(x, self.convtr.bias)                # [B, C_out, (T-1)s+k]
            left = 0 if self.causal else self.trim - self.trim // 2
            return y[..., left: left + t * self.stride]
        # Streaming: add the previous chunk's tail, emit T*s samples, keep the new tail (bias added once, on emit).
        y = self._conv_transpose(x, None)                               # [B, C_out, (T+1)s], a fresh tensor
        tail = state.get(self)
        if tail is not None:
            y[..., : self.trim] += tail
        state[self] = y[..., t * self.stride:]
        return y[..., : t * self.stride].add_(self.convtr.bias[:, None])   # disjoint from the kept tail

    def _conv_transpose(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x: [B, C_in, T] -> [B, C_out, (T - 1) * stride + kernel], time-major
        if torch.is_grad_enabled():                                     # training: channel-first, as in _conv
            return F.conv_transpose1d(x, self.convtr.weight, bias, stride=self.stride)
        return cpu_kernels.conv_transpose1d(self, x, bias, self.stride)


class ResidualUnit(nn.Module):
    """SEANet residual unit: ``x + conv1x1(ELU(conv_k,dilated(ELU(x))))``, hidden width ``channels // compress``."""

    def __init__(self, channels: int, dilation: int, config: AudioTokenizerConfig):
        super().__init__()
        hidden = channels // config.compress
        kw = dict(causal=config.causal, weight_norm=config.weight_norm)
        self.conv1 = StreamConv1d(channels, hidden, config.residual_kernel_size, dilation=dilation, **kw)
        self.conv2 = StreamConv1d(hidden, channels, 1, **kw)
        self.shortcut = StreamConv1d(channels, channels, 1, **kw) if config.conv_shortcut else None

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        # x: [B, C, L] -> [B, C, L]. At full sample rate every fresh tensor is tens of MB, so ELUs and the residual
        # add work in place wherever nothing needs what they overwrite: the ELU of conv1's output always; without
        # autograd also the ELU of x once the shortcut has read it, and the skip, into which conv2 adds its output
        # (these overwrite the caller's x: the encoder and decoder hand each tensor to one unit only).
        inference = not torch.is_grad_enabled()
        skip = x if self.shortcut is None else self.shortcut(x, state)
        h = F.elu(x, inplace=inference and self.shortcut is not None)
        h = F.elu(self.conv1(h, state), inplace=True)
        if inference:
            return self.conv2.add_into(skip, h, state)                  # skip += conv2(h)
        return self.conv2(h, state).add_(skip)


class StreamLSTM(nn.Module):
    """A multi-layer LSTM over time with a skip connection (SEANet); streaming carries ``(h, c)``."""

    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, T]
        seq = x.permute(2, 0, 1)                                                     # [T, B, C]
        if state is None:
            y, _ = self.lstm(seq)
        else:
            if seq.shape[0] == 0:
                return x
            y, hc = self.lstm(seq, state.get(self))
            state[self] = hc
        return (y + seq).permute(1, 2, 0)


class Patchify(nn.Module):
    """Space-to-depth in time: ``[B, 1, N] -> [B, p, N / p]`` (sample ``t * p + i`` goes to channel ``i``, step
    ``t``). A cheap stem: the first conv then runs at ``sample_rate / p`` instead of the full rate (the same trick as
    the video tokenizer's patch stem). Streaming keeps the samples of an incomplete patch."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        p = self.patch_size
        if state is not None:
            buffer = state.get(self)
            if buffer is not None:
                x = torch.cat([buffer, x], dim=-1)
            n = x.shape[-1] // p * p
            state[self] = x[..., n:]
            x = x[..., :n]
        b, _, n = x.shape
        return x.reshape(b, n // p, p).transpose(1, 2)              # [B, p, N / p]


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :class:`Patchify`: ``[B, p, T] -> [B, 1, T * p]``."""
    b, p, t = x.shape
    return x.transpose(1, 2).reshape(b, 1, t * p)


class SEANetEncoder(nn.Module):
    """Waveform ``[B, 1, N]`` (``N`` a multiple of the hop) -> latent ``[B, dimension, N / hop]``."""

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__()
        kw = dict(causal=config.causal, weight_norm=config.weight_norm)
        ch = config.base_channels
        self.patch = Patchify(config.patch_size) if config.patch_size > 1 else None
        self.conv_in = StreamConv1d(config.patch_size, ch, config.kernel_size, **kw)
        self.stages = nn.ModuleList()
        for stride in config.ratios:
            stage = nn.Module()
            stage.res = nn.ModuleList(ResidualUnit(ch, d, config) for d in config.dilations)
            stage.down = StreamConv1d(ch, 2 * ch, 2 * stride, stride=stride, **kw)
            self.stages.append(stage)
            ch *= 2
        self.lstm = StreamLSTM(ch, config.lstm_layers) if config.lstm_layers else None
        self.conv_out = StreamConv1d(ch, config.dimension, config.last_kernel_size, **kw)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        if self.patch is not None:
            x = self.patch(x, state)                                 # [B, p, N / p]
        x = self.conv_in(x, state)                                   # [B, C, N / p]
        for stage in self.stages:                                    # (in-place ELUs: see ResidualUnit.forward)
            for unit in stage.res:
                x = unit(x, state)
            x = stage.down(F.elu(x, inplace=True), state)           # [B, 2C, N / stride]
        if self.lstm is not None:
            x = self.lstm(x, state)
        return self.conv_out(F.elu(x, inplace=True), state)         # [B, dimension, F]


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, F]`` -> waveform ``[B, 1, F * hop]``; mirrors :class:`SEANetEncoder`."""

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__()
        kw = dict(causal=config.causal, weight_norm=config.weight_norm)
        ch = config.base_channels * 2 ** len(config.ratios)
        self.conv_in = StreamConv1d(config.dimension, ch, config.kernel_size, **kw)
        self.lstm = StreamLSTM(ch, config.lstm_layers) if config.lstm_layers else None
        self.stages = nn.ModuleList()
        for stride in reversed(config.ratios):
            stage = nn.Module()
            stage.up = StreamConvTranspose1d(ch, ch // 2, stride, **kw)
            ch //= 2
            stage.res = nn.ModuleList(ResidualUnit(ch, d, config) for d in config.dilations)
            self.stages.append(stage)
        self.conv_out = StreamConv1d(ch, config.patch_size, config.last_kernel_size, **kw)

    def forward(self, z: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        x = self.conv_in(z, state)                                   # [B, C, F]
        if self.lstm is not None:
            x = self.lstm(x, state)
        for stage in self.stages:
            x = stage.up(F.elu(x, inplace=True), state)             # [B, C/2, F * stride]
            for unit in stage.res:
                x = unit(x, state)
        x = self.conv_out(F.elu(x, inplace=True), state)            # [B, p, F * hop / p]
        return unpatchify(x) if x.shape[1] > 1 else x                # [B, 1, F * hop]


# ------------------------------------------------------------------------------------------------------------- model
@dataclass
class AudioTokenizerOutput(ModelOutput):
    """Output of :meth:`AudioTokenizer.forward`.

    Attributes:
        reconstruction: decoded waveform ``[B, 1, F * hop]`` (not clamped, so the loss sees overshoots).
        codes: RVQ indices ``[B, n_q, F]`` (int64; -1 for levels quantizer dropout skipped in training).
        quantizer_loss: the RVQ's weighted commitment loss (scalar).
        metrics: detached quantizer metrics (``utilization``, ``perplexity``, ``num_quantizers``, ...).
    """

    reconstruction: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    quantizer_loss: torch.Tensor | None = None
    metrics: dict | None = None


class AudioTokenizer(StrictLoadingMixin, PreTrainedModel):
    """SoundStream/EnCodec-style audio tokenizer with residual VQ (the encoder and decoder are SEANet's, or the
    spectral layout's of :mod:`mmtok.audio.spectral` with ``config.architecture="spectral"``).

    Implements :class:`mmtok.interface.ModalityTokenizer`: ``encode`` mono waveforms ``[B, 1, N]`` or ``[B, N]``
    (float, about [-1, 1], at ``sample_rate``) to codes ``[B, n_q, F]`` with ``F = ceil(N / hop)``; ``decode`` codes
    (any number of leading levels) back to ``[B, 1, F * hop]``.

    Example::

        tok = AudioTokenizer.from_preset("demo")
        codes = tok.encode(wav, num_quantizers=4)     # [B, 1, 34000] -> [B, 4, 54]
        wav2 = tok.decode(codes)                      # [B, 1, 34560]
        tok.save_pretrained("out/audio_tok")          # config.json + model.safetensors
    """

    config_class = AudioTokenizerConfig
    base_model_prefix = "audio_tokenizer"
    main_input_name = "wav"
    modality = "audio"

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__(config)
        spectral = config.architecture == "spectral"
        self.encoder = SpectralEncoder(config) if spectral else SEANetEncoder(config)
        self.quantizer = ResidualVQ(
            dim=config.dimension, num_quantizers=config.num_quantizers, codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim, quantize_dropout=config.quantize_dropout,
            quantize_dropout_cutoff_index=config.quantize_dropout_cutoff_index, decay=config.decay,
            commitment_weight=config.commitment_weight, kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters, threshold_ema_dead_code=config.threshold_ema_dead_code)
        self.decoder = SpectralDecoder(config) if spectral else SEANetDecoder(config)
        self.post_init()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AudioTokenizer":
        """A freshly initialized tokenizer of a named preset (``debug``, ``demo``, ``soundstream_24k``,
        ``encodec_24k``, ``spectral_16k``)."""
        return cls(AudioTokenizerConfig.from_preset(name, **overrides))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default conv init (uniform, fan-in), with the weight-norm magnitude set to match; transformers'
        # N(0, 0.02) is far too small for a deep CNN.
        if isinstance(module, (StreamConv1d, StreamConvTranspose1d)):
            conv = module.conv if isinstance(module, StreamConv1d) else module.convtr
            if parametrize.is_parametrized(conv, "weight"):
                original = conv.parametrizations.weight
                v = original.original1
                nn.init.kaiming_uniform_(v, a=math.sqrt(5))
                # weight_norm's default dim=0: one magnitude per first-axis slice (see torch's _weight_norm)
                original.original0.copy_(v.norm(dim=list(range(1, v.dim())), keepdim=True))
            else:
                nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            fan_in = conv.in_channels * conv.kernel_size[0] // (1 if isinstance(conv, nn.Conv1d) else conv.stride[0])
            bound = 1 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(conv.bias, -bound, bound)
        elif isinstance(module, nn.LSTM):
            bound = 1 / math.sqrt(module.hidden_size)
            for p in module.parameters():
                nn.init.uniform_(p, -bound, bound)
        elif isinstance(module, VectorQuantizer):
            module.embed.copy_(torch.randn_like(module.embed))
            if getattr(module, "embed_avg", None) is not None:
                module.embed_avg.copy_(module.embed)
            module.cluster_size.fill_(1.0)
            module.initted.fill_(not self.config.kmeans_init)

    # --------------------------------------------------------------------------------- interface properties
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        """RVQ levels the codec has (a consumer may use only the first few)."""
        return self.config.num_quantizers

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (``sample_rate / hop_length``)."""
        return self.config.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def bandwidths(self) -> list[float]:
        """kbps of 1, 2, ..., ``num_quantizers`` levels."""
        return [self.config.kbps(n) for n in range(1, self.num_quantizers + 1)]

    def bandwidth_to_num_quantizers(self, kbps: float) -> int:
        """The most levels whose bitrate ``n_q * log2(codebook_size) * frame_rate / 1000`` is <= ``kbps``
        (capped at ``num_quantizers``); raises ``ValueError`` when even one level exceeds it."""
        per_level = self.config.kbps(1)
        n = math.floor(kbps / per_level + 1e-9)
        if n < 1:
            raise ValueError(f"{kbps} kbps is below one RVQ level ({per_level:g} kbps at {self.frame_rate:g} frames/s, "
                             f"{self.config.bits_per_level:g} bits/level); available: {self.bandwidths}")
        return min(n, self.num_quantizers)

    def code_frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` samples: ``ceil(num_samples / hop)``."""
        return math.ceil(num_samples / self.hop_length)

    # ----------------------------------------------------------------------------------------- input handling
    def preprocess(self, wav: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 1, N]`` or ``[B, N]`` -> ``[B, 1, N']`` with ``N'`` zero-padded up to a multiple of the hop."""
        x = self._as_batch(wav)
        pad = (-x.shape[-1]) % self.hop_length
        return F.pad(x, (0, pad)) if pad else x

    def _as_batch(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor, got {type(wav).__name__} (use torch.from_numpy)")
        if not wav.dtype.is_floating_point:
            raise TypeError(f"audio must be a float waveform in [-1, 1], got {wav.dtype} (int16 PCM? divide by 32768)")
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"audio must be mono [B, 1, N] or [B, N], got shape {tuple(wav.shape)}"
                             + (" (stereo? downmix to mono first)" if wav.dim() == 3 else ""))
        require_finite(wav, "audio")
        param = next(self.parameters())
        return wav.to(device=param.device, dtype=param.dtype)

    def _num_levels(self, num_quantizers: int | None, bandwidth: float | None) -> int | None:
        if num_quantizers is not None and bandwidth is not None:
            raise ValueError("pass num_quantizers or bandwidth, not both")
        if bandwidth is not None:
            return self.bandwidth_to_num_quantizers(bandwidth)
        if num_quantizers is not None and not 1 <= num_quantizers <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be in [1, {self.num_quantizers}], got {num_quantizers}")
        return num_quantizers

    # ------------------------------------------------------------------------------------------ forward passes
    def forward(self, wav: torch.Tensor, num_quantizers: int | None = None,
                return_dict: bool = True) -> AudioTokenizerOutput:
        """Encode, quantize (straight-through) and decode: the training pass.

        ``num_quantizers=None`` uses all levels, or a random number of them in training when ``quantize_dropout``.
        """
        x = self.preprocess(wav)                                            # [B, 1, N]
        z = self.encoder(x)                                                 # [B, D, F]
        q = self.quantizer(z.transpose(1, 2), num_quantizers=num_quantizers)  # RVQ is channel-last
        recon = self.decoder(q.quantized.transpose(1, 2))                   # [B, 1, N]
        out = AudioTokenizerOutput(reconstruction=recon, codes=q.indices.transpose(1, 2),
                                   quantizer_loss=q.loss, metrics=q.metrics)
        return out if return_dict else out.to_tuple()

    def _quantize(self, z: torch.Tensor, n: int | None) -> torch.Tensor:
        # z: [B, D, F] -> codes [B, n_q, F]
        return self.quantizer(z.transpose(1, 2), num_quantizers=n or self.num_quantizers).indices.transpose(1, 2)

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: [B, n_q, F] -> latent [B, D, F]
        check_codes(codes, ("B", "n_q", "F"), self.codebook_size, max_levels=self.num_quantizers)
        z = self.quantizer.indices_to_codes(codes.to(self.device).transpose(1, 2))
        return z.transpose(1, 2).to(self.dtype)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, num_quantizers: int | None = None,
               bandwidth: float | None = None) -> torch.Tensor:
        """Waveform ``[B, 1, N]`` or ``[B, N]`` -> codes ``[B, n_q, ceil(N / hop)]`` (int64).

        Args:
            num_quantizers: levels to emit (default: all).
            bandwidth: or a bitrate in kbps (see :meth:`bandwidth_to_num_quantizers`).
        """
        n = self._num_levels(num_quantizers, bandwidth)
        was_training = self.training
        self.eval()                                      # never move codebooks or drop levels while encoding
        try:
            with parametrize.cached():                   # weight norm computed once per call, not per use
                return self._quantize(self.encoder(self.preprocess(wav)), n)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, n_q, F]`` (the first ``n_q`` levels) -> waveform ``[B, 1, F * hop]`` clamped to [-1, 1]."""
        with parametrize.cached():
            return self.decoder(self._dequantize(codes)).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------------------------------------ streaming
    def stream_encoder(self, num_quantizers: int | None = None) -> "AudioStreamEncoder":
        """A chunk-by-chunk encoder (causal models only); see :class:`AudioStreamEncoder`."""
        return AudioStreamEncoder(self, num_quantizers)

    def stream_decoder(self) -> "AudioStreamDecoder":
        """A chunk-by-chunk decoder (causal models only); see :class:`AudioStreamDecoder`."""
        return AudioStreamDecoder(self)


class AudioStreamEncoder:
    """Encode a signal chunk by chunk with carried state; the codes equal those of encoding it whole.

    ``encode(chunk)`` takes ``[B, 1, n]`` / ``[B, n]`` samples of any length and returns the codes of every frame
    completed so far ``[B, n_q, k]`` (``k`` may be 0); ``flush()`` zero-pads the remainder to a full frame, as
    :meth:`AudioTokenizer.encode` pads the end of a whole signal, and returns the last frame (if any).
    """

    def __init__(self, model: AudioTokenizer, num_quantizers: int | None = None):
        if not model.config.causal:
            raise ValueError("streaming needs a causal model (config.causal=True); this one pads both sides")
        self.model = model
        self.num_quantizers = model._num_levels(num_quantizers, None)
        self.state: StreamState = {}
        self.num_samples = 0

    @torch.no_grad()
    def encode(self, chunk: torch.Tensor) -> torch.Tensor:
        x = self.model._as_batch(chunk)                                      # [B, 1, n]
        self.num_samples += x.shape[-1]
        was_training = self.model.training
        self.model.eval()
        try:
            z = self.model.encoder(x, self.state)                            # [B, D, k]
            return self.model._quantize(z, self.num_quantizers)               # [B, n_q, k]
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        pad = (-self.num_samples) % self.model.hop_length
        batch = self._batch_size()
        param = next(self.model.parameters())
        return self.encode(torch.zeros(batch, 1, pad, dtype=param.dtype, device=param.device))

    def _batch_size(self) -> int:
        for value in self.state.values():
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        return 1


class AudioStreamDecoder:
    """Decode codes chunk by chunk with carried state: ``decode(codes [B, n_q, k]) -> [B, 1, k * hop]``; the
    concatenated output equals :meth:`AudioTokenizer.decode` of all the codes."""

    def __init__(self, model: AudioTokenizer):
        if not model.config.causal:
            raise ValueError("streaming needs a causal model (config.causal=True); this one pads both sides")
        self.model = model
        self.state: StreamState = {}

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(self.model._dequantize(codes), self.state).clamp(-1.0, 1.0)


AutoConfig.register(AudioTokenizerConfig.model_type, AudioTokenizerConfig, exist_ok=True)
AutoModel.register(AudioTokenizerConfig, AudioTokenizer, exist_ok=True)
