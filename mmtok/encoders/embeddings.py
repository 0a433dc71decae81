"""Raw signals -> packed tokens, one module per modality, with input checks that name the expected shape.

- Video (:class:`VideoEmbeddings`): ViViT's tubelet embedding (arXiv 2103.15691): non-overlapping ``t x p x p``
  tubelets (a clip optionally preceded by copies of its first frame up to a multiple of ``t``), each linearly embedded (a Conv3d with kernel = stride = ``(t, p, p)`` is exactly this linear map; the
  flattening order ``(c, t, p, p)`` matches its weight), plus a learned temporal and a learned spatial position
  embedding. With RLT on, static tubelets are dropped first (:mod:`mmtok.encoders.rlt`) and only kept ones embedded.
- Audio (:class:`AudioEmbeddings`): VATT-style raw-waveform patches (arXiv 2104.11178) of ``audio_patch_size``
  samples, or log-mel patches of ``audio_patch_size`` mel frames, linearly embedded, plus a learned position.
- Text (:class:`TextEmbeddings`): the SentencePiece ids' embedding plus a learned position; padding is removed.

Each returns :class:`Embedded`: packed tokens ``[N, C]``, their sizes ``[N]`` (patches each stands for), the
packing, and the token grid ``(T', H', W')`` while each clip's tokens are its full grid in ``(t, h, w)`` order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mmtok.audio_features import MelSpectrogram
from mmtok.encoders.configuration_encoder import PatchEncoderConfig
from mmtok.encoders.packing import Packing
from mmtok.encoders.rlt import RunLengthEmbedding, rlt_keep_mask, run_lengths
from mmtok.interface import require_finite

__all__ = ["AudioEmbeddings", "Embedded", "TextEmbeddings", "VideoEmbeddings", "build_embeddings", "patchify_video"]


class Embedded(NamedTuple):
    """Tokens of a batch, packed. ``grid`` is ``(T', H', W')`` when every clip holds its full tubelet grid in
    ``(t, h, w)`` order (what divided attention and STTS need), else ``None``."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    packing: Packing
    grid: tuple[int, int, int] | None


def patchify_video(video: torch.Tensor, t: int, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> tubelets ``[B, T/t, H/p, W/p, C*t*p*p]`` (each flattened in ``(c, t, p, p)`` order)."""
    b, c, tt, h, w = video.shape
    x = video.reshape(b, c, tt // t, t, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, tt // t, h // p, w // p, c * t * p * p)


def _float_input(x: object, name: str, expected: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor {expected}, got {x.dtype}"
                         + (" (uint8 frames [B, T, H, W, 3]: convert with mmtok.frames.from_uint8)"
                            if x.dtype == torch.uint8 else ""))
    require_finite(x, name)
    return x


class VideoEmbeddings(nn.Module):
    """Tubelet embedding with space-time positions, and RLT's token dropping when asked for."""

    def __init__(self, config: PatchEncoderConfig):
        super().__init__()
        c, t, p, dim = config.in_channels, config.tubelet_size, config.patch_size, config.hidden_size
        self.in_channels, self.tubelet_size, self.patch_size = c, t, p
        self.tubelet_padding = config.tubelet_padding
        self.max_grid = tuple(config.max_grid)
        self.patch = nn.Linear(c * t * p * p, dim)
        self.temporal = nn.Embedding(self.max_grid[0], dim)
        self.spatial = nn.Embedding(self.max_grid[1] * self.max_grid[2], dim)        # place h * max_W + w
        self.run_length = (RunLengthEmbedding(config.rlt_max_run, dim) if config.rlt_threshold is not None
                           else None)

    def check(self, video: object) -> torch.Tensor:
        """Validate ``[B, C, T, H, W]`` video (or ``[B, C, H, W]`` images) and return it as ``[B, C, T, H, W]``."""
        c, t, p = self.in_channels, self.tubelet_size, self.patch_size
        expected = f"[B, {c}, T, H, W] (or images [B, {c}, H, W]) in [-1, 1]"
        video = _float_input(video, "pixel_values", expected)
        if video.dim() == 4:
            video = video[:, :, None]
        if video.dim() != 5 or video.shape[1] != c:
            hint = (" (channel-last? video is channel-first [B, 3, T, H, W])"
                    if video.dim() == 5 and video.shape[-1] == c else "")
            raise ValueError(f"pixel_values must be {expected}, got shape {tuple(video.shape)}{hint}")
        if video.shape[0] == 0:
            raise ValueError("pixel_values holds no clips (B = 0)")
        frames, h, w = video.shape[2:]
        if frames % t and (frames == 1 or self.tubelet_padding == "first_frame"):
            # an image is one still tubelet; with first-frame padding any clip starts with copies of its first frame
            first = video[:, :, :1].expand(-1, -1, t - frames % t, -1, -1)
            video = torch.cat([first, video], dim=2)
        elif frames % t:
            raise ValueError(f"the number of frames T={frames} must be a multiple of tubelet_size={t} (or 1, an image; "
                             "or set tubelet_padding='first_frame')")
        if h % p or w % p:
            raise ValueError(f"height and width must be multiples of patch_size={p}, got {h}x{w}")
        grid = (video.shape[2] // t, h // p, w // p)
        if any(g > m for g, m in zip(grid, self.max_grid)):
            raise ValueError(f"the tubelet grid {list(grid)} (T/t, H/p, W/p) exceeds max_grid {list(self.max_grid)}; "
                             "build the encoder with a larger max_grid")
        return video

    def forward(self, video: torch.Tensor, rlt_threshold: float | None) -> Embedded:
        video = self.check(video).to(self.patch.weight.dtype)
        tubelets = patchify_video(video, self.tubelet_size, self.patch_size)          # [B, T', H', W', D]
        b, tt, h, w, d = tubelets.shape
        if rlt_threshold is None:
            place = (torch.arange(h, device=video.device)[:, None] * self.max_grid[2]
                     + torch.arange(w, device=video.device)[None])                     # [H', W']
            pos = self.temporal.weight[:tt, None, None] + self.spatial(place)[None]       # [T', H', W', C]
            tokens = (self.patch(tubelets) + pos).reshape(b * tt * h * w, -1)            # [N, C]
            sizes = torch.ones(tokens.shape[0], device=video.device)
            return Embedded(tokens, sizes, Packing.uniform(b, tt * h * w, video.device), (tt, h, w))
        flat = tubelets.reshape(b, tt, h * w, d)                                          # [B, T', S, D]
        keep = rlt_keep_mask(flat.float(), rlt_threshold)                                 # [B, T', S]
        runs = run_lengths(keep)                                                          # [B, T', S]
        _, ti, si = keep.nonzero(as_tuple=True)                                           # kept, in (b, t, s) order
        place = (si // w) * self.max_grid[2] + si % w
        tokens = self.patch(flat[keep]) + self.temporal(ti) + self.spatial(place)         # [N, C]
        kept_runs = runs[keep]                                                            # [N]
        if self.run_length is not None:
            tokens = tokens + self.run_length(kept_runs)
        return Embedded(tokens, kept_runs.float(), Packing.from_lengths(keep.sum(dim=(1, 2))), None)


class AudioEmbeddings(nn.Module):
    """Waveform (or log-mel) patches with a learned position."""

    def __init__(self, config: PatchEncoderConfig):
        super().__init__()
        self.patch_size, self.max_sequence_length = config.audio_patch_size, config.max_sequence_length
        if config.audio_input == "log_mel":
            # the filterbank is computed from values (not on the meta device from_pretrained builds models on)
            with torch.device("cpu"):
                self.mel = MelSpectrogram(config.sample_rate, config.mel_n_fft, config.mel_hop_length,
                                          config.mel_bins)
            patch_dim = config.mel_bins * config.audio_patch_size
        else:
            self.mel = None
            patch_dim = config.audio_patch_size
        self.patch = nn.Linear(patch_dim, config.hidden_size)
        self.position = nn.Embedding(config.max_sequence_length, config.hidden_size)

    @property
    def samples_per_patch(self) -> int:
        """Waveform samples one token covers."""
        return self.patch_size * (self.mel.hop_length if self.mel is not None else 1)

    def forward(self, audio: torch.Tensor) -> Embedded:
        expected = "[B, samples] (or [B, 1, samples]), mono"
        audio = _float_input(audio, "input_values", expected)
        if audio.dim() == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.dim() != 2 or audio.shape[0] == 0:
            raise ValueError(f"input_values must be a waveform {expected}, got shape {tuple(audio.shape)}")
        b, n = audio.shape
        step = self.samples_per_patch
        if n == 0 or n % step:
            raise ValueError(f"the waveform length ({n} samples) must be a positive multiple of {step} (samples per "
                             "audio token); pad or crop the clips")
        if n // step > self.max_sequence_length:
            raise ValueError(f"{n // step} audio tokens exceed max_sequence_length={self.max_sequence_length}")
        audio = audio.to(self.patch.weight.dtype)
        if self.mel is None:
            patches = audio.reshape(b, n // step, step)                                   # [B, L, P]
        else:
            # centred STFT frames: samples / hop + 1 of them; the last one (past the end) is left out
            mel = torch.log(self.mel(audio.float()) + 1e-5)[..., : n // self.mel.hop_length]  # [B, mels, frames]
            patches = (mel.reshape(b, mel.shape[1], n // step, self.patch_size).permute(0, 2, 1, 3)
                       .reshape(b, n // step, -1).to(audio.dtype))                        # [B, L, mels * P]
        length = patches.shape[1]
        tokens = (self.patch(patches) + self.position.weight[:length]).reshape(b * length, -1)  # [N, C]
        sizes = torch.ones(tokens.shape[0], device=audio.device)
        return Embedded(tokens, sizes, Packing.uniform(b, length, audio.device), None)


class TextEmbeddings(nn.Module):
    """Token ids with a learned position; padding (``attention_mask == 0`` or ``pad_token_id``) is removed."""

    def __init__(self, config: PatchEncoderConfig):
        super().__init__()
        self.vocab_size, self.pad_token_id = config.vocab_size, config.pad_token_id
        self.max_sequence_length = config.max_sequence_length
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_sequence_length, config.hidden_size)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Embedded:
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor [B, L], got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)}")
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, L] with B, L >= 1, got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_sequence_length:
            raise ValueError(f"input_ids has {ids.shape[1]} positions, more than max_sequence_length="
                             f"{self.max_sequence_length}")
        if attention_mask is not None:
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must be [B, L] = {tuple(ids.shape)} like input_ids, got "
                                 f"{tuple(attention_mask.shape)}")
            keep = attention_mask.to(ids.device).bool()
        elif self.pad_token_id is not None:
            keep = ids != self.pad_token_id
        else:
            keep = torch.ones_like(ids, dtype=torch.bool)
        lengths = keep.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError(f"text row(s) {(lengths == 0).nonzero().flatten().tolist()[:10]} hold no real token "
                             "(all padding)")
        real = ids[keep]
        if int(real.min()) < 0 or int(real.max()) >= self.vocab_size:
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.vocab_size}) outside padding, got range "
                             f"[{int(real.min())}, {int(real.max())}]")
        _, pos = keep.nonzero(as_tuple=True)                                               # [N]
        tokens = self.token(real) + self.position(pos)                                    # [N, C]
        sizes = torch.ones(tokens.shape[0], device=ids.device)
        return Embedded(tokens, sizes, Packing.from_lengths(lengths), None)


def build_embeddings(config: PatchEncoderConfig) -> nn.Module:
    """The embedding module of ``config.modality``."""
    return {"video": VideoEmbeddings, "audio": AudioEmbeddings, "text": TextEmbeddings}[config.modality](config)

