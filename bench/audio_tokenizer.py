"""Audio tokenizer speed and memory: mmtok's codec against ``transformers.EncodecModel``, measured in the same run.

Cases (each in a fresh child process, so peak memory is the case's own):
    encodec_24k   mmtok's ``encodec_24k`` preset (14.9 M parameters, 2-layer LSTM, 75 Hz) at 6 kbps (8 levels)
    hf_encodec    ``transformers.EncodecModel(EncodecConfig())`` (the 24 kHz model, randomly initialized, codebooks
                  drawn at random because HF leaves them at zero) at bandwidth 6.0
    demo          mmtok's ``demo`` preset (16 kHz, 32 Hz frame codec) at all 8 levels
Each case encodes and then decodes ``--seconds`` of mono audio (batch 1) after a warm-up, ``--repeats`` times, and
reports the median encode and decode times, the real-time factor (audio seconds per second of encode + decode) and
the peak resident memory the calls added over what the process held once the model and input were built.
``demo_batch`` also times the demo preset on a batch of 16 Moving-Digits-length clips (1.125 s), the shape
``make demo`` tokenizes.

The cases run ``--rounds`` times, interleaved (every case once per round, each time in a new process, the order
reversed every other round), and the medians are taken over all rounds: on a shared machine the load drifts over
minutes, and interleaving lets both sides of a ratio see the same drift. Each process also lands in its own glibc
allocator regime (whether freed tens-of-MB tensors are reused or re-faulted), which moves a case by 10-30% from
one process to the next; the JSON keeps every round's figures and ratio.

``--malloc-reuse`` runs every process with glibc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set high, as jemalloc or tcmalloc would behave): no page faults on either side, so the
ratio is that of the arithmetic alone.

    python bench/audio_tokenizer.py [--seconds 10] [--repeats 5] [--rounds 3] [--threads 2] [--malloc-reuse]
Writes bench/results/audio_tokenizer.json (audio_tokenizer_malloc_reuse.json with --malloc-reuse).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "audio_tokenizer.json"
CASES = ("encodec_24k", "hf_encodec", "demo", "demo_batch")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, seconds: float, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case == "hf_encodec":
        from transformers import EncodecConfig, EncodecModel

        model = EncodecModel(EncodecConfig()).eval()
        with torch.no_grad():
            for layer in model.quantizer.layers:
                layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
        sr = model.config.sampling_rate

        def encode(wav):
            out = model.encode(wav, bandwidth=6.0)
            return out.audio_codes, out.audio_scales

        def decode(enc):
            return model.decode(enc[0], enc[1]).audio_values
        n_params = sum(p.numel() for p in model.parameters())
        batch, levels = 1, 8
    else:
        from mmtok.audio import AudioTokenizer

        preset = "demo" if case.startswith("demo") else case
        model = AudioTokenizer.from_preset(preset).eval()
        sr = model.sample_rate
        levels = 8
        n_params = sum(p.numel() for p in model.parameters())

        def encode(wav):
            return model.encode(wav, num_quantizers=levels)

        def decode(codes):
            return model.decode(codes)
        batch = 16 if case == "demo_batch" else 1
        if case == "demo_batch":
            seconds = 9 / 8
    wav = torch.randn(batch, 1, int(seconds * sr)) * 0.1
    base = _rss_mib()                                           # model and input built, nothing run yet
    with torch.inference_mode():
        decode(encode(wav))                                     # warm-up
        enc_t, dec_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            enc = encode(wav)
            t1 = time.perf_counter()
            decode(enc)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
    return {"case": case, "params_m": round(n_params / 1e6, 2), "sample_rate": sr, "batch": batch,
            "audio_seconds": batch * seconds, "levels": levels, "encode_s": enc_t, "decode_s": dec_t,
            "peak_mem_mib": round(max(_rss_mib() - base, 0.0), 1), "threads": threads}


def summarize(runs: list[dict]) -> dict:
    """One case's rounds -> medians over every timed call of every round."""
    enc_s = statistics.median(t for r in runs for t in r["encode_s"])
    dec_s = statistics.median(t for r in runs for t in r["decode_s"])
    audio = runs[0]["audio_seconds"]
    keep = ("case", "params_m", "sample_rate", "batch", "audio_seconds", "levels", "threads")
    return {**{k: runs[0][k] for k in keep}, "rounds": len(runs), "encode_ms": round(enc_s * 1e3, 1),
            "decode_ms": round(dec_s * 1e3, 1), "rtf": round(audio / (enc_s + dec_s), 1),
            "encode_rtf": round(audio / enc_s, 1), "decode_rtf": round(audio / dec_s, 1),
            "peak_mem_mib": statistics.median(r["peak_mem_mib"] for r in runs)}


def round_ms(run: dict) -> float:
    """One round's median encode + decode time, ms."""
    return round((statistics.median(run["encode_s"]) + statistics.median(run["decode_s"])) * 1e3, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc-reuse", action="store_true",
                        help="keep freed memory in every process (no page faults): the arithmetic alone")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)   # child-process mode
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.seconds, args.repeats, args.threads)))
        return
    env = {**os.environ, "MMTOK_PROGRESS": "0"}
    if args.malloc_reuse:
        env.update(MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TRIM_THRESHOLD_="68719476736")
    results = RESULTS.with_name("audio_tokenizer_malloc_reuse.json") if args.malloc_reuse else RESULTS
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    errors: dict[str, list[str]] = {}
    for r in range(args.rounds):
        for case in (CASES if r % 2 == 0 else CASES[::-1]):           # alternate the order: drift cancels
            out = subprocess.run([sys.executable, __file__, "--case", case, "--seconds", str(args.seconds),
                                  "--repeats", str(args.repeats), "--threads", str(args.threads)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                errors[case] = out.stderr.strip().splitlines()[-1:]
                continue
            runs[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = [summarize(runs[case]) if runs[case] else {"case": case, "error": errors.get(case)} for case in CASES]
    by = {r["case"]: r for r in rows}
    ratios = {}
    if "rtf" in by.get("encodec_24k", {}) and "rtf" in by.get("hf_encodec", {}):
        ours, peer = by["encodec_24k"], by["hf_encodec"]
        ratios = {"speed_vs_hf_encodec": round(ours["rtf"] / peer["rtf"], 2),
                  "encode_speed_vs_hf_encodec": round(peer["encode_ms"] / ours["encode_ms"], 2),
                  "decode_speed_vs_hf_encodec": round(peer["decode_ms"] / ours["decode_ms"], 2),
                  "peak_mem_vs_hf_encodec": round(ours["peak_mem_mib"] / max(peer["peak_mem_mib"], 1e-6), 2),
                  "speed_vs_hf_encodec_per_round": [round(round_ms(p) / round_ms(o), 2)
                                                    for o, p in zip(runs["encodec_24k"], runs["hf_encodec"])]}
    header = f"{'case':<12} {'params':>7} {'audio s':>8} {'enc ms':>8} {'dec ms':>8} {'RTF':>7} {'peak MiB':>9}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<12} error: {r['error']}")
            continue
        print(f"{r['case']:<12} {r['params_m']:>6.1f}M {r['audio_seconds']:>8.2f} {r['encode_ms']:>8.1f} "
              f"{r['decode_ms']:>8.1f} {r['rtf']:>6.1f}x {r['peak_mem_mib']:>9.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    load = os.getloadavg()[0]
    results.parent.mkdir(parents=True, exist_ok=True)
    rounds = {case: [{"encode_decode_ms": round_ms(r), "peak_mem_mib": r["peak_mem_mib"]} for r in case_runs]
              for case, case_runs in runs.items()}
    results.write_text(json.dumps({"rows": rows, "ratios": ratios, "rounds": rounds, "load_average_1min": load,
                                   "malloc_reuse": args.malloc_reuse,
                                   "seconds": args.seconds, "repeats": args.repeats, "threads": args.threads},
                                  indent=1) + "\n")
    print(f"(1-minute load average during the run: {load:.1f} on {os.cpu_count()} cores) -> {results}")


if __name__ == "__main__":
    main()
