"""Activation importance (imatrix-style) and the baseline allocators ActQuant is compared against.

References:
    - llama.cpp ``tools/imatrix``: importance of input column ``c`` of a linear layer is the mean of
      ``x_c^2`` over all tokens it saw; GGML's quantizers weight the per-block error by it.
    - LLM-generic mixed precision (no action signal): minimise ``sum_T E_T(t_T)`` with ``E_T(t)`` the
      importance-weighted squared error of tensor T quantised as type t, under the bpw budget, by a
      Lagrangian ``min_t E_T(t) + lambda * bits_T(t)`` with bisection on ``lambda`` (then the slack is
      spent greedily); an exact DP is available as well (:func:`.allocate.separable_allocate`).
    - Ablations of ActQuant (Akbari et al., arXiv 2605.24011): HSIC-only (stage-1 allocation,
      activation importance in the quantizer) and Fisher-only (fixed types, Fisher importance).
    - GPTQ (Frantar et al., arXiv 2210.17323) on GGML's grids: the plan (:func:`plan_gptq`) is uniform;
      the Hessian compensation itself runs in :mod:`.gptq` when the plan is applied.

Every baseline returns a :class:`~.plan.QuantPlan`, so all methods go through the same exporter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .allocate import AllocConfig, TensorSpec, allocate, eligibility_table, separable_allocate
from .plan import QuantPlan
from .types import tensor_nbytes, type_bpw

__all__ = [
    "ActivationImportanceAccumulator",
    "weighted_error_fn",
    "plan_uniform",
    "plan_imatrix",
    "plan_error_driven",
    "plan_hsic_only",
    "plan_fisher_only",
    "plan_gptq",
    "with_gptq",
]

log = logging.getLogger(__name__)

QuantizeFn = Callable[[np.ndarray, str, np.ndarray | None], bytes]
DequantizeFn = Callable[[bytes, str, tuple[int, int]], np.ndarray]


class ActivationImportanceAccumulator:
    """Mean of ``x_c^2`` per input column ``c`` of each linear tensor (imatrix-style).

    ``add_batch(name, x)`` with ``x`` ``[..., cols]`` (any leading token/batch dims);
    ``solve() -> {name: importance [cols] float32}``.  ``attach(model, modules)`` registers torch
    forward pre-hooks that feed the accumulator (returns the handles; call ``.remove()`` on them).
    """

    def __init__(self) -> None:
        self._sum: dict[str, object] = {}  # torch float64 [cols], on the device of the tensor's first batch
        self._count: dict[str, int] = {}

    def add_batch(self, name: str, x) -> None:
        """Adds ``x`` (torch tensor on any device, or array-like); sums stay on that device (a GPU calibration
        never copies its activations to the host: real-size rows are ~10^7 values per tensor and batch)."""
        import torch

        t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        if t.ndim == 0:
            raise ValueError(f"{name}: activation must be [..., cols], got a scalar")
        t = t.reshape(-1, t.shape[-1])
        if t.shape[0] == 0:
            raise ValueError(f"{name}: empty activation batch")
        if name in self._sum and self._sum[name].shape[0] != t.shape[1]:
            raise ValueError(f"{name}: column count changed from {self._sum[name].shape[0]} to {t.shape[1]}")
        s = torch.square(t.to(torch.float64)).sum(0)
        if not bool(torch.isfinite(s).all()):  # a NaN/Inf input, or a square that overflows float64
            raise ValueError(f"{name}: activation contains NaN or Inf")
        if name in self._sum:
            self._sum[name] += s.to(self._sum[name].device)
            self._count[name] += int(t.shape[0])
        else:
            self._sum[name] = s
            self._count[name] = int(t.shape[0])

    def attach(self, modules: Mapping[str, object]) -> list:
        """Register forward pre-hooks on ``{tensor name: torch module}``; returns the hook handles."""
        handles = []
        for name, module in modules.items():
            def hook(_mod, inputs, _name=name):
                self.add_batch(_name, inputs[0])
            handles.append(module.register_forward_pre_hook(hook))
        return handles

    def solve(self) -> dict[str, np.ndarray]:
        if not self._sum:
            raise ValueError("ActivationImportanceAccumulator.solve: no activation was added")
        return {n: (s.cpu().numpy() / self._count[n]).astype(np.float32) for n, s in self._sum.items()}


def weighted_error_fn(
    weights: Mapping[str, np.ndarray],
    importance: Mapping[str, np.ndarray],
    quantize: QuantizeFn,
    dequantize: DequantizeFn,
) -> Callable[[TensorSpec, str], float]:
    """``E_T(t) = sum_{r,c} imp[r?, c] * (W - deq(quant(W, t, imp)))^2`` (cached per (T, t)).

    Args:
        weights: name -> ``W`` ``[rows, cols]``.
        importance: name -> ``[cols]`` (activation) or ``[rows, cols]`` (Fisher); missing -> ones.
        quantize / dequantize: GGML codecs, e.g. ``actquant_core.native.quantize`` / ``dequantize``.
    """
    cache: dict[tuple[str, str], float] = {}

    def err(T: TensorSpec, t: str) -> float:
        key = (T.name, t)
        if key not in cache:
            W = np.asarray(weights[T.name], dtype=np.float32)
            imp = importance.get(T.name)
            q = quantize(W, t, imp)
            Wq = dequantize(q, t, W.shape)
            w = np.ones(W.shape[-1], np.float32) if imp is None else np.asarray(imp, np.float32)
            cache[key] = float((np.broadcast_to(w, W.shape) * np.square(W - Wq, dtype=np.float64)).sum())
        return cache[key]

    return err


def _fixed_type_plan(method: str, tensors: Sequence[TensorSpec], ggml_type: str, importance: str,
                     config: AllocConfig | None) -> QuantPlan:
    cfg = config or AllocConfig(budget_bpw=8.5)
    rows = eligibility_table(tensors, AllocConfig(**{**_cfg_kwargs(cfg), "menu": (ggml_type,), "base_type": None}))
    types, reasons = {}, {}
    want = type_bpw(ggml_type)
    for r in rows:
        # a fallback tensor gets the cheapest compatible type with at least the uniform type's bits
        types[r.name] = next((t for t in r.candidates if type_bpw(t) >= want), r.candidates[-1])
        reasons[r.name] = f"uniform {ggml_type}" if (r.allocated and not r.fallback) else r.reason
    return QuantPlan.from_types(method, tensors, types, reasons=reasons, importance=importance,
                                meta={"uniform_type": ggml_type})


def _cfg_kwargs(cfg: AllocConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def plan_uniform(tensors: Sequence[TensorSpec], ggml_type: str, config: AllocConfig | None = None) -> QuantPlan:
    """Round-to-nearest baseline: every allocatable tensor ``ggml_type``, no importance."""
    return _fixed_type_plan("rtn", tensors, ggml_type, "none", config)


def plan_imatrix(tensors: Sequence[TensorSpec], ggml_type: str, config: AllocConfig | None = None) -> QuantPlan:
    """imatrix baseline: same type everywhere, per-column activation importance in the quantizer."""
    return _fixed_type_plan("imatrix", tensors, ggml_type, "activation", config)


def plan_fisher_only(tensors: Sequence[TensorSpec], ggml_type: str, config: AllocConfig | None = None) -> QuantPlan:
    """Fisher-only ablation: same type everywhere, per-element Action-Mixed Fisher importance."""
    return _fixed_type_plan("fisher-only", tensors, ggml_type, "fisher", config)


def plan_gptq(tensors: Sequence[TensorSpec], ggml_type: str, config: AllocConfig | None = None, *,
              gptq_config=None) -> QuantPlan:
    """GPTQ baseline: same type everywhere (as imatrix), activation importance as GGML's quant weights.

    ``meta["gptq_tensors"]`` lists the tensors GPTQ quantizes (their Gram ``XᵀX`` must be collected);
    the others (:func:`.gptq.gptq_eligible` says why: e.g. rows wider than ``gptq_config.max_cols``, or a
    32-block fallback that does not fit) are quantized imatrix-style, logged and named in
    ``meta["gptq_fallbacks"]`` and in their entry's reason.
    """
    from .gptq import GptqConfig

    gc = gptq_config or GptqConfig()
    base = _fixed_type_plan("gptq", tensors, ggml_type, "activation", config)
    return with_gptq(base, gc, fallback="imatrix")


def with_gptq(plan: QuantPlan, gptq_config, *, fallback: str) -> QuantPlan:
    """``plan`` with GPTQ for every linear entry GPTQ can take at its planned type: activation importance,
    reason "; GPTQ", listed in ``meta["gptq_tensors"]`` (their Gram ``XᵀX`` must be collected).  The others
    (:func:`.gptq.gptq_eligible` says why) keep their quantization, named ``fallback`` in their reason, in
    ``meta["gptq_fallbacks"]`` and in the log.  Used by method ``gptq`` and by ``actquant`` with
    ``compensate="gptq"``."""
    from dataclasses import replace

    from .gptq import gptq_eligible

    entries, chosen, fallbacks = [], [], {}
    for e in plan.entries:
        if e.role != "linear":
            entries.append(e)
            continue
        why = gptq_eligible(e.ggml_type, e.shape, gptq_config)
        if why is None:
            chosen.append(e.name)
            entries.append(replace(e, importance="activation", reason=e.reason + "; GPTQ"))
        else:
            fallbacks[e.name] = why
            entries.append(replace(e, reason=e.reason + f"; {fallback} (no GPTQ: {why})"))
    if fallbacks:
        log.info("%s plan: %d tensor(s) fall back to %s quantization: %s", plan.method, len(fallbacks), fallback,
                 "; ".join(f"{n}: {w}" for n, w in list(fallbacks.items())[:5]))
    meta = {**plan.meta, "gptq_tensors": chosen, "gptq_fallbacks": fallbacks, "gptq_percdamp": gptq_config.percdamp,
            "gptq_max_cols": gptq_config.max_cols}
    return replace(plan, entries=tuple(entries), meta=meta)


def plan_hsic_only(tensors: Sequence[TensorSpec], config: AllocConfig) -> QuantPlan:
    """HSIC-only ablation: stage-1 allocation from the tensors' HSIC scores, activation importance."""
    alloc = allocate(tensors, config)
    return QuantPlan.from_allocation("hsic-only", tensors, alloc, importance="activation")


def plan_error_driven(
    tensors: Sequence[TensorSpec],
    config: AllocConfig,
    error_fn: Callable[[TensorSpec, str], float],
    *,
    solver: str = "lagrangian",
) -> QuantPlan:
    """LLM-generic allocator: minimise ``sum_T E_T(t_T)`` under ``config.budget_bpw`` (no action signal).

    ``solver="lagrangian"``: bisection on ``lambda`` in ``min_t E_T(t) + lambda * bytes_T(t)`` (the
    largest-error-reduction-per-byte upgrades then spend the remaining slack); ``solver="dp"``: exact
    multiple-choice knapsack.
    """
    if solver not in ("lagrangian", "dp"):
        raise ValueError(f"plan_error_driven solver={solver!r}; expected 'lagrangian' or 'dp'")
    rows = eligibility_table(tensors, config)
    if solver == "dp":
        types_alloc, total, _ = separable_allocate(tensors, config, error_fn)
    else:
        types_alloc, total = _lagrangian(tensors, rows, config, error_fn)
    types = {r.name: r.candidates[0] for r in rows}
    types.update(types_alloc)
    reasons = {r.name: r.reason + (f"; generic error-driven ({solver})" if r.allocated else "") for r in rows}
    scores = {n: error_fn(next(T for T in tensors if T.name == n), t) for n, t in types_alloc.items()}
    return QuantPlan.from_types("generic", tensors, types, reasons=reasons, scores=scores, importance="activation",
                                budget_bpw=config.budget_bpw, objectives={"chosen": total},
                                meta={"solver": solver})


def _lagrangian(tensors, rows, config, error_fn) -> tuple[dict[str, str], float]:
    alloc = [(T, r) for T, r in zip(tensors, rows) if r.allocated]
    if not alloc:
        raise ValueError("no allocatable (role='linear', 2-D) tensor was given")
    cands = [r.candidates for _, r in alloc]
    cost = [np.array([tensor_nbytes(t, T.shape) for t in c], np.float64) for (T, _), c in zip(alloc, cands)]
    err = [np.array([float(error_fn(T, t)) for t in c]) for (T, _), c in zip(alloc, cands)]
    n_tot = sum(T.numel for T, _ in alloc)
    budget = math.floor(config.budget_bpw * n_tot / 8.0 + 1e-9)
    if sum(c[0] for c in cost) > budget:
        raise ValueError(f"budget {config.budget_bpw:.4f} bpw is below the cheapest feasible assignment "
                         f"({8.0 * sum(c[0] for c in cost) / n_tot:.4f} bpw)")

    def pick(lam: float) -> list[int]:
        return [int(np.argmin(e + lam * c)) for e, c in zip(err, cost)]

    def total_cost(ch) -> float:
        return float(sum(c[j] for c, j in zip(cost, ch)))

    lo, hi = 0.0, 1.0
    while total_cost(pick(hi)) > budget:
        hi *= 4.0
        if hi > 1e300:
            break
    if total_cost(pick(lo)) <= budget:
        hi = lo
    for _ in range(200):
        if hi - lo <= 1e-12 * hi:
            break
        mid = 0.5 * (lo + hi)
        if total_cost(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    ch = pick(hi)
    # spend the slack: best error decrease per extra byte, any upgrade that fits
    slack = budget - total_cost(ch)
    while True:
        best = None
        for k, (e, c) in enumerate(zip(err, cost)):
            for j in range(len(c)):
                dc = c[j] - c[ch[k]]
                de = e[ch[k]] - e[j]
                if dc > 0 and dc <= slack and de > 0 and (best is None or de / dc > best[0]):
                    best = (de / dc, k, j, dc)
        if best is None:
            break
        _, k, j, dc = best
        ch[k] = j
        slack -= dc
    total = float(sum(e[j] for e, j in zip(err, ch)))
    return {T.name: c[j] for (T, _), c, j in zip(alloc, cands, ch)}, total
