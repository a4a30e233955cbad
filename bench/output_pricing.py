"""Cost of the allocator's noise "output" (stage 2's best-of search priced at every menu type) on one LM layer
of a π₀.₅ preset, with and without the row sample, against stage 2 itself at one type; extrapolated to the
preset's depth (the allocated backbone is the LM's ``depth`` identical layers).

Random weights, a random correlated Gram (``--tokens`` calibration tokens), random Fisher and activation
importance of the real shapes: what is timed is the work, not its accuracy. The ``down`` projection (16,384
columns at real size) is wider than ``GptqConfig.max_cols`` and is priced by its diagonal approximation, as in
the pipeline.

    python bench/output_pricing.py --rows 256 --device cpu            # here: 2 cores, minutes
    python bench/output_pricing.py --rows 256,0 --device cuda --threads 16   # the GPU machine (0 = every row)

Prints and saves JSON (default bench/results/output_pricing.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pi05")
    ap.add_argument("--rows", default="256", help="row samples to time, comma-separated (0 = every row)")
    ap.add_argument("--stage2-type", default="Q3_K", help="type of the stage-2 reference search")
    ap.add_argument("--tokens", type=int, default=2048, help="calibration tokens behind the random Gram")
    ap.add_argument("--device", default="cpu", help="torch device of GPTQ and the output errors")
    ap.add_argument("--threads", type=int, default=None, help="GGML quantization threads (default: all CPUs)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "output_pricing.json")
    args = ap.parse_args()

    from actquant_core import native
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.quant.allocate import TensorSpec
    from actquant_core.quant.calibrate import CalibrationResult
    from actquant_core.quant.gptq import GptqConfig, GramStats
    from actquant_core.quant.pipeline import output_noise_fn, stage2_candidates
    from actquant_core.quant.types import IQ2_FLOOR_MENU

    cfg = get_preset(args.preset)
    D, M, nq, nkv = cfg.lm_width, cfg.lm_mlp, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"q": (nq, D), "k": (nkv, D), "v": (nkv, D), "o": (D, nq), "gate": (M, D), "up": (M, D), "down": (D, M)}
    gcfg = GptqConfig(device=args.device)
    rng = np.random.default_rng(0)
    weights, grams, act, fisher = {}, {}, {}, {}
    for name, (r, c) in shapes.items():
        weights[name] = (rng.standard_normal((r, c)) / np.sqrt(c)).astype(np.float32)
        fisher[name] = rng.uniform(0.1, 2.0, (r, c)).astype(np.float32)
        if c <= gcfg.max_cols:
            X = rng.standard_normal((args.tokens, 32)) @ rng.standard_normal((32, c)) + 0.3 * rng.standard_normal((args.tokens, c))
            grams[name] = GramStats(gram=X.T @ X, n=args.tokens)
            act[name] = (X ** 2).mean(0).astype(np.float32)
        else:
            act[name] = rng.uniform(0.1, 2.0, c).astype(np.float32)
    cal = CalibrationResult(activation_importance=act)
    cal.gram, cal.fisher = grams, fisher
    specs = [TensorSpec(name=n, shape=s, score=1.0) for n, s in shapes.items()]
    menu = [t for t in IQ2_FLOOR_MENU if t not in ("F16", "F32")]

    def ggml(W, t, imp):
        return native.quantize(W, t, imp, n_threads=args.threads)

    out: dict = {"preset": args.preset, "depth": cfg.lm_depth, "device": args.device, "threads": args.threads,
                 "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
                 "shapes": {n: list(s) for n, s in shapes.items()}, "menu": menu, "gram_tokens": args.tokens,
                 "pricing": {}}
    t0 = time.perf_counter()
    for n in grams:
        stage2_candidates(n, weights[n], args.stage2_type, cal, gcfg, ggml)
    s2 = time.perf_counter() - t0
    out["stage2_layer_s"] = s2
    out["stage2_model_s"] = s2 * cfg.lm_depth
    print(f"stage 2 best at {args.stage2_type}, one layer (every row): {s2:.1f} s -> x{cfg.lm_depth} layers "
          f"{s2 * cfg.lm_depth / 60:.1f} min", flush=True)
    for rows in [int(x) for x in args.rows.split(",")]:
        noise = output_noise_fn(weights, cal, gcfg, args.threads, sample_rows=rows or None)
        per: dict[str, float] = {}
        for s in specs:
            t1 = time.perf_counter()
            for t in menu:
                noise(s, t)
            per[s.name] = time.perf_counter() - t1
        layer = sum(per.values())
        out["pricing"][str(rows)] = {"layer_s": layer, "per_tensor_s": per, "model_s": layer * cfg.lm_depth}
        print(f"pricing {len(menu)} types on {rows or 'every'} rows, one layer: {layer:.1f} s ("
              + ", ".join(f"{k} {v:.1f}" for k, v in per.items()) + f") -> x{cfg.lm_depth} layers "
              f"{layer * cfg.lm_depth / 60:.1f} min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
