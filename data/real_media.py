"""Cut real footage and recordings into clips with a manifest split by source: ``python data/real_media.py --out DIR``.

A thin command line over :mod:`mmtok.datasets.real_media` (the catalogue of Debian sources, how they are fetched
and cut, the output layout and manifest fields are in its docstring; ``data/README.md`` lists the sources):

    python data/real_media.py --out outputs/real_media                      # every catalogued source
    python data/real_media.py --out DIR --kinds footage,speech              # some kinds only
    python data/real_media.py --out DIR --no-debian --folder my/videos --licence "CC-BY-4.0, me"
    python data/real_media.py --list                                        # the catalogue, nothing fetched

Debian packages are fetched with ``apt-get download`` into ``--cache`` (default ``$XDG_CACHE_HOME/mmtok/debian``)
unless installed; run ``apt-get update`` once first. Re-running continues where a run stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mmtok.datasets.real_media import CorpusSettings, build_corpus, catalogue, folder_sources


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmtok" / "debian"


def main(argv: list[str] | None = None) -> dict | None:
    d = CorpusSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (required unless --list)")
    parser.add_argument("--cache", default=None, help="where Debian packages are downloaded and unpacked")
    parser.add_argument("--no-debian", action="store_true", help="use no catalogued source (only --folder)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated kinds of catalogued sources (footage, screen, animation, speech, music)")
    parser.add_argument("--only", nargs="+", default=None, help="catalogued source ids or groups to use")
    parser.add_argument("--folder", action="append", default=[], help="a folder of your own media (repeatable)")
    parser.add_argument("--licence", default="unknown (the user's own media)", help="licence of the --folder files")
    parser.add_argument("--validation-fraction", type=float, default=0.25,
                        help="share of --folder files (by a hash of their name) in the validation split")
    parser.add_argument("--validation", nargs="+", default=[],
                        help="--folder files (ids or paths relative to their folder) to put in validation")
    parser.add_argument("--num-frames", type=int, default=d.num_frames)
    parser.add_argument("--fps", type=float, default=d.fps)
    parser.add_argument("--size", type=int, default=d.size, help="side of the square clips in pixels")
    parser.add_argument("--crf", type=int, default=d.crf, help="H.264 quality of the clips (0: lossless)")
    parser.add_argument("--sample-rate", type=int, default=d.sample_rate)
    parser.add_argument("--segment-seconds", type=float, default=d.segment_seconds)
    parser.add_argument("--min-segment-seconds", type=float, default=d.min_segment_seconds)
    parser.add_argument("--silence-db", type=float, default=d.silence_db,
                        help="audio segments quieter than this RMS (dBFS) are skipped")
    parser.add_argument("--max-clips-per-source", type=int, default=d.max_clips_per_source,
                        help="keep at most this many clips of one source, evenly spread (0: all)")
    parser.add_argument("--overwrite", action="store_true", help="cut everything again")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    try:
        sources = [] if args.no_debian else catalogue(kinds, args.only)
        if args.list:
            for s in sources:
                print(f"{s.id:36s} {s.kind:9s} {s.split:10s} {s.package:32s} {s.licence}")
            return None
        if not args.out:
            parser.error("--out is required")
        for folder in args.folder:
            sources += folder_sources(folder, licence=args.licence, validation_fraction=args.validation_fraction,
                                      validation=args.validation)
        if not sources:
            parser.error("no sources: drop --no-debian, or give --folder")
        settings = CorpusSettings(num_frames=args.num_frames, fps=args.fps, size=args.size, crf=args.crf,
                                  sample_rate=args.sample_rate, segment_seconds=args.segment_seconds,
                                  min_segment_seconds=args.min_segment_seconds, silence_db=args.silence_db,
                                  max_clips_per_source=args.max_clips_per_source)
        t0 = time.perf_counter()
        result = build_corpus(args.out, sources, settings, cache=args.cache or _default_cache(),
                              overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    t = result["totals"]
    print(f"{t['clips']} clips from {t['ok']} of {t['sources']} sources in {time.perf_counter() - t0:.0f}s "
          f"({t['bad']} bad, {t['unavailable']} unavailable, {t['too_short']} too short) -> {args.out}")
    for key in ("video_train", "video_validation", "audio_train", "audio_validation"):
        part = t[key]
        print(f"  {key:17s} {part['sources']:3d} sources ({part['groups']} groups), {part['clips']:4d} clips, "
              f"{part['minutes_used']:.1f} of {part['minutes_of_source']:.1f} minutes")
    if t["clips"] == 0:
        print("error: no clips were written (see sources.json and bad_files.json)", file=sys.stderr)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
