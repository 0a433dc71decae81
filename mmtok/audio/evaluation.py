"""Codec evaluation: SI-SNR, mel distance and multi-resolution STFT distance at each number of RVQ levels, and
the encode + decode real-time factor (what ``recipes/eval_audio_tokenizer.py`` and the trainer's validation print)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from mmtok.audio_features import MultiResolutionSTFTLoss, MultiScaleMelLoss
from mmtok.metrics import si_snr

__all__ = ["evaluate_codec", "format_table"]


@torch.no_grad()
def evaluate_codec(model: Any, clips: Sequence[torch.Tensor], levels: Sequence[int] | None = None,
                   batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Reconstruction metrics of ``model`` on mono ``clips`` (each ``[N]``) at each number of RVQ levels.

    Returns ``{"levels": {n_q: {"kbps", "si_snr", "mel_distance", "stft_distance"}}, "num_clips",
    "seconds", "rtf"}``; ``rtf`` is seconds of audio per second of encode + decode at all levels (higher is faster).
    """
    from tqdm import tqdm

    if not clips:
        raise ValueError("no clips to evaluate")
    levels = list(levels) if levels else list(range(1, model.num_codebooks + 1))
    mel = MultiScaleMelLoss(model.sample_rate)
    stft = MultiResolutionSTFTLoss(tuple(n for n in (512, 1024, 2048) if n <= min(len(c) for c in clips)) or (256,))
    sums = {n: {"si_snr": 0.0, "mel_distance": 0.0, "stft_distance": 0.0} for n in levels}
    total_seconds, codec_time, count = 0.0, 0.0, 0
    batches = [clips[i:i + batch_size] for i in range(0, len(clips), batch_size)]
    device = next(model.parameters()).device  # the codec runs where its weights are; the metrics on the CPU
    for batch in tqdm(batches, desc="eval audio", disable=not progress):
        length = min(len(c) for c in batch)
        wav = torch.stack([c[:length] for c in batch])[:, None].float()            # [b, 1, N]
        start = time.perf_counter()
        codes = model.encode(wav.to(device))                                         # [b, n_q, F]
        full = model.decode(codes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        codec_time += time.perf_counter() - start
        total_seconds += wav.shape[0] * length / model.sample_rate
        for n in levels:
            recon = full if n == codes.shape[1] else model.decode(codes[:, :n])
            recon = recon[..., :length].cpu()
            if recon.shape[1] != 1:   # stereo codecs (EnCodec 48 kHz): compare the mono mix
                recon = recon.mean(1, keepdim=True)
            sums[n]["si_snr"] += float(si_snr(recon, wav).sum())
            sums[n]["mel_distance"] += float(mel(recon, wav)) * wav.shape[0]
            sums[n]["stft_distance"] += float(stft(recon, wav)) * wav.shape[0]
        count += wav.shape[0]
    per_level = {}
    for n in levels:
        kbps = n * torch.tensor(float(model.codebook_size)).log2().item() * model.frame_rate / 1000
        per_level[n] = {"kbps": round(kbps, 4), **{k: v / count for k, v in sums[n].items()}}
    return {"levels": per_level, "num_clips": count, "seconds": total_seconds,
            "rtf": total_seconds / max(codec_time, 1e-9)}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'n_q':>4} {'kbps':>7} {'SI-SNR dB':>10} {'mel dist':>9} {'STFT dist':>10}"]
    for n, row in result["levels"].items():
        lines.append(f"{n:>4} {row['kbps']:>7.3f} {row['si_snr']:>10.2f} {row['mel_distance']:>9.3f} "
                     f"{row['stft_distance']:>10.3f}")
    lines.append(f"{result['num_clips']} clips, {result['seconds']:.1f} s of audio, real-time factor "
                 f"{result['rtf']:.1f}x (encode + decode)")
    return "\n".join(lines)
