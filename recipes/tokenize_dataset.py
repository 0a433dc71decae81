"""Pre-tokenize a manifest (or a media folder) into token shards with a ``MultimodalTokenizer`` bundle.

    python recipes/tokenize_dataset.py --config recipes/configs/tokenize_demo.yaml
    python recipes/tokenize_dataset.py data=corpus/manifest.jsonl tokenizer=runs/bundle out=runs/tokens \\
        num_workers=2 shard_size=256

Each record is decoded with PyAV (``mmtok.data.ingest``: clip of ``num_frames`` at ``fps``, shorter side resized to
``size`` and centre-cropped, mono audio at the audio tokenizer's rate taken from the video's own track when no audio
file is given) and tokenized into *local* codes (text ids per caption, video codes, audio codes), stored per clip, NOT
task-formatted, in Arrow shards (format: :mod:`mmtok.data.shards`). The task mixture is applied later by
:mod:`mmtok.data.loader`, so it can change without re-tokenizing.

- Parallel: shards are spread over ``num_workers`` processes, each holding the bundle once, one torch thread each.
- Resumable: the job's plan (records per shard) is written first; each shard file is written atomically, so a killed
  run restarted with the same arguments redoes only the unfinished shards (no duplicates, no gaps). A plan that
  differs (other manifest, settings or tokenizer) is refused rather than mixed.
- Deterministic: a shard's bytes depend only on its records and the tokenizers, so a resumed run equals an
  uninterrupted one and the worker count does not change the output.
- Bad files (corrupt, truncated, empty, non-media, too short, no audio when ``require_audio``) and clips the
  tokenizers reject are skipped, counted and listed in ``bad_files.json`` (id, file, reason); one bad file never stops
  the job.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional


import datasets
import torch
from tqdm import tqdm

from mmtok.data.ingest import BadFileReport, ClipConfig, ClipRecord, load_clip, load_records
from mmtok.data.media import MediaError
from mmtok.data.shards import (
    BAD_FILES,
    DATASET_FILE,
    FEATURES,
    PLAN_FILE,
    SHARD_DIR,
    make_row,
    shard_name,
    write_shard,
)
from mmtok.io import atomic_write, progress_enabled
from recipes.common import build_arg_parser, dump_config, load_config

FORMAT_VERSION = 1


@dataclass
class TokenizeConfig:
    """Settings of a tokenization job (YAML ``--config`` and dotted overrides on top).

    Attributes:
        data: a JSON Lines manifest (see :mod:`mmtok.data.ingest`) or a folder of media files.
        tokenizer: a ``MultimodalTokenizer.save_pretrained`` directory.
        out: output folder (created; rerunning with the same settings resumes).
        split: keep only this manifest split (``None``: all records).
        shard_size: records per shard (the unit of parallel work and of resumption).
        encode_batch: clips per tokenizer call (same-shape clips are encoded together; part of the plan, since
            batching can change float rounding).
        num_workers: tokenizing processes (0: in this process).
        torch_threads: torch threads per process (1 keeps results identical for any worker count).
        fps, num_frames, size: how video is sampled (``size``: shorter side, centre-cropped square).
        sample_rate: audio rate; ``None`` takes the audio tokenizer's ``sample_rate``.
        require_audio: treat a video without an audio track, or whose audio ends more than ``audio_tolerance``
            seconds before its frames, as a bad file (without it such audio is zero-padded and noted in the report).
        audio_tolerance: seconds of missing audio at a clip's end that pass unremarked.
        pad: pad clips that end early instead of skipping them.
        limit: tokenize only the first ``limit`` records (quick trials); ``None``: all.
        overwrite: delete an existing output folder first.
    """

    data: str = ""
    tokenizer: str = ""
    out: str = ""
    split: Optional[str] = None
    shard_size: int = 256
    encode_batch: int = 8
    num_workers: int = 2
    torch_threads: int = 1
    fps: Optional[float] = 8.0
    num_frames: Optional[int] = 17
    size: Optional[int] = 64
    sample_rate: Optional[int] = None
    require_audio: bool = False
    audio_tolerance: float = 0.1
    pad: bool = False
    limit: Optional[int] = None
    overwrite: bool = False


# --------------------------------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, threads: int, ticks: Any = None) -> None:
    """Load the bundle once per process."""
    from mmtok.multimodal import MultimodalTokenizer

    torch.set_num_threads(threads)
    bundle = MultimodalTokenizer.from_pretrained(tokenizer_dir)
    for part in (bundle.video, bundle.audio):
        if part is not None and hasattr(part, "eval"):
            part.eval()
    _WORKER.update(bundle=bundle, ticks=ticks)


def _encode_groups(encode: Any, arrays: list[Any], expected_dim: int, what: str) -> list[torch.Tensor]:
    """Encode same-shape arrays together (one tokenizer call per shape) and return one code tensor per array.

    Batching several clips per call is what makes CPU tokenization fast (~2-3x for the demo video tokenizer); the
    groups depend only on the shard's contents, so the output stays deterministic.
    """
    out: list[torch.Tensor | None] = [None] * len(arrays)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(a.shape), []).append(i)
    for idx in groups.values():
        batch = torch.stack([torch.from_numpy(arrays[i]) for i in idx])
        codes = torch.as_tensor(encode(batch))
        if codes.dim() != expected_dim or codes.shape[0] != len(idx):
            raise ValueError(f"the {what} tokenizer returned codes of shape {tuple(codes.shape)} for a batch of "
                             f"{len(idx)}")
        for j, i in enumerate(idx):
            out[i] = codes[j].long()
    return out  # type: ignore[return-value]


@torch.no_grad()
def tokenize_clips(bundle: Any, clips: list[Any]) -> list[dict[str, Any]]:
    """Shard rows (see :mod:`mmtok.data.shards`) of decoded clips: text ids per caption, video codes
    ``[T', H', W']`` from uint8 frames ``[T, H, W, 3]``, audio codes ``[n_q, F]`` from mono waveforms ``[1, N]``."""
    video_codes: dict[int, torch.Tensor] = {}
    audio_codes: dict[int, torch.Tensor] = {}
    if bundle.video is not None:
        have = [i for i, c in enumerate(clips) if c.frames is not None]
        codes = _encode_groups(bundle.video.encode, [clips[i].frames for i in have], 4, "video")
        video_codes = dict(zip(have, codes))
    if bundle.audio is not None:
        have = [i for i, c in enumerate(clips) if c.audio is not None]
        codes = _encode_groups(bundle.audio.encode, [clips[i].audio[None] for i in have], 3, "audio")
        audio_codes = dict(zip(have, codes))
    rows = []
    for i, clip in enumerate(clips):
        text_ids = [bundle.encode_media(text=c)["text"] if bundle.text is not None else [] for c in clip.captions]
        rows.append(make_row(id=clip.id, split=clip.split, captions=clip.captions, text_ids=text_ids,
                             video=video_codes.get(i), audio=audio_codes.get(i),
                             num_frames=0 if clip.frames is None else len(clip.frames),
                             num_samples=0 if clip.audio is None else len(clip.audio), meta=clip.meta))
    return rows


def _tokenize_batch(bundle: Any, clips: list[Any], report: BadFileReport, paths: dict[str, Any]) -> list[dict]:
    """Rows of a batch; when the tokenizers reject the batch, retry clip by clip and report the ones rejected."""
    try:
        return tokenize_clips(bundle, clips)
    except (ValueError, RuntimeError, TypeError):
        if len(clips) == 1:
            raise
    rows = []
    for clip in clips:
        try:
            rows.extend(tokenize_clips(bundle, [clip]))
        except (ValueError, RuntimeError, TypeError) as e:
            report.add(clip.id, paths[clip.id], f"tokenizer rejected the clip ({type(e).__name__}: {e})")
    return rows


def tokenize_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Decode and tokenize one shard's records (``encode_batch`` clips per tokenizer call), write its bad-file
    report, then its Arrow file (atomically). Rows keep the manifest order."""
    bundle, ticks = _WORKER["bundle"], _WORKER.get("ticks")
    clip_cfg = ClipConfig(**job["clip"])
    rows, report, pending, paths = [], BadFileReport(), [], {}

    def flush() -> None:
        if not pending:
            return
        try:
            rows.extend(_tokenize_batch(bundle, pending, report, paths))
        except (ValueError, RuntimeError, TypeError) as e:
            report.add(pending[0].id, paths[pending[0].id], f"tokenizer rejected the clip ({type(e).__name__}: {e})")
        if ticks is not None:
            ticks.put(len(pending))
        pending.clear()

    for rec in job["records"]:
        record = ClipRecord(**{**rec, **{k: Path(rec[k]) if rec.get(k) else None
                                         for k in ("video", "audio", "caption_file")}})
        report.total += 1
        paths[record.id] = record.path
        try:
            pending.append(load_clip(record, clip_cfg))
            report.note_clip(pending[-1], record.path)
        except MediaError as e:
            report.add(record.id, e.path, e.reason)
            if ticks is not None:
                ticks.put(1)
        if len(pending) >= job["encode_batch"]:
            flush()
    flush()
    report.write(job["report_path"])
    write_shard(job["shard_path"], rows)
    return {"index": job["index"], "rows": len(rows), "skipped": len(report)}


# --------------------------------------------------------------------------------------------------- main side
def _record_json(r: ClipRecord) -> dict[str, Any]:
    d = asdict(r)
    d["video"] = str(r.video) if r.video is not None else None
    d["audio"] = str(r.audio) if r.audio is not None else None
    d["caption_file"] = str(r.caption_file) if r.caption_file is not None else None
    return d


def _bundle_digest(tokenizer_dir: Path) -> str:
    """sha256 over every file of the bundle (weights included): a retrained tokenizer is a different job."""
    h = hashlib.sha256()
    for p in sorted(q for q in tokenizer_dir.rglob("*") if q.is_file()):
        h.update(p.relative_to(tokenizer_dir).as_posix().encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def make_plan(cfg: TokenizeConfig, records: list[ClipRecord], bundle: Any, clip_cfg: ClipConfig) -> dict[str, Any]:
    num_shards = max(1, math.ceil(len(records) / cfg.shard_size))
    shards = []
    for i in range(num_shards):
        part = records[i * cfg.shard_size:(i + 1) * cfg.shard_size]
        shards.append({"name": shard_name(i, num_shards), "ids": [r.id for r in part],
                       "digest": hashlib.sha256(json.dumps([_record_json(r) for r in part],
                                                           sort_keys=True).encode()).hexdigest()[:16]})
    return {
        "format_version": FORMAT_VERSION,
        "data": str(Path(cfg.data).resolve()), "split": cfg.split, "num_records": len(records),
        "shard_size": cfg.shard_size, "encode_batch": cfg.encode_batch,
        "clip": asdict(clip_cfg), "tokenizer_digest": _bundle_digest(Path(cfg.tokenizer)),
        "vocab_fingerprint": bundle.vocab.fingerprint, "vocab_layout": bundle.vocab.describe(),
        "shards": shards,
    }


def _check_same_plan(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise SystemExit(f"{out} already holds a different tokenization job (plan differs in: {', '.join(diff)}); "
                         "use another out= folder, or overwrite=true to start over")


def run(cfg: TokenizeConfig) -> Path:
    """Tokenize ``cfg.data`` into ``cfg.out``; returns the output folder. Resumes an interrupted run."""
    from mmtok.multimodal import MultimodalTokenizer

    for key in ("data", "tokenizer", "out"):
        if not getattr(cfg, key):
            raise SystemExit(f"missing setting: {key}= (see --help)")
    if cfg.shard_size < 1:
        raise SystemExit(f"shard_size must be >= 1, got {cfg.shard_size}")
    out = Path(cfg.out)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    records = load_records(cfg.data, split=cfg.split)
    if cfg.limit is not None:
        records = records[:cfg.limit]
    # absolute paths: the plan (and a resume) must not depend on the working directory
    records = [replace(r, **{k: getattr(r, k).resolve() if getattr(r, k) is not None else None
                             for k in ("video", "audio", "caption_file")}) for r in records]
    if not records:
        raise SystemExit(f"no records in {cfg.data}" + (f" for split {cfg.split!r}" if cfg.split else ""))

    bundle = MultimodalTokenizer.from_pretrained(cfg.tokenizer)
    sample_rate = cfg.sample_rate
    if sample_rate is None and bundle.audio is not None:
        sample_rate = int(bundle.audio.sample_rate)
    clip_cfg = ClipConfig(fps=cfg.fps, num_frames=cfg.num_frames, size=cfg.size,
                          sample_rate=sample_rate if bundle.audio is not None else None,
                          require_audio=cfg.require_audio, audio_tolerance=cfg.audio_tolerance, pad=cfg.pad,
                          video=bundle.video is not None)
    plan = make_plan(cfg, records, bundle, clip_cfg)

    # ---- plan: written first; a rerun must match it, then only unfinished shards are done
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        _check_same_plan(json.loads(plan_path.read_text()), plan, out)
    else:
        atomic_write(plan_path, json.dumps(plan, indent=1, sort_keys=True) + "\n")
    dump_config(cfg, out, "tokenize_config.yaml")
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".*.tmp*"):  # partial files of a killed run
        stale.unlink()

    jobs, done_rows = [], 0
    for i, shard in enumerate(plan["shards"]):
        shard_path = shard_dir / f"{shard['name']}.arrow"
        if shard_path.is_file():
            continue
        part = records[i * cfg.shard_size:(i + 1) * cfg.shard_size]
        jobs.append({"index": i, "records": [_record_json(r) for r in part], "clip": asdict(clip_cfg),
                     "encode_batch": cfg.encode_batch,
                     "shard_path": str(shard_path), "report_path": str(shard_dir / f"{shard['name']}.bad.json")})
    todo = sum(len(j["records"]) for j in jobs)
    print(f"tokenize: {len(records)} records in {len(plan['shards'])} shards -> {out} "
          f"({len(plan['shards']) - len(jobs)} shards already done, {len(jobs)} to do)", flush=True)

    # ---- the loop: shards over processes, progress per clip
    t0 = time.perf_counter()
    bar = tqdm(total=todo, desc="tokenize", unit="clip", disable=not progress_enabled())
    if jobs and cfg.num_workers > 0:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")
        ticks = ctx.Queue()
        stop = threading.Event()

        def drain() -> None:  # per-clip progress from the workers
            while not stop.is_set():
                try:
                    bar.update(ticks.get(timeout=0.2))
                except Exception:
                    continue

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        # concurrent.futures rather than multiprocessing.Pool: when a worker dies (kill -9, the OOM killer) the
        # pool breaks and the run fails at once, where Pool would wait forever for the lost shard.
        pool = ProcessPoolExecutor(min(cfg.num_workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(str(cfg.tokenizer), cfg.torch_threads, ticks))
        try:
            for future in as_completed([pool.submit(tokenize_shard, job) for job in jobs]):
                done_rows += future.result()["rows"]
        except BrokenProcessPool as e:
            raise SystemExit(f"tokenize: a worker process died (killed, or out of memory?) before its shard was "
                             f"written; the finished shards in {shard_dir} are kept: run the same command again to "
                             "resume, with fewer num_workers if memory is short") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            stop.set()
            reader.join()
        ticks.close()
        ticks.join_thread()
    elif jobs:
        threads = torch.get_num_threads()
        _init_worker(str(cfg.tokenizer), cfg.torch_threads)
        try:
            for job in jobs:
                result = tokenize_shard(job)
                bar.update(len(job["records"]))
                done_rows += result["rows"]
        finally:
            torch.set_num_threads(threads)
            _WORKER.clear()
    bar.close()
    elapsed = time.perf_counter() - t0

    # ---- finish: merged bad-file report, then dataset.json last (its presence marks a finished dataset)
    report, shards = BadFileReport(), []
    for shard in plan["shards"]:
        part = BadFileReport.read(shard_dir / f"{shard['name']}.bad.json")
        report.extend(part)
        report.total += part.total
        shards.append({"file": f"{shard['name']}.arrow", "num_records": len(shard["ids"]),
                       "num_rows": len(shard["ids"]) - len(part)})
    report.write(out / BAD_FILES)
    latent_hw = None if bundle.latent_hw is None else list(bundle.latent_hw)
    for s in shards:  # the bundle in this process encoded nothing: read the latent grid off the first video row
        if latent_hw is not None or s["num_rows"] == 0:
            continue
        shapes = datasets.Dataset.from_file(str(shard_dir / s["file"]))["video_shape"]
        latent_hw = next((list(v[1:]) for v in shapes if v), None)
    num_rows = sum(s["num_rows"] for s in shards)
    if num_rows == 0:
        raise SystemExit(f"every record was skipped ({report.summary()}); see {out / BAD_FILES}")
    info = {
        "format_version": FORMAT_VERSION, "num_rows": num_rows, "num_records": len(records),
        "num_skipped": len(report), "skipped_reasons": dict(report.reasons()), "shards": shards,
        "features": FEATURES.to_dict(), "vocab_fingerprint": plan["vocab_fingerprint"],
        "vocab_layout": plan["vocab_layout"], "tokenizer": str(cfg.tokenizer),
        "tokenizer_digest": plan["tokenizer_digest"], "clip": plan["clip"],
        "audio_pattern": bundle.audio_pattern, "num_audio_levels": bundle.num_audio_levels,
        "latent_hw": latent_hw,
    }
    atomic_write(out / DATASET_FILE, json.dumps(info, indent=1, sort_keys=True) + "\n")
    rate = f", {todo / elapsed:.1f} clips/s" if todo and elapsed > 0 else ""
    print(f"tokenize: {num_rows} rows in {len(shards)} shards; {report.summary()}{rate}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = build_arg_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    cfg = load_config(TokenizeConfig, args.config, args.overrides)
    return run(cfg)


if __name__ == "__main__":
    main()
