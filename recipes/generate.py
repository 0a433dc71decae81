"""Generate media with a trained mmtok model from the command line.

``--model`` is an exported model directory (the LM and its tokenizer bundle side by side, as ``recipes/pretrain.py``
writes it)::

    python recipes/generate.py t2v --model DIR --prompt "a red seven drifts up" --out clip.mp4   # or clip.gif
    python recipes/generate.py t2i --model DIR --prompt "the digit 3 in blue" --out digit.png
    python recipes/generate.py v2a --model DIR --video in.mp4 --out out.wav --mux with_sound.mp4
    python recipes/generate.py continue --model DIR --video in.mp4 --frames 8 --out longer.mp4
    python recipes/generate.py a2v --model DIR --audio in.wav --out clip.mp4 --with-audio

Sampling flags (every command): ``--temperature`` (0 = greedy), ``--top-k``, ``--top-p``, ``--cfg-scale``
(classifier-free guidance; off unless given), ``--num-samples`` (outputs are then named ``stem_0.ext``,
``stem_1.ext``, ...), ``--seed``, ``--no-cache``. Input clips are read with PyAV at the video tokenizer's frame rate and
resized / centre-cropped to the size the model was trained on; ``--input-frames`` sets how many frames are read
(default: ``--clip-frames``, 17, for v2a; 9 for continue). Video is written as MP4 (H.264) or GIF (by the suffix of
``--out``), images as PNG, audio as WAV.

Errors about the input (a missing model directory, a file PyAV cannot read, a clip the tokenizers cannot take) are
printed as one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence


import numpy as np
import torch

from lm.generation import GenerationError, GenerationResult, MultimodalGenerator, SamplingConfig
from mmtok.data.media import MediaError, read_audio, read_video, write_audio, write_gif, write_image, write_video

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".gif")
IMAGE_SUFFIXES = (".png", ".gif", ".mp4")
AUDIO_SUFFIXES = (".wav", ".flac")


# ----------------------------------------------------------------------------------------------------- writers
def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[T, H, W, 3]`` frames by an integer factor (for viewing small clips)."""
    if factor <= 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def save_clip(path: Path, frames: np.ndarray, fps: float, *, audio: np.ndarray | None = None,
              sample_rate: int | None = None, upscale: int = 1) -> Path:
    """Write a clip as GIF (no sound) or MP4/MKV/MOV (H.264, with the audio when given), by ``path``'s suffix."""
    frames = _upscale(frames, upscale)
    if path.suffix.lower() == ".gif":
        return write_gif(path, frames, fps)
    return write_video(path, frames, fps, audio=audio, sample_rate=sample_rate if audio is not None else None)


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` itself for one sample, ``stem_0.ext, stem_1.ext, ...`` for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


# ----------------------------------------------------------------------------------------------------- readers
def read_clip(path: str, gen: MultimodalGenerator, num_frames: int, pad: bool) -> torch.Tensor:
    """Read ``num_frames`` frames at the model's frame rate, resized / centre-cropped to its frame size."""
    if not Path(path).exists():
        raise FileNotFoundError(f"input video not found: {path}")
    frames = read_video(path, fps=gen.fps, num_frames=num_frames, size=gen.frame_size, pad=pad)
    return torch.from_numpy(np.ascontiguousarray(frames))  # uint8 [T, H, W, 3]


# ------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate video, images or audio with a trained mmtok model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, out_help: str) -> None:
        p.add_argument("--model", required=True, help="exported model directory (LM + tokenizer bundle)")
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
        p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely allowed ids")
        p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
        p.add_argument("--cfg-scale", type=float, default=None,
                       help="classifier-free guidance scale (off unless given; ~3 is a common choice)")
        p.add_argument("--num-samples", type=int, default=1, help="samples to draw (outputs named stem_i.ext)")
        p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same output)")
        p.add_argument("--no-cache", action="store_true", help="decode without the KV cache (slow; for checks)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (1 is often fastest for small models on a busy machine)")
        p.add_argument("--clip-frames", type=int, default=17,
                       help="frames of a generated clip (1 + 4k for the default tokenizers)")

    p = sub.add_parser("t2v", help="text to video")
    common(p, "output clip: .mp4 or .gif")
    p.add_argument("--prompt", required=True, help="the caption")
    p.add_argument("--upscale", default=1, type=positive_int,
                   help="nearest-neighbour upscale factor of the written frames")

    p = sub.add_parser("t2i", help="text to image")
    common(p, "output image: .png (or a 1-frame .gif/.mp4)")
    p.add_argument("--prompt", required=True, help="the caption")
    p.add_argument("--upscale", default=1, type=positive_int,
                   help="nearest-neighbour upscale factor of the written image")

    p = sub.add_parser("v2a", help="video to audio")
    common(p, "output audio: .wav or .flac")
    p.add_argument("--video", required=True, help="input video file")
    p.add_argument("--mux", default=None, help="also write the input video with the generated audio (.mp4)")
    p.add_argument("--input-frames", type=int, default=None, help="frames read from the input (default --clip-frames)")
    p.add_argument("--prompt", default=None, help="optional caption condition")
    p.add_argument("--pad", action="store_true", help="repeat the last frame when the input is too short")

    p = sub.add_parser("continue", help="continue a video")
    common(p, "output clip: .mp4 or .gif (the input's reconstruction followed by the new frames)")
    p.add_argument("--video", required=True, help="input video file")
    p.add_argument("--frames", type=int, required=True, help="new frames to generate (a multiple of 4)")
    p.add_argument("--input-frames", type=int, default=9, help="frames read from the input (1 + 4k)")
    p.add_argument("--prompt", default=None, help="optional caption condition")
    p.add_argument("--pad", action="store_true", help="repeat the last frame when the input is too short")
    p.add_argument("--only-new", action="store_true", help="write only the generated frames")
    p.add_argument("--upscale", default=1, type=positive_int,
                   help="nearest-neighbour upscale factor of the written frames")

    p = sub.add_parser("a2v", help="audio to video")
    common(p, "output clip: .mp4 or .gif")
    p.add_argument("--audio", required=True, help="input audio (or a video file with an audio track)")
    p.add_argument("--duration", type=float, default=None, help="seconds of audio read (default: the clip length)")
    p.add_argument("--prompt", default=None, help="optional caption condition")
    p.add_argument("--with-audio", action="store_true", help="mux the input audio into the .mp4")
    p.add_argument("--upscale", default=1, type=positive_int,
                   help="nearest-neighbour upscale factor of the written frames")
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _check_out(out: Path, suffixes: Sequence[str], what: str, flag: str = "--out") -> None:
    """The output's kind, and that its folder can be written, before any generation runs."""
    if out.suffix.lower() not in suffixes:
        raise GenerationError(f"{flag} {out}: {what} is written as {' / '.join(suffixes)}, "
                              f"got {out.suffix or 'no suffix'!r}")
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenerationError(f"{flag} {out}: cannot create the folder {folder} ({e.strerror})") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GenerationError(f"{flag} {out}: the folder {folder} is not writable")
    if out.is_dir():
        raise GenerationError(f"{flag} {out} is a folder; give a file name")


def run(args: argparse.Namespace) -> list[Path]:
    """Execute one parsed command; returns the files written."""
    out = Path(args.out)
    suffixes = {"t2v": VIDEO_SUFFIXES, "continue": VIDEO_SUFFIXES, "a2v": VIDEO_SUFFIXES, "t2i": IMAGE_SUFFIXES,
                "v2a": AUDIO_SUFFIXES}[args.command]
    _check_out(out, suffixes, {"t2i": "an image", "v2a": "audio"}.get(args.command, "a video"))
    if getattr(args, "mux", None) is not None:
        _check_out(Path(args.mux), (".mp4", ".mkv", ".mov"), "the muxed video", flag="--mux")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              cfg_scale=args.cfg_scale, num_samples=args.num_samples, seed=args.seed,
                              use_cache=not args.no_cache).validate()
    if args.threads is not None:
        if args.threads < 1:
            raise GenerationError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    print(f"loading model from {model_dir}", file=sys.stderr)
    gen = MultimodalGenerator.from_pretrained(model_dir, device=args.device, num_frames=args.clip_frames,
                                              sampling=sampling)
    written: list[Path] = []
    upscale = int(getattr(args, "upscale", 1))
    if args.command == "t2v":
        result = gen.text_to_video(args.prompt)
        for i, path in enumerate(output_paths(out, len(result))):
            written.append(save_clip(path, result.frames(i).numpy(), result.fps, upscale=upscale))
    elif args.command == "t2i":
        result = gen.text_to_image(args.prompt)
        for i, path in enumerate(output_paths(out, len(result))):
            frames = _upscale(result.frames(i).numpy(), upscale)
            written.append(write_image(path, frames[0]) if path.suffix.lower() == ".png"
                           else save_clip(path, frames, result.fps))
    elif args.command == "v2a":
        frames = read_clip(args.video, gen, args.input_frames or args.clip_frames, args.pad)
        result = gen.video_to_audio(frames, text=args.prompt)
        mux = output_paths(Path(args.mux), len(result)) if args.mux else [None] * len(result)
        for i, (path, mux_path) in enumerate(zip(output_paths(out, len(result)), mux)):
            wave = result.audio[i].numpy()  # [1, S]
            written.append(write_audio(path, wave, result.sample_rate))
            if mux_path is not None:
                written.append(write_video(mux_path, frames.numpy(), result.fps or gen.fps, audio=wave,
                                           sample_rate=result.sample_rate))
    elif args.command == "continue":
        frames = read_clip(args.video, gen, args.input_frames, args.pad)
        result = gen.continue_video(frames, args.frames, text=args.prompt)
        for i, path in enumerate(output_paths(out, len(result))):
            clip = result.frames(i).numpy()
            if args.only_new:
                clip = clip[result.new_frames_from:]
            written.append(save_clip(path, clip, result.fps, upscale=upscale))
    elif args.command == "a2v":
        if not Path(args.audio).exists():
            raise FileNotFoundError(f"input audio not found: {args.audio}")
        duration = args.duration if args.duration is not None else args.clip_frames / gen.fps
        if gen.sample_rate is None:
            raise GenerationError("this model's tokenizer bundle has no audio tokenizer")
        wave = read_audio(args.audio, sample_rate=gen.sample_rate, mono=True, duration=duration, pad=True)
        result = gen.audio_to_video(torch.from_numpy(np.ascontiguousarray(wave)), text=args.prompt)
        for i, path in enumerate(output_paths(out, len(result))):
            clip = result.frames(i).numpy()
            sound = None
            if args.with_audio and path.suffix.lower() != ".gif":
                sound = wave[: round(len(clip) / result.fps * gen.sample_rate)]
            written.append(save_clip(path, clip, result.fps, audio=sound, sample_rate=gen.sample_rate,
                                     upscale=upscale))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, generate, write the outputs; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        written = run(args)
    except (FileNotFoundError, MediaError, GenerationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # vocabulary mismatches, invalid sampling settings
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed after all (disk full, a folder made read-only meanwhile)
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
