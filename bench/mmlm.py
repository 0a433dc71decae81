"""Benchmark of the token LM against transformers' LlamaForCausalLM of the same size, measured in the same run.

Training: tokens/s and MFU of a plain training step (forward, loss, backward, AdamW step) on random token batches,
for ``MMLMForCausalLM`` (causal, and with a prefix-LM prefix as the pretrain recipe uses) and for
``LlamaForCausalLM``. MFU = achieved FLOP/s / peak, with training FLOPs per token = 6 * N (N = parameters in
matmuls: the blocks and the output head, not the embedding lookup) + 12 * layers * hidden * seq_len (attention
scores and values, PaLM appendix B), and the peak the fp32 matmul throughput measured at the start of the run.

Generation: tokens/s of HF ``generate`` with the KV cache (greedy, fixed length) after a prompt, batch 1 and 8.

Steps of the two models alternate, so load from other processes on the machine hits both alike; the ratio
MMLM / Llama is the figure that counts (target >= 0.95). Each step is timed in wall-clock and in process CPU time
(all threads); on a machine shared with other jobs the CPU-time ratio is the steadier one, so both are reported.
Writes ``bench/results/mmlm.json``.

    python bench/mmlm.py                    # demo preset, vocab 32768, batch 8x512 (the issue's setting)
    python bench/mmlm.py --batch 2 --seq 128  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lm import MMLMConfig, MMLMForCausalLM

RESULTS = Path(__file__).resolve().parent / "results" / "mmlm.json"


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GEMM throughput of this machine right now (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def build_models(preset: str, vocab: int, seq: int) -> tuple[MMLMForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(0)
    mm_cfg = MMLMConfig.from_preset(preset, vocab_size=vocab, max_position_embeddings=max(seq + 512, 2048))
    llama_cfg = LlamaConfig(vocab_size=vocab, hidden_size=mm_cfg.hidden_size, intermediate_size=mm_cfg.intermediate_size,
                            num_hidden_layers=mm_cfg.num_hidden_layers, num_attention_heads=mm_cfg.num_attention_heads,
                            num_key_value_heads=mm_cfg.num_key_value_heads, max_position_embeddings=mm_cfg.max_position_embeddings,
                            rms_norm_eps=mm_cfg.rms_norm_eps, tie_word_embeddings=False, pad_token_id=0,
                            bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
    mm = MMLMForCausalLM._from_config(mm_cfg, attn_implementation="sdpa")
    llama = LlamaForCausalLM(llama_cfg)
    n_mm = sum(p.numel() for p in mm.parameters())
    n_ll = sum(p.numel() for p in llama.parameters())
    assert n_mm == n_ll, f"models differ in size: {n_mm} vs {n_ll}"
    return mm, llama


def matmul_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)


def train_step_fn(model, opt, ids, kind: str):
    """One visible training step; ``kind`` picks the loss path (Llama: labels; MMLM: loss_mask, optional prefix)."""
    def step():
        if kind == "llama":
            loss = model(input_ids=ids, labels=ids).loss
        elif kind == "mmlm":
            loss = model(input_ids=ids, loss_mask=torch.ones_like(ids)).loss
        else:  # mmlm with a conditioning prefix of a quarter of the sequence (materialized prefix-LM mask)
            prefix = torch.full((ids.shape[0],), ids.shape[1] // 4)
            mask = (torch.arange(ids.shape[1])[None] >= prefix[:, None]).long()
            loss = model(input_ids=ids, loss_mask=mask, prefix_len=prefix).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    return step


def bench_training(mm, llama, batch: int, seq: int, steps: int, warmup: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, mm.config.vocab_size, (batch, seq), generator=g)
    runs = {
        "llama": train_step_fn(llama.train(), torch.optim.AdamW(llama.parameters(), lr=1e-4), ids, "llama"),
        "mmlm": train_step_fn(mm.train(), torch.optim.AdamW(mm.parameters(), lr=1e-4), ids, "mmlm"),
    }
    # The prefix variant trains a copy so the causal MMLM's optimizer state is not disturbed.
    mm_prefix = MMLMForCausalLM._from_config(mm.config, attn_implementation="sdpa").train()
    runs["mmlm_prefix"] = train_step_fn(mm_prefix, torch.optim.AdamW(mm_prefix.parameters(), lr=1e-4), ids, "prefix")
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(warmup + steps):
        for name, step in runs.items():  # alternate: contention from other processes hits every model alike
            t, c = time.perf_counter(), time.process_time()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    return times, cpu


@torch.no_grad()
def bench_generation(mm, llama, batch: int, prompt: int, new: int, reps: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, mm.config.vocab_size, (batch, prompt), generator=g)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
    times: dict[str, list[float]] = {"llama": [], "mmlm": []}
    cpu: dict[str, list[float]] = {"llama": [], "mmlm": []}
    models = {"llama": llama.eval(), "mmlm": mm.eval()}
    for name, model in models.items():  # warm-up
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    for _ in range(reps):
        for name, model in models.items():
            t, c = time.perf_counter(), time.process_time()
            out = model.generate(ids, **kw)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            assert out.shape == (batch, prompt + new)
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gen-reps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    load_before = os.getloadavg()[0]
    peak = matmul_peak_gflops()
    mm, llama = build_models(args.preset, args.vocab, args.seq)
    n_matmul = matmul_params(mm)
    cfg = mm.config
    flops_per_token = 6 * n_matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq

    train, train_cpu = bench_training(mm, llama, args.batch, args.seq, args.steps, args.warmup)
    tokens = args.batch * args.seq
    rows = {}
    for name, ts in train.items():
        tps = tokens / statistics.median(ts)
        rows[name] = {"train_tokens_per_s": round(tps, 1), "mfu": round(tps * flops_per_token / (peak * 1e9), 3),
                      "train_tokens_per_cpu_s": round(tokens / statistics.median(train_cpu[name]), 1),
                      "step_s_median": round(statistics.median(ts), 3), "step_s": [round(t, 3) for t in ts],
                      "step_cpu_s": [round(t, 3) for t in train_cpu[name]]}

    gen = {}
    for b in (1, 8):
        times, cpu = bench_generation(mm, llama, b, args.prompt, args.new_tokens, args.gen_reps)
        r = {name: round(b * args.new_tokens / statistics.median(ts), 1) for name, ts in times.items()}
        r["ratio"] = round(r["mmlm"] / r["llama"], 3)
        r["cpu_time_ratio"] = round(statistics.median(cpu["llama"]) / statistics.median(cpu["mmlm"]), 3)
        gen[f"batch{b}"] = r
    load_after = os.getloadavg()[0]

    ratio_train = rows["mmlm"]["train_tokens_per_s"] / rows["llama"]["train_tokens_per_s"]
    ratio_prefix = rows["mmlm_prefix"]["train_tokens_per_s"] / rows["llama"]["train_tokens_per_s"]
    ratio_cpu = rows["mmlm"]["train_tokens_per_cpu_s"] / rows["llama"]["train_tokens_per_cpu_s"]
    ratio_prefix_cpu = rows["mmlm_prefix"]["train_tokens_per_cpu_s"] / rows["llama"]["train_tokens_per_cpu_s"]
    print(f"\nmmlm preset {args.preset!r}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv, vocab {cfg.vocab_size}, "
          f"{sum(p.numel() for p in mm.parameters()) / 1e6:.1f}M params; batch {args.batch}x{args.seq}")
    print(f"fp32 matmul peak measured now: {peak:.0f} GFLOP/s; load average {load_before:.2f} -> {load_after:.2f} "
          f"on {os.cpu_count()} cores (other processes share the CPU: compare ratios, not absolutes)\n")
    print(f"{'training':<34}{'tokens/s':>10}{'MFU':>8}{'x Llama':>9}{'tok/cpu-s':>11}{'x Llama':>9}")
    for name, label in (("llama", "LlamaForCausalLM (peer)"), ("mmlm", "MMLMForCausalLM causal"),
                        ("mmlm_prefix", "MMLMForCausalLM prefix-LM (1/4)")):
        r = rows[name]
        print(f"{label:<34}{r['train_tokens_per_s']:>10.0f}{r['mfu']:>8.2f}"
              f"{r['train_tokens_per_s'] / rows['llama']['train_tokens_per_s']:>9.3f}"
              f"{r['train_tokens_per_cpu_s']:>11.0f}"
              f"{r['train_tokens_per_cpu_s'] / rows['llama']['train_tokens_per_cpu_s']:>9.3f}")
    print(f"\n{'generate (KV cache, greedy), tok/s':<36}{'Llama':>8}{'MMLM':>8}{'ratio':>8}{'cpu-time ratio':>16}")
    for b, r in gen.items():
        print(f"{f'{args.prompt}+{args.new_tokens} tokens, {b}':<36}{r['llama']:>8.0f}{r['mmlm']:>8.0f}{r['ratio']:>8.3f}"
              f"{r['cpu_time_ratio']:>16.3f}")

    result = {
        "benchmark": "mmlm",
        "config": vars(args) | {"out": str(args.out)},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
                    "note": "other engineers' jobs shared the 2 cores during the run; ratios are the comparable figures"},
        "matmul_peak_gflops": round(peak, 1),
        "flops_per_token_train": flops_per_token,
        "params": sum(p.numel() for p in mm.parameters()),
        "training": rows,
        "training_ratio_vs_llama": round(ratio_train, 3),
        "training_prefix_ratio_vs_llama": round(ratio_prefix, 3),
        "training_cpu_time_ratio_vs_llama": round(ratio_cpu, 3),
        "training_prefix_cpu_time_ratio_vs_llama": round(ratio_prefix_cpu, 3),
        "generation_tokens_per_s": gen,
        "targets": {"training_ratio": 0.95, "generation_ratio": 0.95},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
