"""Generate the Moving-Digits corpus: ``python data/moving_digits.py --out DIR --num-clips N [--seed S] [--size 32]``.

A thin command line over :func:`mmtok.datasets.moving_digits.corpus.generate_corpus` (see that module for the
layout, the manifest and ground-truth fields, and the determinism guarantees).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmtok.datasets.moving_digits import generate_corpus


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-clips", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="frame side in pixels")
    parser.add_argument("--glyph-size", type=int, default=None, help="glyph box side in pixels (default: size / 2)")
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--glyphs-per-digit", type=int, default=None,
                        help="handwritten samples of each digit to draw from (default: all)")
    parser.add_argument("--position-grid", type=int, default=None,
                        help="start glyphs on multiples of this many pixels and move on it")
    parser.add_argument("--frames-per-grid-step", type=int, default=2,
                        help="with --position-grid: frames per grid step (2: half a step per frame; 1: a whole one)")
    parser.add_argument("--clear-steps", type=int, default=2,
                        help="frames the glyph moves before its first bounce")
    parser.add_argument("--crf", type=int, default=None,
                        help="H.264 quality of the clips (0: lossless; default: the corpus default)")
    parser.add_argument("--partial-captions", type=int, default=0,
                        help="captions naming only part of the content per training clip (after the full ones)")
    parser.add_argument("--held-out-validation-fraction", type=float, default=None,
                        help="fraction of combinations only in the validation split (default: the corpus default)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="re-encode clips that already exist")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    manifest = generate_corpus(args.out, args.num_clips, args.seed, args.size, glyph_size=args.glyph_size,
                               num_frames=args.num_frames,
                               fps=args.fps, sample_rate=args.sample_rate, glyphs_per_digit=args.glyphs_per_digit,
                               position_grid=args.position_grid,
                               frames_per_grid_step=args.frames_per_grid_step, clear_steps=args.clear_steps,
                               partial_captions=args.partial_captions,
                               **({} if args.crf is None else {"crf": args.crf}),
                               **({} if args.held_out_validation_fraction is None
                                  else {"held_out_validation_fraction": args.held_out_validation_fraction}),
                               num_workers=args.workers,
                               overwrite=args.overwrite)
    print(f"wrote {args.num_clips} clips to {args.out} in {time.perf_counter() - t0:.1f}s; manifest {manifest}")
    return manifest


if __name__ == "__main__":
    main()
