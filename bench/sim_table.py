"""Closed-loop table (the paper's LIBERO-style table on our simulated UR3 suite).

For a trained policy: full precision (F16 GGUF) and every (method, bpw) requested are quantized through the
same pipeline and exporter, then each GGUF runs the same episodes (saved init states 0..episodes-1 of every
task) through the native runtime. Prints and saves bench/results/sim_table.json (success per suite and overall
with Wilson 95 % intervals, bpw, file size, latency); ``--merge A.json B.json`` combines per-policy tables
into one file keyed by policy. Each row is quantized, evaluated and saved before the
next one starts, so a run cut off by a time limit keeps its rows; ``--resume`` continues it.

    python bench/sim_table.py --checkpoint actquant_core/assets/policies/openvla-oft-small-sim --calib DEMOS/lerobot \
        --methods actquant,rtn,imatrix --bpw 4,3,2.5 --episodes 3 --workers 14

Either family's trained folder works (pi05-small-sim, openvla-oft-small-sim).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger("bench.sim_table")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("actquant_core/assets/policies/pi05-small-sim"))
    ap.add_argument("--calib", type=Path, default=None, help="calibration dataset (LeRobot-style root; required to run)")
    ap.add_argument("--methods", default="actquant,rtn,imatrix,generic",
                    help="comma list of methods or quant_table variants (e.g. actquant+floor, actquant/all+floor)")
    ap.add_argument("--bpw", default="4,3.5,3,2.5,2.25")
    ap.add_argument("--episodes", type=int, default=3, help="episodes per task")
    ap.add_argument("--suite", default="all")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--calib-frames", type=int, default=128)
    ap.add_argument("--scope", default="backbone", help="allocated tensors: backbone (paper) | all")
    ap.add_argument("--quant-threads", type=int, default=None, help="GGML quantization threads")
    ap.add_argument("--reuse", action="store_true", help="reuse GGUFs already in --work")
    ap.add_argument("--skip-fp", action="store_true", help="no full-precision row")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out (same checkpoint and settings) and run only the missing ones")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="no run: write --out as {policy folder name: table} from these per-policy tables")
    ap.add_argument("--work", type=Path, default=Path("build/sim_table"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sim_table.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:  # one file for both policies (the bench/results/sim_table.json)
        merged: dict[str, dict] = {}
        for f in args.merge:
            t = json.loads(f.read_text())
            if "rows" not in t or "checkpoint" not in t:
                raise SystemExit(f"--merge: {f} is not a sim_table.py table")
            merged[Path(t["checkpoint"]).name] = {"source": str(f), **t}
        args.out.write_text(json.dumps(merged, indent=1))
        print(f"merged {len(merged)} tables into {args.out}")
        return 0
    if args.calib is None:
        ap.error("--calib is required (except with --merge)")

    from actquant_core.quant.pipeline import PipelineConfig, export_reference, load_policy, quantize_policy
    from actquant_core.sim.evaluate import EvalConfig, evaluate

    args.work.mkdir(parents=True, exist_ok=True)
    table: list[dict] = []
    skipped: list[dict] = []
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "checkpoint": str(args.checkpoint),
        "scope": args.scope,
        "calib_frames": args.calib_frames,
        "episodes_per_task": args.episodes,
        "suite": args.suite,
        "rows": table,
        "skipped": skipped,
    }
    if args.resume and args.out.exists():  # rows of an earlier (cut-off) run of the same table are kept
        old = json.loads(args.out.read_text())
        same = {k: old.get(k) for k in ("checkpoint", "scope", "calib_frames", "episodes_per_task", "suite")}
        if same != {k: result[k] for k in same}:
            raise SystemExit(f"--resume: {args.out} is another table ({same})")
        table += old["rows"]
        skipped += old.get("skipped", [])
    done = {(r["method"], r["bpw_target"]) for r in table} | {(r["method"], r["bpw_target"]) for r in skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from quant_table import VARIANTS  # row labels -> (method, PipelineConfig overrides), shared with the quant table

    variants = {label: (m, o) for label, m, o in VARIANTS}
    todo: list[tuple[str, float]] = [] if args.skip_fp else [("fp16", 16.0)]
    for label in [m for m in args.methods.split(",") if m]:
        if label not in variants:
            raise SystemExit(f"unknown method/variant {label!r}; known: {sorted(variants)}")
        todo += [(label, float(b)) for b in args.bpw.split(",") if b]
    for label, bpw in todo:
        if (label, bpw) in done:
            continue
        t0 = time.time()
        if label == "fp16":
            out = args.work / "fp16.gguf"
            if not out.exists():  # either family's trained folder (pi05-small-sim, openvla-oft-small-sim)
                export_reference(load_policy(str(args.checkpoint)), out, "F16")
            r = {"method": "fp16", "bpw_target": 16.0, "gguf": out, "quantize_s": 0.0}
        else:
            method, overrides = variants[label]
            out = args.work / f"{label.replace('/', '_')}-{bpw:g}.gguf"
            if out.exists() and args.reuse:
                from actquant_core.gguf import read_policy_gguf

                ps = read_policy_gguf(out).plan_summary or {}
                r = {"method": label, "bpw_target": bpw, "gguf": out, "quantize_s": None,
                     "bpw_backbone": ps.get("bpw_backbone"), "bpw_whole": ps.get("bpw_whole")}
            else:
                try:
                    res = quantize_policy(str(args.checkpoint), args.calib, bpw, method, out,
                                          config=PipelineConfig(**{"calib_frames": args.calib_frames, "report": False,
                                                                   "scope": args.scope, "n_threads": args.quant_threads,
                                                                   **overrides}))
                except ValueError as e:  # e.g. a budget below the method's cheapest type: the row says so
                    log.warning("%s @ %g bpw: %s", label, bpw, e)
                    skipped.append({"method": label, "bpw_target": bpw, "status": str(e)})
                    args.out.write_text(json.dumps(result, indent=1))
                    continue
                r = {"method": label, "bpw_target": bpw, "gguf": out, "quantize_s": time.time() - t0,
                     "bpw_backbone": res.plan.bpw_backbone, "bpw_whole": res.plan.bpw_whole}
        ev = evaluate(EvalConfig(gguf=str(r["gguf"]), suite=args.suite, episodes=args.episodes,
                                 workers=args.workers, threads=1))
        row = {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}
        row.update({
            "file_mb": Path(r["gguf"]).stat().st_size / 1e6,
            "overall": ev["overall"],
            "per_suite": ev["per_suite"],
            "per_task": {k: v["rate"] for k, v in ev["per_task"].items()},
            "latency_ms": ev["latency_ms"],
            "eval_wall_s": ev["wall_s"],
        })
        table.append(row)
        o = ev["overall"]
        print(f"{row['method']:10s} {row['bpw_target']:5.2f} bpw  success {o['success']:3d}/{o['episodes']:<3d} "
              f"{100 * o['rate']:5.1f}%  [{100 * o['wilson95'][0]:4.1f}, {100 * o['wilson95'][1]:4.1f}]  "
              f"{row['file_mb']:6.1f} MB", flush=True)
        args.out.write_text(json.dumps(result, indent=1))  # after every row: a cut-off run keeps what it measured
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
