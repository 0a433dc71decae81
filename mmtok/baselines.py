"""Codecs that need no training, as baselines at a stated number of bits: what a learned tokenizer has to beat.

Each function takes one clip or waveform, runs it through the baseline and back, and returns a :class:`RoundTrip`:
the reconstruction (same form and shape as the input) and the exact number of bits the baseline's code takes.

Video (uint8 frames ``[T, H, W, 3]``, :mod:`mmtok.frames`):

- :func:`thumbnail_roundtrip`: area-downsample to ``t x h x w`` RGB, store each value in 8 bits, upsample back
  trilinearly. Bits: ``t * h * w * 3 * 8``, exactly (a 5x8x8 thumbnail is 7,680 bits, the size of 5x8x8 codes of
  a 2^24-entry codebook).
- :func:`h264_roundtrip`: H.264 (libx264 through PyAV) at a CRF or a bitrate; :func:`h264_within_bits`: the best
  CRF whose stream fits a bit budget (a bisection), which is how a bitrate is matched on a clip too short for
  x264's rate control to settle. Bits: the bytes of every encoded packet, SPS and PPS included, times 8. x264's
  SEI messages (a ~600-byte banner of its version and settings in the first packet) are dropped before counting
  and decoding: a decoder needs nothing in them, and at a few thousand bits they would be most of the budget.

Audio (mono float ``[N]`` in ``[-1, 1]``):

- :func:`opus_roundtrip`: Opus (libopus through PyAV) at a bitrate, run at 48 kHz (the input is resampled there and
  back with FFmpeg's resampler). Bits: the bytes of every Opus packet (no Ogg framing) times 8.
- :func:`pcm_downsample_roundtrip`: resample to a lower rate, quantize each sample to ``bits`` bits, resample back.
  Bits: samples at the low rate times ``bits``, exactly.

Scoring follows the rest of mmtok: video PSNR with :func:`mmtok.metrics.psnr` on the uint8 frames, value range
``(0, 255)``, one value per clip capped at 100 dB (``max_db=100.0``, as ``recipes/eval_video_tokenizer.py`` does:
an exact reconstruction, such as a "thumbnail" the size of the clip, is ``inf`` uncapped and 100 dB capped, so a
mean over clips stays finite); audio with :func:`mmtok.metrics.si_snr` and the codec evaluation's mel distance
(:class:`mmtok.audio_features.MultiScaleMelLoss`).

Everything runs single-threaded, so the same input gives the same bits on every machine with the same FFmpeg build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RoundTrip",
    "h264_roundtrip",
    "h264_within_bits",
    "opus_roundtrip",
    "pcm_downsample_roundtrip",
    "thumbnail_roundtrip",
]

OPUS_RATE = 48000          # libopus codes 8, 12, 16, 24 or 48 kHz; 48 kHz takes any input without a band limit
_H264_SEI = 6              # nal_unit_type of a supplemental enhancement information unit
_START_CODE = re.compile(b"\x00\x00\x01")


@dataclass(frozen=True)
class RoundTrip:
    """A baseline's reconstruction and its cost.

    Attributes:
        output: the reconstruction, in the input's form and shape (uint8 ``[T, H, W, 3]`` or float32 ``[N]``).
        bits: the exact size of the baseline's code in bits.
        settings: what the baseline ran with (e.g. the CRF :func:`h264_within_bits` chose), for reports.
    """

    output: np.ndarray
    bits: int
    settings: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------- video
def _frames(frames: Any) -> np.ndarray:
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T > 0, got {frames.dtype} {tuple(frames.shape)}")
    return np.ascontiguousarray(frames)


def thumbnail_roundtrip(frames: Any, t: int, h: int, w: int) -> RoundTrip:
    """Area-downsample a clip to ``t x h x w`` RGB values of 8 bits each, then upsample trilinearly to its size.

    Area downsampling averages each output cell over the input cells it covers (``F.interpolate(mode="area")``,
    adaptive average pooling, so sizes need not divide). Bits: ``t * h * w * 3 * 8``.
    """
    clip = _frames(frames)
    big_t, big_h, big_w = clip.shape[:3]
    if not (1 <= t <= big_t and 1 <= h <= big_h and 1 <= w <= big_w):
        raise ValueError(f"thumbnail {t}x{h}x{w} must be between 1 and the clip's {big_t}x{big_h}x{big_w}")
    video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].double()                       # [1, 3, T, H, W]
    small = F.interpolate(video, size=(t, h, w), mode="area").round().clamp(0, 255)       # the stored 8-bit values
    up = F.interpolate(small, size=(big_t, big_h, big_w), mode="trilinear", align_corners=False)
    out = up.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 3, 0).contiguous().numpy()
    return RoundTrip(out, t * h * w * 3 * 8, {"thumbnail": [t, h, w]})


def _drop_sei(data: bytes) -> bytes:
    """An H.264 Annex B packet without its SEI NAL units (start codes kept as they were)."""
    starts = [m.start() for m in _START_CODE.finditer(data)]
    if not starts:
        return data
    # A 4-byte start code is a zero byte then 00 00 01; the zero goes with the unit that follows it.
    cuts = [p - 1 if p > 0 and data[p - 1] == 0 else p for p in starts]
    kept = [data[:cuts[0]]]
    for i, (cut, p) in enumerate(zip(cuts, starts)):
        end = cuts[i + 1] if i + 1 < len(cuts) else len(data)
        if p + 3 < len(data) and data[p + 3] & 0x1F != _H264_SEI:
            kept.append(data[cut:end])
    return b"".join(kept)


def h264_roundtrip(frames: Any, fps: float, *, crf: float | None = None, bitrate: float | None = None,
                   preset: str = "medium") -> RoundTrip:
    """Encode a clip with libx264 (through PyAV, in memory), decode it back, and count its bits.

    Args:
        frames: uint8 ``[T, H, W, 3]``.
        fps: frame rate (x264's rate control spends a bitrate over time).
        crf: constant rate factor (0-51, fractions allowed; lower is better). Exactly one of ``crf`` / ``bitrate``.
        bitrate: target bits per second (x264's average-bitrate mode; on a clip of a few frames it can miss by a
            large factor, so :func:`h264_within_bits` is the way to match a budget).
        preset: x264 speed preset (slower presets spend the same bits better).

    Returns:
        the decoded frames (RGB through 4:2:0 YUV for even sizes, 4:4:4 for odd ones) and the bits of all packets,
        SEI units removed (module docstring).
    """
    clip = _frames(frames)
    if (crf is None) == (bitrate is None):
        raise ValueError("give exactly one of crf and bitrate")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n, height, width = clip.shape[:3]
    rate = Fraction(fps).limit_denominator(1001000)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = width, height
    enc.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    enc.time_base, enc.framerate = 1 / rate, rate
    enc.thread_count = 1        # x264's output depends on its thread count: one thread, the same bits everywhere
    # MB-tree rate control is off: on frames this small (64x64 and under) x264's lookahead reads uninitialised memory,
    # so its bits changed with the heap's contents (glibc's MALLOC_PERTURB_ shows it); without it they are exact.
    options = {"preset": preset, "x264-params": "mbtree=0"}
    if crf is not None:
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        options["crf"] = f"{crf:.4f}"
    else:
        if not bitrate > 0:
            raise ValueError(f"bitrate must be positive, got {bitrate}")
        enc.bit_rate = int(round(bitrate))
    enc.options = options
    packets: list[bytes] = []
    for i in range(n):
        # Converted here, not by the encoder: PyAV's conversion inside encode() gave different bits from run to run.
        frame = av.VideoFrame.from_ndarray(clip[i], format="rgb24").reformat(format=enc.pix_fmt)
        frame.pts = i
        packets.extend(_drop_sei(bytes(p)) for p in enc.encode(frame))
    packets.extend(_drop_sei(bytes(p)) for p in enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count = 1
    decoded = []
    for data in packets:
        decoded.extend(dec.decode(av.Packet(data)))
    decoded.extend(dec.decode(None))
    if len(decoded) != n:
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {n}")
    out = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
    settings = {"codec": "libx264", "preset": preset, "pix_fmt": enc.pix_fmt,
                **({"crf": crf} if crf is not None else {"bitrate": bitrate})}
    return RoundTrip(out, 8 * sum(len(p) for p in packets), settings)


def h264_within_bits(frames: Any, fps: float, max_bits: int, *, preset: str = "medium",
                     steps: int = 10) -> RoundTrip:
    """The H.264 encode of the lowest CRF (best quality) whose stream fits in ``max_bits``.

    Bisects the CRF over [0, 51] for ``steps`` encodes (10 resolve it to 0.05). A budget below what CRF 51 needs
    returns the CRF-51 encode, whose ``bits`` then exceed ``max_bits``: the caller sees by how much.
    """
    if max_bits < 1:
        raise ValueError(f"max_bits must be positive, got {max_bits}")
    best = h264_roundtrip(frames, fps, crf=51, preset=preset)
    if best.bits > max_bits:
        return best
    lo, hi = 0.0, 51.0     # hi always fits
    for _ in range(steps):
        mid = (lo + hi) / 2
        trial = h264_roundtrip(frames, fps, crf=mid, preset=preset)
        if trial.bits <= max_bits:
            hi, best = mid, trial
        else:
            lo = mid
    return best


# ------------------------------------------------------------------------------------------------------- audio
def _wave(wave: Any) -> np.ndarray:
    wave = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"expected a mono float waveform [N] with N > 0, got {wave.dtype} {tuple(wave.shape)}")
    if not np.isfinite(wave).all():
        raise ValueError("the waveform holds NaN or infinite samples")
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)


def _resample(wave: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """FFmpeg's resampler (as :func:`mmtok.data.media.read_audio` uses), mono float32; length ~ N * new / old."""
    if rate == new_rate:
        return wave
    frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=new_rate)
    chunks = [f.to_ndarray()[0] for f in list(resampler.resample(frame)) + list(resampler.resample(None))]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _fit(wave: np.ndarray, length: int) -> np.ndarray:
    return wave[:length] if len(wave) >= length else np.pad(wave, (0, length - len(wave)))


def opus_roundtrip(wave: Any, sample_rate: int, kbps: float, *, vbr: bool = True,
                   application: str = "audio") -> RoundTrip:
    """Encode a mono waveform with libopus at ``kbps`` (through PyAV, in memory, 20 ms frames), decode it back.

    Args:
        wave: float ``[N]`` in ``[-1, 1]`` at ``sample_rate``.
        kbps: target bitrate in kbit/s (libopus takes 6 to 510 for mono).
        vbr: Opus's default variable bitrate (the average lands near ``kbps``); ``False`` for constant bitrate.
        application: ``"audio"`` (music and general sound), ``"voip"`` (speech) or ``"lowdelay"``.

    Returns:
        the decoded waveform at ``sample_rate``, aligned with the input (the encoder's look-ahead removed) and of its
        length, and the bits of all Opus packets.
    """
    x = _wave(wave)
    if not 6 <= kbps <= 510:
        raise ValueError(f"libopus takes 6 to 510 kbps for mono, got {kbps}")
    n = len(x)
    x48 = _resample(x, sample_rate, OPUS_RATE)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = OPUS_RATE, "mono", "flt"
    enc.bit_rate = int(round(kbps * 1000))
    enc.options = {"vbr": "on" if vbr else "off", "application": application}
    enc.open()
    frame_size = enc.frame_size                                              # 960 samples: 20 ms
    # The encoder's look-ahead (pre-skip: 312 samples at 48 kHz, in its OpusHead header) delays its output; FFmpeg's
    # encoder codes the look-ahead's worth of padding at the end by itself, and the decoded signal drops it in front.
    delay = _opus_pre_skip(enc.extradata)
    packets: list[bytes] = []
    for start in range(0, len(x48), frame_size):                            # a shorter last frame is padded by FFmpeg
        frame = av.AudioFrame.from_ndarray(x48[None, start:start + frame_size], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = OPUS_RATE, start, Fraction(1, OPUS_RATE)
        packets.extend(bytes(p) for p in enc.encode(frame))
    packets.extend(bytes(p) for p in enc.encode(None))
    dec = av.CodecContext.create("opus", "r")
    dec.sample_rate, dec.layout = OPUS_RATE, "mono"
    chunks = []
    for data in packets:
        for frame in dec.decode(av.Packet(data)):
            chunks.append(frame.to_ndarray().reshape(-1).astype(np.float32))
    y48 = np.concatenate(chunks)[delay:] if chunks else np.zeros(0, np.float32)
    y = _fit(_resample(_fit(y48, len(x48)), OPUS_RATE, sample_rate), n)
    settings = {"codec": "libopus", "kbps": kbps, "vbr": vbr, "application": application}
    return RoundTrip(np.clip(y, -1.0, 1.0), 8 * sum(len(p) for p in packets), settings)


def _opus_pre_skip(head: bytes | None) -> int:
    """The pre-skip field of an OpusHead header (RFC 7845, section 5.1: bytes 10-11, little-endian)."""
    if not head or len(head) < 12 or head[:8] != b"OpusHead":
        raise RuntimeError("libopus gave no OpusHead header; cannot align its output with the input")
    return int.from_bytes(head[10:12], "little")


def pcm_downsample_roundtrip(wave: Any, sample_rate: int, target_rate: int, bits: int = 16) -> RoundTrip:
    """Resample a mono waveform to ``target_rate``, quantize each sample to ``bits`` bits, and resample it back.

    Quantization is uniform over ``[-1, 1)`` with ``2^bits`` levels (16 bits: what a WAV file holds). Bits:
    ``round(N * target_rate / sample_rate) * bits``, the samples a ``target_rate`` file of that duration holds.
    """
    x = _wave(wave)
    if not 1 <= target_rate <= sample_rate:
        raise ValueError(f"target_rate must be in [1, {sample_rate}] (the input's rate), got {target_rate}")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    n = len(x)
    count = int(round(n * target_rate / sample_rate))
    low = _fit(_resample(x, sample_rate, target_rate), count)
    half = 2.0 ** (bits - 1)
    low = (np.clip(np.round(low.astype(np.float64) * half), -half, half - 1) / half).astype(np.float32)
    y = _fit(_resample(low, target_rate, sample_rate), n)
    return RoundTrip(np.clip(y, -1.0, 1.0), count * bits, {"target_rate": target_rate, "bits": bits})

