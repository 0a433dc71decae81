"""Tiny deterministic stand-ins for the text / video / audio tokenizers, for the data tests.

They implement the modality-tokenizer interface and ``save_pretrained`` / ``from_pretrained``, so a
``MultimodalTokenizer`` bundle of them can be saved and re-loaded in worker processes (this folder must be on
``sys.path``: pytest puts it there, subprocess tests pass it in ``PYTHONPATH``). Codes are simple functions of the
content (mean brightness per latent cell, RMS per audio frame), so they change when the media change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mmtok.multimodal import register_tokenizer_class


class _Saveable:
    _fields: tuple[str, ...] = ()

    def save_pretrained(self, d) -> None:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "fake_config.json").write_text(json.dumps({k: getattr(self, k) for k in self._fields}))

    @classmethod
    def from_pretrained(cls, d, **kwargs):
        return cls(**json.loads((Path(d) / "fake_config.json").read_text()))


@register_tokenizer_class
class FakeTextTokenizer(_Saveable):
    modality = "text"
    _fields = ("vocab",)

    def __init__(self, vocab: int = 128) -> None:
        self.vocab = vocab

    codebook_size = property(lambda self: self.vocab)
    num_codebooks = property(lambda self: 1)
    frame_rate = property(lambda self: None)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % self.vocab for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(int(i)) for i in ids)


@register_tokenizer_class
class FakeVideoTokenizer(_Saveable):
    """uint8 [B, T, H, W, 3] (T = 1 + 4k) -> codes [B, 1 + k, H / 16, W / 16] (mean brightness buckets)."""

    modality = "video"
    _fields = ("codes", "spatial", "delay")

    def __init__(self, codes: int = 64, spatial: int = 16, delay: float = 0.0) -> None:
        self.codes, self.spatial, self.delay = codes, spatial, delay

    codebook_size = property(lambda self: self.codes)
    num_codebooks = property(lambda self: 1)
    frame_rate = property(lambda self: 2.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8 or video.dim() != 5 or video.shape[-1] != 3:
            raise ValueError(f"expected uint8 [B, T, H, W, 3], got {video.dtype} {tuple(video.shape)}")
        b, t, h, w, _ = video.shape
        if (t - 1) % 4 or h % self.spatial or w % self.spatial:
            raise ValueError(f"frames must be 1 + 4k and sizes divisible by {self.spatial}, got {t}x{h}x{w}")
        if self.delay:
            time.sleep(self.delay)
        x = video.float().mean(-1)                                            # [B, T, H, W]
        x = torch.cat([x[:, :1], x[:, 1:].reshape(b, (t - 1) // 4, 4, h, w).mean(2)], 1)  # [B, T', H, W]
        x = torch.nn.functional.avg_pool2d(x.flatten(0, 1), self.spatial).reshape(b, -1, h // self.spatial,
                                                                                   w // self.spatial)
        return (x * 7.3).long() % self.codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.float() / self.codes * 2 - 1                                # [B, T', H', W']
        x = x.repeat_interleave(self.spatial, -1).repeat_interleave(self.spatial, -2)
        return x.unsqueeze(1).expand(-1, 3, -1, -1, -1)


@register_tokenizer_class
class FakeAudioTokenizer(_Saveable):
    """float [B, 1, N] -> codes [B, 2, ceil(N / 320)] (RMS and mean-sign buckets per hop)."""

    modality = "audio"
    _fields = ("codes", "hop", "rate")

    def __init__(self, codes: int = 32, hop: int = 320, rate: int = 16000) -> None:
        self.codes, self.hop, self.rate = codes, hop, rate

    codebook_size = property(lambda self: self.codes)
    num_codebooks = property(lambda self: 2)
    frame_rate = property(lambda self: self.rate / self.hop)
    sample_rate = property(lambda self: self.rate)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.reshape(wav.shape[0], -1)
        n = wav.shape[1]
        frames = -(-n // self.hop)
        x = torch.nn.functional.pad(wav, (0, frames * self.hop - n)).reshape(wav.shape[0], frames, self.hop)
        rms = (x.pow(2).mean(-1).sqrt() * 4 * self.codes).long().clamp(0, self.codes - 1)
        sign = ((x.mean(-1) + 1) / 2 * self.codes).long().clamp(0, self.codes - 1)
        return torch.stack([rms, sign], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        amp = codes[:, 0].float() / (4 * self.codes)                          # [B, F]
        return amp.repeat_interleave(self.hop, -1).unsqueeze(1)


def make_bundle(directory, *, delay: float = 0.0, audio: bool = True):
    """Save a MultimodalTokenizer of the fakes into ``directory`` and return it."""
    from mmtok.multimodal import MultimodalTokenizer

    bundle = MultimodalTokenizer(text=FakeTextTokenizer(), video=FakeVideoTokenizer(delay=delay),
                                 audio=FakeAudioTokenizer() if audio else None)
    bundle.save_pretrained(directory)
    return bundle
