"""Rate-distortion of audio codecs on held-out real recordings: SI-SNR, mel distance, bitrate and real-time factor of
each codec export, beside codecs that need no training (Opus, downsampled PCM), all on the same clips in one run.

    python bench/audio_rate_distortion.py --manifest outputs/real_media/audio.jsonl \\
        --codec demo_real=runs/audio_tokenizer_demo_real/export --codec speech16k=runs/audio_tokenizer_speech16k/export
    python bench/audio_rate_distortion.py --quick        # two generated recordings, a random debug codec (seconds)

Clips: up to ``--max-clips`` recordings of ``--split`` (default ``validation``: the real-media ``audio.jsonl`` splits
by source, so these are speakers, songs and instruments no codec trained on), taken in turn from each source, read
at ``--sample-rate`` (mono) and cut to ``--seconds``; a folder of audio files works too (``--split none``). Every
codec must run at ``--sample-rate``: mel distances at different rates are not comparable.

Rows:

- ``--codec NAME=DIR`` (an ``AudioTokenizer`` export or a local EnCodec folder) at each of ``--levels`` residual VQ
  levels that it has (default 1, 2, 4, 8 and all): bitrate ``levels * log2(codebook size) * frame rate``, exactly;
  the real-time factor is seconds of audio per second of encoding and decoding with every level, batch 1, at
  ``--threads`` (:func:`mmtok.audio.evaluation.evaluate_codec`).
- ``Opus K kbps`` (``--opus``; default 6 and 12): libopus through PyAV (:func:`mmtok.baselines.opus_roundtrip`,
  ``--opus-application``); its bitrate is the bits of its packets over the clips' duration.
- ``PCM R Hz x B bits``: resampled to ``R``, ``B`` bits per sample, resampled back
  (:func:`mmtok.baselines.pcm_downsample_roundtrip`), at each codec's full bitrate and each Opus bitrate:
  ``B = --pcm-bits`` (default 8) and ``R = bitrate / B``.

Scores are the codec evaluation's (:mod:`mmtok.audio.evaluation`): SI-SNR (:func:`mmtok.metrics.si_snr`, dB, higher is
better) and mel distance (:class:`mmtok.audio_features.MultiScaleMelLoss` at the clips' rate: L1 of mel and log-mel
magnitudes over windows of 32-2048 samples; lower is better), each per clip, averaged.

Writes ``--out`` (default ``bench/results/audio_rate_distortion.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))     # this checkout's mmtok, whichever copy is installed
RESULTS = ROOT / "bench" / "results" / "audio_rate_distortion.json"
DEFAULT_LEVELS = (1, 2, 4, 8)


def parse_codec(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"a codec is NAME=EXPORT_DIR, got {text!r}")
    return name, Path(path)


def load_clips(source: Path, split: str | None, sample_rate: int, max_clips: int,
               seconds: float) -> tuple[list[torch.Tensor], dict[str, str]]:
    """Mono clips ``[N]`` of a manifest split (spread over its sources) or a folder, cut to ``seconds``."""
    from mmtok.data.audio_clips import AudioClips

    if source.is_dir():
        data = AudioClips(paths=[str(source)], sample_rate=sample_rate, max_files=max_clips)
    else:
        data = AudioClips(manifest=str(source), split=split, sample_rate=sample_rate, max_files=max_clips)
    clips = [c[:int(seconds * sample_rate)] for c in data.load_all()]
    clips = [c for c in clips if c.numel() > 0]
    if not clips:
        raise ValueError(f"no decodable audio in {source}" + (f" (split {split!r})" if split else "")
                         + (f"; unreadable: {data.report()}" if data.skipped else ""))
    return clips, data.skipped


class Scorer:
    """SI-SNR and mel distance of one reconstruction against its clip, as :func:`evaluate_codec` scores them."""

    def __init__(self, sample_rate: int):
        from mmtok.audio_features import MultiScaleMelLoss

        self.mel = MultiScaleMelLoss(sample_rate)

    @torch.no_grad()
    def __call__(self, recon: np.ndarray, clip: torch.Tensor) -> tuple[float, float]:
        from mmtok.metrics import si_snr

        r, c = torch.as_tensor(recon, dtype=torch.float32)[None, None], clip[None, None].float()
        return float(si_snr(r, c)[0, 0]), float(self.mel(r, c))


def baseline_row(name: str, kind: str, trips: list, clips: list[torch.Tensor], sample_rate: int,
                 scorer: Scorer, **extra: Any) -> dict[str, Any]:
    scores = [scorer(t.output, c) for t, c in zip(trips, clips)]
    seconds = sum(c.numel() for c in clips) / sample_rate
    return {"name": name, "kind": kind, "kbps": sum(t.bits for t in trips) / seconds / 1000,
            "si_snr": float(np.mean([s[0] for s in scores])), "mel_distance": float(np.mean([s[1] for s in scores])),
            "bits": [t.bits for t in trips], **extra}


def codec_rows(name: str, export: Path, clips: list[torch.Tensor], sample_rate: int,
               levels: Sequence[int]) -> list[dict[str, Any]]:
    from mmtok.audio import load_audio_tokenizer
    from mmtok.audio.evaluation import evaluate_codec

    model = load_audio_tokenizer(export)
    if model.sample_rate != sample_rate:
        raise ValueError(f"codec {name} runs at {model.sample_rate} Hz, the clips at {sample_rate} Hz: mel distances "
                         f"at other rates do not compare (run it separately with --sample-rate {model.sample_rate})")
    total = model.num_codebooks
    wanted = sorted({n for n in levels if n <= total} | {total})
    result = evaluate_codec(model, clips, wanted, batch_size=1)
    return [{"name": f"{name} ({n} of {total} levels)", "kind": "codec", "codec": name, "export": str(export),
             "levels": n, "kbps": row["kbps"], "si_snr": row["si_snr"], "mel_distance": row["mel_distance"],
             "stft_distance": row["stft_distance"], "rtf": result["rtf"]}
            for n, row in result["levels"].items()]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | kbps | SI-SNR dB | mel distance | real-time factor |", "|---|---|---|---|---|"]
    for r in rows:
        rtf = f"{r['rtf']:.0f}x" if "rtf" in r else "-"
        lines.append(f"| {r['name']} | {r['kbps']:.2f} | {r['si_snr']:.2f} | {r['mel_distance']:.3f} | {rtf} |")
    return "\n".join(lines) + "\n"


def quick_inputs(folder: Path) -> tuple[Path, Path]:
    """Two 1-second 16 kHz recordings (a gliding harmonic tone, a noise burst over a hum) and a random debug codec."""
    from mmtok.audio import AudioTokenizer
    from mmtok.data.media import write_audio

    rate = 16000
    t = np.arange(rate) / rate
    glide = sum(0.2 / k * np.sin(2 * np.pi * k * (200 * t + 100 * t ** 2)) for k in (1, 2, 3))
    burst = 0.1 * np.sin(2 * np.pi * 120 * t) + 0.3 * np.random.default_rng(0).standard_normal(rate) * (t > 0.5)
    write_audio(folder / "clips" / "glide.wav", glide.astype(np.float32), rate)
    write_audio(folder / "clips" / "burst.wav", np.clip(burst, -1, 1).astype(np.float32), rate)
    torch.manual_seed(0)
    AudioTokenizer.from_preset("debug").save_pretrained(folder / "debug_codec")
    return folder / "clips", folder / "debug_codec"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=None, help="audio manifest (.jsonl) or a folder of audio")
    parser.add_argument("--split", default="validation", help="manifest split to score ('none' for a folder)")
    parser.add_argument("--codec", type=parse_codec, action="append", default=[], metavar="NAME=DIR",
                        help="an audio codec export to score (repeatable)")
    parser.add_argument("--levels", type=int, nargs="*", default=list(DEFAULT_LEVELS),
                        help="residual VQ levels to score each codec at (its full count is always added)")
    parser.add_argument("--opus", type=float, nargs="*", default=[6.0, 12.0], help="Opus bitrates, kbps")
    parser.add_argument("--opus-application", default="audio", choices=("audio", "voip", "lowdelay"))
    parser.add_argument("--pcm-bits", type=int, default=8, help="bits per sample of the PCM baselines")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seconds", type=float, default=4.0, help="cut every clip to this length")
    parser.add_argument("--max-clips", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the codecs (the RTF is at these)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="two generated recordings and a random debug codec")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmtok.baselines import opus_roundtrip, pcm_downsample_roundtrip

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.manifest, debug = quick_inputs(Path(tmp))
            args.split, args.seconds = "none", 1.0
            args.codec = args.codec or [("debug (untrained)", debug)]
        if args.manifest is None:
            parser.error("--manifest is required (or --quick)")
        split = None if args.split.lower() == "none" else args.split
        sr = args.sample_rate
        clips, skipped = load_clips(args.manifest, split, sr, args.max_clips, args.seconds)
        seconds = sum(c.numel() for c in clips) / sr
        print(f"{len(clips)} clips, {seconds:.1f} s at {sr} Hz from {args.manifest}"
              + (f" ({split})" if split else "") + (f", {len(skipped)} unreadable" if skipped else ""), flush=True)
        scorer = Scorer(sr)
        rows: list[dict[str, Any]] = []
        full_kbps = []                      # each codec's bitrate at all its levels: where PCM is matched
        for name, export in args.codec:
            print(f"[codec] {name}", flush=True)
            rows.extend(codec_rows(name, export, clips, sr, args.levels))
            full_kbps.append(rows[-1]["kbps"])
    for kbps in args.opus:
        print(f"[Opus] {kbps:g} kbps", flush=True)
        trips = [opus_roundtrip(c, sr, kbps, application=args.opus_application) for c in clips]
        rows.append(baseline_row(f"Opus {kbps:g} kbps", "opus", trips, clips, sr, scorer, target_kbps=kbps,
                                 application=args.opus_application))
    for kbps in sorted(set(full_kbps) | set(args.opus)):
        rate = int(kbps * 1000 / args.pcm_bits)
        if not 1 <= rate <= sr:
            continue
        trips = [pcm_downsample_roundtrip(c, sr, rate, args.pcm_bits) for c in clips]
        rows.append(baseline_row(f"PCM {rate} Hz x {args.pcm_bits} bits", "pcm", trips, clips, sr, scorer,
                                 target_rate=rate, sample_bits=args.pcm_bits))
    rows.sort(key=lambda r: (r["kbps"], r["name"]))
    result = {"setting": {"manifest": str(args.manifest), "split": split, "sample_rate": sr, "num_clips": len(clips),
                          "seconds_of_audio": round(seconds, 2), "clip_seconds": args.seconds,
                          "unreadable": skipped, "threads": args.threads, "load_average": os.getloadavg(),
                          "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = table(rows)
    print("\n" + text + f"wrote {args.out}")
    result["table"] = text
    return result


if __name__ == "__main__":
    main()
