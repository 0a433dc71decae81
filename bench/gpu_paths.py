"""Run every GPU path of mmtok once and report what each did: the check to run when a GPU machine is at hand.

    python bench/gpu_paths.py                         # all paths, results in bench/results/gpu_paths.{json,md}
    python bench/gpu_paths.py --paths lm_bf16,lm_zero3 --out /tmp/gpu
    python bench/gpu_paths.py --demo outputs/demo      # also redo the demo's LM stage (and what follows) on the GPU

The paths are the recipes as a user launches them, through ``accelerate launch`` and the launch files in
``recipes/configs/accelerate/`` (one process each, so one GPU is enough): each trainer at debug size under bf16, the LM
under DeepSpeed ZeRO-2 and ZeRO-3 (then resumed from its ZeRO-3 checkpoint), the ~1B VideoPoet-like preset for a few
ZeRO-3 steps on synthetic sequences, and, with ``--demo``, the demo from its ``pretrain`` stage on (the LM on the
demo's token shards, generation and evaluation), so its figures can be set beside the CPU run's in the same folder.

Each path has a time limit and its own log; a failing path is reported and the next one runs. The table gives the
exit status, wall time, steps done, steps per second (from the run's ``metrics.jsonl``), the last training loss and
the peak GPU memory (the most ``nvidia-smi`` read while the path ran).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from recipes.common import read_metrics  # noqa: E402
ACCEL = REPO / "recipes" / "configs" / "accelerate"
MIN_LEFT_S, MARGIN_S = 30.0, 10.0   # with --deadline-s: start no path with less left; keep this much for the report


def launch(accel_config: str, recipe: str, config: str, *overrides: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``accelerate launch`` of one recipe with one process (a one-GPU machine runs every launch file)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / accel_config),
            "--num_processes", "1", str(REPO / "recipes" / recipe), "--config", str(REPO / "recipes" / "configs" / config),
            *extra, *overrides]


def paths(work: Path, demo: Optional[Path]) -> list[dict[str, Any]]:
    """(name, command, run folder, time limit) of every path, in the order they run."""
    lm_debug = ("pretrain.py", "pretrain_debug.yaml")
    out = [
        dict(name="video_tokenizer_bf16", limit=75, run=work / "video_tokenizer",
             cmd=launch("single_gpu.yaml", "train_video_tokenizer.py", "video_tokenizer_debug.yaml",
                        f"run_dir={work / 'video_tokenizer'}", "train.mixed_precision=bf16", "train.steps=40")),
        dict(name="audio_tokenizer_bf16", limit=75, run=work / "audio_tokenizer",
             cmd=launch("single_gpu.yaml", "train_audio_tokenizer.py", "audio_tokenizer_debug.yaml",
                        f"run_dir={work / 'audio_tokenizer'}", "train.steps=40")),
        dict(name="vatt_bf16", limit=75, run=work / "vatt",
             cmd=launch("single_gpu.yaml", "train_vatt.py", "vatt_debug.yaml", f"run_dir={work / 'vatt'}")),
        dict(name="lm_bf16", limit=60, run=work / "lm_bf16",
             cmd=launch("single_gpu.yaml", *lm_debug, f"run_dir={work / 'lm_bf16'}", "train.mixed_precision=bf16")),
        dict(name="lm_zero2", limit=75, run=work / "lm_zero2",
             cmd=launch("deepspeed_zero2.yaml", *lm_debug, f"run_dir={work / 'lm_zero2'}")),
        dict(name="lm_zero3", limit=75, run=work / "lm_zero3",
             cmd=launch("deepspeed_zero3.yaml", *lm_debug, f"run_dir={work / 'lm_zero3'}", "train.steps=20")),
        dict(name="lm_zero3_resume", limit=75, run=work / "lm_zero3",
             cmd=launch("deepspeed_zero3.yaml", *lm_debug, f"run_dir={work / 'lm_zero3'}", "train.steps=30",
                        extra=("--resume",))),
        dict(name="lm_1b_zero3", limit=150, run=work / "lm_1b",
             cmd=launch("deepspeed_zero3.yaml", "pretrain.py", "pretrain_videopoet_1b.yaml",
                        f"run_dir={work / 'lm_1b'}", "data.source=synthetic", "data.synthetic.num_examples=64",
                        "train.steps=8", "train.grad_accum=1", "train.warmup_steps=2", "train.log_every=1",
                        "train.eval_every=1000", "train.save_every=1000", "data.eval_batches=1")),
    ]
    if demo is not None:
        out.append(dict(name="demo_lm_generate_evaluate", limit=420, run=demo / "lm",
                        cmd=[sys.executable, str(REPO / "recipes" / "demo.py"), "--config",
                             str(REPO / "recipes" / "configs" / "demo.yaml"), f"out={demo}",
                             "--stages", "pretrain,generate,evaluate", "--force"]))
    return out


def session_gpu_mib(apps_csv: str, session: int) -> int | None:
    """GPU memory (MiB) held by the processes of session ``session``, from ``nvidia-smi
    --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``; None when none of them is listed."""
    total, found = 0, False
    for line in apps_csv.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        try:
            if os.getsid(int(fields[0])) != session:
                continue
        except OSError:                      # the process has ended, or lives outside this machine's view
            continue
        total, found = total + int(fields[1]), True
    return total if found else None


class GPUMemoryWatch:
    """The most GPU memory a path used while it ran, read from ``nvidia-smi`` every half second (MiB).

    Counted over the processes of the path's own session (the launcher and its workers), so that other work on the
    same GPU does not count; where ``nvidia-smi`` lists none of them (a sandbox that hides process ids), the device's
    whole memory in use is read instead, and ``basis`` says which it was.
    """

    def __init__(self, session: int):
        self.session, self.peak, self.basis = session, 0, "processes"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _query(self, what: str) -> str:
        return subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                used = session_gpu_mib(self._query("compute-apps=pid,used_memory"), self.session)
                if used is None:
                    device = [int(v) for v in self._query("gpu=memory.used").split() if v.isdigit()]
                    if device and max(device) > self.peak:
                        self.basis = "device"
                    used = max(device, default=0)
                self.peak = max(self.peak, used)
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=6)


def run_summary(run_dir: Path, since: float) -> dict[str, Any]:
    """Steps, steps/s and last loss from the rows of ``metrics.jsonl`` written after ``since``."""
    rows = [r for r in read_metrics(run_dir) if r.get("time", 0) >= since]
    train = [r for r in rows if any(k in r for k in ("train/loss", "loss"))]
    if not train:
        return {}
    out: dict[str, Any] = {"last_step": train[-1]["step"],
                           "last_loss": train[-1].get("train/loss", train[-1].get("loss"))}
    if len(train) >= 2 and train[-1]["time"] > train[0]["time"]:
        out["steps_per_s"] = (train[-1]["step"] - train[0]["step"]) / (train[-1]["time"] - train[0]["time"])
    tps = [r["train/target_tokens_per_s"] for r in train if "train/target_tokens_per_s" in r]
    if tps:
        out["target_tokens_per_s"] = tps[-1]
    return out


def run_path(path: dict[str, Any], logs: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = logs / f"{path['name']}.log"
    start = time.time()
    with open(log, "w") as f:
        # A session of its own, so a timeout ends the launcher's workers too (they hold the GPU), and its GPU memory
        # is told apart from other work's.
        proc = subprocess.Popen(path["cmd"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with GPUMemoryWatch(proc.pid) as mem:
            try:
                rc = proc.wait(timeout=path["limit"])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
    wall = time.time() - start
    result = {"path": path["name"], "rc": rc, "wall_s": round(wall, 1), "peak_gpu_mib": mem.peak,
              "gpu_mib_basis": mem.basis, **run_summary(path["run"], start - 1)}
    if rc != 0:
        result["log_tail"] = log.read_text(errors="replace")[-1500:]
    return result


def table(results: list[dict[str, Any]]) -> str:
    cols = ["path", "rc", "wall_s", "last_step", "steps_per_s", "last_loss", "target_tokens_per_s", "peak_gpu_mib",
            "gpu_mib_basis"]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for gpu_paths.{json,md} and logs/")
    p.add_argument("--work", default="/tmp/mmtok_gpu_paths", help="run folders of the paths (removed first)")
    p.add_argument("--paths", default=None, help="comma-separated subset of the path names")
    p.add_argument("--demo", default=None, help="a demo output folder whose stages up to `tokenize` are done")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop starting paths after this many seconds, and cut each path's limit to fit (a lease)")
    args = p.parse_args(argv)

    import torch  # the machine facts for the report

    out, work = Path(args.out), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    selected = paths(work, Path(args.demo).resolve() if args.demo else None)
    if args.paths:
        names = args.paths.split(",")
        unknown = set(names) - {p["name"] for p in selected}
        if unknown:
            p.error(f"unknown paths {sorted(unknown)}; known: {[q['name'] for q in selected]}")
        selected = [q for q in selected if q["name"] in names]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    results, begin = [], time.time()
    for path in selected:
        if args.deadline_s is not None:
            left = args.deadline_s - (time.time() - begin)
            if left < MIN_LEFT_S:
                results.append({"path": path["name"], "rc": "skipped (deadline)"})
                continue
            path["limit"] = min(path["limit"], left - MARGIN_S)
        print(f"== {path['name']}", flush=True)
        results.append(run_path(path, out / "logs"))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "log_tail"}), flush=True)
    report = {"device": device, "torch": torch.__version__, "results": results}
    (out / "gpu_paths.json").write_text(json.dumps(report, indent=1))
    text = f"GPU paths on {device} (torch {torch.__version__})\n\n{table(results)}\n"
    (out / "gpu_paths.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
