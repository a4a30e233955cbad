"""The ``actquant`` command line (console entry point ``actquant = actquant_core.cli:main``).

Subcommands here::

    actquant quantize --checkpoint DIR|FILE|random:PRESET --calib DATASET --bpw 3.0 --method actquant -o policy.gguf
                      [--plan plan.yaml] [--scope backbone|all] [--device cpu|cuda] [--refine] ...
    actquant export CHECKPOINT -o policy.gguf [--type f32|f16|q8_0|q4_k|... | --plan plan.yaml]
    actquant eval-actions --gguf policy.gguf --reference CHECKPOINT|ref.gguf --calib DATASET [--frames 64]

Subcommand registry: other modules add their own subcommands (``eval-sim``, ``replay``,
``eval-libero``, ...) without editing this file.  A module listed in :data:`COMMAND_MODULES` (imported
when present) or registered under the entry-point group :data:`ENTRY_POINT_GROUP` exposes
``register(subparsers) -> None``, which adds its parser and sets ``func=<callable(args) -> int>`` with
``parser.set_defaults``.  Commands defined here use the same mechanism (:func:`register`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from actquant_core import constants as C
from actquant_core.quant.types import DEFAULT_OUTPUT_ROWS, DEFAULT_SCORE_FLOOR, STAGE2_MODES, product_defaults

log = logging.getLogger("actquant.cli")

__all__ = ["COMMAND_MODULES", "ENTRY_POINT_GROUP", "register", "build_parser", "main"]

#: Modules that may provide subcommands (skipped when not importable); each has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "actquant_core.sim.cli",
    "actquant_core.sim.evaluate",
    "actquant_core.libero.evaluate",
)
#: importlib.metadata entry-point group of third-party subcommands (value: ``module:register``).
ENTRY_POINT_GROUP = C.CLI_ENTRY_POINT_GROUP

Registrar = Callable[[argparse._SubParsersAction], None]
_LOCAL: list[Registrar] = []


def register(fn: Registrar) -> Registrar:
    """Decorator: ``fn(subparsers)`` adds a subcommand of this module."""
    _LOCAL.append(fn)
    return fn


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _add_calib_args(p: argparse.ArgumentParser, split_default: str) -> None:
    p.add_argument("--calib", required=True,
                   help="calibration source: LeRobot-style dataset root, demos output folder, rosbag2 folder or "
                        "folder of rosbag2 folders")
    p.add_argument("--calib-frames", type=int, default=256, help="frames sampled (seeded reservoir); default 256")
    p.add_argument("--split", choices=("calib", "holdout", "all"), default=split_default,
                   help=f"episodes used: calibration split, held-out split or all (default {split_default})")
    p.add_argument("--holdout-every", type=int, default=5,
                   help="every k-th episode (ordinal k-1, 2k-1, ...) is held out (default 5)")
    p.add_argument("--seed", type=int, default=0, help="frame sampling / noise seed (default 0)")
    p.add_argument("--bag-topics", type=Path, default=None,
                   help="YAML topic mapping for recorded rosbags: {cameras: {topic: slot}, joint_states, instruction, "
                        "action_chunk, joint_names: [...], action_source: chunk|future_state, default_instruction}; "
                        "default: the simulator's bag readers")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="SentencePiece model for lerobot/openpi checkpoints (the PaliGemma tokenizer)")


def _bag_mapping(path: Path | None):
    if path is None:
        return None
    import yaml

    from actquant_core.data.rosbag_io import TopicMap
    from actquant_core.quant.calibrate import BagMapping

    d = yaml.safe_load(path.read_text()) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: the bag topic mapping must be a YAML mapping")
    known = {"cameras", "joint_states", "instruction", "action_chunk", "joint_names", "action_source",
             "default_instruction"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{path}: unknown bag mapping keys {unknown}; known {sorted(known)}")
    tm_kwargs = {k: d[k] for k in ("cameras", "joint_states", "instruction", "action_chunk") if k in d}
    return BagMapping(topic_map=TopicMap(**tm_kwargs), joint_names=tuple(d.get("joint_names", ())),
                      action_source=d.get("action_source", "chunk"), instruction=d.get("default_instruction", ""))


def _type_name(s: str) -> str:
    return s.upper()


# ----------------------------------------------------------------------------------------------------
# quantize
# ----------------------------------------------------------------------------------------------------


@register
def _register_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="calibrate, allocate and quantize a policy to a mixed-type GGUF",
                       description="Writes OUT.gguf, OUT.plan.yaml (re-appliable with --plan) and OUT.report.md/.png.")
    p.add_argument("--checkpoint", required=True,
                   help="trained folder (pi05_config.json, model.safetensors, ...), lerobot/openpi checkpoint, or "
                        "random:PRESET[:SEED] (random weights)")
    _add_calib_args(p, "calib")
    p.add_argument("--bpw", type=float, default=3.0, help="bits per weight over the allocated tensors (default 3.0)")
    p.add_argument("--method", choices=C.QUANT_METHODS, default="actquant", help="quantization method (default actquant)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output GGUF")
    p.add_argument("--plan", type=Path, default=None, help="re-apply this plan YAML instead of allocating")
    p.add_argument("--scope", choices=C.QUANT_SCOPES, default="backbone",
                   help="allocate the LM backbone only (paper) or every linear layer (default backbone)")
    p.add_argument("--device", default=None, help="torch device for calibration: cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--menu", default=None, help="comma-separated GGML types the allocator may use (default: the paper's menu, without "
                        "IQ1_S / IQ1_M for method actquant)")
    p.add_argument("--vision-type", type=_type_name, default=None,
                   help="fixed vision-tower type for --scope backbone (default: largest K-quant within the budget)")
    p.add_argument("--solver", choices=("best", "greedy", "exact"), default="best", help="allocator solver (default best)")
    p.add_argument("--refine", action="store_true", help="refine Q4_K/Q2_K block scales against the Fisher-weighted error")
    p.add_argument("--inactive", choices=("allocate", "cheapest"), default="allocate",
                   help="tensors no action depends on (pi05: last LM layer's q/o/MLP): allocate like the others "
                        "(paper) or give them the cheapest type and spend the bits elsewhere (actquant only)")
    p.add_argument("--score", choices=("hsic", "hsic_out_y"), default="hsic",
                   help="allocation score: the HSIC sensitivity max(F(out) - F(in), 0) (paper) or HSIC(out, Y)")
    p.add_argument("--score-floor", type=float, default=DEFAULT_SCORE_FLOOR,
                   help="raise scores to at least this fraction of their positive mean (default 0.5; 0 = the "
                        "paper's clipping, which sends every tensor whose sensitivity clips to zero to the "
                        "cheapest type: on the small OFT that halved 3 bpw closed-loop success, "
                        "bench/results/sim_table_oft*.json)")
    p.add_argument("--noise", choices=("bits", "measured", "output"), default=None,
                   help="allocator noise model (actquant): 2^(-2b) per type (paper), each type's measured relative "
                        "Fisher-weighted error on each tensor (one quantization per tensor and menu type), or "
                        "(with --stage2 best) each type's relative layer-output error after stage 2's best-of "
                        "quantization at that type (stage 2's search per tensor and menu type, on sampled rows: "
                        "--output-noise-rows). Default: output for actquant with stage 2 best, else bits")
    p.add_argument("--output-noise-candidates", choices=("all", "fast"), default="all",
                   help="--noise output: price each type with stage 2's every candidate (all) or without GPTQ "
                        "(fast; stage 2 still weighs it at the chosen types)")
    p.add_argument("--output-noise-rows", type=int, default=DEFAULT_OUTPUT_ROWS,
                   help="--noise output: price each tensor with more rows than this on a seeded sample of that "
                        "many rows, shared by every type (the error is a sum over rows and each row is quantized "
                        f"on its own: a ratio estimate at N/rows of the cost); 0 = every row (default {DEFAULT_OUTPUT_ROWS})")
    p.add_argument("--stage2", choices=STAGE2_MODES, default=None,
                   help="actquant without --compensate: quantize the allocated types with the Fisher as GGML "
                        "importance (paper), with GGML's plain quantizer where the type allows it, or per tensor "
                        "the best of Fisher / plain / activation importance / GPTQ by the layer-output error on "
                        "the calibration inputs (best; the default for actquant without --compensate: 2-5x lower "
                        "action error than fisher on both small presets, bench/results/quant_table_*_dart.json; "
                        "10 min at real size on one H100)")
    p.add_argument("--compensate", choices=("none", "gptq"), default="none",
                   help="quantizer of actquant's allocated tensors: GGML's with Fisher importance (paper) or GPTQ error "
                        "compensation at each tensor's allocated type")
    p.add_argument("--batch-size", type=int, default=8, help="calibration forward batch (default 8)")
    p.add_argument("--fisher-batches", type=int, default=None, help="cap on Fisher batches of 8 frames (default: all frames)")
    p.add_argument("--targets", choices=("data", "policy"), default="data",
                   help="action targets of HSIC's Y and the Fisher loss: recorded chunks (paper) or the full-precision "
                        "policy's own sampled chunks (self-distillation)")
    p.add_argument("--pooling", choices=("valid", "all"), default="valid", help="token pooling (default: valid tokens)")
    p.add_argument("--hsic-estimator", choices=("biased", "cka", "nocco"), default="biased", help="HSIC estimator")
    p.add_argument("--hsic-project-dim", type=int, default=None,
                   help="random-project pooled activations wider than this (memory bound for large n)")
    p.add_argument("--gptq-damp", type=float, default=0.01,
                   help="method gptq: damping as a fraction of the Hessian's mean diagonal (default 0.01)")
    p.add_argument("--gptq-max-cols", type=int, default=8192,
                   help="method gptq: wider tensors (input features) get no XᵀX (cols² float64 each) and fall back "
                        "to imatrix quantization (default 8192)")
    p.add_argument("--gptq-intra-group", type=int, default=16,
                   help="GPTQ (method gptq, stage 2 best): columns per step of the recursion inside a 256-block "
                        "(0 = block-wise only; cost 2 + 256/N GGML quantizations per block; default 16)")
    p.add_argument("--gptq-intra-max-cols", type=int, default=1024,
                   help="GPTQ: the recursion inside blocks only for tensors of at most this many columns (0 = all; "
                        "default 1024: narrow tensors, whose rows have few blocks to carry the error forward)")
    p.add_argument("--threads", type=int, default=None, help="GGML quantization threads")
    p.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.gptq import GptqConfig
    from actquant_core.quant.hsic import HsicConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy

    calib = CalibConfig(batch_size=args.batch_size, fisher_batches=args.fisher_batches, pooling=args.pooling,
                        seed=args.seed, device=args.device, progress=not args.no_progress, targets=args.targets,
                        hsic=HsicConfig(estimator=args.hsic_estimator, project_dim=args.hsic_project_dim,
                                        device=args.device))
    product = product_defaults(args.method, args.compensate, stage2=args.stage2, noise=args.noise,
                               menu=[t.strip().upper() for t in args.menu.split(",")] if args.menu else None,
                               output_rows=args.output_noise_rows)
    cfg = PipelineConfig(method=args.method, bpw=args.bpw, scope=args.scope, vision_type=args.vision_type,
                         solver=args.solver, refine=args.refine, inactive=args.inactive, score=args.score,
                         score_floor=args.score_floor, compensate=args.compensate, **product,
                         output_gptq=args.output_noise_candidates == "all",
                         calib_frames=args.calib_frames,
                         split=args.split, holdout_every=args.holdout_every, seed=args.seed, calib=calib,
                         n_threads=args.threads, report=not args.no_report,
                         gptq=GptqConfig(percdamp=args.gptq_damp, max_cols=args.gptq_max_cols,
                                         intra_group=args.gptq_intra_group,
                                         intra_max_cols=args.gptq_intra_max_cols or None,
                                         device=args.device if str(args.device or "").startswith("cuda") else "cpu"))
    res = quantize_policy(args.checkpoint, args.calib, out_path=args.output, plan=args.plan, config=cfg,
                          bag_mapping=_bag_mapping(args.bag_topics), tokenizer=args.tokenizer)
    print(json.dumps(res.summary(), indent=1))
    return 0


# ----------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------


@register
def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to GGUF with one type (or a plan's types, no calibration)")
    p.add_argument("checkpoint", help="trained folder, lerobot/openpi checkpoint or random:PRESET[:SEED]")
    p.add_argument("-o", "--output", type=Path, required=True, help="output GGUF")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--type", type=_type_name, default="F32",
                   help="GGML type of every 2-D weight where rows fit (fallback Q8_0/F16); norms F32 (default f32)")
    g.add_argument("--plan", type=Path, default=None,
                   help="plan YAML: its types without importance (use `quantize --plan` to recompute importance)")
    p.add_argument("--tokenizer", type=Path, default=None, help="SentencePiece model for lerobot/openpi checkpoints")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from actquant_core.export import export_tensors
    from actquant_core.quant.pipeline import export_reference, load_policy
    from actquant_core.quant.plan import QuantPlan

    adapter = load_policy(args.checkpoint, tokenizer=args.tokenizer)
    if args.plan is None:
        export_reference(adapter, args.output, args.type)
    else:
        plan = QuantPlan.load(args.plan)
        plan.check_model({t.name: t.shape for t in adapter.tensor_table()})
        if any(e.importance != "none" for e in plan.entries):
            log.warning("export --plan ignores the plan's importance; `actquant quantize --plan` recomputes it")
        types = plan.type_map()
        meta = adapter.gguf_metadata()
        export_tensors(args.output, adapter.family, meta["config"], adapter.canonical_weights(),
                       lambda n, s: types[n], norm_stats=meta.get("norm_stats"),
                       tokenizer_model=meta.get("tokenizer_model"), plan_summary=plan.summary(),
                       source=str(args.checkpoint))
    print(json.dumps({"gguf": str(args.output), "bytes": args.output.stat().st_size}))
    return 0


# ----------------------------------------------------------------------------------------------------
# eval-actions
# ----------------------------------------------------------------------------------------------------


@register
def _register_eval_actions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-actions", help="action error of a GGUF vs the full-precision policy (native runtime)",
                       description="Any policy family with a runtime (pi05: identical flow-matching noise for both "
                                   "files; OpenVLA-OFT: deterministic head); the GGUFs and the reference must be of "
                                   "the same family and config.")
    p.add_argument("--gguf", type=Path, required=True, nargs="+", help="quantized GGUF(s)")
    p.add_argument("--reference", required=True,
                   help="full-precision policy: a GGUF, or a checkpoint exported to F32 on the fly")
    _add_calib_args(p, "holdout")
    p.add_argument("--frames", type=int, default=64, help="evaluation frames (default 64)")
    p.add_argument("--threads", type=int, default=None, help="runtime CPU threads")
    p.add_argument("--runtime-device", default="cpu", help="native runtime device: cpu | cuda (default cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.set_defaults(func=_cmd_eval_actions)


def _cmd_eval_actions(args: argparse.Namespace) -> int:
    from actquant_core.quant.pipeline import (evaluate_actions, export_reference, frames_for_eval, gguf_policy,
                                              load_policy, policy_horizon)

    with tempfile.TemporaryDirectory(prefix="actquant-ref-") as tmp:
        ref = Path(args.reference) if not str(args.reference).startswith(C.QUANT_RANDOM_CHECKPOINT_PREFIX) else None
        if ref is not None and ref.is_file() and ref.suffix == ".gguf":
            ref_gguf = ref
        else:
            ref_gguf = export_reference(load_policy(args.reference, tokenizer=args.tokenizer), Path(tmp) / "reference-f32.gguf")
        family, cfg = gguf_policy(ref_gguf)  # pi05 or openvla_oft: the family's runtime runs both files
        frames = frames_for_eval(args.calib, policy_horizon(family, cfg), args.frames, seed=args.seed, split=args.split,
                                 holdout_every=args.holdout_every, bag_mapping=_bag_mapping(args.bag_topics))
        if not frames:
            raise ValueError(f"no evaluation frame in {args.calib} (split {args.split}); try --split all")
        out = {}
        for g in args.gguf:
            err = evaluate_actions(g, ref_gguf, frames, seed=args.seed, n_threads=args.threads, device=args.runtime_device)
            out[str(g)] = {**err.as_dict(), "bytes": g.stat().st_size}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


# ----------------------------------------------------------------------------------------------------
# parser and entry point
# ----------------------------------------------------------------------------------------------------


def _external_registrars() -> list[Registrar]:
    regs: list[Registrar] = []
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                log.debug("subcommand module %s not present", name)
                continue
            raise
        fn = getattr(mod, "register", None)
        if fn is None:
            raise AttributeError(f"subcommand module {name} has no register(subparsers) function")
        regs.append(fn)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            regs.append(ep.load())
    except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not hide our commands
        log.warning("could not load %s entry points: %s", ENTRY_POINT_GROUP, e)
    return regs


def build_parser() -> argparse.ArgumentParser:
    """The full parser: local subcommands, then every registered module's."""
    ap = argparse.ArgumentParser(prog="actquant", description="ActQuant: action-guided GGUF quantization of VLA policies")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for fn in [*_LOCAL, *_external_registrars()]:
        fn(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        log.debug("failed", exc_info=True)
        print(f"actquant {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
