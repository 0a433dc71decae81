"""Configuration of the SoundStream/EnCodec-style audio tokenizer (:mod:`mmtok.audio.modeling_audio`).

Named presets (``AudioTokenizerConfig.from_preset(name)``):

==================  ========  ======  =======  ==============  =========  =========================================
preset              rate      hop     frames/s  RVQ            params     use
==================  ========  ======  =======  ==============  =========  =========================================
``debug``           16 kHz    32      500      4 x 64          ~20 k      unit tests (milliseconds)
``demo``            16 kHz    500     32       8 x 256         ~0.65 M    ``make demo`` on Moving-Digits (CPU)
``soundstream_24k`` 24 kHz    320     75       8 x 1024        ~10 M      SoundStream-sized (6 kbps at 8 levels)
``encodec_24k``     24 kHz    320     75       32 x 1024       ~15 M      EnCodec-24kHz-sized (1.5 .. 24 kbps)
``spectral_16k``    16 kHz    320     50       12 x 1024       ~3.4 M     speech and music on CPU (STFT + Vocos)
==================  ========  ======  =======  ==============  =========  =========================================

Two layouts (``architecture``): ``seanet``, the causal, streamable waveform CNN of SoundStream and EnCodec
(:mod:`mmtok.audio.modeling_audio`); and ``spectral``, an STFT-frame encoder and a Vocos-style inverse-STFT decoder
whose layers all run at the code rate (:mod:`mmtok.audio.spectral`): centred windows, so not streamable; it learns
the spectrum of real speech and music in far fewer steps.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny, for tests: hop 32, no LSTM.
    "debug": dict(sample_rate=16000, ratios=(2, 4, 4), base_channels=4, dimension=16, dilations=(1, 3),
                  lstm_layers=0, num_quantizers=4, codebook_size=64),
    # The embedded Moving-Digits audio (16 kHz struck tones) on 2 CPU cores: a frame codec. The patch stem folds a
    # whole 500-sample frame (hop 500 -> 32 Hz, 4 frames per video frame at 8 fps) into channels, and every conv runs
    # at the frame rate. The corpus's tones hold whole periods in a frame and its strikes start on frame boundaries,
    # so each frame is one digit's waveform at some loudness; trained on frame-aligned crops
    # (``data.crop_on_frames``) this learns pitch and strikes in hundreds of steps, where the SEANet layout
    # (patch 20, strides 5, 5) stayed at -24 dB SI-SNR and chance pitch after 1,500 (docs/what_was_tried.md).
    "demo": dict(sample_rate=16000, patch_size=500, ratios=(1,), base_channels=64, dimension=64,
                 dilations=(1, 3, 9), lstm_layers=0, num_quantizers=8, codebook_size=256),
    # SoundStream (arXiv 2107.03312): C=32, residual units with 7-tap dilated convs (1, 3, 9), strides (2,4,5,8).
    "soundstream_24k": dict(sample_rate=24000, ratios=(2, 4, 5, 8), base_channels=32, dimension=128,
                            dilations=(1, 3, 9), residual_kernel_size=7, compress=1, lstm_layers=0,
                            num_quantizers=8, codebook_size=1024),
    # EnCodec 24 kHz (arXiv 2210.13438): one residual unit (3-tap, compress 2, 1x1 conv shortcut) per stage,
    # 2-layer LSTM, 32 levels x 1024 (24 kbps); the transformers port has 14.9 M parameters.
    "encodec_24k": dict(sample_rate=24000, ratios=(2, 4, 5, 8), base_channels=32, dimension=128, dilations=(1,),
                        residual_kernel_size=3, compress=2, conv_shortcut=True, lstm_layers=2,
                        num_quantizers=32, codebook_size=1024),
    # Speech and music at 16 kHz on 2 CPU cores: an STFT (n_fft 1280, hop 320: 50 frames/s) encoder and a Vocos
    # decoder, 6 ConvNeXt blocks of width 192 each side; 12 x 1024 RVQ = 0.5 .. 6 kbps. Of the sizes timed against
    # SEANet's speech16k codec (encode + decode of 4 s, one run), 192 x 6 ran 1.57x its speed, 192 x 8 1.42x and
    # 256 x 8 0.95x: the smallest clears 100x real time with a margin where SEANet's ran 81x.
    "spectral_16k": dict(sample_rate=16000, architecture="spectral", ratios=(320,), n_fft=1280, base_channels=192,
                         num_blocks=6, mlp_ratio=3.0, dimension=128, causal=False, num_quantizers=12,
                         codebook_size=1024),
}


class AudioTokenizerConfig(PretrainedConfig):
    r"""Configuration of :class:`~mmtok.audio.AudioTokenizer`.

    ``architecture="seanet"``: the encoder is a SEANet stack: a ``kernel_size`` conv from 1 to ``base_channels``
    channels; then per stride in ``ratios`` a set of residual units (one per entry of ``dilations``) and a strided
    conv (kernel ``2 * stride``) that doubles the channels; an optional LSTM; a ``last_kernel_size`` conv to
    ``dimension``. The decoder mirrors it with transposed convs. A residual VQ quantizes the ``dimension``-wide
    latent at ``sample_rate / hop_length`` frames per second.

    ``architecture="spectral"`` (:mod:`mmtok.audio.spectral`): the hop is ``prod(ratios)`` (one entry, e.g.
    ``(320,)``); the encoder reads ``n_fft``-sample STFT frames and the decoder predicts a magnitude and a phase per
    bin for an inverse STFT; both are ``num_blocks`` ConvNeXt blocks of width ``base_channels``. SEANet's kernel,
    dilation, residual, LSTM and patch settings do not apply; ``causal`` must be ``False``.

    Args:
        architecture: ``"seanet"`` (waveform CNN, streamable) or ``"spectral"`` (STFT frames, not streamable).
        sample_rate: audio rate in Hz (mono).
        patch_size: fold this many consecutive samples into channels before the first conv (1 = SEANet's
            full-rate first conv); the hop is ``patch_size * prod(ratios)``.
        ratios: encoder downsampling strides, first applied first (the decoder upsamples in reverse order); their
            product times ``patch_size`` is the hop length.
        base_channels: channels after the first conv; doubled at every downsampling (spectral: the blocks' width).
        dimension: latent (and codebook input) dimension.
        kernel_size: kernel of the first encoder conv and the first decoder conv.
        last_kernel_size: kernel of the last encoder conv and the last decoder conv.
        dilations: one residual unit per entry (SoundStream: 1, 3, 9).
        residual_kernel_size: kernel of the dilated conv of each residual unit.
        compress: the residual unit's hidden width is ``channels // compress`` (EnCodec: 2).
        conv_shortcut: a 1x1 conv on the residual skip path (EnCodec) instead of the identity.
        lstm_layers: layers of the LSTM (with a skip connection) after the encoder and before the decoder; 0 = none.
        causal: pad every conv from the past only, which makes the codec streamable (chunked encoding/decoding
            equals whole-signal encoding/decoding); ``False`` pads both sides (better quality, not streamable).
        weight_norm: weight normalization on every conv (SEANet).
        num_quantizers: residual VQ levels.
        codebook_size: codes per level.
        codebook_dim: dimension the RVQ works in (``None`` = ``dimension``).
        quantize_dropout: train with a random number of levels per batch so one model serves all bitrates.
        quantize_dropout_cutoff_index: at least ``cutoff + 1`` levels are always kept.
        commitment_weight, decay, kmeans_init, kmeans_iters, threshold_ema_dead_code: passed to
            :class:`mmtok.quantizers.ResidualVQ`.
        n_fft: spectral only: the STFT window (default ``4 * hop``; ``n_fft - hop`` must be even).
        num_blocks: spectral only: ConvNeXt blocks in the encoder, and as many in the decoder.
        mlp_ratio: spectral only: the blocks' hidden width over ``base_channels``.
        preset: the preset name this config was built from (informative only).
    """

    model_type = "mmtok_audio"

    def __init__(
        self,
        sample_rate: int = 24000,
        ratios: tuple[int, ...] | list[int] = (2, 4, 5, 8),
        patch_size: int = 1,
        base_channels: int = 32,
        dimension: int = 128,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        dilations: tuple[int, ...] | list[int] = (1, 3, 9),
        residual_kernel_size: int = 3,
        compress: int = 2,
        conv_shortcut: bool = False,
        lstm_layers: int = 0,
        causal: bool = True,
        weight_norm: bool = True,
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        quantize_dropout: bool = True,
        quantize_dropout_cutoff_index: int = 0,
        commitment_weight: float = 1.0,
        decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
        architecture: str = "seanet",
        n_fft: int | None = None,
        num_blocks: int = 8,
        mlp_ratio: float = 3.0,
        preset: str | None = None,
        **kwargs: Any,
    ):
        self.sample_rate = int(sample_rate)
        self.ratios = [int(r) for r in ratios]
        self.patch_size = int(patch_size)
        self.base_channels = base_channels
        self.dimension = dimension
        self.kernel_size = kernel_size
        self.last_kernel_size = last_kernel_size
        self.dilations = [int(d) for d in dilations]
        self.residual_kernel_size = residual_kernel_size
        self.compress = compress
        self.conv_shortcut = conv_shortcut
        self.lstm_layers = lstm_layers
        self.causal = causal
        self.weight_norm = weight_norm
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.quantize_dropout = quantize_dropout
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.commitment_weight = commitment_weight
        self.decay = decay
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.architecture = architecture
        self.n_fft = int(n_fft) if n_fft is not None else 4 * self.patch_size * math.prod(self.ratios)
        self.num_blocks = int(num_blocks)
        self.mlp_ratio = float(mlp_ratio)
        self.preset = preset
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.sample_rate < 1:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be a non-empty list of positive strides, got {self.ratios}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be a non-empty list of positive ints, got {self.dilations}")
        if self.compress < 1 or self.base_channels < self.compress:
            raise ValueError(f"need 1 <= compress <= base_channels, got compress={self.compress}, "
                             f"base_channels={self.base_channels}")
        if self.num_quantizers < 1 or self.codebook_size < 2:
            raise ValueError(f"need num_quantizers >= 1 and codebook_size >= 2, got {self.num_quantizers}, "
                             f"{self.codebook_size}")
        if self.lstm_layers < 0:
            raise ValueError(f"lstm_layers must be >= 0, got {self.lstm_layers}")
        if self.architecture not in ("seanet", "spectral"):
            raise ValueError(f"architecture must be 'seanet' or 'spectral', got {self.architecture!r}")
        if self.architecture == "spectral":
            hop = self.hop_length
            if self.causal:
                raise ValueError("architecture='spectral' is not causal (its STFT windows are centred): "
                                 "set causal=False")
            if self.patch_size != 1 or len(self.ratios) != 1:
                raise ValueError(f"architecture='spectral' takes its hop as ratios=[hop] with patch_size=1, got "
                                 f"ratios={self.ratios}, patch_size={self.patch_size}")
            if self.n_fft < hop or (self.n_fft - hop) % 2:
                raise ValueError(f"n_fft must be >= the hop ({hop}) and differ from it by an even number, "
                                 f"got {self.n_fft}")
            if self.num_blocks < 0 or self.mlp_ratio <= 0:
                raise ValueError(f"need num_blocks >= 0 and mlp_ratio > 0, got {self.num_blocks}, {self.mlp_ratio}")

    # ------------------------------------------------------------------------------------------ derived sizes
    @property
    def hop_length(self) -> int:
        """Samples per latent frame (``patch_size * prod(ratios)``)."""
        return self.patch_size * math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def bits_per_level(self) -> float:
        return math.log2(self.codebook_size)

    def kbps(self, num_quantizers: int) -> float:
        """Bitrate of ``num_quantizers`` levels: ``n_q * log2(codebook_size) * frame_rate / 1000``."""
        return num_quantizers * self.bits_per_level * self.frame_rate / 1000.0

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AudioTokenizerConfig":
        """A named preset (``debug``, ``demo``, ``soundstream_24k``, ``encodec_24k``, ``spectral_16k``) with optional
        overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown audio tokenizer preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})
