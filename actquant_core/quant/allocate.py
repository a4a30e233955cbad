"""Stage 1 of ActQuant: per-tensor GGML type allocation under an average-bpw budget.

Reference: Akbari et al., "ActQuant: Sub-4-bit Action-Guided Quantization for Vision-Language-Action
Models", arXiv 2605.24011, stage 1.  Each allocated tensor ``T`` (in layer ``l``) has an action
sensitivity ``s_T`` (HSIC, see :mod:`.hsic`); a type of ``b_T`` bits contributes noise ``2^(-2 b_T)``;
the objective is

    J = sum_l ( sum_{T in l} s_T * 2^(-2 b_T) )^2
    subject to  sum_T n_T * bpw(t_T) <= budget_bpw * sum_T n_T      (n_T = parameters of T)

Two solvers are run and the better objective is kept (both are reported):

* greedy (the paper's): start every tensor at its base type; a priority queue of one-step upgrades
  keyed by objective gain per extra bit; apply the best that still fits; re-score the other tensors of
  the layer (lazy invalidation).
* exact: multiple-choice knapsack by dynamic programming.  Inside a layer, a DP over cost minimises
  ``S_l = sum s_T 2^(-2 b_T)`` for every cost, giving the layer's Pareto frontier (cost, S_l^2); across
  layers a second DP over the budget picks one frontier point per layer.  Costs are tensor bytes above
  each tensor's cheapest option, in units of their greatest common divisor; that DP is provably
  optimal (``exact_optimal=True``).  When the budget exceeds ``max_dp_states`` units, costs are rounded
  *up* to a coarser unit (feasible, near-optimal, ``exact_optimal=False``) and the slack left over is
  then spent by the greedy queue (never increases J).

Noise model (beyond the paper, ``noise_fn``): instead of the idealised ``2^(-2 b_T)``, each candidate
type's noise can be *measured* for each tensor -- e.g. its relative Fisher-weighted quantization error
(``actquant_core.quant.pipeline``, ``PipelineConfig.noise="measured"``).  The idealised model ranks
IQ1_S/IQ2 types by their bit count only; measured errors show how much worse the sub-2-bit grids are on a
given tensor.  Both solvers work unchanged on any non-negative noise table.

Eligibility is a table with reasons (llama.cpp ``llama-quant.cpp`` habit): norms and biases stay F32,
the token embedding Q8_0, "keep" tensors F16; a linear tensor whose row length is not a multiple of 256
falls back to the 32-block menu (Q4_0/Q5_0/Q8_0), or to F16 when even that does not fit -- logged and
counted, never silent.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from .types import DEFAULT_MENU, FALLBACK_MENU, nominal_bpw, row_eligible, sort_menu, tensor_nbytes, type_bpw, validate_type_name

__all__ = [
    "ROLES",
    "TensorSpec",
    "AllocConfig",
    "EligibilityRow",
    "Allocation",
    "eligibility_table",
    "allocate",
    "layer_objective",
    "solve_mckp",
]

log = logging.getLogger(__name__)

#: Tensor roles and what the allocator does with them: (fixed type or None = allocated, reason).
ROLES: dict[str, str] = {
    "linear": "allocated by the solver",
    "embedding": "token embedding: fixed type (config.embedding_type)",
    "norm": "norm weight: high precision (config.norm_type)",
    "bias": "bias: high precision (config.norm_type)",
    "keep": "excluded from allocation (config.keep_type)",
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the model as the allocator sees it.

    Attributes:
        name: canonical tensor name.
        shape: torch shape ``[rows, cols]`` (row length ``cols`` = GGML ne0).
        role: one of :data:`ROLES`.
        layer: group of the layer-balanced objective (e.g. decoder block index); ``None`` = own group.
        score: action sensitivity ``s_T >= 0`` (ignored for non-linear roles).
    """

    name: str
    shape: tuple[int, ...]
    role: str = "linear"
    layer: int | str | None = None
    score: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.role not in ROLES:
            raise ValueError(f"TensorSpec {self.name!r}: role={self.role!r}; expected one of {sorted(ROLES)}")
        if len(self.shape) == 0 or any(s <= 0 for s in self.shape):
            raise ValueError(f"TensorSpec {self.name!r}: shape {self.shape} must be non-empty and positive")
        if not (math.isfinite(self.score) and self.score >= 0):
            raise ValueError(f"TensorSpec {self.name!r}: score must be finite and >= 0, got {self.score}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_len(self) -> int:
        return self.shape[-1]


@dataclass(frozen=True)
class AllocConfig:
    """Allocator configuration.

    Attributes:
        budget_bpw: parameter-weighted average bits per weight over the allocated (linear) tensors.
        menu: candidate GGML types (ordered by bpw internally; equal-cost duplicates keep the first
            listed).
        fallback_menu: types for linear tensors whose row length does not fit the menu's blocks.
        base_type: greedy start type (None = each tensor's cheapest eligible type).
        bits: "nominal" (paper table) or "actual" (GGML block bytes) bits in the noise model.
        solver: "best" (run both, keep the lower J), "greedy" or "exact".
        max_dp_states: budget units above which the exact DP coarsens its cost unit.
        embedding_type / norm_type / keep_type: fixed types of the non-allocated roles.
    """

    budget_bpw: float
    menu: tuple[str, ...] = DEFAULT_MENU
    fallback_menu: tuple[str, ...] = FALLBACK_MENU
    base_type: str | None = None
    bits: str = "nominal"
    solver: str = "best"
    max_dp_states: int = 100_000
    embedding_type: str = "Q8_0"
    norm_type: str = "F32"
    keep_type: str = "F16"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_bpw) and self.budget_bpw > 0):
            raise ValueError(f"AllocConfig.budget_bpw must be finite and > 0, got {self.budget_bpw}")
        object.__setattr__(self, "menu", tuple(self.menu))
        object.__setattr__(self, "fallback_menu", tuple(self.fallback_menu))
        sort_menu(self.menu)
        if self.fallback_menu:
            sort_menu(self.fallback_menu)
        for name in ("embedding_type", "norm_type", "keep_type"):
            validate_type_name(getattr(self, name))
        if self.base_type is not None and self.base_type not in self.menu:
            raise ValueError(f"AllocConfig.base_type={self.base_type!r} is not in the menu {self.menu}")
        if self.bits not in ("nominal", "actual"):
            raise ValueError(f"AllocConfig.bits={self.bits!r}; expected 'nominal' or 'actual'")
        if self.solver not in ("best", "greedy", "exact"):
            raise ValueError(f"AllocConfig.solver={self.solver!r}; expected best|greedy|exact")
        if self.max_dp_states < 16:
            raise ValueError(f"AllocConfig.max_dp_states must be >= 16, got {self.max_dp_states}")


@dataclass(frozen=True)
class EligibilityRow:
    """One row of the eligibility / fallback table.

    Attributes:
        name, shape, role: from the :class:`TensorSpec`.
        candidates: types the solver may choose (cheapest first); one entry for fixed roles.
        reason: why these candidates.
        fallback: True when the tensor could not use the configured menu (counted, logged).
    """

    name: str
    shape: tuple[int, ...]
    role: str
    candidates: tuple[str, ...]
    reason: str
    fallback: bool = False

    @property
    def allocated(self) -> bool:
        return self.role == "linear" and len(self.shape) >= 2


def _dedupe_menu(types: Sequence[str], bits: str, user_order: Sequence[str]) -> tuple[str, ...]:
    """Cheapest-first menu without equal-(cost, bits) duplicates (first in ``user_order`` wins)."""
    out: dict[tuple[float, float], str] = {}
    for t in sorted(types, key=lambda t: (type_bpw(t), user_order.index(t))):
        key = (type_bpw(t), _bits(t, bits))
        if key in out:
            log.debug("menu: %s has the same cost and bits as %s; keeping %s", t, out[key], out[key])
            continue
        out[key] = t
    return tuple(out.values())


def _bits(type_name: str, mode: str) -> float:
    return nominal_bpw(type_name) if mode == "nominal" else type_bpw(type_name)


def eligibility_table(tensors: Sequence[TensorSpec], config: AllocConfig) -> list[EligibilityRow]:
    """Candidate types and reason for every tensor (see module docstring for the rules)."""
    rows: list[EligibilityRow] = []
    menu = list(config.menu)
    for T in tensors:
        r = T.row_len
        fixed = {"embedding": config.embedding_type, "norm": config.norm_type, "bias": config.norm_type,
                 "keep": config.keep_type}.get(T.role)
        if T.role == "linear" and len(T.shape) < 2:
            fixed, why = config.norm_type, f"1-D tensor cannot be a linear weight: kept {config.norm_type}"
            rows.append(EligibilityRow(T.name, T.shape, T.role, (fixed,), why, fallback=True))
            continue
        if fixed is not None:
            if row_eligible(fixed, r):
                rows.append(EligibilityRow(T.name, T.shape, T.role, (fixed,), ROLES[T.role]))
            else:
                why = f"{ROLES[T.role]}; row length {r} does not fit {fixed} blocks: F16"
                rows.append(EligibilityRow(T.name, T.shape, T.role, ("F16",), why, fallback=True))
            continue
        ok = [t for t in menu if row_eligible(t, r)]
        if len(ok) == len(menu):
            rows.append(EligibilityRow(T.name, T.shape, T.role, _dedupe_menu(ok, config.bits, menu),
                                       ROLES["linear"]))
            continue
        dropped = [t for t in menu if t not in ok]
        if ok:
            why = f"row length {r} excludes {dropped}; allocated over the remaining menu"
            rows.append(EligibilityRow(T.name, T.shape, T.role, _dedupe_menu(ok, config.bits, menu), why, True))
            continue
        fb = [t for t in config.fallback_menu if row_eligible(t, r)]
        if fb:
            why = f"row length {r} is not a multiple of 256: fallback menu {fb}"
            rows.append(EligibilityRow(T.name, T.shape, T.role, _dedupe_menu(fb, config.bits, list(config.fallback_menu)),
                                       why, True))
        else:
            why = f"row length {r} fits no menu or fallback block size: F16"
            rows.append(EligibilityRow(T.name, T.shape, T.role, ("F16",), why, True))
    for row in rows:
        if row.fallback:
            log.warning("eligibility fallback: %s %s: %s", row.name, row.shape, row.reason)
    return rows


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate`.

    Attributes:
        types: tensor name -> GGML type, for every tensor given (allocated and fixed).
        reasons: tensor name -> reason (eligibility reason, plus the solver for allocated tensors).
        objective: J of the returned assignment.
        greedy_objective / exact_objective: J of each solver (None when not run).
        exact_optimal: the exact DP ran at the exact cost unit (its J is the true optimum).
        solver_used: which solver's assignment was returned ("greedy" or "exact").
        budget_bpw: the configured budget.
        bpw_backbone: achieved bpw over allocated tensors, from GGML block bytes.
        bpw_backbone_nominal: the same with the paper's nominal bpw.
        bpw_whole: bpw over every tensor given (fixed types included).
        n_fallbacks: eligibility rows with ``fallback=True``.
        eligibility: the eligibility table.
        layer_terms: layer -> ``S_l = sum_T s_T 2^(-2 b_T)`` of the returned assignment.
    """

    types: dict[str, str]
    reasons: dict[str, str]
    objective: float
    greedy_objective: float | None
    exact_objective: float | None
    exact_optimal: bool
    solver_used: str
    budget_bpw: float
    bpw_backbone: float
    bpw_backbone_nominal: float
    bpw_whole: float
    n_fallbacks: int
    eligibility: tuple[EligibilityRow, ...]
    layer_terms: dict[str, float] = field(default_factory=dict)


def layer_objective(scores: Sequence[float], bits: Sequence[float]) -> float:
    """``(sum_T s_T 2^(-2 b_T))^2`` of one layer."""
    return float(sum(s * 2.0 ** (-2.0 * b) for s, b in zip(scores, bits))) ** 2


class _Problem:
    """Flattened allocation problem over the allocated tensors."""

    def __init__(self, tensors: Sequence[TensorSpec], rows: Sequence[EligibilityRow], config: AllocConfig):
        self.idx = [i for i, r in enumerate(rows) if r.allocated]
        self.names = [tensors[i].name for i in self.idx]
        self.cands = [rows[i].candidates for i in self.idx]
        self.scores = np.array([tensors[i].score for i in self.idx], dtype=np.float64)
        self.numel = np.array([tensors[i].numel for i in self.idx], dtype=np.int64)
        self.bytes = [np.array([tensor_nbytes(t, tensors[i].shape) for t in c], dtype=np.int64)
                      for i, c in zip(self.idx, self.cands)]
        # noise 2^(-2b) per option (paper); measure_noise() replaces it
        self.noise = [np.array([2.0 ** (-2.0 * _bits(t, config.bits)) for t in c]) for c in self.cands]
        layer_keys: dict[str, int] = {}
        self.layer = []
        for i in self.idx:
            T = tensors[i]
            key = f"layer:{T.layer}" if T.layer is not None else f"tensor:{T.name}"
            self.layer.append(layer_keys.setdefault(key, len(layer_keys)))
        self.layer_names = list(layer_keys)
        self.members = [[k for k, l in enumerate(self.layer) if l == L] for L in range(len(layer_keys))]
        self.total_numel = int(self.numel.sum())
        self.budget_bytes = int(math.floor(config.budget_bpw * self.total_numel / 8.0 + 1e-9))

    def measure_noise(self, tensors: Sequence[TensorSpec], noise_fn: Callable[[TensorSpec, str], float]) -> None:
        """Noise of every option from ``noise_fn(spec, type)`` instead of ``2^(-2b)``."""
        self.noise = [np.array([float(noise_fn(tensors[i], t)) for t in c]) for i, c in zip(self.idx, self.cands)]
        for i, n in zip(self.idx, self.noise):
            if not (np.isfinite(n).all() and (n >= 0).all()):
                raise ValueError(f"noise_fn gave {n.tolist()} for {tensors[i].name}; expected finite values >= 0")

    def cost(self, choice: Sequence[int]) -> int:
        return int(sum(b[c] for b, c in zip(self.bytes, choice)))

    def layer_sum(self, choice: Sequence[int], L: int) -> float:
        return float(sum(self.scores[k] * self.noise[k][choice[k]] for k in self.members[L]))

    def objective(self, choice: Sequence[int]) -> float:
        return float(sum(self.layer_sum(choice, L) ** 2 for L in range(len(self.members))))


def _greedy(p: _Problem, start: list[int]) -> list[int]:
    """The paper's upgrade queue from ``start``: best gain per extra bit first, until nothing fits."""
    choice = list(start)
    remaining = p.budget_bytes - p.cost(choice)
    S = [p.layer_sum(choice, L) for L in range(len(p.members))]
    version = [0] * len(choice)
    heap: list[tuple[float, int, int]] = []

    def push(k: int) -> None:
        c = choice[k]
        if c + 1 >= len(p.cands[k]):
            return
        extra_bits = 8.0 * float(p.bytes[k][c + 1] - p.bytes[k][c])
        L = p.layer[k]
        S_new = S[L] + p.scores[k] * (p.noise[k][c + 1] - p.noise[k][c])
        gain = S[L] ** 2 - S_new**2
        heapq.heappush(heap, (-gain / max(extra_bits, 1e-12), k, version[k]))

    for k in range(len(choice)):
        push(k)
    while heap:
        _, k, ver = heapq.heappop(heap)
        if ver != version[k]:
            continue
        c = choice[k]
        step = int(p.bytes[k][c + 1] - p.bytes[k][c])
        if step > remaining:
            continue  # never fits later: remaining only shrinks
        L = p.layer[k]
        S[L] += p.scores[k] * (p.noise[k][c + 1] - p.noise[k][c])
        choice[k] = c + 1
        remaining -= step
        for j in p.members[L]:  # re-score the layer (S_l changed)
            version[j] += 1
            push(j)
    return choice


def solve_mckp(groups: Sequence[Sequence[tuple[int, float]]], budget_units: int) -> tuple[list[int], float]:
    """Exact multiple-choice knapsack: pick one option per group, ``sum cost <= budget``, min sum value.

    Args:
        groups: per group, options ``(cost_units >= 0, value)``.
        budget_units: integer budget.
    Returns ``(chosen option index per group, total value)``.  Raises ``ValueError`` when infeasible.
    Complexity ``O(budget * total options)`` in numpy.
    """
    B = int(budget_units)
    if B < 0:
        raise ValueError(f"budget_units must be >= 0, got {B}")
    dp = np.zeros(B + 1)  # dp[b]: min value with cost <= b (monotone formulation)
    back: list[np.ndarray] = []
    for g, opts in enumerate(groups):
        if not opts:
            raise ValueError(f"group {g} has no options")
        new = np.full(B + 1, np.inf)
        arg = np.full(B + 1, -1, dtype=np.int32)
        for j, (c, v) in enumerate(opts):
            c = int(c)
            if c < 0:
                raise ValueError(f"group {g} option {j} has negative cost {c}")
            if c > B:
                continue
            cand = dp[: B + 1 - c] + v
            better = cand < new[c:]
            new[c:][better] = cand[better]
            arg[c:][better] = j
        back.append(arg)
        dp = new
    if not np.isfinite(dp[B]):
        raise ValueError(f"multiple-choice knapsack infeasible at budget {B} units")
    picks = [0] * len(groups)
    b = B
    for g in range(len(groups) - 1, -1, -1):
        j = int(back[g][b])
        picks[g] = j
        b -= int(groups[g][j][0])
    return picks, float(dp[B])


def _exact(p: _Problem, max_states: int) -> tuple[list[int], bool]:
    """Layer frontier DP + cross-layer MCKP (see module docstring).  Returns (choice, optimal)."""
    base = [int(b[0]) for b in p.bytes]
    extra = [b - b[0] for b in p.bytes]
    slack = p.budget_bytes - sum(base)
    nz = [int(x) for e in extra for x in e if x > 0]
    g = reduce(math.gcd, nz, 0) or 1
    optimal = slack // g <= max_states
    unit = g if optimal else max(g, math.ceil(slack / max_states))
    B = slack // unit
    units = [np.ceil(e / unit).astype(np.int64) if not optimal else e // unit for e in extra]
    if not optimal:
        log.info("exact DP: budget %d bytes over unit %d B exceeds %d states; rounding costs up to %d B units",
                 slack, g, max_states, unit)
    groups: list[list[tuple[int, float]]] = []
    layer_choices: list[list[list[int]]] = []
    for members in p.members:
        cap = int(min(B, sum(int(units[k][-1]) for k in members)))
        # dp over exact cost within the layer: min S_l; back-pointers per member
        dp = np.full(cap + 1, np.inf)
        dp[0] = 0.0
        backs = []
        for k in members:
            new = np.full(cap + 1, np.inf)
            arg = np.full(cap + 1, -1, dtype=np.int16)
            for j, c in enumerate(units[k]):
                c = int(c)
                if c > cap:
                    continue
                cand = dp[: cap + 1 - c] + p.scores[k] * p.noise[k][j]
                better = cand < new[c:]
                new[c:][better] = cand[better]
                arg[c:][better] = j
            backs.append(arg)
            dp = new
        finite = np.isfinite(dp)
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(dp)[:-1]])
        pareto = np.flatnonzero(finite & (dp < prev_min * (1 - 1e-12)))  # strictly better S_l
        if pareto.size == 0:
            pareto = np.flatnonzero(finite)[:1]
        opts: list[tuple[int, float]] = []
        chs: list[list[int]] = []
        for c in pareto:
            b = int(c)
            ch = [0] * len(members)
            for m in range(len(members) - 1, -1, -1):
                j = int(backs[m][b])
                ch[m] = j
                b -= int(units[members[m]][j])
            opts.append((int(c), float(dp[c]) ** 2))
            chs.append(ch)
        groups.append(opts)
        layer_choices.append(chs)
    picks, _ = solve_mckp(groups, B)
    choice = [0] * len(p.names)
    for L, members in enumerate(p.members):
        for m, k in enumerate(members):
            choice[k] = layer_choices[L][picks[L]][m]
    return choice, optimal


def allocate(tensors: Sequence[TensorSpec], config: AllocConfig,
             noise_fn: Callable[[TensorSpec, str], float] | None = None) -> Allocation:
    """Assign a GGML type to every tensor under ``config.budget_bpw`` (see module docstring).

    ``noise_fn(spec, type) -> noise >= 0`` replaces the ``2^(-2 b)`` noise model (None = paper).

    Raises ``ValueError`` on duplicate names, no allocatable tensor, or a budget below the cheapest
    feasible assignment (the message gives that minimum in bpw).
    """
    names = [T.name for T in tensors]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate tensor names: {dup[:5]}")
    rows = eligibility_table(tensors, config)
    p = _Problem(tensors, rows, config)
    if not p.names:
        raise ValueError("no allocatable (role='linear', 2-D) tensor was given")
    cheapest = p.cost([0] * len(p.names))
    if cheapest > p.budget_bytes:
        raise ValueError(
            f"budget {config.budget_bpw:.4f} bpw is below the cheapest feasible assignment "
            f"({8.0 * cheapest / p.total_numel:.4f} bpw over {p.total_numel} allocated parameters)"
        )
    if noise_fn is not None:
        p.measure_noise(tensors, noise_fn)
    start = [0] * len(p.names)
    if config.base_type is not None:
        base = [list(c).index(config.base_type) if config.base_type in c else 0 for c in p.cands]
        if p.cost(base) <= p.budget_bytes:
            start = base
        else:
            log.warning("base type %s exceeds the budget; greedy starts from the cheapest types", config.base_type)
    greedy_choice = exact_choice = None
    exact_optimal = False
    if config.solver in ("best", "greedy"):
        greedy_choice = _greedy(p, start)
    if config.solver in ("best", "exact"):
        exact_choice, exact_optimal = _exact(p, config.max_dp_states)
        if not exact_optimal:
            exact_choice = _greedy(p, exact_choice)  # spend what rounding left over
    g_obj = p.objective(greedy_choice) if greedy_choice is not None else None
    e_obj = p.objective(exact_choice) if exact_choice is not None else None
    if e_obj is not None and (g_obj is None or e_obj <= g_obj):
        choice, used = exact_choice, "exact"
    else:
        choice, used = greedy_choice, "greedy"
    assert choice is not None
    if g_obj is not None and e_obj is not None:
        log.info("allocation: greedy J=%.6g, exact J=%.6g (optimal=%s), gap %.3g%%", g_obj, e_obj,
                 exact_optimal, 100.0 * (g_obj - e_obj) / max(e_obj, 1e-300))
    types: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for row in rows:
        types[row.name] = row.candidates[0]
        reasons[row.name] = row.reason
    for k, name in enumerate(p.names):
        types[name] = p.cands[k][choice[k]]
        reasons[name] = f"{rows[p.idx[k]].reason}; {used} solver (s={p.scores[k]:.4g})"
    bits_actual = sum(int(b[c]) for b, c in zip(p.bytes, choice)) * 8.0
    bits_nominal = sum(nominal_bpw(p.cands[k][choice[k]]) * int(p.numel[k]) for k in range(len(choice)))
    whole_bits = bits_actual + sum(8.0 * tensor_nbytes(types[T.name], T.shape)
                                   for T, r in zip(tensors, rows) if not r.allocated)
    whole_numel = sum(T.numel for T in tensors)
    return Allocation(
        types=types,
        reasons=reasons,
        objective=p.objective(choice),
        greedy_objective=g_obj,
        exact_objective=e_obj,
        exact_optimal=exact_optimal,
        solver_used=used,
        budget_bpw=config.budget_bpw,
        bpw_backbone=bits_actual / p.total_numel,
        bpw_backbone_nominal=bits_nominal / p.total_numel,
        bpw_whole=whole_bits / whole_numel,
        n_fallbacks=sum(r.fallback for r in rows),
        eligibility=tuple(rows),
        layer_terms={p.layer_names[L]: p.layer_sum(choice, L) for L in range(len(p.members))},
    )


def separable_allocate(
    tensors: Sequence[TensorSpec],
    config: AllocConfig,
    error_fn: Callable[[TensorSpec, str], float],
) -> tuple[dict[str, str], float, float]:
    """Exact allocation of a separable objective ``sum_T error_fn(T, t_T)`` under the same budget.

    Used by the LLM-generic baseline (:mod:`.importance`).  Returns ``(types of allocated tensors,
    total error, achieved backbone bpw)``.  Same unit / rounding rules as the exact ActQuant DP.
    """
    rows = eligibility_table(tensors, config)
    p = _Problem(tensors, rows, config)
    if not p.names:
        raise ValueError("no allocatable (role='linear', 2-D) tensor was given")
    cheapest = p.cost([0] * len(p.names))
    if cheapest > p.budget_bytes:
        raise ValueError(f"budget {config.budget_bpw:.4f} bpw is below the cheapest feasible assignment "
                         f"({8.0 * cheapest / p.total_numel:.4f} bpw)")
    by_name: Mapping[str, TensorSpec] = {T.name: T for T in tensors}
    err = [np.array([float(error_fn(by_name[n], t)) for t in c]) for n, c in zip(p.names, p.cands)]
    for n, e in zip(p.names, err):
        if not np.isfinite(e).all():
            raise ValueError(f"error_fn returned a non-finite error for {n}: {e}")
    extra = [b - b[0] for b in p.bytes]
    slack = p.budget_bytes - cheapest
    g = reduce(math.gcd, [int(x) for e in extra for x in e if x > 0], 0) or 1
    unit = g if slack // g <= config.max_dp_states else max(g, math.ceil(slack / config.max_dp_states))
    groups = [[(int(math.ceil(x / unit)), float(v)) for x, v in zip(e, ev)] for e, ev in zip(extra, err)]
    picks, total = solve_mckp(groups, slack // unit)
    types = {n: c[j] for n, c, j in zip(p.names, p.cands, picks)}
    return types, total, 8.0 * p.cost(picks) / p.total_numel
