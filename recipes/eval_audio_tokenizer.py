"""Evaluate an audio tokenizer: SI-SNR, mel distance and multi-resolution STFT distance at each bandwidth, and the
encode + decode real-time factor.

    python recipes/eval_audio_tokenizer.py --model runs/audio_tok/export \\
        --manifest data/moving_digits/manifest.jsonl --split test --max-files 64 --out eval.json

``--model`` is a directory saved by ``AudioTokenizer.save_pretrained`` or a local EnCodec model directory.
Audio comes from ``--manifest`` (JSON Lines with ``audio`` or ``video`` paths, optional ``split``) or ``--paths``
(audio/video files or folders); files that cannot be decoded are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from mmtok.audio.evaluation import evaluate_codec, format_table
from mmtok.data.audio_clips import AudioClips
from mmtok.io import atomic_write, progress_enabled


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="AudioTokenizer or EnCodec directory")
    parser.add_argument("--manifest", default=None, help="JSON Lines manifest with audio/video paths")
    parser.add_argument("--paths", nargs="*", default=[], help="audio/video files or folders")
    parser.add_argument("--split", default=None, help="manifest split to use (e.g. test)")
    parser.add_argument("--max-files", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=None, help="cut every clip to this length")
    parser.add_argument("--levels", type=int, nargs="*", default=None, help="RVQ levels to evaluate (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    from mmtok.audio import load_audio_tokenizer

    model = load_audio_tokenizer(args.model)
    data = AudioClips(paths=args.paths, manifest=args.manifest, split=args.split, sample_rate=model.sample_rate,
                      max_files=args.max_files)
    clips = data.load_all(progress=progress_enabled())
    if args.seconds:
        clips = [c[: int(args.seconds * model.sample_rate)] for c in clips]
    if not clips:
        raise SystemExit(f"no decodable audio among {len(data.files)} files ({data.report()})")
    result = evaluate_codec(model, clips, args.levels, args.batch_size, progress=progress_enabled())
    result["model"] = str(args.model)
    result["skipped"] = data.skipped
    print(format_table(result))
    if data.skipped:
        print(f"skipped {len(data.skipped)} bad files: {data.report()}")
    if args.out:
        atomic_write(args.out, json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
