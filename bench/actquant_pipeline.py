"""ActQuant pipeline wall time and memory on a policy preset with random weights (real-size π₀.₅ by default).

The issue's target: the whole ``actquant quantize`` pipeline on a real-size π₀.₅ within 20 minutes on one H100.
Weights are random (no checkpoint can be downloaded), so the calibration targets are the policy's own sampled
chunks (``CalibConfig.targets="policy"``, self-distillation) and the frames are synthetic (random 224 px images
in two camera slots, a random state, a fixed instruction). What is timed is exactly what a real checkpoint costs:
the same shapes, the same number of frames, every stage of :func:`actquant_core.quant.pipeline.quantize_policy`
(frames, calibration forward passes with the HSIC / importance hooks, HSIC scores, the allocator, the per-element
Action-Mixed Fisher over every allocated tensor, GGML quantization with importance, GGUF write, report).

    python bench/actquant_pipeline.py --preset pi05-small --frames 64 --device cpu      # a few minutes here
    python bench/actquant_pipeline.py --frames 256 --device cuda --threads 16           # real size, GPU machine

Prints and saves JSON (default bench/results/actquant_pipeline.json): stage seconds, total wall, parameters,
bpw, file size, peak host RSS and peak CUDA memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_frames(cfg, n: int, seed: int = 0):
    from actquant_core.quant.calibrate import CalibFrame

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        images = {s: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for s in cfg.camera_slots[:2]}
        frames.append(CalibFrame(images=images, state=rng.uniform(-1, 1, 7).astype(np.float32),
                                 instruction="put the red cube in the bowl",
                                 actions=rng.uniform(-1, 1, (cfg.action_horizon, 7)).astype(np.float32),
                                 episode=i // 16, t=i % 16))
    return frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pi05")
    ap.add_argument("--frames", type=int, default=256, help="calibration frames")
    ap.add_argument("--bpw", type=float, default=3.0)
    ap.add_argument("--method", default="actquant")
    ap.add_argument("--compensate", default="none", choices=("none", "gptq"))
    ap.add_argument("--stage2", default=None, choices=("fisher", "plain", "best"),
                    help="default: as actquant quantize (best for actquant without compensation)")
    ap.add_argument("--noise", default=None, choices=("bits", "measured", "output"),
                    help="allocator noise model (default: actquant quantize's, default_noise)")
    ap.add_argument("--output-noise-candidates", default="all", choices=("all", "fast"),
                    help="--noise output: price with every stage-2 candidate (all) or without GPTQ (fast)")
    ap.add_argument("--output-noise-rows", type=int, default=None,
                    help="--noise output: price tensors taller than this on a seeded sample of that many rows "
                         "(0 = all; default: actquant quantize's, DEFAULT_OUTPUT_ROWS)")
    ap.add_argument("--menu", default=None, help="type menu (default: actquant quantize's for the method)")
    ap.add_argument("--score-floor", type=float, default=0.5, help="as actquant quantize (CLI default 0.5)")
    ap.add_argument("--gptq-intra-group", type=int, default=None, help="GptqConfig.intra_group (default: its own)")
    ap.add_argument("--device", default="cuda", help="calibration / Fisher / GPTQ device")
    ap.add_argument("--threads", type=int, default=None, help="GGML quantization threads (default: all CPUs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fisher-batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the GGUF / plan / report in this folder")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "actquant_pipeline.json")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # stage progress in the log

    import torch

    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.model import Pi05Model
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.gptq import GptqConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy
    from actquant_core.quant.types import product_defaults

    cfg = get_preset(args.preset)
    t0 = time.perf_counter()
    model = Pi05Model(cfg).init_random(args.seed).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {n_params / 1e6:.0f} M parameters, built in {build_s:.0f} s", flush=True)
    frames = synthetic_frames(cfg, args.frames, args.seed)
    gptq = GptqConfig(device=args.device, **({} if args.gptq_intra_group is None
                                             else {"intra_group": args.gptq_intra_group}))
    product = product_defaults(args.method, args.compensate, stage2=args.stage2, noise=args.noise,
                               menu=[t.strip().upper() for t in args.menu.split(",")] if args.menu else None,
                               output_rows=args.output_noise_rows)
    noise, rows = product["noise"], product["output_rows"]
    pcfg = PipelineConfig(method=args.method, bpw=args.bpw, compensate=args.compensate, n_threads=args.threads,
                          calib_frames=args.frames, **product, output_gptq=args.output_noise_candidates == "all",
                          score_floor=args.score_floor, gptq=gptq,
                          calib=CalibConfig(device=args.device, targets="policy", batch_size=args.batch_size,
                                            fisher_batch_size=args.fisher_batch_size, progress=False, seed=args.seed))
    use_cuda = args.device.startswith("cuda")
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        out_dir = args.keep or Path(d)
        t0 = time.perf_counter()
        res = quantize_policy(model, frames, out_path=Path(out_dir) / f"{args.preset}-{args.method}-{args.bpw}.gguf",
                              config=pcfg)
        wall = time.perf_counter() - t0
        summary = res.summary()
    result = {
        "preset": args.preset, "params": int(n_params), "frames": args.frames, "method": args.method,
        "compensate": args.compensate, "stage2": pcfg.stage2, "gptq_intra_max_cols": gptq.intra_max_cols, "noise": noise,
        "output_candidates": args.output_noise_candidates if noise == "output" else None,
        "output_rows": rows if noise == "output" else None,
        "menu": list(pcfg.menu), "score_floor": args.score_floor,
        "gptq_intra_group": gptq.intra_group, "stage2_choices": res.plan.meta.get("stage2_choices"),
        "budget_bpw": args.bpw, "device": args.device,
        "gpu": torch.cuda.get_device_name() if use_cuda else None,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "threads": args.threads, "build_model_s": build_s, "pipeline_wall_s": wall,
        "stage_s": summary["seconds"], "bpw_backbone": summary["bpw_backbone"], "bpw_whole": summary["bpw_whole"],
        "file_mb": summary["file_size"] / 1e6, "objectives": summary["objectives"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if use_cuda else None,
    }
    print(json.dumps({k: result[k] for k in ("pipeline_wall_s", "stage_s", "bpw_backbone", "bpw_whole", "file_mb",
                                             "peak_rss_gb", "peak_cuda_gb")}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
