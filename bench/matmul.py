"""Matmul benchmark: GGML (our native module) vs torch F.linear on the same cores, plus quantize throughput.

4096x4096 weights, batch 1 and 256, F32/F16/Q8_0/Q4_K/Q3_K/Q2_K through the GGUF runtime, against torch fp32 and
bf16 ``F.linear`` in the same process (ratios are what to compare across machines). Prints a table and saves
bench/results/matmul.json.

    python bench/matmul.py [--threads 2] [--n 4096] [--reps 20] [--out bench/results/matmul.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actquant_core import native
from actquant_core.gguf import TensorEntry, write_policy_gguf

TYPES = ["F32", "F16", "Q8_0", "Q4_K", "Q3_K", "Q2_K"]


def timeit(fn, reps: int, min_s: float = 0.3) -> float:
    """Median ms per call over >= reps calls (and >= min_s seconds)."""
    fn()
    times = []
    t_end = time.perf_counter() + min_s
    while len(times) < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) > 50 * reps:
            break
    return float(np.median(times) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "matmul.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((n, n)) * 0.02).astype(np.float32)

    quant_s = {}
    entries = []
    for t in TYPES:
        t0 = time.perf_counter()
        native.quantize(W, t, n_threads=args.threads)
        quant_s[t] = time.perf_counter() - t0
        entries.append(TensorEntry(f"w.{t}", W, t))

    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads},
        "shape": [n, n],
        "quantize_s": quant_s,
        "quantize_mweights_per_s": {t: n * n / s / 1e6 for t, s in quant_s.items()},
        "batches": {},
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.gguf"
        write_policy_gguf(path, "test", {}, entries, n_threads=args.threads)
        backend = native.Backend(args.threads)
        model = native.GgufModel(path, backend)
        Wt = torch.from_numpy(W)
        Wb = Wt.to(torch.bfloat16)
        for b in args.batches:
            x = rng.standard_normal((b, n)).astype(np.float32)
            xt = torch.from_numpy(x)
            xb = xt.to(torch.bfloat16)
            row: dict = {}
            with torch.inference_mode():
                row["torch_fp32_ms"] = timeit(lambda: torch.nn.functional.linear(xt, Wt), args.reps)
                row["torch_bf16_ms"] = timeit(lambda: torch.nn.functional.linear(xb, Wb), args.reps)
            for t in TYPES:
                ms = timeit(lambda t=t: native.mul_mat(model, backend, f"w.{t}", x), args.reps)
                row[f"ggml_{t}_ms"] = ms
                row[f"ggml_{t}_speedup_vs_torch_fp32"] = row["torch_fp32_ms"] / ms
                row[f"ggml_{t}_speedup_vs_torch_bf16"] = row["torch_bf16_ms"] / ms
            results["batches"][str(b)] = row

    print(f"{n}x{n} weights, {args.threads} threads")
    print(f"{'batch':>5s} {'impl':>12s} {'ms':>9s} {'x fp32':>7s} {'x bf16':>7s}")
    for b, row in results["batches"].items():
        print(f"{b:>5s} {'torch fp32':>12s} {row['torch_fp32_ms']:9.3f}")
        print(f"{b:>5s} {'torch bf16':>12s} {row['torch_bf16_ms']:9.3f}")
        for t in TYPES:
            print(f"{b:>5s} {'ggml ' + t:>12s} {row[f'ggml_{t}_ms']:9.3f} "
                  f"{row[f'ggml_{t}_speedup_vs_torch_fp32']:7.2f} {row[f'ggml_{t}_speedup_vs_torch_bf16']:7.2f}")
    print("quantize (s): " + ", ".join(f"{t} {s:.2f}" for t, s in quant_s.items()))
    q4 = results["batches"].get("1", {}).get("ggml_Q4_K_speedup_vs_torch_fp32")
    if q4 is not None:
        results["target_q4k_batch1_vs_fp32"] = {"target": 8.0, "measured": q4, "met": q4 >= 8.0}
        print(f"Q4_K batch-1 speedup vs torch fp32: {q4:.1f}x (target >= 8x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
