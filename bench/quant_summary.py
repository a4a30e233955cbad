"""ActQuant's quantization targets in one table: the product default against every baseline, both small presets,
every bpw, and the real-size pipeline wall time -- gathered from the tables ``bench/quant_table.py`` wrote and the
runs of ``bench/actquant_pipeline.py``, with the targets of the quantizer issue checked.

    python bench/quant_summary.py                      # the repository's recorded tables -> quant_summary.json
    python bench/quant_summary.py --family pi05 --default quant_table_pi05_dart_output_rows.json:output-r128 \\
        --baselines quant_table_pi05_dart.json,quant_table_pi05_dart_more.json ...

Rows are only compared within one calibration: every table of a family must agree on the checkpoint, the
calibration set and frame counts, the evaluation split, the seed and the Fisher batches (else an error names the
field). Targets (the issue's): the default's action L1 below every baseline's at every bpw <= 3.5 on each preset,
and the real-size pi05 pipeline within 20 min. Baselines are the issue's (RTN, imatrix, the LLM-generic allocator,
HSIC-only, Fisher-only, GPTQ); "controls" (a uniform method with our stage 2, ``rtn+best`` / ``imatrix+best``)
are reported beside them, not counted in the target.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BASELINES = ("rtn", "imatrix", "generic", "hsic-only", "fisher-only", "gptq")
CONTROLS = ("rtn+best", "imatrix+best")
SAME_CALIBRATION = ("checkpoint", "calib", "calib_frames", "eval_frames", "eval_split", "seed", "fisher_batches", "targets")
TARGET_BPW = 3.5
TARGET_PIPELINE_MIN = 20.0

# The repository's recorded tables (bench/results): family -> default table:variant pattern, baseline tables.
RECORDED = {
    "pi05": ("quant_table_pi05_dart_output_rows.json:output-r128",
             ["quant_table_pi05_dart.json", "quant_table_pi05_dart_more.json", "quant_table_pi05_dart_control.json"]),
    "openvla_oft": ("quant_table_oft_dart_output_rows.json:output-r128", ["quant_table_oft_dart.json"]),
    # the closest call above (OFT at 3.5 bpw: 0.0086 vs GPTQ's 0.0087) re-evaluated on 64 held-out frames
    "openvla_oft@64-eval-frames": ("quant_table_oft_dart_eval64.json:output-r128", []),
}
RECORDED_PIPELINES = ["actquant_pipeline_real_cuda_output_h200.json", "actquant_pipeline_real_cuda_best_h100.json"]


def _load(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"quant_summary: cannot read {path}: {e}") from e
    if not isinstance(d, dict) or "meta" not in d or "rows" not in d:
        raise SystemExit(f"quant_summary: {path} is not a bench/quant_table.py result (no meta / rows)")
    return d


def _check_same_calibration(family: str, tables: dict[str, dict]) -> None:
    ref_name, ref = next(iter(tables.items()))
    for name, t in tables.items():
        for k in SAME_CALIBRATION:
            a, b = ref["meta"].get(k), t["meta"].get(k)
            if k == "calib" and a and b:  # the same folder, given absolute or relative
                a, b = (str(x)[str(x).find("build/"):] if "build/" in str(x) else str(x) for x in (a, b))
            if a != b:
                raise SystemExit(f"quant_summary: {family}: {name} has {k}={t['meta'].get(k)!r}, {ref_name} has "
                                 f"{ref['meta'].get(k)!r}: rows of different calibrations are not comparable")


def summarize_family(family: str, default: tuple[Path, str], baselines: list[Path]) -> dict:
    """One preset: per bpw the default's L1, each baseline's and control's, the best baseline and the verdict."""
    dpath, pattern = default
    tables = {Path(dpath).name: _load(dpath)} | {Path(p).name: _load(p) for p in baselines}
    _check_same_calibration(family, tables)
    ok = lambda r: r.get("status", "ok") == "ok" and r.get("l1") is not None  # noqa: E731
    rx = re.compile(pattern)
    drows = {float(r["bpw"]): r for r in tables[Path(dpath).name]["rows"]
             if r["method"] == "actquant" and rx.search(r.get("variant") or "") and ok(r)}
    if not drows:
        raise SystemExit(f"quant_summary: {family}: no actquant row of {dpath} matches variant {pattern!r}")
    others: dict[float, dict[str, dict]] = {}
    for name, t in tables.items():
        for r in t["rows"]:
            v = r.get("variant") or r["method"]
            if v in BASELINES + CONTROLS and ok(r):
                at = others.setdefault(float(r["bpw"]), {})
                if v not in at or r["l1"] < at[v]["l1"]:  # a baseline run twice: its better row (the stricter bar)
                    at[v] = {"l1": r["l1"], "bpw_backbone": r.get("bpw_backbone"), "file_size": r.get("file_size"),
                             "table": name}
    rows = []
    for bpw in sorted(drows, reverse=True):
        d, o = drows[bpw], others.get(bpw, {})
        base = {k: v for k, v in o.items() if k in BASELINES}
        best = min(base.items(), key=lambda kv: kv[1]["l1"]) if base else None
        ctrl = min((kv for kv in o.items() if kv[0] in CONTROLS), key=lambda kv: kv[1]["l1"], default=None)
        rows.append({
            "bpw": bpw, "default": {"variant": d.get("variant"), "l1": d["l1"], "nmse": d.get("nmse"),
                                    "bpw_backbone": d.get("bpw_backbone"), "file_size": d.get("file_size"),
                                    "quant_seconds": d.get("quant_seconds")},
            "baselines": base, "controls": {k: v for k, v in o.items() if k in CONTROLS},
            "missing_baselines": [b for b in BASELINES if b not in base],
            "best_baseline": best[0] if best else None, "best_baseline_l1": best[1]["l1"] if best else None,
            "beats_every_baseline": bool(base) and all(d["l1"] < v["l1"] for v in base.values()),
            "best_control_l1": ctrl[1]["l1"] if ctrl else None,
            "beats_controls": None if ctrl is None else d["l1"] < ctrl[1]["l1"],
        })
    judged = [r for r in rows if r["bpw"] <= TARGET_BPW]
    return {"meta": {k: tables[Path(dpath).name]["meta"].get(k) for k in ("model",) + SAME_CALIBRATION},
            "tables": sorted(tables), "default_variant": pattern, "rows": rows,
            "target_met": bool(judged) and all(r["beats_every_baseline"] for r in judged)}


def summarize_pipeline(path: Path) -> dict:
    d = json.loads(Path(path).read_text())
    wall = float(d["pipeline_wall_s"])
    return {"file": Path(path).name, "gpu": d.get("gpu"), "preset": d.get("preset"), "params": d.get("params"),
            "frames": d.get("frames"), "stage2": d.get("stage2"), "noise": d.get("noise"),
            "output_rows": d.get("output_rows"), "wall_min": wall / 60, "stage_s": d.get("stage_s"),
            "note": d.get("note"), "within_target": d.get("preset") == "pi05" and wall / 60 <= TARGET_PIPELINE_MIN}


def markdown(summary: dict) -> str:
    out = []
    for fam, s in summary["families"].items():
        out.append(f"### {fam} ({s['meta'].get('model')}): target {'met' if s['target_met'] else 'NOT met'}")
        out.append("| bpw | default L1 | best baseline | its L1 | ratio | best control L1 |")
        out.append("|---|---|---|---|---|---|")
        for r in s["rows"]:
            bl, dl, cl = r["best_baseline_l1"], r["default"]["l1"], r["best_control_l1"]
            fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
            ratio = "-" if bl is None else f"{dl / bl:.2f}"
            out.append(f"| {r['bpw']:g} | {dl:.4f} | {r['best_baseline'] or '-'} | {fmt(bl)} | {ratio} | {fmt(cl)} |")
    for p in summary["pipelines"]:
        out.append(f"- real-size pipeline {p['file']}: {p['wall_min']:.1f} min on {p['gpu']} "
                   f"(noise {p['noise']}, rows {p['output_rows']}): {'within' if p['within_target'] else 'over'} "
                   f"{TARGET_PIPELINE_MIN:g} min")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", action="append", default=[], help="family name of the next --default / --baselines")
    ap.add_argument("--default", action="append", default=[], help="TABLE:VARIANT_REGEX of the default's rows")
    ap.add_argument("--baselines", action="append", default=[], help="comma-separated baseline tables")
    ap.add_argument("--pipeline", action="append", default=None, help="actquant_pipeline.py result(s)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder relative table names are read from")
    ap.add_argument("--out", type=Path, default=RESULTS / "quant_summary.json")
    args = ap.parse_args(argv)
    if not (len(args.family) == len(args.default) == len(args.baselines)):
        raise SystemExit("quant_summary: give --family, --default and --baselines once per family")
    specs = ({f: (d, b.split(",")) for f, d, b in zip(args.family, args.default, args.baselines)}
             if args.family else RECORDED)
    pipelines = RECORDED_PIPELINES if args.pipeline is None else args.pipeline
    res = lambda p: Path(p) if Path(p).is_absolute() else args.results / p  # noqa: E731
    families = {}
    for fam, (dflt, bases) in specs.items():
        table, _, pattern = dflt.partition(":")
        families[fam] = summarize_family(fam, (res(table), pattern), [res(b) for b in bases if b])
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "targets": {"bpw_at_most": TARGET_BPW, "pipeline_min": TARGET_PIPELINE_MIN},
               "families": families, "pipelines": [summarize_pipeline(res(p)) for p in pipelines]}
    summary["all_targets_met"] = (all(f["target_met"] for f in families.values())
                                  and any(p["within_target"] for p in summary["pipelines"]))
    print(markdown(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
