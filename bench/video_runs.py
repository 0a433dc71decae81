"""How much the run-length form of video conditions shortens task sequences of a token dataset.

    .venv/bin/python bench/video_runs.py --tokens outputs/demo/tokens [--bundle outputs/demo/tokenizer]
                                         [--split train] [--max-rows N] [--max-run K] [--out FILE]

For every task with a multi-frame video condition (v2a, vcont, avcont, v2t; i2v's condition is one frame, which has
no runs) it builds each eligible shard row's sequence twice with :func:`mmtok.sequence.build_example`, plain and with
``video_runs=True`` (no condition dropout, no optional text condition; v2t with the row's first caption; vcont/avcont
with the default split, ``T' // 2`` condition frames), and reports the mean sequence length of both forms, the mean
video condition length of both, and the fraction of video condition tokens the run tokens removed. A clip-level line
measures the whole clip in run-length form (every frame), which bounds what any condition could gain. Every run-length
condition is decoded back and compared with the codes (the form is lossless; the script stops if it is not).

Only the vocabulary of the bundle is read (``vocab.json``, no tokenizer weights); the run tokens are appended to it
for runs up to ``--max-run`` cells (default: a whole latent frame). Prints a table and writes JSON (default
``bench/results/video_runs.json``). Nothing above depends on the machine's speed.

``--lm-steps N`` adds the LM's training speed with both forms, measured in this one run: a ``demo``-preset LM (fresh
weights, the vocabulary with run tokens for both, so the two differ only in their sequences) takes N AdamW steps on
each form's batches, alternating plain and run-length steps, over the same task draws (``--lm-batch-size``
sequences of the tasks above, equal weights: where run-length conditions apply at all). Reported: mean tokens per
batch (real and padded), median seconds per step of each form, and their ratio. The loss with the option is measured by
training with ``data.video_runs=true`` (``recipes/pretrain.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import torch

from mmtok.data.loader import eligible_tasks
from mmtok.data.shards import load_token_dataset, read_dataset_info, row_codes
from mmtok.run_length import run_length_decode_video, run_length_encode_video
from mmtok.sequence import build_example
from mmtok.vocab import UnifiedVocabulary

TASKS = ("v2a", "vcont", "avcont", "v2t")


def find_vocab(tokens: Path, bundle: str | None, info: dict) -> tuple[UnifiedVocabulary, Path]:
    """The token dataset's vocabulary: ``--bundle``'s ``vocab.json``, else the tokenizer folder ``dataset.json``
    records (as written, or beside the tokens folder)."""
    candidates = [Path(bundle)] if bundle else []
    if not bundle:
        recorded = info.get("tokenizer")
        if recorded:
            candidates += [Path(recorded), tokens.parent / Path(recorded).name]
        candidates.append(tokens.parent / "tokenizer")
    for c in candidates:
        if (c / "vocab.json").is_file():
            vocab = UnifiedVocabulary.from_json(c / "vocab.json")
            recorded_fp = info.get("vocab_fingerprint")
            if recorded_fp is not None:
                vocab.check_fingerprint(recorded_fp, layout=info.get("vocab_layout"), what=f"token dataset {tokens}")
            return vocab, c
    raise FileNotFoundError(f"no tokenizer bundle with a vocab.json found for {tokens} (tried "
                            f"{', '.join(map(str, candidates))}); pass --bundle")


def video_mask(ids: torch.Tensor, vocab: UnifiedVocabulary) -> torch.Tensor:
    """``[L]`` -> bool ``[L]``: the video tokens (codes and run tokens) of ``ids``."""
    video = vocab.range_of("video")
    n = ((ids >= video.start) & (ids < video.stop))
    if vocab.has("video_run"):
        runs = vocab.range_of("video_run")
        n = n | ((ids >= runs.start) & (ids < runs.stop))
    return n


def measure(tokens: Path, vocab: UnifiedVocabulary, info: dict, *, split: str | None, max_rows: int | None,
            max_run: int | None) -> dict:
    latent_hw = tuple(info["latent_hw"])
    cells = latent_hw[0] * latent_hw[1]
    max_run = cells if max_run is None else int(max_run)
    runs_vocab = vocab.with_video_runs(max_run)
    data = load_token_dataset(tokens, split=split)
    n_rows = len(data) if max_rows is None else min(len(data), max_rows)
    kw = dict(audio_pattern=info.get("audio_pattern", "frame_major"), num_audio_levels=info.get("num_audio_levels"),
              cond_dropout=0.0, text_condition=None)
    stats = {t: {"examples": 0, "plain_len": 0, "runs_len": 0, "plain_cond_video": 0, "runs_cond_video": 0}
             for t in TASKS}
    clip = {"clips": 0, "cells": 0, "tokens": 0, "cells_after_frame0": 0, "repeated_cells": 0}
    run_hist = torch.zeros(max_run + 1, dtype=torch.long)  # run tokens by length (whole clips)
    t0 = time.perf_counter()
    for row in data.select(range(n_rows)):
        codes = row_codes(row)
        video = codes["video"]
        if video is None:
            continue
        # clip level: the whole clip in run-length form, checked to decode back exactly
        enc = run_length_encode_video(video, max_run=max_run)
        if not torch.equal(run_length_decode_video(enc, latent_hw=latent_hw, max_run=max_run), video):
            raise AssertionError(f"row {row['id']}: the run-length form did not decode back to its codes")
        clip["clips"] += 1
        clip["cells"] += video.numel()
        clip["tokens"] += enc.numel()
        clip["cells_after_frame0"] += video[1:].numel()
        clip["repeated_cells"] += int((video[1:] == video[:-1]).sum())
        run_hist += torch.bincount(-enc[enc < 0], minlength=max_run + 1)
        caption = next((t for t in codes["text"] if t), None)
        for task in eligible_tasks(row, TASKS):
            text = caption if task == "v2t" else None
            plain = build_example(task, vocab, text=text, video=video, audio=codes["audio"], **kw)
            runs = build_example(task, runs_vocab, text=text, video=video, audio=codes["audio"], video_runs=True,
                                 **kw)
            s = stats[task]
            s["examples"] += 1
            s["plain_len"] += len(plain)
            s["runs_len"] += len(runs)
            s["plain_cond_video"] += int(video_mask(plain.input_ids[:plain.prefix_len], vocab).sum())
            s["runs_cond_video"] += int(video_mask(runs.input_ids[:runs.prefix_len], runs_vocab).sum())
            if len(runs) - runs.prefix_len != len(plain) - plain.prefix_len:
                raise AssertionError(f"row {row['id']} {task}: the output changed length")
    seconds = time.perf_counter() - t0

    out = {"tokens": str(tokens), "split": split, "rows": n_rows, "latent_hw": list(latent_hw), "max_run": max_run,
           "vocab": vocab.describe(), "vocab_with_runs": runs_vocab.describe(), "seconds": seconds, "tasks": {}}
    for task, s in stats.items():
        n = s["examples"]
        if not n:
            continue
        out["tasks"][task] = {
            "examples": n,
            "mean_len_plain": s["plain_len"] / n, "mean_len_runs": s["runs_len"] / n,
            "len_ratio": s["runs_len"] / s["plain_len"],
            "mean_cond_video_plain": s["plain_cond_video"] / n, "mean_cond_video_runs": s["runs_cond_video"] / n,
            "cond_video_removed": 1 - s["runs_cond_video"] / max(s["plain_cond_video"], 1),
        }
    if clip["clips"]:
        out["clip"] = {**clip, "mean_tokens_plain": clip["cells"] / clip["clips"],
                       "mean_tokens_runs": clip["tokens"] / clip["clips"],
                       "tokens_removed": 1 - clip["tokens"] / clip["cells"],
                       "repeated_cell_fraction": clip["repeated_cells"] / max(clip["cells_after_frame0"], 1),
                       # a run of 1 saves nothing: the share of repeated cells that sit in such runs says how much
                       # of the repetition the form cannot use
                       "run_tokens_by_length": {str(k): int(run_hist[k]) for k in range(1, max_run + 1)
                                                if run_hist[k]},
                       "repeated_cells_in_runs_of_1": int(run_hist[1]) / max(clip["repeated_cells"], 1)}
    return out


def time_lm_steps(tokens: Path, runs_vocab: UnifiedVocabulary, info: dict, *, steps: int, batch_size: int,
                  split: str | None, threads: int | None) -> dict:
    """Seconds per LM training step on plain and run-length batches of the same task draws, interleaved."""
    from lm import MMLMConfig, MMLMForCausalLM
    from mmtok.data.loader import LoaderConfig, TaskMixtureLoader

    if threads:
        torch.set_num_threads(threads)
    kw = dict(split=split, audio_pattern=info.get("audio_pattern"), num_audio_levels=info.get("num_audio_levels"))
    loaders = {}
    for form in ("plain", "runs"):
        cfg = LoaderConfig(tasks={t: 1.0 for t in TASKS}, batch_size=batch_size, seed=0, video_runs=form == "runs")
        loaders[form] = TaskMixtureLoader(str(tokens), runs_vocab, cfg, **kw)
    torch.manual_seed(0)
    model = MMLMForCausalLM(MMLMConfig.from_preset("demo", vocab=runs_vocab)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds: dict[str, list[float]] = {"plain": [], "runs": []}
    tokens_per_batch: dict[str, list[int]] = {"plain": [], "runs": []}          # padded
    real_tokens: dict[str, list[int]] = {"plain": [], "runs": []}
    for step in range(steps + 2):                                   # the first two steps warm up, untimed
        for form in ("plain", "runs") if step % 2 == 0 else ("runs", "plain"):
            batch = loaders[form].micro_batches(step)[0]
            t0 = time.perf_counter()
            out = model(input_ids=batch["input_ids"], loss_mask=batch["loss_mask"], prefix_len=batch["prefix_len"])
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= 2:
                seconds[form].append(time.perf_counter() - t0)
                tokens_per_batch[form].append(batch["input_ids"].numel())
                real_tokens[form].append(int((batch["input_ids"] != runs_vocab.pad_id).sum()))
    med = {f: sorted(v)[len(v) // 2] for f, v in seconds.items()}
    return {"steps": steps, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "mean_tokens_plain": sum(tokens_per_batch["plain"]) / steps,
            "mean_tokens_runs": sum(tokens_per_batch["runs"]) / steps,
            "mean_real_tokens_plain": sum(real_tokens["plain"]) / steps,
            "mean_real_tokens_runs": sum(real_tokens["runs"]) / steps,
            "median_s_plain": med["plain"], "median_s_runs": med["runs"], "speedup": med["plain"] / med["runs"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", required=True, help="a token dataset folder (recipes/tokenize_dataset.py output)")
    p.add_argument("--bundle", default=None, help="its tokenizer bundle folder (default: the one dataset.json names)")
    p.add_argument("--split", default=None, help="only rows of this split (default: all)")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--max-run", type=int, default=None, help="longest run token (default: H' * W')")
    p.add_argument("--lm-steps", type=int, default=0, help="> 0: time this many LM steps of each form")
    p.add_argument("--lm-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the LM timing")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "video_runs.json"))
    args = p.parse_args()

    tokens = Path(args.tokens)
    info = read_dataset_info(tokens)
    if not info.get("latent_hw"):
        raise ValueError(f"{tokens} records no latent_hw: the run-length form needs the latent grid")
    vocab, bundle = find_vocab(tokens, args.bundle, info)
    result = measure(tokens, vocab, info, split=args.split, max_rows=args.max_rows, max_run=args.max_run)
    result["bundle"] = str(bundle)
    if args.lm_steps > 0:
        result["lm"] = time_lm_steps(tokens, vocab.with_video_runs(result["max_run"]), info, steps=args.lm_steps,
                                     batch_size=args.lm_batch_size, split=args.split, threads=args.threads)
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__}

    h, w = result["latent_hw"]
    print(f"{tokens}: {result['rows']} rows, latent grid {h}x{w}, runs up to {result['max_run']} cells")
    header = ("task", "examples", "mean length plain", "runs", "ratio", "video cond plain", "runs", "removed")
    rows = [(t, str(s["examples"]), f"{s['mean_len_plain']:.1f}", f"{s['mean_len_runs']:.1f}",
             f"{s['len_ratio']:.3f}", f"{s['mean_cond_video_plain']:.1f}", f"{s['mean_cond_video_runs']:.1f}",
             f"{100 * s['cond_video_removed']:.1f}%") for t, s in result["tasks"].items()]
    if "clip" in result:
        c = result["clip"]
        rows.append(("whole clip", str(c["clips"]), f"{c['mean_tokens_plain']:.1f}", f"{c['mean_tokens_runs']:.1f}",
                     f"{c['mean_tokens_runs'] / c['mean_tokens_plain']:.3f}", "-", "-",
                     f"{100 * c['tokens_removed']:.1f}%"))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:>%d}" % w for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    if "clip" in result:
        c = result["clip"]
        print(f"cells equal to the same cell one latent frame earlier: {100 * c['repeated_cell_fraction']:.1f}% "
              f"(frames 1..T'-1); {100 * c['repeated_cells_in_runs_of_1']:.0f}% of them alone (a <run_1> saves "
              f"nothing); run tokens by length: {c['run_tokens_by_length']}")
    if "lm" in result:
        t = result["lm"]
        print(f"LM training steps ({t['steps']} of each form, batch {t['batch_size']}, {t['threads']} threads, "
              f"interleaved): tokens per batch {t['mean_real_tokens_plain']:.0f} plain, {t['mean_real_tokens_runs']:.0f} "
              f"run-length ({t['mean_tokens_plain']:.0f} / {t['mean_tokens_runs']:.0f} padded); {1e3 * t['median_s_plain']:.1f} ms vs {1e3 * t['median_s_runs']:.1f} ms a step "
              f"(speedup {t['speedup']:.3f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
