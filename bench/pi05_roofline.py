"""π₀.₅ CPU roofline: how fast can a chunk be on these cores, and what does that allow against torch?

Counts the multiply-accumulate work of one chunk (2 cameras + 1 masked slot, the benchmark prompt, 10 Euler
steps) as the native graph runs it (valid camera and prompt tokens only, no attention output in the last
prefix layer) and as our PyTorch reference runs it (every camera slot, the prompt padded to
``max_token_len``, like openpi), measures GEMM throughput on these cores at each stage's dominant matrix shape
(native GGML per weight type, CPU weight repacking as the runtime uses it, vs torch ``F.linear`` fp32), and
combines both with a latency run of ``bench/pi05_latency.py`` (``--latency``, same machine):

* achieved GFLOP/s per stage, native and torch;
* the native floor: every stage at its measured GEMM rate (no norms, attention softmax, copies or threading
  gaps), and the largest speed-up over the measured torch latency that floor allows.

    python bench/pi05_roofline.py --types q4_K,q8_0 --threads 2 \\
        --latency bench/results/pi05_latency_real_cpu_repack.json     # -> bench/results/pi05_roofline.json
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


def chunk_flops(cfg, cams: int, tokens: int) -> dict[str, float]:
    """FLOPs (2 per multiply-accumulate) of one chunk per stage: linear layers and attention products, with
    ``cams`` camera images through the vision tower and ``tokens`` text tokens in the prefix."""
    P = (cfg.image_size // cfg.patch_size) ** 2
    vw, vm, D, M, Wx, Mx = cfg.vision_width, cfg.vision_mlp, cfg.lm_width, cfg.lm_mlp, cfg.expert_width, cfg.expert_mlp
    nq, nkv, L, H, A = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.lm_depth, cfg.action_horizon, cfg.action_dim
    Nv = cams * P
    vision = 2 * Nv * (3 * cfg.patch_size ** 2 * vw + cfg.vision_depth * (4 * vw * vw + 2 * vw * vm) + vw * D)
    vision += cfg.vision_depth * 2 * 2 * cams * P * P * vw  # QKᵀ and AV per image
    Lp = Nv + tokens
    qkv = D * nq + 2 * D * nkv
    prefix = 2 * Lp * ((L - 1) * (qkv + nq * D + 3 * D * M) + qkv) + (L - 1) * 2 * 2 * Lp * Lp * cfg.num_heads * cfg.head_dim
    step = 2 * H * (2 * A * Wx + L * (Wx * nq + 2 * Wx * nkv + nq * Wx + 3 * Wx * Mx))
    step += L * 2 * 2 * H * (Lp + H) * cfg.num_heads * cfg.head_dim
    denoise = cfg.num_steps * step
    return {"vision": float(vision), "prefix": float(prefix), "denoise": float(denoise),
            "total": float(vision + prefix + denoise)}


def timeit(fn, reps: int) -> float:
    """Fastest of ``reps`` calls after one warm-up, in seconds (the floor is optimistic on purpose)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pi05")
    ap.add_argument("--types", default="q4_K,q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latency", type=Path, default=Path(__file__).parent / "results" / "pi05_latency_real_cpu_repack.json",
                    help="a pi05_latency.py result of the same preset on the same machine (native types + torch float32)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pi05_roofline.json")
    args = ap.parse_args()

    import torch

    from actquant_core import native
    from actquant_core.export import default_type_for
    from actquant_core.gguf import TensorEntry, write_policy_gguf
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.preprocess import Pi05Preprocessor

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    P = (cfg.image_size // cfg.patch_size) ** 2
    # the prompt of pi05_latency.py's observation
    rng = np.random.default_rng(0)
    pre = Pi05Preprocessor(cfg, SentencePieceTokenizer.small(), None)
    imgs = {cfg.camera_slots[i]: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for i in range(2)}
    inp = pre(imgs, np.zeros(7, np.float32), "put the red cube in the bowl and then open the drawer")
    Tv, Cv = int(np.asarray(inp.token_masks).sum()), int(np.asarray(inp.image_masks).sum())
    flops = {"native": chunk_flops(cfg, Cv, Tv), "torch": chunk_flops(cfg, cfg.num_cameras, cfg.max_token_len)}

    # each stage's dominant GEMMs (its MLP up- and down-projection) at the stage's native token count; the
    # floor takes the faster of the two for the whole stage (an optimistic bound)
    mlp = {"vision": (cfg.vision_width, cfg.vision_mlp, Cv * P),
           "prefix": (cfg.lm_width, cfg.lm_mlp, Cv * P + Tv),
           "denoise": (cfg.expert_width, cfg.expert_mlp, cfg.action_horizon)}
    shapes = {s: (k, n, b) for s, (k, n, b) in mlp.items()}
    gemms = {f"{s}.{d}": ((k, n, b) if d == "up" else (n, k, b)) for s, (k, n, b) in mlp.items() for d in ("up", "down")}
    rates: dict[str, dict[str, float]] = {"torch_float32": {}}  # per GEMM
    types = [t for t in args.types.split(",") if t]
    with tempfile.TemporaryDirectory() as d:
        entries, Ws, stored = [], {}, {}
        for g, (k, n, _) in gemms.items():
            Ws[g] = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
            for t in types:
                # the type pi05_latency.py's file gives this matrix (F16 where its rows do not fit the blocks,
                # e.g. the vision tower's 1152-wide rows under a K-quant)
                tt = default_type_for(t.upper())(f"{g}.weight", Ws[g].shape)
                stored[(g, t)] = tt
                entries.append(TensorEntry(f"{g}.{t}", Ws[g], tt))
        path = Path(d) / "roofline.gguf"
        write_policy_gguf(path, "test", {}, entries, n_threads=args.threads)
        backend = native.Backend(args.threads)
        model = native.GgufModel(path, backend)
        for g, (k, n, b) in gemms.items():
            x = rng.standard_normal((b, k)).astype(np.float32)
            fl = 2.0 * b * k * n
            with torch.inference_mode():
                xt, Wt = torch.from_numpy(x), torch.from_numpy(Ws[g])
                rates["torch_float32"][g] = fl / timeit(lambda: torch.nn.functional.linear(xt, Wt), args.reps) / 1e9
            for t in types:
                s = timeit(lambda t=t: native.mul_mat(model, backend, f"{g}.{t}", x), args.reps)
                rates.setdefault(t, {})[g] = fl / s / 1e9
        backend_desc = f"{backend.description}; {model.n_repacked} of {len(entries)} matrices repacked"
    best = {k: {s: max(r[f"{s}.up"], r[f"{s}.down"]) for s in shapes} for k, r in rates.items()}

    lat = json.loads(args.latency.read_text()) if args.latency.exists() else {}
    torch_ms = (lat.get("torch", {}).get("float32") or {}).get("latency_ms_p50")
    out: dict = {"preset": args.preset, "threads": args.threads, "backend": backend_desc,
                 "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
                 "tokens": {"native": {"cameras": Cv, "prompt": Tv}, "torch": {"cameras": cfg.num_cameras, "prompt": cfg.max_token_len}},
                 "gflop": {k: {s: v / 1e9 for s, v in f.items()} for k, f in flops.items()},
                 "gemm_shapes": {g: {"in": k, "out": n, "batch": b} for g, (k, n, b) in gemms.items()},
                 "gemm_gflops": rates, "gemm_types": {t: {g: stored[(g, t)] for g in gemms} for t in types},
                 "stage_floor_gflops": best, "latency_source": str(args.latency), "types": {}}
    print(f"{args.preset}: native {Cv} cameras + {Tv} prompt tokens, torch {cfg.num_cameras} + {cfg.max_token_len}; "
          f"GFLOP native {flops['native']['total'] / 1e9:.0f}, torch {flops['torch']['total'] / 1e9:.0f}")
    print(f"GEMM GFLOP/s ({args.threads} threads, {backend_desc}): " + "; ".join(
        f"{k} " + ", ".join(f"{g} {v:.0f}" for g, v in r.items()) for k, r in rates.items()))
    if torch_ms:
        stages_t = {s: flops["torch"][s] / (best["torch_float32"][s] * 1e9) * 1e3 for s in shapes}
        out["torch_float32"] = {"latency_ms": torch_ms, "achieved_gflops": flops["torch"]["total"] / torch_ms / 1e6,
                                "gemm_floor_ms": sum(stages_t.values())}
    for t in types:
        floor = {s: flops["native"][s] / (best[t][s] * 1e9) * 1e3 for s in shapes}
        row: dict = {"floor_ms": {**floor, "total": sum(floor.values())}}
        meas = (lat.get("native", {}).get(t) or {})
        if "stages_ms" in meas:
            st = meas["stages_ms"]
            row["measured_ms"] = {s: st[s] for s in shapes} | {"total": meas["latency_ms_p50"]}
            row["achieved_gflops"] = {s: flops["native"][s] / st[s] / 1e6 for s in shapes}
            row["floor_fraction"] = row["floor_ms"]["total"] / meas["latency_ms_p50"]
        if torch_ms:
            row["max_speedup_vs_torch_fp32"] = torch_ms / row["floor_ms"]["total"]
            if "measured_ms" in row:
                row["speedup_vs_torch_fp32"] = torch_ms / row["measured_ms"]["total"]
        out["types"][t] = row
        print(f"{t}: floor {row['floor_ms']['total'] / 1e3:.1f} s"
              + (f", measured {row['measured_ms']['total'] / 1e3:.1f} s" if "measured_ms" in row else "")
              + (f"; vs torch fp32 {torch_ms / 1e3:.1f} s:" if torch_ms else "")
              + (f" measured {row['speedup_vs_torch_fp32']:.2f}x," if "speedup_vs_torch_fp32" in row else "")
              + (f" the floor allows at most {row['max_speedup_vs_torch_fp32']:.2f}x" if torch_ms else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
