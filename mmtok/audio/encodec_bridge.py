"""Pretrained EnCodec behind the mmtok audio-tokenizer interface, through ``transformers.EncodecModel``.

A user who has EnCodec weights (e.g. a local copy of ``facebook/encodec_24khz`` or ``facebook/encodec_48khz``) uses
them in the LM without training a codec::

    tok = EncodecAudioTokenizer.from_pretrained("/models/encodec_24khz")  # a local directory; the hub is never contacted
    codes = tok.encode(wav, bandwidth=6.0)                       # [B, 1, N] at 24 kHz -> [B, 8, ceil(N / 320)]
    wav2 = tok.decode(codes)                                     # [B, 1, 320 * F]

Differences from ``EncodecModel.encode``: the whole signal is encoded in one pass (no 1 s chunks with overlap-add),
so codes come at one uniform frame rate an LM can model; for models that normalize loudness (the 48 kHz one) the
per-item scale is not part of the codes: :meth:`EncodecAudioTokenizer.encode` can return it
(``return_scales=True``) and :meth:`EncodecAudioTokenizer.decode` takes it back, and without it the output is
brought to ``reference_rms``.

:func:`load_audio_tokenizer` opens a directory holding either an mmtok ``AudioTokenizer`` or an EnCodec model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtok.audio.modeling_audio import AudioTokenizer
from mmtok.interface import check_codes


class EncodecAudioTokenizer(nn.Module):
    """A ``transformers.EncodecModel`` with the modality-tokenizer surface of :class:`~mmtok.audio.AudioTokenizer`.

    Args:
        model: the EncodecModel (24 kHz mono or 48 kHz stereo).
        reference_rms: loudness (RMS) of decoded audio when a normalizing model decodes without scales.

    Audio is ``[B, C, N]`` with ``C = config.audio_channels`` (mono ``[B, 1, N]`` / ``[B, N]`` input is duplicated to
    stereo for the 48 kHz model); codes are ``[B, n_q, F]`` with ``F = ceil(N / hop)``.
    """

    modality = "audio"

    def __init__(self, model: Any, reference_rms: float = 0.1):
        super().__init__()
        from transformers import EncodecModel

        if not isinstance(model, EncodecModel):
            raise TypeError(f"expected a transformers.EncodecModel, got {type(model).__name__}")
        self.model = model.eval()
        self.reference_rms = reference_rms

    @classmethod
    def from_pretrained(cls, path_or_model: Any, **kwargs: Any) -> "EncodecAudioTokenizer":
        """Wrap an ``EncodecModel`` instance, or load one from a local directory (config.json + weights)."""
        from transformers import EncodecModel

        if isinstance(path_or_model, EncodecModel):
            return cls(path_or_model, **kwargs)
        if not isinstance(path_or_model, (str, os.PathLike)):
            raise TypeError(f"EncodecAudioTokenizer.from_pretrained takes an EncodecModel or a local directory, got {type(path_or_model).__name__}")
        path = Path(path_or_model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no EnCodec model at {path} (expected a local directory with config.json and "
                                    "weights, e.g. a downloaded copy of facebook/encodec_24khz; the hub is not used)")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "encodec":
            raise ValueError(f"{path} holds a {model_type!r} model, not an EnCodec model")
        return cls(EncodecModel.from_pretrained(str(path), local_files_only=True, use_kernels=False), **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the wrapped EncodecModel (config.json + model.safetensors); :func:`load_audio_tokenizer` reopens it."""
        self.model.save_pretrained(str(path))

    # --------------------------------------------------------------------------------- interface properties
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def codebook_size(self) -> int:
        return int(self.config.codebook_size)

    @property
    def num_codebooks(self) -> int:
        return len(self.model.quantizer.layers)

    @property
    def num_quantizers(self) -> int:
        return self.num_codebooks

    @property
    def sample_rate(self) -> int:
        return int(self.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.config.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def channels(self) -> int:
        return int(self.config.audio_channels)

    @property
    def bandwidths(self) -> list[float]:
        per = math.log2(self.codebook_size) * self.frame_rate / 1000
        return [n * per for n in range(1, self.num_codebooks + 1)]

    def bandwidth_to_num_quantizers(self, kbps: float) -> int:
        """The most levels whose bitrate is <= ``kbps`` (``n_q * log2(codebook_size) * frame_rate / 1000``)."""
        per = math.log2(self.codebook_size) * self.frame_rate / 1000
        n = math.floor(kbps / per + 1e-9)
        if n < 1:
            raise ValueError(f"{kbps} kbps is below one RVQ level ({per:g} kbps); available: {self.bandwidths}")
        return min(n, self.num_codebooks)

    def code_frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` samples: ``ceil(num_samples / hop)``."""
        return math.ceil(num_samples / self.hop_length)

    # --------------------------------------------------------------------------------------------- coding
    def _as_batch(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor) or not wav.dtype.is_floating_point:
            raise TypeError(f"audio must be a float tensor, got {getattr(wav, 'dtype', type(wav).__name__)}")
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] not in (1, self.channels):
            raise ValueError(f"audio must be [B, {self.channels}, N]" + (" or mono [B, 1, N] / [B, N]"
                             if self.channels > 1 else " or [B, N]") + f", got shape {tuple(wav.shape)}")
        if wav.shape[1] != self.channels:
            wav = wav.expand(-1, self.channels, -1)
        param = next(self.model.parameters())
        return wav.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, num_quantizers: int | None = None, bandwidth: float | None = None,
               return_scales: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Waveform -> codes ``[B, n_q, ceil(N / hop)]`` (all levels by default; or ``num_quantizers`` /
        ``bandwidth`` in kbps). With ``return_scales`` also the per-item loudness ``[B, 1]`` of normalizing models
        (``None`` otherwise)."""
        if num_quantizers is not None and bandwidth is not None:
            raise ValueError("pass num_quantizers or bandwidth, not both")
        n = self.bandwidth_to_num_quantizers(bandwidth) if bandwidth is not None else (num_quantizers
                                                                                        or self.num_codebooks)
        if not 1 <= n <= self.num_codebooks:
            raise ValueError(f"num_quantizers must be in [1, {self.num_codebooks}], got {n}")
        x = self._as_batch(wav)                                                  # [B, C, N]
        scale = None
        if self.config.normalize:   # EnCodec: divide by the RMS of the mono mix
            scale = x.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8      # [B, 1, 1]
            x = x / scale
            scale = scale.view(-1, 1)
        emb = self.model.encoder(x)                                              # [B, D, F]
        residual, codes = emb, []
        for layer in self.model.quantizer.layers[:n]:
            idx = layer.encode(residual)                                         # [B, F]
            residual = residual - layer.decode(idx)
            codes.append(idx)
        codes = torch.stack(codes, dim=1)                                        # [B, n_q, F]
        return (codes, scale) if return_scales else codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, n_q, F]`` -> waveform ``[B, C, F * hop]`` clamped to [-1, 1]."""
        check_codes(codes, ("B", "n_q", "F"), self.codebook_size, max_levels=self.num_codebooks)
        codes = codes.to(next(self.model.parameters()).device).long()
        emb = self.model.quantizer.decode(codes.transpose(0, 1))                 # [B, D, F]
        wav = self.model.decoder(emb)                                            # [B, C, F * hop]
        if self.config.normalize:
            if scales is not None:
                wav = wav * scales.to(wav).view(-1, 1, 1)
            else:
                rms = wav.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
                wav = wav * (self.reference_rms / rms)
        return wav.clamp(-1.0, 1.0)


def load_audio_tokenizer(path: str | os.PathLike) -> AudioTokenizer | EncodecAudioTokenizer:
    """Open a directory saved by ``AudioTokenizer.save_pretrained`` or holding an EnCodec model (by ``model_type``
    in its config.json); raises ``FileNotFoundError`` / ``ValueError`` naming the directory otherwise."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"no audio tokenizer at {path} (config.json missing)")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type == "mmtok_audio":
        return AudioTokenizer.from_pretrained(str(path)).eval()
    if model_type == "encodec":
        return EncodecAudioTokenizer.from_pretrained(path)
    raise ValueError(f"{path} holds a {model_type!r} model; expected an mmtok audio tokenizer ('mmtok_audio') or "
                     "EnCodec ('encodec')")
