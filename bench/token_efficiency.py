"""Token efficiency of the continuous video encoder: every token-reduction method on one trained VATT, one table.

    python bench/token_efficiency.py --corpus outputs/demo/corpus --train-steps 3000 [--finetune-steps 500]
    python bench/token_efficiency.py --corpus outputs/demo/corpus --model outputs/vatt_demo/export \\
        --corpus FOOTAGE_DIR ...           # more --corpus folders: real footage (no labels: tokens, speed, memory)
    python bench/token_efficiency.py --quick                  # debug sizes on a generated corpus (the test)

Models: the plain VATT (joint attention) of ``--model``, or trained here with ``recipes/train_vatt.py`` (the demo
config, ``--train-steps``, DropToken off so that no method meets a model already trained to lose tokens); the plain
divided-attention model (``--divided-model``, or trained the same way). Every method row is the plain model with the
video tower's switches set, training-free (:meth:`lm.modeling_vatt.VATTModel.from_pretrained`'s ``video_switches``):

- RLT (arXiv 2411.05222) at each ``--rlt`` threshold; its run-length embedding starts at zero, as the paper's
  training-free RLT;
- ToMe (arXiv 2210.09461) and VTM (arXiv 2410.23782) merging ``r`` tokens per block, each ``--merge-r``; training-free
  VTM runs an untrained saliency scorer. The demo's video tower has 4 blocks over 48 tokens (2-frame tubelets), so
  the default ``r`` go up to 24 (a clip merges at most half its tokens a block: r = 24 takes 48 tokens to 6 entering
  the last block), the share of tokens ToMe's ViT-L (r = 8 over 24 blocks of 197 tokens) removes, which its speed
  claim is for;
- STTS (arXiv 2111.11591): the frame stage at each ``--stts-frames`` fraction, the region stage at each
  ``--stts-regions`` fraction, and both stages together (the paper's form) at each ``--stts-both`` pair;
  training-free STTS runs untrained scorers;
- RLT + ToMe (the first threshold, the middle ``r``).

With ``--finetune-steps N`` the trainable methods (ToMe and VTM at every ``r``, STTS at every setting) and RLT (first
threshold) are also fine-tuned from the plain model for N steps (the recipe's ``model.init_from``) and get their own
rows (``ft``), beside their control: the plain model fine-tuned the same N steps with no method (``plain (joint)
(ft)``). A fine-tuned row's accuracy change is measured against that control, so the extra steps themselves are not
counted as the method's gain; its tokens and speed against the plain model, as every row's.

Measured per row and corpus, each row in its own process (so its peak memory is its own): video tokens per clip
(embedded, entering the first block, leaving the last: RLT drops before the encoder, STTS at its layer, ToMe / VTM in
every block), the video tower's forward GFLOPs per clip (attention, MLPs and tubelet embedding, from the token counts
each block saw; scorers and matching left out), inference throughput (clips/s, eval mode, no grad, batch
``--batch-size``, median of ``--reps``), training throughput (clips/s of a step: forward, backward and AdamW on the
video tower and projections, NCE against fixed targets, DropToken off), the train step's peak memory (CUDA: the
allocator's peak; CPU: peak resident memory above the process's before the step, Linux ``clear_refs``), and, on
corpora with labels (a Moving-Digits ``ground_truth.jsonl``), accuracy: the mean linear-probe accuracy over digit,
colour and direction (probes fitted on ``--probe-clips`` training clips, scored on ``--test-clips`` test clips),
text->video and video->audio R@1, all on the weights as saved (the timed training steps' updates are undone first),
so a row's accuracy equals the recipe's own evaluation of that export.

Checks the papers' claims (REFERENCE.md): RLT >= 30% fewer tokens at <= 0.5 point accuracy loss; ToMe >= 1.8x
inference throughput at <= 1 point loss; STTS >= 33% less compute at <= 0.7 point loss; VTM at least ToMe's accuracy
at the same ``r`` (the same token count). "Accuracy" is the probe mean. When every row of the labelled corpus is
within a point of a near-perfect plain model, the corpus cannot separate the methods: the report says so, and the
real-footage rows are the ones to read for tokens and speed.

Writes ``token_efficiency.{json,md,png}`` into ``--out`` (default ``bench/results``): the JSON holds every row and
the settings, the Markdown the table, the PNG accuracy against inference throughput. Trained models are kept in
``--work`` and reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MMTOK_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

VIDEO_LABELS = ("digit", "color", "direction")   # what the video tower's embedding is probed for
TARGETS = {  # (paper claim, tolerance in accuracy points)
    "rlt": "RLT: >= 30% fewer tokens at <= 0.5 point accuracy loss (arXiv 2411.05222)",
    "tome": "ToMe: >= 1.8x inference throughput at <= 1 point accuracy loss (arXiv 2210.09461)",
    "stts": "STTS: >= 33% less compute at <= 0.7 point accuracy loss (arXiv 2111.11591)",
    "vtm": "VTM: at least ToMe's accuracy at the same r (arXiv 2410.23782)",
}


# ------------------------------------------------------------------------------------------------------- rows
def parse_pair(text: str) -> tuple[float, float]:
    """``FRAMES:REGIONS`` (``--stts-both``) -> two fractions."""
    frames, _, regions = text.partition(":")
    try:
        return float(frames), float(regions)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FRAMES:REGIONS (e.g. 0.8:0.8), got {text!r}") from None


def method_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The method rows (name, family, model key, video switches), plain first."""
    rows = [{"name": "plain (joint)", "family": "plain", "model": "plain", "switches": {}},
            {"name": "plain (divided)", "family": "divided", "model": "divided", "switches": {}}]
    for tau in args.rlt:
        rows.append({"name": f"RLT tau={tau:g}", "family": "rlt", "model": "plain",
                     "switches": {"rlt_threshold": tau}})
    for r in args.merge_r:
        rows.append({"name": f"ToMe r={r}", "family": "tome", "model": "plain", "r": r, "switches": {"tome_r": r}})
    for r in args.merge_r:
        rows.append({"name": f"VTM r={r}", "family": "vtm", "model": "plain", "r": r,
                     "switches": {"tome_r": r, "merge": "vtm"}})
    for k in args.stts_frames:
        rows.append({"name": f"STTS frames {k:g}", "family": "stts", "model": "plain", "switches": {"stts_frames": k}})
    for k in args.stts_regions:
        rows.append({"name": f"STTS regions {k:g}", "family": "stts", "model": "plain",
                     "switches": {"stts_regions": k}})
    for kf, kr in args.stts_both:
        rows.append({"name": f"STTS frames {kf:g} + regions {kr:g}", "family": "stts", "model": "plain",
                     "switches": {"stts_frames": kf, "stts_regions": kr}})
    if args.rlt and args.merge_r:
        tau, r = args.rlt[0], args.merge_r[len(args.merge_r) // 2]
        rows.append({"name": f"RLT tau={tau:g} + ToMe r={r}", "family": "rlt+tome", "model": "plain",
                     "switches": {"rlt_threshold": tau, "tome_r": r}})
    if args.finetune_steps > 0:
        learned = [r for r in rows if r["family"] in ("tome", "vtm", "stts")]
        if args.rlt:
            learned.insert(0, next(r for r in rows if r["family"] == "rlt"))
        learned.insert(0, rows[0])                  # the control: the same steps with no method
        for r in learned:
            rows.append({**r, "name": f"{r['name']} (ft)", "model": f"ft:{r['name']}", "finetuned": True})
    return rows


# -------------------------------------------------------------------------------------------------- training
def subprocess_env(threads: int | None) -> dict[str, str]:
    """Child processes import this checkout's packages and run with the given torch threads."""
    env = {**os.environ, "MMTOK_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def train_model(run_dir: Path, overrides: list[str], args: argparse.Namespace) -> Path:
    """``recipes/train_vatt.py`` as a user runs it (reused when ``run_dir`` already holds its export)."""
    export = run_dir / "export"
    if (export / "config.json").is_file():
        steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("train.steps=")), None)
        trained = json.loads((export / "eval.json").read_text()).get("steps") if (export / "eval.json").is_file() \
            else None
        if steps is not None and trained is not None and trained != steps:
            raise SystemExit(f"{export} holds a model trained {trained} steps, not the {steps} asked for: give "
                             "another --work folder (trained models are reused by name)")
        print(f"[train] reusing {export}", flush=True)
        return export
    config = ROOT / "recipes" / "configs" / ("vatt_debug.yaml" if args.quick else "vatt_demo.yaml")
    cmd = [sys.executable, str(ROOT / "recipes" / "train_vatt.py"), "--config", str(config), f"run_dir={run_dir}",
           "demo_corpus_clips=0", f"data.manifest={args.corpus[0] / 'manifest.jsonl'}",
           f"train.num_threads={args.threads or 0}", *overrides]
    print(f"[train] {run_dir.name}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env=subprocess_env(args.threads), stdout=subprocess.DEVNULL)
    print(f"[train] {run_dir.name} done in {time.time() - t0:.0f} s", flush=True)
    return export


def prepare_models(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Path]:
    """Every model the rows need: the plain ones, then the fine-tuned ones."""
    steps = [f"train.steps={args.train_steps}", "model.overrides.droptoken=0"]
    models: dict[str, Path] = {}
    if args.model is not None:
        models["plain"] = args.model
    elif args.train_steps > 0:
        models["plain"] = train_model(args.work / "plain_joint", steps, args)
    else:
        raise SystemExit("give --model EXPORT or --train-steps N (> 0) to train the plain model")
    if args.divided_model is not None:
        models["divided"] = args.divided_model
    elif args.train_steps > 0 and any(r["model"] == "divided" for r in rows):
        models["divided"] = train_model(args.work / "plain_divided", [*steps, "model.video.attention=divided"], args)
    for row in rows:
        if row.get("finetuned"):
            switches = [f"model.video.{k}={v}" for k, v in row["switches"].items()]
            name = (row["name"].replace(" ", "_").replace("=", "").replace("+", "and").replace("(ft)", "ft")
                    .replace("(", "").replace(")", ""))
            models[row["model"]] = train_model(
                args.work / name, [f"model.init_from={models['plain']}", f"train.steps={args.finetune_steps}",
                                   "train.warmup_steps=20", "train.lr=3e-4", "model.overrides.droptoken=0",
                                   *switches], args)
    return models


# ------------------------------------------------------------------------------------------------------- data
def prepare_corpus(corpus: Path, export: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Decode a corpus once, with the model's clip settings, into ``folder/<name>.pt`` for the row processes.

    A corpus with ``ground_truth.jsonl`` (Moving-Digits) gives test clips and probe training clips with labels; any
    other (a manifest folder, or a folder of videos) gives ``--footage-clips`` clips of any split (no audio, no
    accuracy)."""
    from lm.vatt_evaluation import load_vatt_export
    from mmtok.data.av_clips import AVClips

    _, _, clip_cfg = load_vatt_export(export)
    source = corpus / "manifest.jsonl" if (corpus / "manifest.jsonl").is_file() else corpus   # or a media folder
    labelled = (corpus / "ground_truth.jsonl").is_file()
    data: dict[str, Any] = {"name": corpus.name, "path": str(corpus), "labelled": labelled}
    if labelled:
        from mmtok.datasets.moving_digits import probe_labels

        test = AVClips.load(source, cfg=clip_cfg, split="test", limit=args.test_clips)
        train = AVClips.load(source, cfg=clip_cfg, split="train", limit=args.probe_clips)
        labels = probe_labels(corpus)
        data["labels"] = {k: {cid: labels[k][cid] for cid in (*test.ids, *train.ids)} for k in VIDEO_LABELS}
        data["probe_train"] = clip_fields(train)
    else:
        clip_cfg.sample_rate = None
        test = AVClips.load(source, cfg=clip_cfg, limit=args.footage_clips)
    data["clips"] = clip_fields(test)
    path = folder / f"{corpus.name}.pt"
    torch.save(data, path)
    return {"name": corpus.name, "path": str(corpus), "labelled": labelled, "clips": len(test), "data": str(path),
            "skipped": len(test.report)}


def clip_fields(clips: Any) -> dict[str, Any]:
    return {"ids": clips.ids, "frames": clips.frames, "audio": clips.audio, "captions": clips.captions}


# ---------------------------------------------------------------------------------------------- measurement
def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def median_seconds(fn, reps: int) -> float:
    fn()                                                            # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class BlockCounter:
    """Token counts the video tower's embeddings produce and each of its blocks receives (forward hooks), and the
    forward FLOPs they imply."""

    def __init__(self, tower: Any):
        self.tower, self.embedded, self.blocks = tower, [], [[] for _ in tower.blocks]
        self.hooks = [tower.embeddings.register_forward_hook(
            lambda m, a, out: self.embedded.extend(out.packing.counts))]
        for i, block in enumerate(tower.blocks):
            self.hooks.append(block.register_forward_pre_hook(
                lambda m, a, i=i: self.blocks[i].extend(a[2].counts)))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

    def summary(self, grid: tuple[int, int, int]) -> dict[str, float]:
        cfg = self.tower.config
        c, hidden = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
        d = cfg.in_channels * cfg.tubelet_size * cfg.patch_size ** 2
        t, s = grid[0], grid[1] * grid[2]
        n = len(self.embedded)
        macs = sum(self.embedded) * d * c
        for counts in self.blocks:
            for k in counts:
                macs += k * (4 * c * c + 2 * c * hidden)                     # qkv + proj, MLP
                if cfg.attention == "divided":                               # full grid: temporal, then spatial
                    macs += k * 4 * c * c + 2 * c * (s * t * t + t * s * s)
                else:
                    macs += 2 * k * k * c                                    # q k^T and attention @ v
        return {"tokens_embedded": sum(self.embedded) / n, "tokens_first_block": sum(self.blocks[0]) / n,
                "tokens_last_block": sum(self.blocks[-1]) / n, "gflops_per_clip": 2 * macs / n / 1e9}


def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row on one corpus, in this process."""
    from lm.alignment_losses import nce_loss
    from lm.vatt_evaluation import evaluate_vatt, load_vatt_export
    from mmtok.data.av_clips import AVClips

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    data = torch.load(spec["data"], weights_only=True)
    clips = AVClips(**data["clips"])
    torch.manual_seed(0)  # the parts a switch adds to a trained model (a training-free STTS scorer) start alike
    model, tokenizer, _ = load_vatt_export(spec["model"], video_switches=spec["switches"] or None)
    model.to(device)
    model.config.droptoken = 0.0          # the methods' own cost, not DropToken's
    b = min(spec["batch_size"], len(clips))
    video = clips.video(slice(0, b)).to(device)
    grid = (-(-video.shape[2] // model.config.video_config.tubelet_size),     # first-frame padding rounds up
            video.shape[3] // model.config.video_config.patch_size,
            video.shape[4] // model.config.video_config.patch_size)
    out: dict[str, Any] = {}

    # 1. a training step: throughput and peak memory (first, so the peak is this step's). The timed steps change the
    # weights; they are put back before anything is measured on the model's outputs.
    trained_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    noise = torch.randn(b, model.config.va_dim, generator=torch.Generator().manual_seed(0))
    targets = torch.nn.functional.normalize(noise, dim=-1).to(device)                  # fixed NCE partners
    params = [*model.video_model.parameters(), *model.projections.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def train_step() -> None:
        va = model.embed_video(video, space="va")
        loss = nce_loss(va, targets, model.projections.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()                                                            # warm-up (allocator, lazy inits)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")                       # reset the peak-RSS counter (Linux)
        base = rss_kib("VmRSS") * 1024
    seconds = median_seconds(train_step, spec["reps"])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_kib("VmHWM") * 1024
    out.update(train_clips_per_s=b / seconds, peak_train_mb=(peak - base) / 2 ** 20)
    del opt
    model.load_state_dict(trained_weights)
    del trained_weights
    model.eval()

    # 2. tokens and compute over all clips, 3. inference throughput on one batch
    counter = BlockCounter(model.video_model)
    with torch.no_grad():
        for start in range(0, len(clips), b):
            model.embed_video(clips.video(slice(start, start + b)).to(device), space="pooled")
    counter.close()
    out.update(counter.summary(grid))
    with torch.no_grad():
        seconds = median_seconds(lambda: model.embed_video(video, space="pooled"), spec["reps"])
    out["infer_clips_per_s"] = b / seconds

    # 4. accuracy
    if data.get("labels"):
        metrics = evaluate_vatt(model, clips, tokenizer=tokenizer, probe_train=AVClips(**data["probe_train"]),
                                labels=data["labels"], batch_size=b, ks=(1,))
        probes = [metrics[f"probe/{k}"] for k in VIDEO_LABELS if f"probe/{k}" in metrics]
        out.update({f"probe_{k}": metrics.get(f"probe/{k}") for k in VIDEO_LABELS})
        out.update({f"probe_{k}_train": metrics.get(f"probe/{k}_train") for k in VIDEO_LABELS})  # features hold it?
        out.update(accuracy=sum(probes) / len(probes) if probes else None, t2v_r1=metrics.get("t2v/R@1"),
                   v2a_r1=metrics.get("v2a/R@1"), chance_r1=metrics.get("chance/R@1"))
    return out


def run_row(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if args.in_process:
        try:
            return measure_row(spec)
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
            return {"error": f"{type(e).__name__}: {e}"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=subprocess_env(args.threads))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------------- report
def relative(rows: list[dict[str, Any]]) -> None:
    """Savings, speedups and accuracy changes (points) of each row against the plain joint model, per corpus; a
    fine-tuned row's accuracy change against the plain model fine-tuned the same steps (``plain (joint) (ft)``) when
    that control was measured (``accuracy_baseline`` names the row it is against)."""
    plain = {r["corpus"]: r for r in rows if r["name"] == "plain (joint)" and "error" not in r}
    control = {r["corpus"]: r for r in rows if r["name"] == "plain (joint) (ft)" and "error" not in r}
    for r in rows:
        p = plain.get(r["corpus"])
        if p is None or "error" in r:
            continue
        r["token_saving"] = 1 - r["tokens_first_block"] / p["tokens_first_block"]
        r["compute_saving"] = 1 - r["gflops_per_clip"] / p["gflops_per_clip"]
        r["infer_speedup"] = r["infer_clips_per_s"] / p["infer_clips_per_s"]
        r["train_speedup"] = r["train_clips_per_s"] / p["train_clips_per_s"]
        base = control.get(r["corpus"], p) if r.get("finetuned") else p
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["accuracy_change_points"] = 100 * (r["accuracy"] - base["accuracy"])
            r["accuracy_baseline"] = base["name"]


def check_targets(rows: list[dict[str, Any]], corpus: str) -> dict[str, Any]:
    """The papers' claims, on the rows of ``corpus`` (the best row of each family that the claim allows)."""
    mine = [r for r in rows if r["corpus"] == corpus and "error" not in r and "infer_speedup" in r]
    if not any(r.get("accuracy_change_points") is not None for r in mine):
        return {}

    def loss_ok(r: dict[str, Any], points: float) -> bool:
        return r.get("accuracy_change_points") is not None and r["accuracy_change_points"] >= -points

    out: dict[str, Any] = {}
    for family, measure, goal, points in (("rlt", "token_saving", 0.30, 0.5), ("tome", "infer_speedup", 1.8, 1.0),
                                          ("stts", "compute_saving", 0.33, 0.7)):
        cands = [r for r in mine if r["family"] == family]
        if not cands:
            continue
        ok = [r for r in cands if loss_ok(r, points)]
        best = max(ok or cands, key=lambda r: r[measure])
        out[family] = {"target": TARGETS[family], "row": best["name"], measure: round(best[measure], 3),
                       "accuracy_change_points": round(best["accuracy_change_points"], 2),
                       "met": bool(ok) and best[measure] >= goal}
    pairs = []
    for vtm in (r for r in mine if r["family"] == "vtm"):
        tome = next((r for r in mine if r["family"] == "tome" and r.get("r") == vtm.get("r")
                     and r.get("finetuned") == vtm.get("finetuned")), None)
        if tome is None and vtm.get("finetuned"):
            tome = next((r for r in mine if r["family"] == "tome" and r.get("r") == vtm.get("r")), None)
        if tome is not None:
            pairs.append({"vtm": vtm["name"], "tome": tome["name"], "vtm_accuracy": vtm["accuracy"],
                          "tome_accuracy": tome["accuracy"], "met": vtm["accuracy"] >= tome["accuracy"]})
    if pairs:
        # VTM is a learned merge (arXiv 2410.23782 trains its saliency scorer): with fine-tuned rows the claim is
        # checked on them, each against ToMe fine-tuned the same steps; the training-free pairs stay in the report.
        trained = [p for p in pairs if "(ft)" in p["vtm"]]
        out["vtm"] = {"target": TARGETS["vtm"], "pairs": pairs, "checked_on": "fine-tuned" if trained else "all",
                      "met": all(p["met"] for p in trained or pairs)}
    return out


def easy_corpus_note(rows: list[dict[str, Any]], corpus: str) -> str | None:
    """A note when the corpus cannot separate the methods (every accuracy within a point of a near-perfect plain)."""
    mine = [r for r in rows if r["corpus"] == corpus and r.get("accuracy") is not None]
    plain = next((r for r in mine if r["name"] == "plain (joint)"), None)
    if plain is None or plain["accuracy"] < 0.98:
        return None
    if all(abs(r.get("accuracy_change_points", 0.0)) <= 1.0 for r in mine):
        return (f"{corpus}: every method is within a point of the plain model's {100 * plain['accuracy']:.1f}% "
                "probe accuracy: the corpus is too easy to separate the methods by accuracy (static backgrounds, "
                "near-perfect probes); read the real-footage rows for tokens and speed")
    return None


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    head = ("| corpus | method | tokens kept | tokens out | GFLOPs | infer clips/s | x | train clips/s | x | peak MB "
            "| probe acc | d pts | t2v R@1 | v2a R@1 |")
    lines = [head, "|" + "|".join("---" for _ in range(14)) + "|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['corpus']} | {r['name']} | error: {r['error']} |" + " |" * 12)
            continue
        lines.append(" | ".join([
            f"| {r['corpus']}", r["name"], fmt(r["tokens_first_block"], ".1f"), fmt(r["tokens_last_block"], ".1f"),
            fmt(r["gflops_per_clip"], ".4f"), fmt(r["infer_clips_per_s"], ".0f"), fmt(r.get("infer_speedup"), ".2f"),
            fmt(r["train_clips_per_s"], ".0f"), fmt(r.get("train_speedup"), ".2f"), fmt(r["peak_train_mb"], ".0f"),
            fmt(None if r.get("accuracy") is None else 100 * r["accuracy"], ".1f"),
            fmt(r.get("accuracy_change_points"), "+.1f"),
            fmt(None if r.get("t2v_r1") is None else 100 * r["t2v_r1"], ".1f"),
            fmt(None if r.get("v2a_r1") is None else 100 * r["v2a_r1"], ".1f")]) + " |")
    lines.append("")
    lines.append("tokens kept: entering the first block (RLT drops before the encoder, STTS selects at layer 0); "
                 "tokens out: entering the last block (ToMe / VTM merge in every block). x: against plain (joint). "
                 "probe acc: mean linear-probe accuracy (%) over digit, colour and direction; d pts: its change in "
                 "points (a fine-tuned row's against plain (joint) (ft), the same steps with no method). Training-free rows unless marked (ft); training-free VTM / STTS run untrained scorers.")
    for corpus, checks in result["targets"].items():
        for family, check in checks.items():
            lines.append(f"- {corpus}: {check['target']}: {'met' if check['met'] else 'not met'} "
                         f"({json.dumps({k: v for k, v in check.items() if k not in ('target', 'met')})})")
    lines.extend(f"- {note}" for note in result["notes"])
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Accuracy (probe mean, t2v R@1) against inference throughput, one point per row of each labelled corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("accuracy") is not None]
    if not rows:
        return None
    families = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "accuracy", "linear-probe accuracy (digit, colour, direction)"),
                           (axes[1], "t2v_r1", "text->video R@1")):
        for r in rows:
            ax.scatter(r["infer_clips_per_s"], 100 * r[key], color=f"C{families.index(r['family'])}")
            ax.annotate(r["name"], (r["infer_clips_per_s"], 100 * r[key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("inference throughput (clips/s)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Token reduction on the VATT video tower: accuracy against throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ main
def quick_corpus(folder: Path) -> Path:
    from mmtok.datasets.moving_digits import generate_corpus

    if not (folder / "manifest.jsonl").is_file():
        generate_corpus(folder, num_clips=32, seed=0, num_workers=0, progress=False)
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, action="append", default=None,
                        help="a manifest folder (manifest.jsonl; the first, a Moving-Digits corpus, trains the "
                             "models); repeat it for real footage (a manifest folder or a folder of videos)")
    parser.add_argument("--model", type=Path, default=None, help="a plain (joint) VATT export to measure")
    parser.add_argument("--divided-model", type=Path, default=None, help="a plain divided-attention VATT export")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of each model trained here (3000)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="> 0: fine-tuned RLT / VTM / STTS rows too")
    parser.add_argument("--rlt", type=float, nargs="*", default=None,
                        help="RLT thresholds on the [-1, 1] pixel scale (0.05 0.1)")
    parser.add_argument("--merge-r", type=int, nargs="*", default=None, help="ToMe / VTM r (8 12 16 20 24)")
    parser.add_argument("--stts-frames", type=float, nargs="*", default=None, help="STTS frame fractions (0.8 0.6)")
    parser.add_argument("--stts-regions", type=float, nargs="*", default=None, help="STTS region fractions (0.5)")
    parser.add_argument("--stts-both", type=parse_pair, nargs="*", default=None,
                        help="STTS frame and region fractions together, FRAMES:REGIONS (0.8:0.8 0.8:0.7)")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="only these families besides plain (joint): divided rlt tome vtm stts rlt+tome")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per timed batch (64)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (median; 20)")
    parser.add_argument("--test-clips", type=int, default=None, help="test clips for accuracy and tokens (512)")
    parser.add_argument("--probe-clips", type=int, default=None, help="training clips the probes fit on (1024)")
    parser.add_argument("--footage-clips", type=int, default=256, help="clips of an unlabelled corpus")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every row in this process (faster; peak memory then shares the process)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_token_efficiency",
                        help="trained models (reused when present)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder of the results")
    parser.add_argument("--quick", action="store_true", help="debug sizes, a generated 32-clip corpus, 4 steps")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:                                           # a row process
        print("RESULT " + json.dumps(measure_row(json.loads(args.worker))))
        return {}
    q = args.quick
    defaults = dict(train_steps=4 if q else 3000, rlt=[0.05] if q else [0.05, 0.1],
                    merge_r=[2] if q else [8, 12, 16, 20, 24],
                    stts_frames=[0.5] if q else [0.8, 0.6], stts_regions=[0.5],
                    stts_both=[(0.5, 0.5)] if q else [(0.8, 0.8), (0.8, 0.7)], batch_size=8 if q else 64,
                    reps=2 if q else 20, test_clips=16 if q else 512, probe_clips=32 if q else 1024)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.corpus:
        if not q:
            parser.error("--corpus is required (a Moving-Digits corpus folder first), except with --quick")
        args.corpus = [quick_corpus(args.work / "corpus")]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    rows = [r for r in method_rows(args) if args.rows is None or r["family"] in ("plain", *args.rows)]
    models = prepare_models(rows, args)
    rows = [r for r in rows if r["model"] in models]
    results: list[dict[str, Any]] = []
    corpora = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for corpus in args.corpus:
            info = prepare_corpus(corpus, models["plain"], args, Path(tmp))
            corpora.append(info)
            for row in rows:
                print(f"[{info['name']}] {row['name']} ...", flush=True)
                spec = {"model": str(models[row["model"]]), "data": info["data"], "batch_size": args.batch_size,
                        "switches": {} if row.get("finetuned") else row["switches"],   # ft: saved with the model
                        "reps": args.reps, "device": args.device, "threads": args.threads}
                measured = run_row(spec, args)
                results.append({"corpus": info["name"], **{k: v for k, v in row.items() if k != "model"},
                                "model": str(models[row["model"]]), **measured})
    relative(results)
    result = {
        "benchmark": "token_efficiency",
        "settings": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "corpus" else v)
                     for k, v in vars(args).items() if k != "worker"},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                    "device": args.device, "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "models": {k: str(v) for k, v in models.items()},
        "corpora": corpora,
        "rows": results,
        "targets": {c["name"]: t for c in corpora if (t := check_targets(results, c["name"]))},
        "notes": [n for c in corpora if (n := easy_corpus_note(results, c["name"]))],
    }
    json_path = args.out / "token_efficiency.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (args.out / "token_efficiency.md").write_text(table)
    png = plot(result, args.out / "token_efficiency.png")
    print("\n" + table)
    print(f"wrote {json_path}, {args.out / 'token_efficiency.md'}" + (f", {png}" if png else ""))
    return result


if __name__ == "__main__":
    main()
