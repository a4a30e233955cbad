"""π₀.₅ latency / size / memory: native GGML runtime per weight type vs our PyTorch reference, same process.

Random weights of a preset (``pi05`` real size by default — needs ~10 GB RAM for the bf16 file, minutes to
quantize on 2 cores), 2 cameras + 1 masked slot, a full prompt, 10 Euler steps. For each type: GGUF file size,
peak RSS growth while loading + running, latency per chunk (median of --reps); torch fp32 (and bf16) latency
of ``sample_actions`` on the same cores unless --no-torch. Prints and saves bench/results/pi05_latency.json.

    python bench/pi05_latency.py --preset pi05-small --types f16,q8_0,q4_K,q3_K,q2_K --threads 2
    python bench/pi05_latency.py --preset pi05 --types q4_K --no-torch          # real size, native only
    python bench/pi05_latency.py --preset pi05-small --device cuda              # CUDA build on a GPU machine
    python bench/pi05_latency.py --device cuda --threads 8 --torch-dtypes bfloat16   # real size: native CUDA vs
                                                                                # torch bf16 eager on the same GPU

With ``--device cuda`` the torch reference runs on the same GPU (``--torch-device``), timed with
``torch.cuda.synchronize``; the speed-up is then against the first of ``--torch-dtypes``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RandomCanonical(Mapping):
    """Random weights per canonical tensor (unit-gain linear layers, like Pi05Model.init_random), generated on
    access from a per-name seed: a real-size model never has to sit in memory in float32."""

    def __init__(self, cfg, seed: int = 0) -> None:
        from actquant_core.policies.pi05.canonical import canonical_shapes

        self.shapes = canonical_shapes(cfg)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self):
        return iter(self.shapes)

    def __getitem__(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        x = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) == 2 and "position_embd" not in name and "token_embd" not in name:
            return x / np.float32(np.sqrt(shape[1]))
        if "norm" in name and len(shape) == 1 and name.startswith(("lm.", "v.")):
            return 1.0 + np.float32(0.1) * x
        return np.float32(0.02) * x


def kernel_profile(fn, top: int = 20) -> dict:
    """One call of ``fn`` under torch.profiler (CUDA activity): kernel launches, summed kernel time, the ``top``
    kernels by time (name, count, ms) and host-to-device / device-to-host copy volume."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    agg: dict[str, list[float]] = {}
    copies: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name
        if name.startswith("Memcpy") or name.startswith("Memset"):
            copies[name] = copies.get(name, 0.0) + e.device_time_total / 1e3
            continue
        a = agg.setdefault(name, [0, 0.0])
        a[0] += 1
        a[1] += e.device_time_total / 1e3
    rows = sorted(({"name": k, "count": int(v[0]), "ms": v[1]} for k, v in agg.items()), key=lambda x: -x["ms"])
    return {"launches": int(sum(v[0] for v in agg.values())), "gpu_ms": float(sum(v[1] for v in agg.values())),
            "copies_ms": copies, "top": rows[:top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pi05")
    ap.add_argument("--types", default="bf16,q8_0,q4_K,q3_K,q2_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--repack", default="on", help="CPU weight repacking to run: on, off or on,off (off rows are "
                    "keyed '<type>@mapped')")
    ap.add_argument("--torch-dtypes", default="float32,bfloat16",
                    help="torch reference dtypes; the speed-up is against the first")
    ap.add_argument("--torch-device", default=None, help="torch reference device (default: cuda with --device cuda, else cpu)")
    ap.add_argument("--flash", default="",
                    help="ACTQUANT_FLASH_ATTN settings to run each type under, e.g. gpu,0 (rows of 0 are keyed "
                         "<type>@noflash, of all <type>@flashall); default: the environment's")
    ap.add_argument("--stage-timing", default="on",
                    help="per-stage timing to run each type with: on, off or on,off (off rows are keyed <type>@onepiece: "
                         "the graph in one piece, no stage synchronisation)")
    ap.add_argument("--op-profile", action="store_true",
                    help="after timing, one call with the native per-op profile (Pi05Runtime.profile_ops: one node at "
                         "a time, so its sum exceeds the chunk's time): ms and node count per GGML op")
    ap.add_argument("--kernel-profile", action="store_true",
                    help="CUDA: after timing, record one chunk's GPU kernels with torch.profiler (CUPTI sees every "
                         "kernel of the process, GGML's included) and save the kernel count, GPU time and the top kernels")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pi05_latency.json")
    args = ap.parse_args()

    from actquant_core.export import default_type_for, export_tensors
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.runtime.pi05 import Pi05Runtime
    from actquant_core.runtime.types import Observation

    cfg = get_preset(args.preset)
    tok = SentencePieceTokenizer.small()
    if cfg.vocab_size < tok.vocab_size:
        raise SystemExit("preset vocabulary smaller than the bundled tokenizer")
    rng = np.random.default_rng(0)
    obs = Observation(
        images={cfg.camera_slots[0]: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
                cfg.camera_slots[1]: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)},
        state=np.zeros(7, np.float32), instruction="put the red cube in the bowl and then open the drawer")
    noise = rng.standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    tensors = RandomCanonical(cfg)
    n_params = sum(int(np.prod(s)) for s in tensors.shapes.values())
    results: dict = {"preset": args.preset, "params": int(n_params), "threads": args.threads, "device": args.device,
                     "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
                     "native": {}, "torch": {}}
    with tempfile.TemporaryDirectory() as d:
        for t in [x for x in args.types.split(",") if x]:
            path = Path(d) / f"{t}.gguf"
            t0 = time.perf_counter()
            export_tensors(path, "pi05", cfg.to_dict(), tensors, default_type_for(t.upper()),
                           tokenizer_model=tok.model_bytes, n_threads=args.threads)
            write_s = time.perf_counter() - t0
            flash_modes = [f for f in args.flash.split(",") if f] or [None]
            runs = [(m, f, st) for m in args.repack.split(",") if m for f in flash_modes
                    for st in args.stage_timing.split(",") if st]
            for mode, flash, stage in runs:
                if mode not in ("on", "off") or stage not in ("on", "off"):
                    raise SystemExit(f"--repack / --stage-timing: expected on/off, got {mode!r} / {stage!r}")
                if flash is not None:
                    os.environ["ACTQUANT_FLASH_ATTN"] = flash  # read when the runtime builds its graph
                key = ((t if mode == "on" else f"{t}@mapped") + {"0": "@noflash", "all": "@flashall"}.get(flash, "")
                       + ("@onepiece" if stage == "off" else ""))
                gc.collect()
                rss0 = rss_mb()
                try:
                    rt = Pi05Runtime(path, n_threads=args.threads, device=args.device, repack=mode == "on",
                                     stage_timing=stage == "on")
                    chunk = rt.infer(obs, noise=noise)
                except Exception as e:  # one type the backend cannot run must not lose the others' numbers
                    results["native"][key] = {"error": f"{type(e).__name__}: {e}"}
                    print(f"native {key:12s} failed: {type(e).__name__}: {e}", flush=True)
                    continue
                times = []
                for _ in range(args.reps):
                    t1 = time.perf_counter()
                    chunk = rt.infer(obs, noise=noise)
                    times.append(time.perf_counter() - t1)
                rss1 = rss_mb()
                r = results["native"][key] = {
                    "file_mb": path.stat().st_size / 1e6, "write_s": write_s, "backend": rt.backend,
                    "latency_ms_p50": 1e3 * float(np.median(times)), "latency_ms_min": 1e3 * float(np.min(times)),
                    "stages_ms": chunk.timing_ms, "rss_growth_mb": rss1 - rss0,
                    "flash_attn": os.environ.get("ACTQUANT_FLASH_ATTN", "gpu"), "stage_timing": stage == "on",
                }
                print(f"native {key:12s} {r['file_mb']:8.1f} MB  {r['latency_ms_p50']:9.1f} ms/chunk"
                      f"  (+{rss1 - rss0:.0f} MB RSS, {rt.backend})", flush=True)
                if args.op_profile:
                    prof = rt.profile_ops(rt.preprocessor(obs.images, obs.state, obs.instruction), noise)
                    r["op_profile"] = {op: {"ms": ms, "nodes": n} for op, (ms, n) in prof.items()}
                    print(f"  ops ({sum(ms for ms, _ in prof.values()):.0f} ms one node at a time): "
                          + "; ".join(f"{op} {ms:.0f} ms x{n}" for op, (ms, n) in list(prof.items())[:8]), flush=True)
                if args.kernel_profile and args.device.startswith("cuda"):
                    r["kernels"] = kernel_profile(lambda: rt.infer(obs, noise=noise))
                    k = r["kernels"]
                    print(f"  {k['launches']} kernels, {k['gpu_ms']:.1f} ms of GPU time; top: "
                          + "; ".join(f"{x['name'][:40]} {x['ms']:.1f} ms x{x['count']}" for x in k["top"][:6]), flush=True)
                del rt
            path.unlink()
    if not args.no_torch:
        import torch

        from actquant_core.policies.pi05.canonical import model_from_canonical
        from actquant_core.policies.pi05.preprocess import Pi05Preprocessor

        torch.set_num_threads(args.threads)
        tdev = torch.device(args.torch_device or ("cuda" if args.device.startswith("cuda") else "cpu"))
        sync = torch.cuda.synchronize if tdev.type == "cuda" else (lambda: None)
        results["torch_device"] = str(tdev) if tdev.type != "cuda" else f"{tdev} ({torch.cuda.get_device_name(tdev)})"
        pre = Pi05Preprocessor(cfg, tok, None)
        inp = pre(obs.images, obs.state, obs.instruction)
        dtypes = [getattr(torch, x) for x in args.torch_dtypes.split(",") if x]
        for dtype in dtypes:
            model = model_from_canonical(cfg, tensors, dtype=dtype).to(tdev)  # lazily: one float32 tensor at a time
            args_t = [torch.from_numpy(inp.images).to(dtype), torch.from_numpy(inp.image_masks), torch.from_numpy(inp.tokens),
                      torch.from_numpy(inp.token_masks), torch.from_numpy(noise[None]).to(dtype)]
            args_t = [a.to(tdev) for a in args_t]
            with torch.inference_mode():
                model.sample_actions(*args_t)
                sync()
                times = []
                for _ in range(max(1, args.reps // 2) if tdev.type == "cpu" else args.reps):
                    t1 = time.perf_counter()
                    model.sample_actions(*args_t)
                    sync()
                    times.append(time.perf_counter() - t1)
            name = str(dtype).replace("torch.", "")
            results["torch"][name] = {"latency_ms_p50": 1e3 * float(np.median(times)),
                                      "latency_ms_min": 1e3 * float(np.min(times))}
            print(f"torch  {name:8s} {results['torch'][name]['latency_ms_p50']:9.1f} ms/chunk ({tdev})", flush=True)
            del model
            if tdev.type == "cuda":
                torch.cuda.empty_cache()
        base_name = str(dtypes[0]).replace("torch.", "")
        base = results["torch"][base_name]["latency_ms_p50"]
        key = "speedup_vs_torch_" + {"float32": "fp32", "bfloat16": "bf16"}.get(base_name, base_name)
        results[key] = {t: base / r["latency_ms_p50"] for t, r in results["native"].items() if "latency_ms_p50" in r}
        print(f"speed-up vs torch {base_name} ({tdev}): " + ", ".join(f"{t} {v:.1f}x" for t, v in results[key].items()))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
