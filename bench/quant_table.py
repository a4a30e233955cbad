"""Quantization table: every method x bpw on pi05-small / openvla-oft-small -> action error vs full precision,
size, time.

    python bench/quant_table.py [--family pi05|oft] [--checkpoint TRAINED_DIR] [--calib DATASET]
                                [--calib-frames 32] [--eval-frames 16] [--bpw 4,3.5,3,2.5,2.25] [--device cpu|cuda]
                                [--out bench/results/quant_table.json]

Policy: the trained folder given with ``--checkpoint`` (``actquant_core.train.pi05`` format / an OFT
checkpoint folder), else the family's small preset with seeded random weights (``--family pi05``:
``pi05-small``; ``--family oft``: ``openvla-oft-small``, results default to ``quant_table_oft.json``) --
the JSON's ``meta.model`` says which.  OFT has no noise input (deterministic L1 head): its rows compare
the deterministic action chunks.  Calibration data: ``--calib`` (LeRobot-style dataset / demos folder / bags), else a small set of
simulated demonstrations generated into ``--work`` (``actquant_core.sim.demos``).  Calibration frames
come from the calibration split, evaluation frames from the held-out episodes (``holdout_every``).

Calibration action targets (``--targets``): the recorded chunks for a trained policy (paper), the
policy's own sampled chunks for random weights (recorded actions carry no signal about a random policy).

Statistics are computed once and shared by all rows (HSIC over every linear layer, activation
importance of every hooked layer, Fisher of every 2-D tensor), so each row's ``quant_seconds`` is
plan + GGML quantization + write; ``meta.calibration_seconds`` gives the shared stages.  Action error:
the native runtime on the evaluation frames, identical noise for the F32 reference and each GGUF;
``l1`` / ``nmse`` in normalised action space over the un-padded action dims.

Rows: the seven methods (``gptq``: uniform type, GPTQ's Hessian compensation on GGML's grids, XᵀX of every
hooked layer up to ``GptqConfig.max_cols`` columns collected with the shared statistics) over the paper's scope (LM backbone allocated, vision fixed K-quant, expert F16)
plus "beyond the paper" ActQuant variants: ``actquant+inactive`` (last-LM-layer weights no action
depends on get the cheapest type), ``actquant+floor`` (scores floored at half their positive mean, so
no tensor with a clipped-to-zero sensitivity lands on IQ1_S), ``actquant/hsic_out_y`` (score
``HSIC(out, Y)`` instead of the clipped sensitivity) and ``actquant/all`` (+floor) (vision, projector,
expert and heads allocated too; compare those on ``bpw_whole``).  A row whose budget is below its method's cheapest type is recorded
with ``status`` = the error message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from actquant_core.quant.pipeline import K_QUANTS  # the RTN baseline's menu
from actquant_core.quant.types import DEFAULT_MENU

log = logging.getLogger("bench.quant_table")

ROOT = Path(__file__).resolve().parents[1]
#: --family -> random-weights preset (``random:<preset>:<seed>``)
FAMILY_PRESETS = {"pi05": "pi05-small", "oft": "openvla-oft-small"}
DEFAULT_BPW = (4.0, 3.5, 3.0, 2.5, 2.25)
#: (row label, method, PipelineConfig overrides)
VARIANTS = (
    ("actquant", "actquant", {}),
    ("rtn", "rtn", {}),
    ("imatrix", "imatrix", {}),
    ("generic", "generic", {}),
    ("hsic-only", "hsic-only", {}),
    ("fisher-only", "fisher-only", {}),
    ("gptq", "gptq", {}),
    ("actquant+inactive", "actquant", {"inactive": "cheapest"}),
    ("actquant+floor", "actquant", {"score_floor": 0.5}),
    ("actquant/hsic_out_y", "actquant", {"score": "hsic_out_y"}),
    ("actquant/all", "actquant", {"scope": "all"}),
    ("actquant/all+floor", "actquant", {"scope": "all", "score_floor": 0.5}),
    ("actquant+measured", "actquant", {"noise": "measured"}),
    ("actquant+measured+floor", "actquant", {"noise": "measured", "score_floor": 0.5}),
    ("actquant/all+measured+floor", "actquant", {"scope": "all", "noise": "measured", "score_floor": 0.5}),
    ("actquant+floor+refine", "actquant", {"score_floor": 0.5, "refine": True}),
    ("actquant+floor+gptq", "actquant", {"score_floor": 0.5, "compensate": "gptq"}),
    ("actquant+gptq", "actquant", {"compensate": "gptq"}),
    ("actquant+measured+floor+refine", "actquant", {"noise": "measured", "score_floor": 0.5, "refine": True}),
    ("actquant+floor+plain", "actquant", {"score_floor": 0.5, "stage2": "plain"}),
    ("actquant+floor+best", "actquant", {"score_floor": 0.5, "stage2": "best"}),
    # stage-2-aware allocation: each type priced at the output error of stage 2's best-of quantization
    ("actquant+floor+best+output", "actquant", {"score_floor": 0.5, "stage2": "best", "noise": "output"}),
    ("actquant+best+output", "actquant", {"stage2": "best", "noise": "output"}),
    # … over the menu without the 1-bit codebooks (IQ1_S / IQ1_M): IQ2_XXS is the floor
    ("actquant+floor+best+output/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "noise": "output", "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    # the CLI default (floor + best) over the menu without the 1-bit codebooks
    ("actquant+floor+best/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    # stage 2 "best" with block-wise GPTQ only (no recursion inside a 256-block): what the real-size run can afford
    ("actquant+floor+best/g0", "actquant", {"score_floor": 0.5, "stage2": "best", "gptq_intra_group": 0}),
    # … priced without the GPTQ candidate (the real-size-affordable form; stage 2 still weighs GPTQ)
    ("actquant+floor+best+output-fast/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "noise": "output", "output_gptq": False,
      "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    # … priced with GPTQ on a seeded sample of each tensor's rows (the ratio estimate real size can afford)
    ("actquant+floor+best+output-r128/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "noise": "output", "output_rows": 128,
      "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    ("actquant+floor+best+output-r256/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "noise": "output", "output_rows": 256,
      "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    # … GPTQ priced block-wise only (no recursion inside 256-blocks; stage 2 still recurses at the chosen types)
    ("actquant+floor+best+output-r256-g0/noiq1", "actquant",
     {"score_floor": 0.5, "stage2": "best", "noise": "output", "output_rows": 256, "output_intra": False,
      "menu": tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))}),
    ("rtn+best", "rtn", {"stage2": "best"}),  # control: uniform types, the same per-tensor best quantizer
    ("imatrix+best", "imatrix", {"stage2": "best"}),  # … with the IQ types under 2.625 bpw
    ("actquant+floor+best/k", "actquant", {"score_floor": 0.5, "stage2": "best", "menu": K_QUANTS}),
    # the allocator over K-quants only (no IQ1/IQ2/IQ3 codebook types)
    ("actquant+floor/k", "actquant", {"score_floor": 0.5, "menu": K_QUANTS}),
    ("actquant+floor+gptq/k", "actquant", {"score_floor": 0.5, "compensate": "gptq", "menu": K_QUANTS}),
)


def variant_config(method: str, overrides: dict, gptq_cfg, **kwargs):
    """The ``PipelineConfig`` of a ``VARIANTS`` row: its overrides, where ``gptq_intra_group`` replaces that
    field of ``gptq_cfg``."""
    from actquant_core.quant.pipeline import PipelineConfig

    o = dict(overrides)
    gptq = replace(gptq_cfg, intra_group=o.pop("gptq_intra_group")) if "gptq_intra_group" in o else gptq_cfg
    return PipelineConfig(method=method, gptq=gptq, **o, **kwargs)


def _demos(work: Path, seed: int) -> Path:
    """A small simulated dataset: every task of every suite, 2 episodes each, LeRobot-style only, layouts
    from seed ``1000 + seed`` (not the training stream)."""
    from actquant_core.sim.demos import DemoConfig, generate

    out = work / f"demos-{seed}"
    if (out / "lerobot" / "meta" / "info.json").exists():
        return out / "lerobot"
    generate(DemoConfig(out=out, suite="all", episodes_per_task=2, workers=2, formats=("lerobot",), seed=1000 + seed))
    return out / "lerobot"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=tuple(FAMILY_PRESETS), default="pi05",
                    help="policy family of the random-weights preset (default pi05)")
    ap.add_argument("--checkpoint", default=None,
                    help="trained policy folder (default: the family's small preset with random weights)")
    ap.add_argument("--calib", default=None, help="calibration dataset (default: generate simulated demos)")
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--eval-frames", type=int, default=16)
    ap.add_argument("--bpw", default=",".join(str(b) for b in DEFAULT_BPW))
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--device", default="cpu", help="torch device of calibration (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="GGML threads (default: all CPUs of the process)")
    ap.add_argument("--targets", choices=("auto", "data", "policy"), default="auto",
                    help="calibration action targets (auto: the policy's own actions for random weights, the "
                         "recorded ones for a trained policy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_quant")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default bench/results/quant_table.json; quant_table_oft.json for --family oft)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from actquant_core.quant.calibrate import CalibConfig, calibrate, calibrate_fisher, load_episodes, sample_frames
    from actquant_core.quant.gptq import GptqConfig
    from actquant_core.quant.importance import weighted_error_fn
    from actquant_core.quant.pipeline import (
        apply_plan, build_plan, compare_actions, export_reference, load_policy, measured_noise_fn,
        needed_statistics, output_noise_for, runtime_actions)
    from actquant_core import constants as C
    from actquant_core import native

    t_all = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    preset = FAMILY_PRESETS[args.family]
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("quant_table.json" if args.family == "pi05" else "quant_table_oft.json")
    calib_src = Path(args.calib) if args.calib else _demos(args.work, args.seed)  # demos shared by the families
    args.work = args.work / args.family if args.family != "pi05" else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or f"random:{preset}:{args.seed}"
    adapter = load_policy(ckpt)
    cfg_model = adapter.config
    H = getattr(adapter, "action_horizon", None) or cfg_model.action_horizon
    frames = sample_frames(load_episodes(calib_src), H, args.calib_frames, seed=args.seed, split="calib")
    eval_frames = sample_frames(load_episodes(calib_src), H, args.eval_frames, seed=args.seed + 1, split="holdout")
    eval_split = "holdout"
    if not eval_frames:
        eval_frames = sample_frames(load_episodes(calib_src), H, args.eval_frames, seed=args.seed + 1, split="all")
        eval_split = "all (no held-out episode)"
    if adapter.norm_stats is None and adapter.family == C.PI05_FAMILY:
        # random weights have no statistics: use the calibration set's, so normalised actions are O(1)
        from actquant_core.policies.common.normalize import NormStats
        from actquant_core.policies.pi05.preprocess import Pi05Preprocessor
        from actquant_core.train.pi05 import quantile_stats

        ns = NormStats(state=quantile_stats(np.stack([f.state for f in frames])),
                       actions=quantile_stats(np.concatenate([f.actions for f in frames])))
        adapter.norm_stats = ns
        adapter.action_dims = ns.actions.dim
        adapter.preprocessor = Pi05Preprocessor(cfg_model, adapter.tokenizer, ns)

    targets = args.targets if args.targets != "auto" else ("data" if args.checkpoint else "policy")
    calib_cfg = CalibConfig(batch_size=8, seed=args.seed, device=args.device, progress=False, targets=targets)
    specs_all = [t.name for t in adapter.linear_targets()]
    shapes = {t.name: t.shape for t in adapter.tensor_table()}
    gptq_cfg = GptqConfig(device=args.device if str(args.device).startswith("cuda") else "cpu")
    gram_all = ([n for n in specs_all if shapes[n][-1] <= gptq_cfg.max_cols]
                if any(needed_statistics(m, variant_config(m, o, gptq_cfg))["gram"]
                       for label, m, o in VARIANTS if label in set(args.variants.split(","))) else [])
    t0 = time.perf_counter()
    cal = calibrate(adapter, frames, calib_cfg, hsic_targets=specs_all, importance_targets=specs_all,
                    gram_targets=gram_all, gram_max_cols=gptq_cfg.max_cols)
    quantizable = [t.name for t in adapter.tensor_table() if len(t.shape) >= 2 and t.group not in ("position",)]
    t1 = time.perf_counter()
    fisher, nb, losses, fisher_s = calibrate_fisher(adapter, frames, calib_cfg, quantizable)
    cal.fisher, cal.fisher_batches, cal.fisher_losses = fisher, nb, losses
    calib_seconds = {**cal.seconds, "fisher": fisher_s, "total": time.perf_counter() - t0}
    weights = adapter.canonical_weights()
    n_threads = args.threads
    error_fn = weighted_error_fn(weights, cal.activation_importance,
                                 lambda W, t, imp: native.quantize(W, t, imp, n_threads=n_threads), native.dequantize)
    noise_fn = measured_noise_fn(weights, fisher, n_threads)  # cached (tensor, type) errors shared by the budgets
    out_noises: dict = {}  # likewise, noise "output": one OutputNoise per pricing setting, shared by the budgets

    def output_noise(pc):
        key = (pc.gptq, pc.output_gptq, pc.output_rows, pc.seed, pc.output_intra)
        if key not in out_noises:
            out_noises[key] = output_noise_for(pc, weights, cal, n_threads)
        return out_noises[key]

    ref = export_reference(adapter, args.work / "reference-f32.gguf")
    A_ref, pre = runtime_actions(ref, eval_frames, seed=args.seed, n_threads=n_threads)
    rows = []
    bpws = [float(b) for b in args.bpw.split(",")]
    wanted = set(args.variants.split(","))
    for label, method, overrides in VARIANTS:
        if label not in wanted:
            continue
        for bpw in bpws:
            pc = variant_config(method, overrides, gptq_cfg, bpw=bpw, report=False, n_threads=n_threads,
                                calib=calib_cfg)
            row = {"variant": label, "method": method, "scope": pc.scope, "inactive": pc.inactive, "score": pc.score,
                   "score_floor": pc.score_floor, "noise": pc.noise, "refine": pc.refine,
                   "compensate": pc.compensate, "bpw": bpw}
            t0 = time.perf_counter()
            try:
                plan = build_plan(adapter, pc, cal, weights, n_threads, error_fn=error_fn if method == "generic" else None,
                                  noise_fn={"measured": noise_fn, "output": output_noise(pc) if cal.gram else None}.get(pc.noise))
            except ValueError as e:
                row.update(status=str(e))
                rows.append(row)
                log.info("%s @ %.2f: %s", label, bpw, e)
                continue
            plan_s = time.perf_counter() - t0
            out = args.work / f"{label.replace('/', '-')}-{bpw}.gguf"
            res = apply_plan(adapter, plan, weights, cal, out, pc, source=ckpt,
                             # stage 2 reuses the winners the unsampled, full-candidate pricing already found
                             stage2_cache=output_noise(replace(pc, output_gptq=True, output_rows=None,
                                                               output_intra=True)).best if cal.gram else None)
            A_q, _ = runtime_actions(out, eval_frames, seed=args.seed, n_threads=n_threads)
            err = compare_actions(A_q, A_ref, pre, adapter.action_dims)
            if pc.noise == "output" and cal.gram:  # cumulative over this variant's budgets so far (cached after)
                row.update(output_pricing_seconds=output_noise(pc).seconds)
            row.update(status="ok", bpw_backbone=plan.bpw_backbone, bpw_backbone_nominal=plan.bpw_backbone_nominal,
                       bpw_whole=plan.bpw_whole, file_size=res.file_size,
                       quant_seconds=plan_s + res.seconds["quantize"] + res.seconds["write"],
                       type_counts=plan.summary()["type_counts"], **err.as_dict())
            rows.append(row)
            log.info("%s @ %.2f: backbone %.3f bpw, whole %.3f, l1 %.4g, nmse %.4g, %.1f MB", label, bpw,
                     plan.bpw_backbone, plan.bpw_whole, err.l1, err.nmse, res.file_size / 1e6)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": f"{args.family}, trained ({ckpt})" if args.checkpoint else
                 f"{preset} with RANDOM weights (init_random) -- errors measure quantization noise propagation, "
                 "not task performance",
        "family": adapter.family,
        "checkpoint": ckpt, "params": int(sum(w.size for w in weights.values())),
        "calib": str(calib_src), "calib_frames": len(frames), "eval_frames": len(eval_frames), "eval_split": eval_split,
        "fisher_batches": nb, "targets": targets, "calibration_seconds": calib_seconds, "device": args.device,
        "cpu": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
        "reference_bytes": ref.stat().st_size, "seed": args.seed, "wall_seconds": time.perf_counter() - t_all,
        "error_space": ("normalised actions (quantile norm stats; the calibration set's for random weights), "
                        "un-padded dims; nmse = sum sq err / sum sq deviation of the reference")
                       if adapter.family == C.PI05_FAMILY else
                       ("the policy's normalised action chunks (identity statistics for random weights), un-padded dims; "
                        "deterministic head, no noise; nmse = sum sq err / sum sq deviation of the reference"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    from actquant_core.quant.report import write_comparison

    write_comparison(args.work / "quant_table.md",
                     [{**r, "method": r["variant"]} for r in rows if r.get("status") == "ok"],
                     title=f"{preset if not args.checkpoint else args.family} "
                           f"({'trained' if args.checkpoint else 'random weights'})")
    log.info("wrote %s (%d rows) in %.0f s", args.out, len(rows), meta["wall_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
