"""The quantisation plan: a reviewable, diffable, re-appliable artifact (tensor -> GGML type, why).

Saved as YAML beside the GGUF (llm-awq's ``--dump_awq``/``--load_awq`` habit; llama.cpp's per-tensor
type decisions in ``llama-quant.cpp``).  The exporter reads :meth:`QuantPlan.type_map` and
:meth:`QuantPlan.importance_map`; :meth:`QuantPlan.check_model` refuses a plan that names a tensor the
model lacks, misses one it has, or disagrees on a shape.

YAML layout::

    format_version: 1
    method: actquant
    budget_bpw: 3.0
    objectives: {greedy: 0.31, exact: 0.31, chosen: 0.31}
    meta: {...}
    tensors:
      - {name: blk.0.attn_q.weight, shape: [2048, 2048], type: Q3_K, bits: 3.4375, score: 0.12,
         reason: "...", role: linear, importance: fisher}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .types import nominal_bpw, tensor_nbytes, type_bpw, validate_type_name

__all__ = ["PLAN_FORMAT_VERSION", "IMPORTANCE_KINDS", "PlanEntry", "QuantPlan", "PlanDiff", "diff_plans", "quantize_with_plan"]

PLAN_FORMAT_VERSION = 1
#: What the quantizer uses as importance for a tensor: nothing (RTN-style), per-column activation
#: squares (imatrix), or the per-element Action-Mixed Fisher.
IMPORTANCE_KINDS = ("none", "activation", "fisher")
_ROLES = ("linear", "embedding", "norm", "bias", "keep")


@dataclass(frozen=True)
class PlanEntry:
    """One tensor's decision.

    Attributes:
        name: canonical tensor name.
        shape: torch shape ``[rows, cols]``.
        ggml_type: GGML type name ("Q4_K", "F16", ...).
        bits: actual bits per weight of ``ggml_type`` (GGML block bytes).
        score: allocation score (HSIC sensitivity, error, ...) or None.
        reason: why this type (eligibility rule, solver, fallback).
        role: "linear" (counts as backbone), "embedding", "norm", "bias" or "keep".
        importance: one of :data:`IMPORTANCE_KINDS`.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    bits: float
    score: float | None = None
    reason: str = ""
    role: str = "linear"
    importance: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        validate_type_name(self.ggml_type)
        if self.role not in _ROLES:
            raise ValueError(f"plan entry {self.name!r}: role={self.role!r}; expected one of {_ROLES}")
        if self.importance not in IMPORTANCE_KINDS:
            raise ValueError(f"plan entry {self.name!r}: importance={self.importance!r}; expected {IMPORTANCE_KINDS}")
        if not math.isclose(self.bits, type_bpw(self.ggml_type), rel_tol=1e-9):
            raise ValueError(f"plan entry {self.name!r}: bits={self.bits} but {self.ggml_type} has "
                             f"{type_bpw(self.ggml_type)} bits per weight")
        tensor_nbytes(self.ggml_type, self.shape)  # raises when the rows do not fit the blocks

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.shape)


@dataclass(frozen=True)
class QuantPlan:
    """The plan (see module docstring).

    Attributes:
        method: "actquant", "rtn", "imatrix", "generic", "hsic-only", "fisher-only", ...
        entries: one :class:`PlanEntry` per tensor (unique names).
        budget_bpw: the backbone budget the plan was solved for (None for fixed-type plans).
        objectives: solver objective values ("greedy", "exact", "chosen", ...; None when not run).
        meta: free-form provenance (checkpoint, calibration set, seeds, exact_optimal, ...).
    """

    method: str
    entries: tuple[PlanEntry, ...]
    budget_bpw: float | None = None
    objectives: dict[str, float | None] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"plan has duplicate tensor names: {dup[:5]}")
        if not self.method:
            raise ValueError("plan method must be a non-empty string")

    # ---- views -----------------------------------------------------------------------------------
    def type_map(self) -> dict[str, str]:
        """tensor name -> GGML type (what the exporter applies)."""
        return {e.name: e.ggml_type for e in self.entries}

    def importance_map(self) -> dict[str, str]:
        """tensor name -> importance kind."""
        return {e.name: e.importance for e in self.entries}

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"tensor {name!r} is not in the plan")

    def _bpw(self, roles: Sequence[str] | None, nominal: bool = False) -> float:
        es = [e for e in self.entries if roles is None or e.role in roles]
        n = sum(e.numel for e in es)
        if n == 0:
            return float("nan")
        if nominal:
            return sum(nominal_bpw(e.ggml_type) * e.numel for e in es) / n
        return 8.0 * sum(e.nbytes for e in es) / n

    @property
    def bpw_backbone(self) -> float:
        """Bits per weight over "linear" entries (GGML block bytes)."""
        return self._bpw(("linear",))

    @property
    def bpw_backbone_nominal(self) -> float:
        return self._bpw(("linear",), nominal=True)

    @property
    def bpw_whole(self) -> float:
        """Bits per weight over every entry."""
        return self._bpw(None)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def summary(self) -> dict[str, Any]:
        """Small JSON-able summary (method, bpw, counts per type) for the GGUF metadata."""
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.ggml_type] = counts.get(e.ggml_type, 0) + 1
        return {
            "method": self.method,
            "budget_bpw": self.budget_bpw,
            "bpw_backbone": self.bpw_backbone,
            "bpw_whole": self.bpw_whole,
            "n_tensors": len(self.entries),
            "type_counts": dict(sorted(counts.items())),
            "objectives": dict(self.objectives),
        }

    # ---- checks ----------------------------------------------------------------------------------
    def check_model(self, shapes: Mapping[str, Sequence[int]], *, require_all: bool = True) -> None:
        """Raise ``ValueError`` when the plan and the model's ``{name: shape}`` disagree.

        Unknown tensors (in the plan, not the model) and shape mismatches always raise; tensors of the
        model missing from the plan raise when ``require_all``.
        """
        unknown = [e.name for e in self.entries if e.name not in shapes]
        if unknown:
            raise ValueError(f"plan names {len(unknown)} tensor(s) the model does not have: {unknown[:5]}")
        bad = [(e.name, e.shape, tuple(shapes[e.name])) for e in self.entries
               if tuple(int(s) for s in shapes[e.name]) != e.shape]
        if bad:
            raise ValueError(f"plan/model shape mismatch (name, plan, model): {bad[:5]}")
        if require_all:
            names = {e.name for e in self.entries}
            missing = [n for n in shapes if n not in names]
            if missing:
                raise ValueError(f"model has {len(missing)} tensor(s) the plan does not cover: {missing[:5]}")

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "method": self.method,
            "budget_bpw": self.budget_bpw,
            "bpw_backbone": self.bpw_backbone,
            "bpw_whole": self.bpw_whole,
            "objectives": {k: (None if v is None else float(v)) for k, v in self.objectives.items()},
            "meta": dict(self.meta),
            "tensors": [
                {"name": e.name, "shape": list(e.shape), "type": e.ggml_type, "bits": e.bits,
                 "score": None if e.score is None else float(e.score), "reason": e.reason, "role": e.role,
                 "importance": e.importance}
                for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantPlan:
        ver = d.get("format_version")
        if ver != PLAN_FORMAT_VERSION:
            raise ValueError(f"plan format_version={ver!r}; this code reads version {PLAN_FORMAT_VERSION}")
        for key in ("method", "tensors"):
            if key not in d:
                raise ValueError(f"plan is missing the {key!r} field")
        entries = []
        for i, t in enumerate(d["tensors"]):
            try:
                entries.append(PlanEntry(name=t["name"], shape=tuple(t["shape"]), ggml_type=t["type"],
                                         bits=float(t["bits"]), score=t.get("score"), reason=t.get("reason", ""),
                                         role=t.get("role", "linear"), importance=t.get("importance", "none")))
            except KeyError as exc:
                raise ValueError(f"plan tensor #{i} is missing the field {exc.args[0]!r}") from None
        return cls(method=d["method"], entries=tuple(entries), budget_bpw=d.get("budget_bpw"),
                   objectives=dict(d.get("objectives") or {}), meta=dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        """Write the YAML plan; returns the path."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, width=120))
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantPlan:
        """Read a YAML plan written by :meth:`save`."""
        d = yaml.safe_load(Path(path).read_text())
        if not isinstance(d, dict):
            raise ValueError(f"{path}: not a plan (top level is {type(d).__name__})")
        return cls.from_dict(d)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_types(
        cls,
        method: str,
        tensors: Sequence[Any],
        types: Mapping[str, str],
        *,
        reasons: Mapping[str, str] | None = None,
        scores: Mapping[str, float] | None = None,
        importance: str | Mapping[str, str] = "none",
        budget_bpw: float | None = None,
        objectives: Mapping[str, float | None] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> QuantPlan:
        """Build a plan from ``TensorSpec``-like objects (``name``, ``shape``, ``role``, ``score``).

        ``importance`` is one kind for all quantised (non-F32/F16) tensors, or a per-name mapping;
        unquantised tensors always get "none".
        """
        entries = []
        for T in tensors:
            t = types[T.name]
            imp = importance.get(T.name, "none") if isinstance(importance, Mapping) else importance
            if t in ("F32", "F16", "BF16"):
                imp = "none"
            score = scores.get(T.name) if scores is not None else (T.score if T.role == "linear" else None)
            entries.append(PlanEntry(name=T.name, shape=T.shape, ggml_type=t, bits=type_bpw(t), score=score,
                                     reason=(reasons or {}).get(T.name, ""), role=T.role, importance=imp))
        return cls(method=method, entries=tuple(entries), budget_bpw=budget_bpw,
                   objectives=dict(objectives or {}), meta=dict(meta or {}))

    @classmethod
    def from_allocation(cls, method: str, tensors: Sequence[Any], allocation: Any, *,
                        importance: str | Mapping[str, str] = "fisher",
                        meta: Mapping[str, Any] | None = None) -> QuantPlan:
        """Build a plan from an :class:`~.allocate.Allocation` of ``tensors``."""
        m = {"solver_used": allocation.solver_used, "exact_optimal": allocation.exact_optimal,
             "n_fallbacks": allocation.n_fallbacks}
        m.update(meta or {})
        return cls.from_types(
            method, tensors, allocation.types, reasons=allocation.reasons, importance=importance,
            budget_bpw=allocation.budget_bpw,
            objectives={"greedy": allocation.greedy_objective, "exact": allocation.exact_objective,
                        "chosen": allocation.objective},
            meta=m,
        )


@dataclass(frozen=True)
class PlanDiff:
    """Differences between plan ``a`` and plan ``b``.

    Attributes:
        changed: (name, type in a, type in b) for tensors whose type differs.
        only_a / only_b: names present in one plan only.
        bpw_backbone: (a, b); bpw_whole: (a, b).
    """

    changed: tuple[tuple[str, str, str], ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    bpw_backbone: tuple[float, float]
    bpw_whole: tuple[float, float]

    @property
    def identical(self) -> bool:
        return not (self.changed or self.only_a or self.only_b)


def diff_plans(a: QuantPlan, b: QuantPlan) -> PlanDiff:
    """Compare two plans tensor by tensor."""
    ta, tb = a.type_map(), b.type_map()
    return PlanDiff(
        changed=tuple((n, ta[n], tb[n]) for n in ta if n in tb and ta[n] != tb[n]),
        only_a=tuple(n for n in ta if n not in tb),
        only_b=tuple(n for n in tb if n not in ta),
        bpw_backbone=(a.bpw_backbone, b.bpw_backbone),
        bpw_whole=(a.bpw_whole, b.bpw_whole),
    )


def quantize_with_plan(
    plan: QuantPlan,
    weights: Mapping[str, Any],
    quantize: Any,
    *,
    activation_importance: Mapping[str, Any] | None = None,
    fisher: Mapping[str, Any] | None = None,
) -> dict[str, tuple[str, bytes]]:
    """Quantise every plan entry: name -> (GGML type, bytes); the model is not modified.

    Args:
        plan: the plan to apply.
        weights: name -> float array ``shape`` (numpy or torch on CPU).
        quantize: ``quantize(W [rows, cols] f32, type_name, importance) -> bytes``, normally
            ``actquant_core.native.quantize``.
        activation_importance: name -> ``[cols]`` for entries with importance "activation".
        fisher: name -> ``[rows, cols]`` for entries with importance "fisher".
    Raises ``KeyError`` when a weight or a required importance is missing, ``ValueError`` on a shape
    mismatch.
    """
    import numpy as np

    out: dict[str, tuple[str, bytes]] = {}
    for e in plan.entries:
        if e.name not in weights:
            raise KeyError(f"plan tensor {e.name!r} has no weight")
        W = weights[e.name]
        W = np.asarray(W.detach().float().cpu().numpy() if hasattr(W, "detach") else W, dtype=np.float32)
        if tuple(W.shape) != e.shape:
            raise ValueError(f"{e.name}: weight shape {tuple(W.shape)} != plan shape {e.shape}")
        W2 = W.reshape(-1, e.shape[-1]) if W.ndim != 2 else W
        imp = None
        if e.importance != "none":
            src = activation_importance if e.importance == "activation" else fisher
            if src is None or e.name not in src:
                raise KeyError(f"{e.name}: plan asks for {e.importance!r} importance but none was given")
            v = src[e.name]
            imp = np.asarray(v.detach().float().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
            if e.importance == "fisher":
                imp = imp.reshape(W2.shape)
        out[e.name] = (e.ggml_type, quantize(W2, e.ggml_type, imp))
    return out
