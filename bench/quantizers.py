"""Quantizer throughput and memory: mmtok against vector-quantize-pytorch, measured in the same run.

For each configuration and batch size, a fresh child process (with an address-space cap, so a blow-up is recorded
as an out-of-memory instead of taking the machine down) builds the quantizer, runs one warm-up step, then times
    train: forward + backward in training mode (loss = sum of outputs + auxiliary loss), and
    infer: forward in eval mode under no_grad,
and reports vectors/s and the peak resident memory the step added over what the process held before it.

    python bench/quantizers.py                 # all configurations, both packages
    python bench/quantizers.py --only lfq14    # one configuration
Writes bench/results/quantizers.json. The peer is an optional install: `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    # name: (kind, kwargs shared by both implementations, input dim)
    "lfq10": ("lfq", {"bits": 10}, 10),
    "lfq14": ("lfq", {"bits": 14}, 14),
    "lfq18": ("lfq", {"bits": 18}, 18),
    "fsq": ("fsq", {"levels": [8, 8, 8, 5, 5, 5]}, 6),
    "rvq": ("rvq", {"dim": 128, "num_quantizers": 8, "codebook_size": 1024}, 128),
}
SIZES = (4096, 65536)
MEMORY_CAP_GIB = 12
RESULTS = Path(__file__).resolve().parent / "results" / "quantizers.json"


def build(impl: str, kind: str, kw: dict):
    if impl == "mmtok":
        from mmtok.quantizers import FSQ, LFQ, ResidualVQ
        if kind == "lfq":
            return LFQ(codebook_size=2 ** kw["bits"], entropy_loss_weight=0.1, commitment_loss_weight=0.25)
        if kind == "fsq":
            return FSQ(levels=kw["levels"])
        return ResidualVQ(dim=kw["dim"], num_quantizers=kw["num_quantizers"], codebook_size=kw["codebook_size"],
                          decay=0.99, kmeans_init=False, threshold_ema_dead_code=0)
    import vector_quantize_pytorch as vqp
    if kind == "lfq":
        return vqp.LFQ(dim=kw["bits"], codebook_size=2 ** kw["bits"], entropy_loss_weight=0.1,
                       commitment_loss_weight=0.25)
    if kind == "fsq":
        return vqp.FSQ(levels=kw["levels"])
    # Same settings as ours: EMA codebooks, plain straight-through, no k-means, no dead-code restarts.
    return vqp.ResidualVQ(dim=kw["dim"], num_quantizers=kw["num_quantizers"], codebook_size=kw["codebook_size"],
                          decay=0.99, kmeans_init=False, threshold_ema_dead_code=0, rotation_trick=False)


def step(impl: str, q, z):
    out = q(z)
    if impl == "mmtok":
        return out.quantized, out.loss
    quantized = out[0]
    aux = out[2] if len(out) > 2 else None
    loss = aux.sum() if aux is not None else quantized.new_zeros(())
    return quantized, loss


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: dict) -> dict:
    """Measure one (implementation, configuration, batch size, mode) in this process."""
    import torch

    torch.manual_seed(0)
    kind, kw, dim = CONFIGS[spec["config"]]
    q = build(spec["impl"], kind, kw)
    train = spec["mode"] == "train"
    q.train(train)
    z = torch.randn(1, spec["n"], dim, requires_grad=train)

    def once():
        if train:
            quantized, loss = step(spec["impl"], q, z)
            (quantized.sum() + loss).backward()
            z.grad = None
        else:
            with torch.no_grad():
                step(spec["impl"], q, z)

    once()  # warm-up (allocator, lazy inits)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux)
    base = rss_kib("VmRSS")
    times = []
    # At least `repeats` timed steps, and more (up to 50) until a second has been measured: short steps are noisy.
    while len(times) < spec["repeats"] or (sum(times) < 1.0 and len(times) < 50):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    peak = rss_kib("VmHWM")
    seconds = sorted(times)[len(times) // 2]
    return {"seconds": seconds, "vectors_per_s": spec["n"] / seconds, "extra_mib": (peak - base) / 1024}


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return {"status": "ok", **json.loads(lines[-1])}
    err = proc.stderr
    if "can't allocate memory" in err or "MemoryError" in err or "out of memory" in err.lower() or proc.returncode < 0:
        return {"status": "oom"}
    return {"status": "error", "detail": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to run")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per child before it counts as failed")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        cap = MEMORY_CAP_GIB * 2 ** 30 + rss_kib("VmSize") * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(child(spec)))
        return

    try:
        import vector_quantize_pytorch  # noqa: F401
        have_peer = True
    except ImportError:
        have_peer = False
        print("vector-quantize-pytorch is not installed (pip install -e .[bench]): peer columns left empty")

    rows = []
    for config in args.only or list(CONFIGS):
        for n in args.sizes:
            for mode in ("train", "infer"):
                row = {"config": config, "vectors": n, "mode": mode}
                for impl in ("mmtok", "vqp") if have_peer else ("mmtok",):
                    repeats = args.repeats if not (impl == "vqp" and n >= 65536) else max(1, args.repeats - 2)
                    row[impl] = run_child({"impl": impl, "config": config, "n": n, "mode": mode,
                                           "repeats": repeats}, args.timeout)
                ours, peer = row["mmtok"], row.get("vqp")
                if peer and ours["status"] == "ok" and peer["status"] == "ok":
                    row["speedup"] = ours["vectors_per_s"] / peer["vectors_per_s"]
                rows.append(row)
                print(format_row(row), flush=True)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": os.cpu_count(), "memory_cap_gib": MEMORY_CAP_GIB, "repeats": args.repeats,
            "peer": "vector-quantize-pytorch" if have_peer else None, "time": time.strftime("%Y-%m-%d %H:%M")}
    if have_peer:
        import vector_quantize_pytorch
        meta["peer_version"] = getattr(vector_quantize_pytorch, "__version__", None) or _version("vector-quantize-pytorch")
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {RESULTS}")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cell(result: dict | None) -> str:
    if result is None:
        return f"{'-':>22}"
    if result["status"] != "ok":
        return f"{result['status'].upper():>22}"
    return f"{result['vectors_per_s'] / 1e6:9.3f} M/s {result['extra_mib']:6.0f} MiB"


HEADER = f"{'config':8} {'vectors':>7} {'mode':5} | {'mmtok':>22} | {'vector-quantize-pytorch':>23} | ratio"


def format_row(row: dict) -> str:
    if not hasattr(format_row, "printed"):
        print(HEADER)
        print("-" * len(HEADER))
        format_row.printed = True
    ratio = f"{row['speedup']:6.1f}x" if "speedup" in row else "     -"
    return (f"{row['config']:8} {row['vectors']:>7} {row['mode']:5} | {cell(row['mmtok'])} | "
            f" {cell(row.get('vqp'))} | {ratio}")


if __name__ == "__main__":
    main()
