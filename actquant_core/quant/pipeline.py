"""The ActQuant pipeline end to end: policy + calibration episodes -> plan -> mixed-type GGUF + plan + report.

Reference: Akbari et al., "ActQuant: Sub-4-bit Action-Guided Quantization for Vision-Language-Action
Models", arXiv 2605.24011.  Stages (every algorithm lives in its own module; this file only wires them):

1. frames: :func:`.calibrate.sample_frames` over the calibration source (seeded, calibration split);
2. stage-1 statistics (:func:`.calibrate.calibrate`): HSIC scores of the allocated linear layers,
   activation importance (imatrix-style) where a method needs it;
3. the plan (:func:`build_plan`): allocated tensors get their type from the method's solver under the
   ``bpw`` budget; every other tensor follows the fixed table below;
4. stage-2 Fisher (:func:`.calibrate.calibrate_fisher`) of the tensors the plan quantizes with Fisher
   importance, then GGML quantization row by row with that per-element importance
   (:func:`.plan.quantize_with_plan` over ``native.quantize``), optional refinement of Q4_K / Q2_K blocks
   (:func:`.refine.refine_tensor`, never worse on the Fisher-weighted error);
5. export: one GGUF (config, norm stats, tokenizer, plan summary), the plan YAML (re-appliable with
   ``plan=``) and the report (Markdown + PNG, :mod:`.report`).

Fixed table (``scope="backbone"``, the paper): LM linear layers allocated; vision tower (SigLIP linear
layers and patch embedding) one fixed K-quant (``vision_type``; default: the largest K-quant whose bpw
does not exceed the budget, at least Q2_K), with the 32-block / F16 fallback for rows that do not fit 256;
token embedding Q8_0; norms, biases and position embeddings F32; projector, action expert, action / time
heads F16.  ``scope="all"`` ("beyond the paper") hands the vision, projector, expert and head linear
layers to the allocator as well (same budget over all of them).

Methods: ``actquant`` (HSIC allocation + Fisher importance), ``rtn`` (uniform K-quant, no importance),
``imatrix`` (uniform type, activation importance), ``generic`` (importance-weighted error allocator,
Lagrangian, no action signal), ``hsic-only`` (HSIC allocation, activation importance), ``fisher-only``
(uniform type, Fisher importance), ``gptq`` (uniform type, GPTQ's Hessian error compensation on GGML's
grids, :mod:`.gptq`; tensors wider than ``gptq.max_cols`` fall back to imatrix, logged).  Uniform methods
use the largest menu type whose bpw fits the budget.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from actquant_core import constants as C

from .adapters import SCOPES, PolicyAdapter, TensorInfo
from .allocate import AllocConfig, TensorSpec, allocate
from .calibrate import BagMapping, CalibConfig, CalibFrame, CalibrationResult, calibrate, calibrate_fisher, load_episodes, sample_frames
from .gptq import GptqConfig, gptq_tensors
from .importance import (plan_error_driven, plan_fisher_only, plan_gptq, plan_hsic_only, plan_imatrix, plan_uniform,
                         weighted_error_fn, with_gptq)
from .plan import PlanEntry, QuantPlan, quantize_with_plan
from .refine import SUPPORTED as REFINE_TYPES
from .refine import RefineConfig, refine_tensor
from .types import (DEFAULT_MENU, DEFAULT_SCORE_FLOOR, FALLBACK_MENU, HIGH_PRECISION_TYPES, STAGE2_MODES, default_menu,
                    default_stage2, nominal_bpw, row_eligible, sort_menu, type_bpw)

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "K_QUANTS",
    "PipelineConfig",
    "QuantizeResult",
    "load_policy",
    "uniform_type_for",
    "build_plan",
    "measured_noise_fn",
    "quantize_policy",
    "write_quantized_gguf",
    "apply_plan",
    "needed_statistics",
    "export_reference",
    "evaluate_actions",
    "runtime_actions",
    "gguf_policy",
    "policy_horizon",
    "compare_actions",
    "ActionError",
]

METHODS = C.QUANT_METHODS
NOISE_MODES = ("bits", "measured", "output")
#: methods whose allocation needs HSIC scores / activation importance / Fisher importance
_NEEDS_HSIC = ("actquant", "hsic-only")
_NEEDS_ACTIVATION = ("imatrix", "generic", "hsic-only", "gptq")
_NEEDS_FISHER = ("actquant", "fisher-only")
#: uniform K-quants of the RTN baseline (GGML quantizes them without importance)
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
#: prefix of a random-weights "checkpoint": ``random:<preset>[:seed]``
RANDOM_PREFIX = C.QUANT_RANDOM_CHECKPOINT_PREFIX


# ----------------------------------------------------------------------------------------------------
# configuration and results
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :func:`quantize_policy`.

    Attributes:
        method: one of :data:`METHODS`.
        bpw: average bits per weight over the allocated tensors (the LM linear layers for
            ``scope="backbone"``).
        scope: "backbone" (paper) or "all" (vision, projector, expert and heads allocated too).
        menu: candidate GGML types of the allocator / uniform baselines.
        vision_type: fixed vision-tower type for scope "backbone" (None: from the budget, see module doc).
        embedding_type: token embedding type.
        keep_type: projector / expert / heads type for scope "backbone".
        solver: allocator solver ("best", "greedy", "exact").
        refine: refine Q4_K / Q2_K blocks against the Fisher-weighted error (Fisher-importance tensors).
        inactive: "allocate" (paper: every allocated tensor competes for bits) or "cheapest" (method
            actquant only: tensors no action depends on -- ``adapter.inactive_tensors()`` -- get the
            cheapest eligible menu type and their bits go to the rest, same total budget).
        score: allocation score of HSIC methods: "hsic" (what ``calib.hsic.score`` computed; paper:
            the sensitivity ``max(F(out) - F(in), 0)``) or "hsic_out_y" (``HSIC(out, Y)``, never clipped),
            both from the same HSIC terms.
        score_floor: scores are raised to at least ``score_floor * mean(positive scores)`` (0 = paper):
            a tensor whose clipped sensitivity is 0 otherwise lands on the cheapest type whatever its
            quantization error.
        noise: noise model of the HSIC allocator (method actquant only): "bits" (paper,
            ``2^(-2 b)``) or "measured": each candidate type's relative Fisher-weighted quantization error
            on that tensor, ``sum F (W - Q_t(W))^2 / sum F W^2``, measured by quantizing it with every menu
            type (GGML codecs, Fisher importance; needs the Fisher, costs one quantization per tensor and
            menu type).  "output" (beyond the paper, with ``stage2="best"``): each candidate type's relative
            layer-output error after stage 2's own best-of quantization at that type,
            ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` on the calibration Gram (GPTQ, Fisher, activation and plain bytes
            all tried, see :func:`output_noise_fn`), so the allocator prices each type at the error the
            written file will have; the chosen bytes are kept and reused by stage 2.  Costs stage 2's
            search per tensor and menu type (cached across budgets).
        output_gptq: noise "output" prices each type with the GPTQ candidate too (True) or only with the
            Fisher / plain / activation ones (False: much cheaper at real size; stage 2 "best" still weighs
            GPTQ at the chosen types).
        output_rows: noise "output" prices each tensor with more rows than this on that many of its rows
            (seeded sample shared by every type; a ratio estimator of the whole tensor's error, see
            :class:`OutputNoise`); None prices every row.
        output_intra: noise "output" prices GPTQ with its recursion inside type blocks (``gptq.intra_group``,
            where ``gptq.intra_max_cols`` allows it) as stage 2 runs it (True) or block-wise only (False:
            several times cheaper where the recursion runs; stage 2 still recurses at the chosen types).
        compensate: quantization of the allocated tensors of method actquant: "none" (GGML's quantizer with
            the Fisher as per-row importance, the paper's stage 2) or "gptq" (beyond the paper: GPTQ's
            Hessian error compensation on GGML's grids at each tensor's allocated type, activation importance
            as GGML's quant weights; tensors GPTQ cannot take fall back as in method gptq).
        stage2: quantizer of the allocated tensors of method actquant without compensation: "fisher" (the paper's
            stage 2: GGML's quantizer with the per-element Fisher as importance) or "plain" (GGML's quantizer
            without importance, as RTN, for every type that does not require one; IQ1/IQ2_XXS/IQ2_XS keep the
            Fisher). Same types, same bytes per tensor; on pi05-small-sim plain is better at 3.5 / 3 bpw and
            worse at 2.5 / 2.25 (bench/results/quant_table_stage2.json), so "fisher" stays the default.
            "best" (beyond the paper): per tensor, the Fisher-importance bytes, the plain quantizer's (where the
            type allows it), the activation-importance (imatrix) bytes and GPTQ's at the allocated type, keeping
            the one with the smallest layer-output error on the calibration inputs, ``tr(ΔW G ΔWᵀ)`` with the
            Gram ``G = XᵀX`` (collected for every quantized linear tensor, fixed-type ones such as the vision
            tower included). The plan records each choice, so ``--plan`` re-applies it.
        refine_config: refinement settings.
        gptq: :class:`~.gptq.GptqConfig` of method ``gptq`` (damping, Gram column limit, solve device).
        calib_frames: frames sampled from the calibration source (seeded reservoir).
        split: episodes used: "calib" (not held out), "holdout" or "all".
        holdout_every: episode split period (see :func:`.calibrate.sample_frames`).
        seed: frame-sampling seed.
        calib: :class:`~.calibrate.CalibConfig` (batching, pooling, device, HSIC settings).
        n_threads: GGML quantization threads (None: all CPUs of the process).
        report: write the Markdown + PNG report.
    """

    method: str = "actquant"
    bpw: float = 3.0
    scope: str = "backbone"
    menu: tuple[str, ...] = DEFAULT_MENU
    vision_type: str | None = None
    embedding_type: str = "Q8_0"
    keep_type: str = "F16"
    solver: str = "best"
    refine: bool = False
    inactive: str = "allocate"
    score: str = "hsic"
    score_floor: float = 0.0
    noise: str = "bits"
    compensate: str = "none"
    stage2: str = "fisher"
    output_gptq: bool = True
    output_rows: int | None = None
    output_intra: bool = True
    refine_config: RefineConfig = field(default_factory=RefineConfig)
    gptq: GptqConfig = field(default_factory=GptqConfig)
    calib_frames: int = 256
    split: str = "calib"
    holdout_every: int = 5
    seed: int = 0
    calib: CalibConfig = field(default_factory=CalibConfig)
    n_threads: int | None = None
    report: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PipelineConfig.method={self.method!r}; expected one of {METHODS}")
        if not (isinstance(self.bpw, (int, float)) and math.isfinite(self.bpw) and self.bpw > 0):
            raise ValueError(f"PipelineConfig.bpw must be a finite number > 0, got {self.bpw!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"PipelineConfig.scope={self.scope!r}; expected one of {SCOPES}")
        object.__setattr__(self, "menu", tuple(self.menu))
        sort_menu(self.menu)
        if self.vision_type is not None:
            sort_menu((self.vision_type,))
        sort_menu((self.embedding_type,))
        sort_menu((self.keep_type,))
        if self.score not in ("hsic", "hsic_out_y"):
            raise ValueError(f"PipelineConfig.score={self.score!r}; expected 'hsic' or 'hsic_out_y'")
        if not (math.isfinite(self.score_floor) and self.score_floor >= 0):
            raise ValueError(f"PipelineConfig.score_floor must be finite and >= 0, got {self.score_floor}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"PipelineConfig.noise={self.noise!r}; expected one of {NOISE_MODES}")
        if self.output_rows is not None and not (isinstance(self.output_rows, int) and self.output_rows >= 1):
            raise ValueError(f"PipelineConfig.output_rows must be an int >= 1 or None, got {self.output_rows!r}")
        if self.noise == "output" and self.stage2 != "best":
            raise ValueError("PipelineConfig.noise='output' measures stage 2 'best' per type: it needs stage2='best'")
        if self.compensate not in ("none", "gptq"):
            raise ValueError(f"PipelineConfig.compensate={self.compensate!r}; expected 'none' or 'gptq'")
        if self.stage2 not in STAGE2_MODES:
            raise ValueError(f"PipelineConfig.stage2={self.stage2!r}; expected one of {STAGE2_MODES}")
        if self.stage2 == "plain" and (self.method != "actquant" or self.compensate != "none"):
            raise ValueError("PipelineConfig.stage2='plain' is a setting of method 'actquant' without compensation")
        if self.stage2 == "best" and (self.method == "gptq" or self.compensate != "none"):
            raise ValueError("PipelineConfig.stage2='best' already weighs GPTQ per tensor: not with method 'gptq' "
                             "or compensate='gptq'")
        if self.compensate != "none" and self.method != "actquant":
            raise ValueError(f"PipelineConfig.compensate={self.compensate!r} is a setting of method 'actquant', not {self.method!r}")
        if self.noise != "bits" and self.method != "actquant":
            raise ValueError(f"PipelineConfig.noise={self.noise!r} is a setting of method 'actquant', not {self.method!r}")
        if self.inactive not in ("allocate", "cheapest"):
            raise ValueError(f"PipelineConfig.inactive={self.inactive!r}; expected 'allocate' or 'cheapest'")
        if self.calib_frames < 1:
            raise ValueError(f"PipelineConfig.calib_frames must be >= 1, got {self.calib_frames}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"PipelineConfig.n_threads must be >= 1 or None, got {self.n_threads}")


@dataclass
class QuantizeResult:
    """What :func:`quantize_policy` wrote and measured.

    Attributes:
        plan: the applied plan.
        gguf_path, plan_path, report_path: files written (report None when disabled).
        file_size: GGUF bytes.
        seconds: wall time per stage ("frames", "calibrate", "plan", "fisher", "quantize", "refine",
            "write", "total").
        calibration: the calibration statistics (None when the method needed none).
        refine: tensor name -> (weighted error before, after) of refined tensors.
        gptq: tensor name -> "gptq" or the imatrix fallback's reason (method ``gptq`` only).
    """

    plan: QuantPlan
    gguf_path: Path
    plan_path: Path
    report_path: Path | None
    file_size: int
    seconds: dict[str, float]
    calibration: CalibrationResult | None
    refine: dict[str, tuple[float, float]] = field(default_factory=dict)
    gptq: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (bench / CLI output)."""
        return {
            "method": self.plan.method, "budget_bpw": self.plan.budget_bpw,
            "bpw_backbone": self.plan.bpw_backbone, "bpw_whole": self.plan.bpw_whole,
            "file_size": self.file_size, "gguf": str(self.gguf_path), "plan": str(self.plan_path),
            "report": None if self.report_path is None else str(self.report_path),
            "seconds": dict(self.seconds), "objectives": dict(self.plan.objectives),
            **({"gptq_fallbacks": {n: s for n, s in self.gptq.items() if s != "gptq"}} if self.gptq else {}),
        }


# ----------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------


def load_policy(checkpoint: Any, *, tokenizer: str | os.PathLike[str] | None = None,
                action_dims: int | None = None) -> PolicyAdapter:
    """A :class:`PolicyAdapter` from a model / adapter / path.

    ``checkpoint`` may be an adapter, a ``Pi05Model`` (random-weight tests: our small tokenizer, no
    norm stats), a trained folder (``train.pi05.load_trained``: ``pi05_config.json`` + ...), a
    lerobot/openpi checkpoint (``load_pi05_checkpoint``; ``tokenizer`` = the PaliGemma SentencePiece
    model, else our small one with a warning) or ``"random:<preset>[:seed]"``.
    """
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer

    from .adapters import Pi05Adapter

    if isinstance(checkpoint, PolicyAdapter):
        return checkpoint
    tok = SentencePieceTokenizer.from_file(tokenizer) if tokenizer is not None else None
    oft = _load_oft_policy(checkpoint, tok, action_dims)
    if oft is not None:
        return oft
    if hasattr(checkpoint, "config") and hasattr(checkpoint, "flow_matching_loss"):
        return Pi05Adapter(checkpoint, None, tok or SentencePieceTokenizer.small(), action_dims)
    if isinstance(checkpoint, str) and checkpoint.startswith(RANDOM_PREFIX):
        from actquant_core.policies.pi05.config import get_preset
        from actquant_core.policies.pi05.model import Pi05Model

        parts = checkpoint[len(RANDOM_PREFIX):].split(":")
        seed = int(parts[1]) if len(parts) > 1 else 0
        model = Pi05Model(get_preset(parts[0])).init_random(seed).eval()
        return Pi05Adapter(model, None, tok or SentencePieceTokenizer.small(), action_dims)
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir() and (path / "pi05_config.json").exists():
        from actquant_core.train.pi05 import load_trained

        _, model, ns, trained_tok = load_trained(path)
        return Pi05Adapter(model, ns, tok or trained_tok, action_dims)
    from actquant_core.policies.pi05.loader import load_pi05_checkpoint

    _, model, ns = load_pi05_checkpoint(path)
    if tok is None:
        log.warning("no --tokenizer given for %s: prompts use the small built-in SentencePiece model", path)
        tok = SentencePieceTokenizer.small()
    return Pi05Adapter(model, ns, tok, action_dims)


def _load_oft_policy(checkpoint: Any, tok: Any, action_dims: int | None) -> PolicyAdapter | None:
    """An :class:`~.adapters.OftAdapter` when ``checkpoint`` is an ``OftModel``, ``"random:<openvla-oft preset>[:seed]"``,
    a trained small-OFT folder (``train.openvla_oft``: ``oft_config.json`` + shards) or an OpenVLA-OFT
    checkpoint folder (``action_head--*_checkpoint.pt``); else None."""
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.openvla_oft.config import PRESET_NAMES as OFT_PRESETS

    from actquant_core.policies.openvla_oft.model import OftModel

    from .adapters import OftAdapter

    model, ns = None, None
    if isinstance(checkpoint, OftModel):
        model = checkpoint
    elif isinstance(checkpoint, str) and checkpoint.startswith(RANDOM_PREFIX):
        parts = checkpoint[len(RANDOM_PREFIX):].split(":")
        if parts[0] not in OFT_PRESETS:
            return None
        from actquant_core.policies.openvla_oft.config import get_preset

        seed = int(parts[1]) if len(parts) > 1 else 0
        model = OftModel(get_preset(parts[0])).init_random(seed).eval()
    elif isinstance(checkpoint, (str, os.PathLike)) and (Path(checkpoint) / "oft_config.json").is_file():
        from actquant_core.train.openvla_oft import load_trained as load_trained_oft

        _, model, ns, trained_tok = load_trained_oft(checkpoint)  # a trained small OFT folder
        tok = tok or trained_tok
    elif isinstance(checkpoint, (str, os.PathLike)) and Path(checkpoint).is_dir() \
            and any(Path(checkpoint).glob("action_head--*_checkpoint.pt")):
        from actquant_core.policies.openvla_oft.loader import load_oft_checkpoint

        _, model, ns = load_oft_checkpoint(checkpoint)
        if tok is None:
            log.warning("no --tokenizer given for %s: prompts use the small built-in SentencePiece model", checkpoint)
    if model is None:
        return None
    return OftAdapter(model, ns, tok or SentencePieceTokenizer.small(), action_dims)


def _frames_from(calib: Any, adapter: PolicyAdapter, cfg: PipelineConfig, bag_mapping: BagMapping | None) -> list[CalibFrame]:
    if isinstance(calib, Sequence) and not isinstance(calib, (str, bytes)) and calib and isinstance(calib[0], CalibFrame):
        return list(calib)
    horizon = getattr(adapter, "action_horizon", None) or adapter.config.action_horizon  # type: ignore[attr-defined]
    return sample_frames(load_episodes(calib, bag_mapping), horizon, cfg.calib_frames, seed=cfg.seed,
                         split=cfg.split, holdout_every=cfg.holdout_every, progress=cfg.calib.progress)


# ----------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------


def uniform_type_for(budget_bpw: float, menu: Sequence[str]) -> str:
    """The largest type of ``menu`` whose nominal bpw does not exceed ``budget_bpw``."""
    ok = [t for t in sort_menu(menu) if nominal_bpw(t) <= budget_bpw + 1e-12]
    if not ok:
        cheapest = min(menu, key=nominal_bpw)
        raise ValueError(f"budget {budget_bpw} bpw is below the cheapest type of the menu "
                         f"({cheapest}, {nominal_bpw(cheapest)} bpw)")
    return ok[-1]


def _default_vision_type(budget_bpw: float) -> str:
    ks = [t for t in K_QUANTS if t != "Q8_0"]
    fit = [t for t in ks if nominal_bpw(t) <= budget_bpw + 1e-12]
    return fit[-1] if fit else ks[0]


def _fixed_with_fallback(ggml_type: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """(type, reason suffix): ``ggml_type`` when rows fit, else the 32-block fallback, else F16."""
    if ggml_type in HIGH_PRECISION_TYPES or (len(shape) >= 2 and row_eligible(ggml_type, shape[-1])):
        return ggml_type, ""
    for t in (*FALLBACK_MENU, "F16"):
        if t in HIGH_PRECISION_TYPES or (len(shape) >= 2 and row_eligible(t, shape[-1])):
            return t, f"; row length {shape[-1]} does not fit {ggml_type} blocks: fallback {t}"
    return "F16", f"; fallback F16"


def _is_allocated(info: TensorInfo, scope: str) -> bool:
    if not info.linear:
        return False
    return info.group == "backbone" or (scope == "all" and info.group in ("vision", "projector", "expert", "head"))


def _fixed_entries(table: Sequence[TensorInfo], cfg: PipelineConfig, hookable: set[str]) -> dict[str, PlanEntry]:
    """Plan entries of every tensor the allocator does not touch (see the module docstring)."""
    vision_type = cfg.vision_type or _default_vision_type(cfg.bpw)
    fisher = cfg.method in _NEEDS_FISHER
    activation = cfg.method in _NEEDS_ACTIVATION
    out: dict[str, PlanEntry] = {}
    for info in table:
        if _is_allocated(info, cfg.scope):
            continue
        shape = info.shape
        if info.group == "norm":
            role = "bias" if info.name.endswith(".bias") else "norm"
            t, why = "F32", f"{role}: F32"
        elif info.group == "position":
            role, t, why = "keep", "F32", "position embedding: F32"
        elif info.group == "embedding":
            t, fb = _fixed_with_fallback(cfg.embedding_type, shape)
            role, why = "embedding", f"token embedding: {cfg.embedding_type}{fb}"
        elif info.group == "vision":
            t, fb = _fixed_with_fallback(vision_type, shape)
            role, why = "keep", f"vision tower: fixed {vision_type}{fb}"
        else:
            t, fb = _fixed_with_fallback(cfg.keep_type, shape)
            role, why = "keep", f"{info.group}: kept {cfg.keep_type}{fb}"
        imp = "none"
        if t not in HIGH_PRECISION_TYPES and t != "Q8_0" and len(shape) >= 2:
            if fisher:
                imp = "fisher"
            elif activation and info.name in hookable:
                imp = "activation"
        out[info.name] = PlanEntry(name=info.name, shape=shape, ggml_type=t, bits=type_bpw(t), score=None,
                                   reason=why, role=role, importance=imp)
    return out


def _allocated_specs(table: Sequence[TensorInfo], scope: str, scores: Mapping[str, float] | None) -> list[TensorSpec]:
    specs = []
    for info in table:
        if not _is_allocated(info, scope):
            continue
        if info.layer is None:
            layer = None
        elif info.group == "backbone":
            layer = info.layer
        else:
            layer = f"{info.group}.{info.layer}"
        s = float(scores.get(info.name, 0.0)) if scores is not None else 0.0
        specs.append(TensorSpec(info.name, info.shape, role="linear", layer=layer, score=max(s, 0.0)))
    return specs


def _scores(calibration: CalibrationResult | None, cfg: PipelineConfig) -> dict[str, float] | None:
    """Allocation scores from the HSIC result per ``cfg.score`` / ``cfg.score_floor``."""
    if calibration is None or calibration.hsic is None:
        return None
    h = calibration.hsic
    if cfg.score == "hsic_out_y":
        missing = [n for n in h.scores if n not in h.terms]
        if missing:
            raise ValueError(f"score 'hsic_out_y' needs the HSIC terms; missing for {missing[:5]}")
        scores = {n: max(float(h.terms[n].hsic_out_y), 0.0) for n in h.scores}
    else:
        scores = {n: max(float(v), 0.0) for n, v in h.scores.items()}
    if cfg.score_floor > 0:
        pos = [v for v in scores.values() if v > 0]
        floor = cfg.score_floor * (sum(pos) / len(pos)) if pos else 0.0
        scores = {n: max(v, floor) for n, v in scores.items()}
    return scores


def measured_noise_fn(weights: Mapping[str, np.ndarray], fisher: Mapping[str, np.ndarray],
                      n_threads: int | None = None) -> Any:
    """``noise(spec, type)`` = relative Fisher-weighted error of quantizing the tensor to ``type``
    (``sum F (W - deq(q_t(W)))^2 / sum F W^2``; cached per (tensor, type), reuse it across budgets)."""
    from actquant_core import native

    err = weighted_error_fn(weights, fisher, lambda W, t, imp: native.quantize(W, t, imp, n_threads=n_threads),
                            native.dequantize)
    norms: dict[str, float] = {}

    def noise(spec: TensorSpec, t: str) -> float:
        if spec.name not in norms:
            W = np.asarray(weights[spec.name], np.float64)
            F = fisher.get(spec.name)
            norms[spec.name] = float(((F if F is not None else 1.0) * W * W).sum()) or 1.0
        return err(spec, t) / norms[spec.name]

    return noise


def _actquant_part(adapter: PolicyAdapter, specs: list[TensorSpec], ac: AllocConfig, inactive: str,
                   noise_fn: Any | None = None) -> QuantPlan:
    """HSIC allocation (+ the "cheapest" rule for inactive tensors, see :class:`PipelineConfig`)."""
    from .allocate import eligibility_table
    from .types import tensor_nbytes

    dead = [s for s in specs if s.name in adapter.inactive_tensors()] if inactive == "cheapest" else []
    if not dead:
        alloc = allocate(specs, ac, noise_fn)
        return QuantPlan.from_allocation("actquant", specs, alloc, importance="fisher")
    live = [s for s in specs if s not in dead]
    rows = {r.name: r for r in eligibility_table(dead, ac)}
    dead_types = {s.name: rows[s.name].candidates[0] for s in dead}
    n_all = sum(s.numel for s in specs)
    budget_bytes = math.floor(ac.budget_bpw * n_all / 8.0 + 1e-9)
    dead_bytes = sum(tensor_nbytes(dead_types[s.name], s.shape) for s in dead)
    live_budget = 8.0 * (budget_bytes - dead_bytes) / sum(s.numel for s in live)
    alloc = allocate(live, replace(ac, budget_bpw=live_budget), noise_fn)
    types = {**alloc.types, **dead_types}
    reasons = {**alloc.reasons, **{n: f"no action depends on it: cheapest eligible type {t}" for n, t in dead_types.items()}}
    log.info("inactive tensors %s -> cheapest types; live budget %.4f bpw", sorted(dead_types), live_budget)
    return QuantPlan.from_types(
        "actquant", specs, types, reasons=reasons, importance="fisher", budget_bpw=ac.budget_bpw,
        objectives={"greedy": alloc.greedy_objective, "exact": alloc.exact_objective, "chosen": alloc.objective},
        meta={"solver_used": alloc.solver_used, "exact_optimal": alloc.exact_optimal, "n_fallbacks": alloc.n_fallbacks,
              "inactive": sorted(dead_types), "live_budget_bpw": live_budget})


def output_error(W: np.ndarray, Wq: np.ndarray, gram, device: str | None = None) -> float:
    """``tr(ΔW G ΔWᵀ) / n``: the mean squared layer-output error over the calibration inputs (Gram ``G = XᵀX``
    over ``n`` rows), ``ΔW = W − Wq`` ``[rows, cols]``; float64, on the torch ``device`` (default CPU, all
    intra-op threads: a real-size [16384, 2048] tensor is a 137-GFLOP product)."""
    import torch

    dev = torch.device(device or "cpu")
    # converted on the device, not in numpy; never in place (a float64 CPU input would share W's memory)
    D = torch.from_numpy(np.ascontiguousarray(W)).to(dev, torch.float64) - torch.from_numpy(
        np.ascontiguousarray(Wq)).to(dev, torch.float64)
    G = torch.from_numpy(np.asarray(gram.gram, np.float64)).to(dev)
    return float(((D @ G) * D).sum().item()) / max(int(gram.n), 1)


def stage2_candidates(name: str, W: np.ndarray, t: str, calibration: CalibrationResult, gptq_cfg, ggml,
                      own: tuple[str, bytes] | None = None, gptq: bool = True,
                      rows: np.ndarray | None = None, factors: dict | None = None,
                      ) -> tuple[dict[str, bytes], dict[str, float]]:
    """Stage 2 "best"'s candidates for tensor ``name`` (``W`` ``[rows, cols]``) at type ``t`` and their
    :func:`output_error`: ``own`` (the plan's own ``(importance, bytes)``), Fisher importance (where the Fisher
    was collected), plain (where the type allows it), activation importance and GPTQ (where it applies).
    Needs ``calibration.gram[name]``.  ``rows`` (indices into the tensor's rows): ``W`` is those rows only, and
    the per-element Fisher is sliced to match (every candidate quantizes each row on its own, so the result
    is those rows of the whole tensor's).  ``factors``: GPTQ's Hessian factors by tensor name, read and filled
    (see :func:`.gptq.gptq_tensors`)."""
    from actquant_core import native

    from .gptq import gptq_eligible, gptq_tensors

    gram = calibration.gram[name]
    act = calibration.activation_importance or {}
    fisher = calibration.fisher or {}
    cands: dict[str, bytes] = dict([own]) if own is not None else {}
    if "fisher" not in cands and name in fisher:
        F = np.asarray(fisher[name], np.float32).reshape(-1, W.shape[-1])
        cands["fisher"] = ggml(W, t, np.ascontiguousarray(F if rows is None else F[rows]))
    if "none" not in cands and not native.type_traits(t)["requires_importance"]:
        cands["none"] = ggml(W, t, None)
    if "activation" not in cands and name in act:
        cands["activation"] = ggml(W, t, act[name])
    if gptq and name in act and gptq_eligible(t, W.shape, gptq_cfg) is None:
        data, status = gptq_tensors({name: W}, {name: t}, {name: gram}, act, gptq_cfg, ggml, native.dequantize,
                                    factors=factors)
        if status[name] == "gptq":
            cands["gptq"] = data[name]
    if not cands:
        raise ValueError(f"stage 2 best: no quantizer applies to {name} at {t}")
    errs = {k: output_error(W, native.dequantize(b, t, W.shape), gram, gptq_cfg.device) for k, b in cands.items()}
    return cands, errs


class OutputNoise:
    """``noise(spec, type)`` of ``PipelineConfig.noise="output"``: the relative layer-output error
    ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` of stage 2 "best" at ``type`` (:func:`stage2_candidates`).  A tensor without
    a Gram (row length over ``gptq.max_cols``) gets the diagonal approximation with its activation importance
    ``a`` (``sum_j a_j ΔW_ij^2 / sum_j a_j W_ij^2``, activation-importance bytes), or the relative Frobenius
    error without one.  High-precision types have noise 0.  ``best`` caches each (tensor, type)'s winner
    (candidate, bytes, errors): build one per calibration and reuse it across budgets and for stage 2.
    ``price_gptq=False`` prices each type without the GPTQ candidate (its cost dominates at real size: one GGML
    quantization per column block, or more with the in-block recursion); ``best`` then stays empty and stage 2
    weighs GPTQ at the chosen types only.

    ``sample_rows`` (beyond the paper; None = every row): a tensor with more rows than this is priced on that
    many of its rows, drawn once per tensor (seeded by ``seed`` and the tensor's name) and shared by every
    type.  Both traces are sums over rows and every candidate (GGML's quantizers, GPTQ) treats each row on its
    own, so the sampled ratio is a ratio estimator of the whole tensor's, and types are compared on the same
    rows; pricing then costs ``sample_rows / rows`` of the full search per type.  A sampled tensor's winners
    are not cached in ``best`` (stage 2 searches its whole rows at the chosen type)."""

    def __init__(self, weights: Mapping[str, np.ndarray], calibration: CalibrationResult, gptq_cfg, ggml,
                 price_gptq: bool = True, sample_rows: int | None = None, seed: int = 0,
                 price_intra: bool = True) -> None:
        if sample_rows is not None and sample_rows < 1:
            raise ValueError(f"noise 'output': sample_rows must be >= 1 or None, got {sample_rows!r}")
        self.weights, self.calibration, self.gptq_cfg, self.ggml = weights, calibration, gptq_cfg, ggml
        self.price_gptq, self.sample_rows, self.seed = price_gptq, sample_rows, seed
        # price_intra=False: GPTQ priced without its recursion inside type blocks (block-wise only; the
        # recursion's 2 + block/intra_group quantizations per block dominate pricing where it runs)
        self.price_cfg = gptq_cfg if price_intra else replace(gptq_cfg, intra_group=0)
        self.best: dict[tuple[str, str], tuple[str, bytes, dict[str, float]]] = {}
        self._base: dict[str, float] = {}
        self._noise: dict[tuple[str, str], float] = {}
        self._rows: dict[str, np.ndarray | None] = {}
        self.seconds = 0.0  # spent pricing so far (cached answers cost nothing)
        # GPTQ's Hessian factor of the tensor being priced (the allocator asks for every type of one tensor
        # before the next: one slot suffices, and holds one [cols, cols] float64 factor at a time)
        self._factors: dict = {}

    def rows_of(self, name: str, n_rows: int) -> np.ndarray | None:
        """The sorted row indices tensor ``name`` is priced on (None: all of them)."""
        if name not in self._rows:
            k = self.sample_rows
            if k is None or n_rows <= k:
                self._rows[name] = None
            else:
                rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
                self._rows[name] = np.sort(rng.choice(n_rows, size=k, replace=False))
        return self._rows[name]

    def _W(self, name: str, shape) -> np.ndarray:
        return np.asarray(self.weights[name], np.float32).reshape(-1, shape[-1])

    def __call__(self, spec: TensorSpec, t: str) -> float:
        from actquant_core import native

        key = (spec.name, t)
        if key in self._noise:
            return self._noise[key]
        if t in HIGH_PRECISION_TYPES:
            self._noise[key] = 0.0
            return 0.0
        t0 = time.perf_counter()
        if spec.name not in self._rows and len(self._rows) % 20 == 0 and self._rows:
            log.info("output pricing: %d tensors priced in %.0f s", len(self._rows), self.seconds)
        W = self._W(spec.name, spec.shape)
        rows = self.rows_of(spec.name, W.shape[0])
        if rows is not None:
            W = np.ascontiguousarray(W[rows])
        grams = self.calibration.gram or {}
        if spec.name in grams:
            g = grams[spec.name]
            if spec.name not in self._base:
                self._base[spec.name] = output_error(W, np.zeros_like(W), g, self.gptq_cfg.device)
            if spec.name not in self._factors:
                self._factors.clear()
            cands, errs = stage2_candidates(spec.name, W, t, self.calibration, self.price_cfg, self.ggml,
                                            gptq=self.price_gptq, rows=rows, factors=self._factors)
            k = min(errs, key=lambda c: (errs[c], c))
            if self.price_gptq and rows is None and self.price_cfg == self.gptq_cfg:
                # otherwise the winner is not stage 2's: stage 2 searches again
                self.best[key] = (k, cands[k], errs)
            val = errs[k] / (self._base[spec.name] or 1.0)
        else:
            a = (self.calibration.activation_importance or {}).get(spec.name)
            a = np.ones(W.shape[1], np.float32) if a is None else np.asarray(a, np.float32).reshape(-1)
            D = W.astype(np.float64) - native.dequantize(self.ggml(W, t, a), t, W.shape).astype(np.float64)
            w = a.astype(np.float64)
            val = float((D * D * w).sum()) / (float((W.astype(np.float64) ** 2 * w).sum()) or 1.0)
        if not math.isfinite(val):
            raise ValueError(f"noise 'output': non-finite error for {spec.name} at {t}")
        self._noise[key] = val
        self.seconds += time.perf_counter() - t0
        return val


def output_noise_fn(weights: Mapping[str, np.ndarray], calibration: CalibrationResult, gptq_cfg,
                    n_threads: int | None = None, price_gptq: bool = True, sample_rows: int | None = None,
                    seed: int = 0, price_intra: bool = True) -> OutputNoise:
    """:class:`OutputNoise` with GGML's quantizers (``n_threads``); needs the Grams (and, for the Fisher and
    activation candidates, those statistics) in ``calibration``."""
    from actquant_core import native

    if not calibration.gram:
        raise ValueError("noise 'output' needs the layer Grams; calibration has none")

    def ggml(W: np.ndarray, t: str, imp: np.ndarray | None) -> bytes:
        return native.quantize(W, t, imp, n_threads=n_threads)

    return OutputNoise(weights, calibration, gptq_cfg, ggml, price_gptq, sample_rows, seed, price_intra)


def output_noise_for(cfg: PipelineConfig, weights: Mapping[str, np.ndarray], calibration: CalibrationResult,
                     n_threads: int | None = None) -> OutputNoise:
    """:func:`output_noise_fn` with ``cfg``'s GPTQ settings and noise-"output" options (candidates, row sample and
    its seed, in-block recursion)."""
    return output_noise_fn(weights, calibration, cfg.gptq, n_threads, cfg.output_gptq, cfg.output_rows, cfg.seed,
                           cfg.output_intra)


def best_stage2(plan: QuantPlan, weights: Mapping[str, np.ndarray], quantized: dict[str, tuple[str, bytes]],
                calibration: CalibrationResult, gptq_cfg, ggml,
                cache: Mapping[tuple[str, str], tuple[str, bytes, dict[str, float]]] | None = None,
                ) -> tuple[QuantPlan, dict[str, tuple[str, bytes]]]:
    """Stage 2 "best": for every quantized entry with a Gram, the candidate with the smallest
    :func:`output_error` among the plan's own quantization (the bytes in ``quantized``), Fisher importance (where
    the Fisher was collected), plain (no importance, where the type allows it), activation importance and GPTQ,
    all at the entry's type (ties keep the plan's own).  ``cache`` (``OutputNoise.best``) holds winners already
    found while allocating; they are reused, not recomputed.  Returns the plan with each choice recorded
    (importance, ``meta["gptq_tensors"]``, reason) and the updated bytes."""
    grams = calibration.gram or {}
    entries, gptq_chosen, counts = [], [], {}
    quantized = dict(quantized)
    cache = cache or {}

    def weighed(e: PlanEntry) -> bool:  # a quantized entry with a Gram whose quantizer stage 2 may replace
        return e.importance in ("fisher", "activation", "none") and e.name in grams and e.ggml_type not in ("F32", "F16")

    todo = sum(map(weighed, plan.entries))
    t0, done = time.perf_counter(), 0
    for e in plan.entries:
        if not weighed(e):
            entries.append(e)
            continue
        done += 1
        if done % 25 == 0:
            log.info("stage2 best: %d of %d tensors in %.0f s", done, todo, time.perf_counter() - t0)
        t = e.ggml_type
        own = e.importance
        if (e.name, t) in cache and own in cache[(e.name, t)][2]:
            k, data, errs = cache[(e.name, t)]
            best = own if errs[own] <= errs[k] else k  # ties keep the plan's own quantization
            data = quantized[e.name][1] if best == own else data
        else:
            W = np.asarray(weights[e.name], np.float32).reshape(-1, e.shape[-1])
            cands, errs = stage2_candidates(e.name, W, t, calibration, gptq_cfg, ggml, own=(own, quantized[e.name][1]))
            best = min(errs, key=lambda c: (errs[c], c != own))  # ties keep the plan's own quantization
            data = cands[best]
        counts[best] = counts.get(best, 0) + 1
        quantized[e.name] = (t, data)
        why = f"; stage2 best: {best} (output error {errs[best]:.6g}, planned {own} {errs[own]:.6g})"
        if best == "gptq":
            gptq_chosen.append(e.name)
            entries.append(replace(e, importance="activation", reason=e.reason + why + "; GPTQ"))
        else:
            entries.append(replace(e, importance=best, reason=e.reason + why))
    log.info("stage2 best: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no candidate tensor")
    meta = {**plan.meta, "stage2": "best", "stage2_choices": counts}
    if gptq_chosen:
        meta.update(gptq_tensors=gptq_chosen, gptq_percdamp=gptq_cfg.percdamp)
    return replace(plan, entries=tuple(entries), meta=meta), quantized


def _plain_stage2(plan: QuantPlan) -> QuantPlan:
    """The plan with GGML's plain quantizer (no importance) for every Fisher-importance entry whose type allows it."""
    from actquant_core import native

    entries = tuple(
        replace(e, importance="none", reason=f"{e.reason}; plain GGML quantizer (stage2 plain)")
        if e.importance == "fisher" and not native.type_traits(e.ggml_type)["requires_importance"] else e
        for e in plan.entries)
    return replace(plan, entries=entries, meta={**plan.meta, "stage2": "plain"})


def build_plan(
    adapter: PolicyAdapter,
    cfg: PipelineConfig,
    calibration: CalibrationResult | None,
    weights: Mapping[str, np.ndarray] | None = None,
    n_threads: int | None = None,
    error_fn: Any | None = None,
    noise_fn: Any | None = None,
) -> QuantPlan:
    """The method's plan over every canonical tensor of the adapter's model.

    ``error_fn(spec, type) -> float`` overrides the generic allocator's weighted-error function (reuse
    one :func:`.importance.weighted_error_fn` across budgets: it caches every (tensor, type) error);
    ``noise_fn`` likewise the measured noise of ``cfg.noise == "measured"`` (:func:`measured_noise_fn`) or
    ``"output"`` (:func:`output_noise_fn`; pass its ``best`` to :func:`apply_plan` as ``stage2_cache``).

    Raises ``ValueError`` when the budget is below the cheapest type / assignment, or when the method's
    statistics are missing from ``calibration``.
    """
    table = adapter.tensor_table()
    hookable = {t.name for t in adapter.linear_targets()}
    scores = _scores(calibration, cfg)
    if cfg.method in _NEEDS_HSIC and scores is None:
        raise ValueError(f"method {cfg.method!r} needs HSIC scores; calibration has none")
    specs = _allocated_specs(table, cfg.scope, scores)
    if not specs:
        raise ValueError(f"scope {cfg.scope!r} leaves no tensor to allocate")
    ac = AllocConfig(budget_bpw=float(cfg.bpw), menu=cfg.menu, solver=cfg.solver)
    m = cfg.method
    if cfg.noise == "measured" and noise_fn is None:
        if calibration is None or calibration.fisher is None:
            raise ValueError("noise 'measured' needs the Fisher; calibration has none")
        w = weights if weights is not None else adapter.canonical_weights()
        noise_fn = measured_noise_fn({s.name: w[s.name] for s in specs}, calibration.fisher, n_threads)
    if cfg.noise == "output" and noise_fn is None:
        if calibration is None:
            raise ValueError("noise 'output' needs the layer Grams; calibration has none")
        w = weights if weights is not None else adapter.canonical_weights()
        noise_fn = output_noise_for(cfg, w, calibration, n_threads)
    if cfg.noise == "bits":
        noise_fn = None
    if m == "actquant":
        part = _actquant_part(adapter, specs, ac, cfg.inactive, noise_fn)
        if cfg.compensate == "gptq":
            part = with_gptq(part, cfg.gptq, fallback="plain (Fisher importance)")
            part = replace(part, meta={**part.meta, "compensate": "gptq"})
        elif cfg.stage2 == "plain":
            part = _plain_stage2(part)
    elif m == "hsic-only":
        part = plan_hsic_only(specs, ac)
    elif m == "rtn":
        menu = [t for t in cfg.menu if t in K_QUANTS] or list(K_QUANTS)
        part = plan_uniform(specs, uniform_type_for(cfg.bpw, menu), ac)
    elif m == "imatrix":
        part = plan_imatrix(specs, uniform_type_for(cfg.bpw, cfg.menu), ac)
    elif m == "fisher-only":
        part = plan_fisher_only(specs, uniform_type_for(cfg.bpw, cfg.menu), ac)
    elif m == "gptq":
        part = plan_gptq(specs, uniform_type_for(cfg.bpw, cfg.menu), ac, gptq_config=cfg.gptq)
    elif m == "generic":
        if error_fn is None and (calibration is None or calibration.activation_importance is None):
            raise ValueError("method 'generic' needs activation importance; calibration has none")
        from actquant_core import native

        w = weights if weights is not None else adapter.canonical_weights()
        err = error_fn or weighted_error_fn({s.name: w[s.name] for s in specs}, calibration.activation_importance,
                                lambda W, t, imp: native.quantize(W, t, imp, n_threads=n_threads),
                                native.dequantize)
        part = plan_error_driven(specs, ac, err)
    else:  # pragma: no cover - validated in PipelineConfig
        raise ValueError(f"unknown method {m!r}")
    fixed = _fixed_entries(table, cfg, hookable)
    allocated = {e.name: e for e in part.entries}
    entries = tuple(allocated[i.name] if i.name in allocated else fixed[i.name] for i in table)
    meta = dict(part.meta)
    meta.update(score=cfg.score, score_floor=cfg.score_floor, noise=cfg.noise, scope=cfg.scope, vision_type=cfg.vision_type or _default_vision_type(cfg.bpw), family=adapter.family,
                menu=list(cfg.menu))
    if cfg.noise == "output":
        meta.update(output_candidates="all" if cfg.output_gptq else "fast", output_rows=cfg.output_rows)
    return QuantPlan(method=m, entries=entries, budget_bpw=float(cfg.bpw), objectives=dict(part.objectives), meta=meta)


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------


def write_quantized_gguf(
    path: str | os.PathLike[str],
    adapter: PolicyAdapter,
    plan: QuantPlan,
    weights: Mapping[str, np.ndarray],
    quantized: Mapping[str, tuple[str, bytes]],
    *,
    source: str = "",
) -> int:
    """Write already-quantized tensors (GGML bytes, e.g. refined) with the policy metadata; returns bytes.

    Goes through ``actquant_core.gguf.writer.write_policy_gguf`` (raw bytes per entry); F32 / F16 tensors
    are written from ``weights``.
    """
    from actquant_core.gguf.writer import TensorEntry, file_order, write_policy_gguf

    meta = adapter.gguf_metadata()
    entries = []
    by_name = {e.name: e for e in plan.entries}
    for e in (by_name[n] for n in file_order(by_name)):
        t, raw = quantized[e.name]
        arr = np.asarray(weights[e.name])
        if tuple(arr.shape) != tuple(e.shape):
            raise ValueError(f"{e.name}: weight shape {arr.shape} != plan shape {e.shape}")
        entries.append(TensorEntry(e.name, arr, t, raw=None if t in ("F32", "F16") else raw))
    write_policy_gguf(path, adapter.family, meta["config"], entries, norm_stats=meta.get("norm_stats"),
                      tokenizer_model=meta.get("tokenizer_model") or None, plan_summary=plan.summary(),
                      source=source)
    return os.path.getsize(path)


def export_reference(adapter: PolicyAdapter, path: str | os.PathLike[str], ggml_type: str = "F32") -> Path:
    """Write the full-precision (F32, or any uniform type with fallbacks) GGUF of the adapter's model.

    Position-group tensors (pi05 position embedding; OFT cls / register tokens, position embeddings) stay
    F32 whatever ``ggml_type`` is: the graphs add / concatenate them as they are."""
    from actquant_core.export import default_type_for, export_tensors

    meta = adapter.gguf_metadata()
    keep = {t.name for t in adapter.tensor_table() if t.group == "position"}
    base = (lambda n, s: "F32") if ggml_type.upper() == "F32" else default_type_for(ggml_type.upper())

    def type_for(name: str, shape: tuple[int, ...]) -> str:
        return "F32" if name in keep else base(name, shape)

    export_tensors(path, adapter.family, meta["config"], adapter.canonical_weights(), type_for,
                   norm_stats=meta.get("norm_stats"), tokenizer_model=meta.get("tokenizer_model"))
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------


def needed_statistics(method: str, config: PipelineConfig | None = None) -> dict[str, bool]:
    """Which calibration statistics ``method`` uses: {"hsic", "activation", "fisher", "gram"} -> bool; with a
    ``config``, also what its settings add (GPTQ compensation or stage 2 "best": Grams and activation
    importance; "best" and the measured / output noise: the Fisher)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    gram = method == "gptq" or (config is not None and (config.compensate == "gptq" or config.stage2 == "best"))
    fisher = method in _NEEDS_FISHER or (config is not None and (config.stage2 == "best" or config.noise != "bits"))
    return {"hsic": method in _NEEDS_HSIC, "activation": method in _NEEDS_ACTIVATION or gram, "fisher": fisher,
            "gram": gram}


def _gram_targets(plan: QuantPlan) -> list[str]:
    """Tensors a plan quantizes with GPTQ and whose Gram ``XᵀX`` is needed (``meta["gptq_tensors"]``: method
    ``gptq``, or ``actquant`` with ``compensate="gptq"``); [] otherwise."""
    names = list(plan.meta.get("gptq_tensors") or [])
    if plan.method != "gptq" and not names:
        return []
    if not names:
        log.warning("gptq plan lists no tensor in meta.gptq_tensors: every tensor is quantized imatrix-style")
    known = {e.name for e in plan.entries}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"gptq plan lists tensors it has no entry for: {unknown[:5]}")
    return names


def _zero_scores(table: Sequence[TensorInfo]) -> Any:
    from .hsic import HsicConfig, HsicResult

    return HsicResult(scores={t.name: 0.0 for t in table if t.linear}, terms={}, n=0, config=HsicConfig())


def _side_paths(out_path: Path) -> tuple[Path, Path]:
    stem = out_path.name[: -len(".gguf")] if out_path.name.endswith(".gguf") else out_path.name
    return out_path.with_name(stem + C.QUANT_PLAN_SUFFIX), out_path.with_name(stem + C.QUANT_REPORT_SUFFIX)


def quantize_policy(
    checkpoint_or_model: Any,
    calib: Any,
    bpw: float | None = None,
    method: str | None = None,
    out_path: str | os.PathLike[str] = "policy.gguf",
    plan: QuantPlan | str | os.PathLike[str] | None = None,
    *,
    config: PipelineConfig | None = None,
    bag_mapping: BagMapping | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    source: str = "",
) -> QuantizeResult:
    """Quantize a policy to a mixed-type GGUF; writes ``<out>.gguf``, ``<out>.plan.yaml``, ``<out>.report.md/.png``.

    Args:
        checkpoint_or_model: see :func:`load_policy`.
        calib: calibration source (dataset / bag path, ``Episode`` iterable, or a list of
            :class:`~.calibrate.CalibFrame`).
        bpw, method: override ``config.bpw`` / ``config.method``.
        out_path: the GGUF to write.
        plan: a :class:`~.plan.QuantPlan` or a plan YAML to re-apply (no allocation; importance
            recomputed as the plan says; identical plan + calibration -> identical bytes).
        config: :class:`PipelineConfig`.
        bag_mapping: topic mapping for recorded rosbags (None: the simulator's readers).
        tokenizer: SentencePiece model for lerobot/openpi checkpoints.
        source: free text stored in the GGUF (default: the checkpoint path).
    Raises ``ValueError`` for an empty calibration set, a budget below the cheapest type, NaN
    activations, or a plan naming a tensor the model does not have.
    """
    t_start = time.perf_counter()
    cfg = config or PipelineConfig()
    if bpw is not None:
        cfg = replace(cfg, bpw=float(bpw))
    if method is not None:
        cfg = replace(cfg, method=method)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    adapter = load_policy(checkpoint_or_model, tokenizer=tokenizer)
    if not source and isinstance(checkpoint_or_model, (str, Path)):
        source = str(checkpoint_or_model)
    table = adapter.tensor_table()
    shapes = {t.name: t.shape for t in table}
    hookable = {t.name for t in adapter.linear_targets()}

    given: QuantPlan | None = None
    if plan is not None:
        given = plan if isinstance(plan, QuantPlan) else QuantPlan.load(plan)
        given.check_model(shapes)
        cfg = replace(cfg, method=given.method if given.method in METHODS else cfg.method)

    if given is None:  # budget errors before any calibration work
        pre = build_plan(adapter, replace(cfg, method="hsic-only" if cfg.method in ("actquant", "generic") else cfg.method,
                                          noise="bits", compensate="none", stage2="fisher"),
                         CalibrationResult(hsic=_zero_scores(table)), weights={}, n_threads=cfg.n_threads)
        gram_targets = _gram_targets(pre)
        if cfg.compensate == "gptq":  # every allocated tensor GPTQ may get (its type is known after the plan)
            gram_targets = [s.name for s in _allocated_specs(table, cfg.scope, None)
                            if s.name in hookable and s.shape[-1] <= cfg.gptq.max_cols]
        elif cfg.stage2 == "best":  # every quantized linear tensor, fixed-type ones (vision tower, …) included
            gram_targets = [t.name for t in table if t.name in hookable and t.shape[-1] <= cfg.gptq.max_cols]
    else:
        gram_targets = _gram_targets(given)
    missing = [n for n in gram_targets if n not in hookable]
    if missing:
        raise ValueError(f"plan asks for GPTQ of tensors without a hookable layer: {missing[:5]}")

    t0 = time.perf_counter()
    frames = _frames_from(calib, adapter, cfg, bag_mapping)
    seconds["frames"] = time.perf_counter() - t0
    if not frames:
        raise ValueError(f"calibration set is empty: no frame from {calib!r} (split {cfg.split!r})")

    # ---- stage 1 statistics
    if given is None:
        hsic_targets = [s.name for s in _allocated_specs(table, cfg.scope, None)] if cfg.method in _NEEDS_HSIC else []
        imp_targets = (sorted(hookable) if cfg.method in _NEEDS_ACTIVATION or cfg.compensate == "gptq"
                       or cfg.stage2 == "best" else [])
    else:
        hsic_targets = []
        imp_targets = [e.name for e in given.entries if e.importance == "activation"]
        missing = [n for n in imp_targets if n not in hookable]
        if missing:
            raise ValueError(f"plan asks for activation importance of tensors without a hookable layer: {missing[:5]}")
    t0 = time.perf_counter()
    calibration = calibrate(adapter, frames, cfg.calib, hsic_targets=hsic_targets, importance_targets=imp_targets,
                            gram_targets=gram_targets, gram_max_cols=cfg.gptq.max_cols)
    seconds["calibrate"] = time.perf_counter() - t0

    # ---- plan (noise "measured" / "output" needs the Fisher of every allocated tensor first)
    if given is None and cfg.noise in ("measured", "output"):
        names = [s.name for s in _allocated_specs(table, cfg.scope, None)]
        fisher, nb, losses, secs = calibrate_fisher(adapter, frames, cfg.calib, names)
        calibration.fisher, calibration.fisher_batches, calibration.fisher_losses = fisher, nb, losses
        seconds["fisher"] = secs
    t0 = time.perf_counter()
    weights = adapter.canonical_weights()
    noise_fn = output_noise_for(cfg, weights, calibration, cfg.n_threads) if given is None and cfg.noise == "output" else None
    the_plan = given if given is not None else build_plan(adapter, cfg, calibration, weights, cfg.n_threads,
                                                          noise_fn=noise_fn)
    seconds["plan"] = time.perf_counter() - t0
    if noise_fn is not None:
        seconds["output_pricing"] = noise_fn.seconds  # part of "plan": noise "output"'s search per type

    # ---- stage 2: Fisher of the tensors the plan quantizes with Fisher importance
    fisher_names = [e.name for e in the_plan.entries if e.importance == "fisher"]
    if fisher_names and calibration.fisher is not None and set(fisher_names) <= set(calibration.fisher):
        fisher_names = []  # already collected for the measured noise
    if fisher_names:
        fisher, nb, losses, secs = calibrate_fisher(adapter, frames, cfg.calib, fisher_names)
        missing = sorted(set(fisher_names) - set(fisher))
        if missing:
            raise ValueError(f"plan asks for Fisher importance of tensors without a parameter: {missing[:5]}")
        calibration.fisher, calibration.fisher_batches, calibration.fisher_losses = fisher, nb, losses
        seconds["fisher"] = secs

    return apply_plan(adapter, the_plan, weights, calibration, out_path, cfg, source=source, seconds=seconds,
                      t_start=t_start, stage2_cache=noise_fn.best if noise_fn is not None else None)


def apply_plan(
    adapter: PolicyAdapter,
    plan: QuantPlan,
    weights: Mapping[str, np.ndarray],
    calibration: CalibrationResult,
    out_path: str | os.PathLike[str],
    cfg: PipelineConfig,
    *,
    source: str = "",
    seconds: dict[str, float] | None = None,
    t_start: float | None = None,
    stage2_cache: Mapping[tuple[str, str], tuple[str, bytes, dict[str, float]]] | None = None,
) -> QuantizeResult:
    """Quantize ``weights`` as ``plan`` says (GGML, per-row importance from ``calibration``), refine,
    write the GGUF, the plan YAML and the report.  ``calibration`` must hold every importance the plan
    names (``activation_importance`` / ``fisher``) and, for a ``gptq`` plan, the Gram of every tensor in
    ``plan.meta["gptq_tensors"]`` (a tensor GPTQ cannot handle -- e.g. H not positive definite after
    damping -- is quantized imatrix-style instead, logged, and named in ``QuantizeResult.gptq``)."""
    from actquant_core import native

    t_start = time.perf_counter() if t_start is None else t_start
    seconds = dict(seconds or {})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gptq_names = set(_gram_targets(plan))

    def ggml(W: np.ndarray, t: str, imp: np.ndarray | None) -> bytes:
        return b"" if t in ("F32", "F16") else native.quantize(W, t, imp, n_threads=cfg.n_threads)

    rest = replace(plan, entries=tuple(e for e in plan.entries if e.name not in gptq_names))
    quantized = quantize_with_plan(rest, weights, ggml, activation_importance=calibration.activation_importance,
                                   fisher=calibration.fisher)
    gptq_status: dict[str, str] = {}
    if gptq_names:
        imp = calibration.activation_importance or {}
        missing = sorted(n for n in gptq_names if n not in imp)
        if missing:
            raise KeyError(f"gptq plan: no activation importance for {missing[:5]}")
        types = {e.name: e.ggml_type for e in plan.entries if e.name in gptq_names}
        data, gptq_status = gptq_tensors(weights, types, calibration.gram or {}, imp, cfg.gptq,
                                         ggml, native.dequantize)
        quantized.update({n: (types[n], b) for n, b in data.items()})
        n_fb = sum(s != "gptq" for s in gptq_status.values())
        log.info("GPTQ: %d tensor(s), %d imatrix fallback(s)", len(gptq_status) - n_fb, n_fb)
    if cfg.stage2 == "best" and not gptq_names:
        plan, quantized = best_stage2(plan, weights, quantized, calibration, cfg.gptq, ggml, cache=stage2_cache)
    seconds["quantize"] = time.perf_counter() - t0
    refined: dict[str, tuple[float, float]] = {}
    if cfg.refine:
        t0 = time.perf_counter()
        for e in plan.entries:
            if e.ggml_type in REFINE_TYPES and e.importance == "fisher":
                W = np.asarray(weights[e.name], np.float32).reshape(-1, e.shape[-1])
                r = refine_tensor(quantized[e.name][1], e.ggml_type, W, calibration.fisher[e.name].reshape(W.shape),
                                  cfg.refine_config)
                quantized[e.name] = (e.ggml_type, r.data)
                refined[e.name] = (r.error_before, r.error_after)
        seconds["refine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = write_quantized_gguf(out_path, adapter, plan, weights, quantized, source=source)
    plan_path, report_path = _side_paths(out_path)
    plan.save(plan_path)
    seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    result = QuantizeResult(plan=plan, gguf_path=out_path, plan_path=plan_path, report_path=None,
                            file_size=size, seconds=seconds, calibration=calibration, refine=refined,
                            gptq=gptq_status)
    if cfg.report:
        from .report import write_report

        result.report_path = write_report(report_path, result)
    log.info("quantized %s: %s, backbone %.4f bpw, whole %.4f bpw, %.1f MB in %.1f s", source or "model",
             plan.method, plan.bpw_backbone, plan.bpw_whole, size / 1e6, seconds["total"])
    return result


# ----------------------------------------------------------------------------------------------------
# evaluation through the native runtime
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionError:
    """Action error of a quantized policy vs the full-precision one (same inputs, same noise).

    Attributes:
        l1: mean |a_q - a_ref| over frames, horizon and un-padded action dims (normalised space).
        nmse: sum (a_q - a_ref)^2 / sum (a_ref - mean a_ref)^2 (normalised space).
        l1_robot: mean |a_q - a_ref| in robot units (after un-normalisation).
        max_abs: largest |a_q - a_ref| (normalised space).
        n_frames: frames evaluated.
    """

    l1: float
    nmse: float
    l1_robot: float
    max_abs: float
    n_frames: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def gguf_policy(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """(family, config object) of a policy GGUF from its header (no tensor is placed, no torch).

    Raises ``ValueError`` for a family without a runtime."""
    from actquant_core import native

    m = native.GgufModel(path)
    family = m.metadata(C.KEY_FAMILY)
    cfg = json.loads(m.metadata(C.KEY_CONFIG_JSON))
    if family == C.PI05_FAMILY:
        from actquant_core.policies.pi05.config import Pi05Config

        return family, Pi05Config.from_dict(cfg)
    if family == C.OFT_FAMILY:
        from actquant_core.policies.openvla_oft.config import OftConfig

        return family, OftConfig.from_dict(cfg)
    raise ValueError(f"GGUF {os.fspath(path)!r}: no runtime for policy family {family!r}")


def policy_horizon(family: str, config: Any) -> int:
    """Actions per chunk of a policy config: pi05 ``action_horizon``, OpenVLA-OFT ``chunk``."""
    if family == C.PI05_FAMILY:
        return int(config.action_horizon)
    if family == C.OFT_FAMILY:
        return int(config.chunk)
    raise ValueError(f"no action horizon rule for policy family {family!r}")


def _oft_observation(config: Any, frame: CalibFrame, camera_map: Mapping[str, str] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A calibration frame as OFT runtime inputs: images by OFT slot (a frame keyed by slot name is used
    as is, else ``camera_map`` camera -> slot, default: simulator base -> slot 0, wrist -> slot 1, as
    :class:`~.adapters.OftAdapter`), state zero-padded to ``proprio_dim``."""
    slots = tuple(config.image_slots)
    if camera_map is None:
        from actquant_core.policies.common.image import sim_camera_map

        camera_map = sim_camera_map(slots)
    cams = dict(camera_map)
    by_slot = {slot: cam for cam, slot in cams.items()}
    images = {}
    for slot in slots:
        key = slot if slot in frame.images else by_slot.get(slot)
        if key not in frame.images:
            raise ValueError(f"frame (episode {frame.episode}, t {frame.t}) has cameras {sorted(frame.images)}; "
                             f"OFT slot {slot!r} is missing (camera map {cams})")
        images[slot] = frame.images[key]
    state = np.zeros(config.proprio_dim, np.float32)
    s = np.asarray(frame.state, np.float32).reshape(-1)
    if s.shape[0] > config.proprio_dim:
        raise ValueError(f"frame state has {s.shape[0]} entries, more than the policy's proprio_dim={config.proprio_dim}")
    state[: s.shape[0]] = s
    return images, state


def runtime_actions(
    gguf: str | os.PathLike[str],
    frames: Sequence[CalibFrame],
    *,
    seed: int = 0,
    n_threads: int | None = None,
    device: str = "cpu",
    camera_map: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, Any]:
    """Normalised padded actions ``[N, H, action_dim]`` of ``gguf`` on ``frames`` through the native runtime
    of the GGUF's family (``actquant_core.runtime.load_runtime``).

    pi05: flow-matching noise of frame ``i`` = the ``i``-th draw of ``numpy.random.default_rng(seed)``
    (same for every GGUF of the same config).  OpenVLA-OFT: no noise (deterministic L1 regression head);
    frame images are mapped to the OFT slots (``camera_map``, see :func:`_oft_observation`).
    Returns (actions, the runtime's preprocessor).
    """
    from actquant_core.runtime import load_runtime

    if not frames:
        raise ValueError("evaluation set is empty")
    rt = load_runtime(gguf, n_threads=n_threads, device=device)
    c = rt.config
    out = []
    if rt.family == C.PI05_FAMILY:
        rng = np.random.default_rng(seed)
        for f in frames:
            inp = rt.preprocessor({k: v for k, v in f.images.items() if k in c.camera_slots}, f.state, f.instruction)
            noise = rng.standard_normal((c.action_horizon, c.action_dim)).astype(np.float32)
            a, _, _ = rt.infer_model_inputs(inp, noise)
            out.append(np.asarray(a, np.float32))
    elif rt.family == C.OFT_FAMILY:
        for f in frames:
            images, state = _oft_observation(c, f, camera_map)
            a, _, _ = rt.infer_model_inputs(rt.preprocessor(images, state, f.instruction))
            out.append(np.asarray(a, np.float32))
    else:  # pragma: no cover - load_runtime knows no other family
        raise ValueError(f"{gguf}: no evaluation rule for policy family {rt.family!r}")
    return np.stack(out), rt.preprocessor


def _robot_actions(preprocessor: Any, A: np.ndarray, d: int) -> np.ndarray:
    """Normalised ``[N, H, action_dim]`` -> robot units ``[N, H, d]``.  OFT's statistics cover every action
    dim (its unnormaliser takes the full vector); pi05's cover the un-padded dims."""
    from actquant_core.policies.openvla_oft.preprocess import OftPreprocessor

    if isinstance(preprocessor, OftPreprocessor):
        return preprocessor.unnormalize_actions(A.astype(np.float32))[..., :d]
    # delta policies: the relative motion (a zero state) -- differences equal those of absolute targets
    zero_state = np.zeros(A.shape[:-2] + (preprocessor.config.state_dim,), np.float32)
    return preprocessor.unnormalize_actions(A[..., :d].astype(np.float32), d, state=zero_state)


def compare_actions(A_q: np.ndarray, A_ref: np.ndarray, preprocessor: Any, action_dims: int) -> ActionError:
    """:class:`ActionError` of actions ``[N, H, action_dim]`` (normalised space) over the first ``action_dims``."""
    if A_q.shape != A_ref.shape:
        raise ValueError(f"action arrays differ in shape: {A_q.shape} vs {A_ref.shape}")
    d = int(action_dims)
    if not 0 < d <= A_q.shape[-1]:
        raise ValueError(f"action_dims={d} must be in [1, {A_q.shape[-1]}]")
    Aq, Ar = A_q[..., :d].astype(np.float64), A_ref[..., :d].astype(np.float64)
    if not np.isfinite(Aq).all():
        raise FloatingPointError("quantized policy produced non-finite actions")
    diff = Aq - Ar
    den = float(np.square(Ar - Ar.mean(axis=(0, 1), keepdims=True)).sum())
    rob_q = _robot_actions(preprocessor, A_q, d)
    rob_r = _robot_actions(preprocessor, A_ref, d)
    return ActionError(l1=float(np.abs(diff).mean()), nmse=float(np.square(diff).sum() / max(den, 1e-30)),
                       l1_robot=float(np.abs(rob_q - rob_r).mean()), max_abs=float(np.abs(diff).max()),
                       n_frames=int(A_q.shape[0]))


def _stats_action_dims(preprocessor: Any) -> int | None:
    """Un-padded action dims from the runtime's norm stats (pi05 ``actions``, OFT ``action``), else None."""
    ns = preprocessor.norm_stats
    if ns is None:
        return None
    stats = getattr(ns, "actions", None)
    if stats is None:
        stats = getattr(ns, "action", None)
    return None if stats is None else int(stats.dim)


def evaluate_actions(
    gguf: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    frames: Sequence[CalibFrame],
    *,
    seed: int = 0,
    n_threads: int | None = None,
    device: str = "cpu",
    action_dims: int | None = None,
    camera_map: Mapping[str, str] | None = None,
) -> ActionError:
    """Run both GGUFs through their family's native runtime on ``frames`` (identical noise for pi05);
    compare actions.

    ``reference`` is a GGUF (typically :func:`export_reference`'s F32 file) of the same family and config;
    raises ``ValueError`` naming both files and families otherwise (checked from the headers, before any
    inference).
    """
    fam_q, cfg_q = gguf_policy(gguf)
    fam_r, cfg_r = gguf_policy(reference)
    if fam_q != fam_r:
        raise ValueError(f"{os.fspath(gguf)} holds a {fam_q!r} policy but the reference {os.fspath(reference)} "
                         f"a {fam_r!r} one: compare GGUFs of the same policy family")
    if cfg_q != cfg_r:
        raise ValueError(f"{gguf} and {reference} hold different policy configs")
    A_r, pre = runtime_actions(reference, frames, seed=seed, n_threads=n_threads, device=device, camera_map=camera_map)
    A_q, _ = runtime_actions(gguf, frames, seed=seed, n_threads=n_threads, device=device, camera_map=camera_map)
    d = action_dims or _stats_action_dims(pre) or frames[0].actions.shape[-1]
    return compare_actions(A_q, A_r, pre, d)


def frames_for_eval(calib: Any, horizon: int, n_frames: int, *, seed: int = 0, split: str = "holdout",
                    holdout_every: int = 5, bag_mapping: BagMapping | None = None) -> list[CalibFrame]:
    """Held-out frames (by default) of a calibration source for :func:`evaluate_actions`."""
    return sample_frames(load_episodes(calib, bag_mapping), horizon, n_frames, seed=seed, split=split,
                         holdout_every=holdout_every)


def iter_methods() -> Iterable[str]:
    """The methods, in table order."""
    return iter(METHODS)
