"""Allocator: budget met, exact solver optimal vs brute force, greedy <= exact, eligibility table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from actquant_core.quant.allocate import AllocConfig, TensorSpec, allocate, eligibility_table, separable_allocate, solve_mckp
from actquant_core.quant.types import DEFAULT_MENU, nominal_bpw, sort_menu, tensor_nbytes, type_bpw

MENU4 = ("IQ2_XXS", "Q2_K", "Q3_K", "Q4_K")
REL_TOL = 1e-12  # objective comparisons (float64 sums of a handful of terms)


def test_type_bpw_from_ggml_blocks_matches_paper_table():
    for t in DEFAULT_MENU:
        assert type_bpw(t) == pytest.approx(nominal_bpw(t), abs=1e-12), t
    assert type_bpw("Q4_K") == 144 * 8 / 256
    assert sort_menu(["Q8_0", "IQ1_S", "Q4_K"]) == ("IQ1_S", "Q4_K", "Q8_0")
    with pytest.raises(ValueError, match="unknown GGML type"):
        sort_menu(["Q4_K", "Q9_K"])
    with pytest.raises(ValueError, match="multiple of 256"):
        tensor_nbytes("Q4_K", (4, 100))


def _instance(seed: int, n: int = 6, layers: int = 3):
    rng = np.random.default_rng(seed)
    cols = rng.choice([256, 512, 768], size=n)
    rows = rng.integers(1, 5, size=n)
    return [TensorSpec(f"t{i}", (int(rows[i]), int(cols[i])), layer=i % layers, score=float(rng.lognormal(0, 1.5)))
            for i in range(n)]


def _brute(tensors, menu, budget_bpw, noise=None):
    noise = noise or (lambda T, t: 2.0 ** (-2 * nominal_bpw(t)))
    n_tot = sum(T.numel for T in tensors)
    budget_bytes = math.floor(budget_bpw * n_tot / 8 + 1e-9)
    best = (math.inf, None)
    for combo in itertools.product(menu, repeat=len(tensors)):
        cost = sum(tensor_nbytes(t, T.shape) for t, T in zip(combo, tensors))
        if cost > budget_bytes:
            continue
        S = {}
        for t, T in zip(combo, tensors):
            S[T.layer] = S.get(T.layer, 0.0) + T.score * noise(T, t)
        J = sum(v * v for v in S.values())
        if J < best[0]:
            best = (J, combo)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_is_optimal_and_greedy_not_better(seed):
    tensors = _instance(seed)
    rng = np.random.default_rng(100 + seed)
    budget = float(rng.uniform(2.2, 4.3))
    J_opt, combo = _brute(tensors, MENU4, budget)
    a = allocate(tensors, AllocConfig(budget_bpw=budget, menu=MENU4))
    assert a.exact_optimal
    assert a.exact_objective == pytest.approx(J_opt, rel=REL_TOL)
    assert a.greedy_objective >= a.exact_objective * (1 - REL_TOL)
    assert a.objective == pytest.approx(min(a.greedy_objective, a.exact_objective), rel=REL_TOL)
    assert a.bpw_backbone <= budget + 1e-12
    # the reported bpw is the real byte count of the chosen types
    n_tot = sum(T.numel for T in tensors)
    bytes_ = sum(tensor_nbytes(a.types[T.name], T.shape) for T in tensors)
    assert a.bpw_backbone == pytest.approx(8 * bytes_ / n_tot, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_measured_noise_is_solved_exactly(seed):
    """With a measured noise table (not monotone in bits, as real errors of IQ2 vs Q2_K can be) the exact
    solver still finds the brute-force optimum and the greedy queue is never better."""
    tensors = _instance(seed)
    rng = np.random.default_rng(200 + seed)
    table = {(T.name, t): float(rng.uniform(0.2, 1.0)) * 2.0 ** (-2 * nominal_bpw(t)) * (3.0 if t == "Q2_K" else 1.0)
             for T in tensors for t in MENU4}
    noise = lambda T, t: table[(T.name, t)]  # noqa: E731
    budget = float(rng.uniform(2.4, 4.0))
    J_opt, _ = _brute(tensors, MENU4, budget, noise)
    a = allocate(tensors, AllocConfig(budget_bpw=budget, menu=MENU4), noise_fn=noise)
    assert a.exact_optimal
    assert a.exact_objective == pytest.approx(J_opt, rel=REL_TOL)
    assert a.greedy_objective >= a.exact_objective * (1 - REL_TOL)
    assert a.bpw_backbone <= budget + 1e-12
    # the paper-model allocation, scored on the measured table, is never better than the measured optimum
    paper = allocate(tensors, AllocConfig(budget_bpw=budget, menu=MENU4))
    S: dict = {}
    for T in tensors:
        S[T.layer] = S.get(T.layer, 0.0) + T.score * noise(T, paper.types[T.name])
    assert sum(v * v for v in S.values()) >= a.objective * (1 - REL_TOL)
    with pytest.raises(ValueError, match="noise_fn gave"):
        allocate(tensors, AllocConfig(budget_bpw=budget, menu=MENU4), noise_fn=lambda T, t: float("nan"))


def test_coarse_dp_is_feasible_and_no_worse_than_rounded_bound():
    rng = np.random.default_rng(7)
    tensors = [TensorSpec(f"b{l}.{k}", (512, 1024), layer=l, score=float(rng.lognormal()))
               for l in range(8) for k in range(4)]
    exact = allocate(tensors, AllocConfig(budget_bpw=3.0, solver="exact", max_dp_states=1_000_000))
    coarse = allocate(tensors, AllocConfig(budget_bpw=3.0, solver="exact", max_dp_states=16))
    assert exact.exact_optimal and not coarse.exact_optimal
    assert coarse.bpw_backbone <= 3.0 + 1e-12
    assert coarse.objective >= exact.objective * (1 - REL_TOL)


def test_higher_score_gets_more_bits():
    tensors = [TensorSpec("hot", (8, 256), layer=0, score=100.0), TensorSpec("cold", (8, 256), layer=1, score=0.01)]
    a = allocate(tensors, AllocConfig(budget_bpw=4.0, menu=MENU4))
    assert type_bpw(a.types["hot"]) > type_bpw(a.types["cold"])


def test_budget_below_cheapest_is_a_clear_error():
    tensors = _instance(0)
    with pytest.raises(ValueError, match="below the cheapest feasible assignment"):
        allocate(tensors, AllocConfig(budget_bpw=1.9, menu=MENU4))


def test_eligibility_table_and_fallbacks():
    tensors = [
        TensorSpec("blk.0.q", (256, 512), layer=0, score=1.0),
        TensorSpec("blk.0.odd32", (64, 96), layer=0, score=1.0),  # 96 % 32 == 0, % 256 != 0
        TensorSpec("blk.0.odd", (64, 100), layer=0, score=1.0),  # fits no quant block
        TensorSpec("blk.0.norm", (512,), role="norm"),
        TensorSpec("blk.0.bias", (256,), role="bias"),
        TensorSpec("token_embd", (1000, 512), role="embedding"),
        TensorSpec("expert.w", (64, 256), role="keep"),
    ]
    cfg = AllocConfig(budget_bpw=4.5, menu=("Q2_K", "Q4_K", "Q8_0"))
    rows = {r.name: r for r in eligibility_table(tensors, cfg)}
    assert rows["blk.0.q"].candidates == ("Q2_K", "Q4_K", "Q8_0") and not rows["blk.0.q"].fallback
    assert rows["blk.0.odd32"].candidates == ("Q8_0",) and rows["blk.0.odd32"].fallback
    assert "excludes" in rows["blk.0.odd32"].reason
    assert rows["blk.0.odd"].candidates == ("F16",) and rows["blk.0.odd"].fallback
    assert rows["blk.0.norm"].candidates == ("F32",)
    assert rows["token_embd"].candidates == ("Q8_0",)
    assert rows["expert.w"].candidates == ("F16",)
    # menu without any 32-block type: the fallback menu applies
    rows2 = {r.name: r for r in eligibility_table(
        tensors, AllocConfig(budget_bpw=4.5, menu=("Q2_K", "Q4_K"), fallback_menu=("Q4_0", "Q5_0", "Q8_0")))}
    assert rows2["blk.0.odd32"].candidates == ("Q4_0", "Q5_0", "Q8_0")
    assert "fallback menu" in rows2["blk.0.odd32"].reason

    a = allocate(tensors, AllocConfig(budget_bpw=6.0, menu=("Q2_K", "Q4_K", "Q8_0")))
    assert a.n_fallbacks == 2
    assert set(a.types) == {T.name for T in tensors}
    whole_bits = sum(8 * tensor_nbytes(a.types[T.name], T.shape) for T in tensors)
    assert a.bpw_whole == pytest.approx(whole_bits / sum(T.numel for T in tensors), rel=1e-12)
    alloc_names = ["blk.0.q", "blk.0.odd32", "blk.0.odd"]
    alloc_bits = sum(8 * tensor_nbytes(a.types[n], next(T.shape for T in tensors if T.name == n)) for n in alloc_names)
    assert a.bpw_backbone == pytest.approx(alloc_bits / sum(T.numel for T in tensors if T.name in alloc_names))


def test_config_and_spec_validation():
    with pytest.raises(ValueError, match="budget_bpw"):
        AllocConfig(budget_bpw=-1)
    with pytest.raises(ValueError, match="base_type"):
        AllocConfig(budget_bpw=3, base_type="Q6_K", menu=MENU4)
    with pytest.raises(ValueError, match="role"):
        TensorSpec("x", (4, 256), role="weird")
    with pytest.raises(ValueError, match="score"):
        TensorSpec("x", (4, 256), score=float("nan"))
    with pytest.raises(ValueError, match="duplicate"):
        allocate([TensorSpec("x", (4, 256)), TensorSpec("x", (4, 256))], AllocConfig(budget_bpw=4.0))


def test_solve_mckp_matches_brute_force():
    rng = np.random.default_rng(3)
    groups = [[(int(rng.integers(0, 6)), float(rng.random())) for _ in range(3)] for _ in range(5)]
    B = 12
    best = math.inf
    for combo in itertools.product(range(3), repeat=5):
        if sum(groups[g][j][0] for g, j in enumerate(combo)) <= B:
            best = min(best, sum(groups[g][j][1] for g, j in enumerate(combo)))
    picks, val = solve_mckp(groups, B)
    assert val == pytest.approx(best, rel=REL_TOL)
    assert sum(groups[g][j][0] for g, j in enumerate(picks)) <= B
    assert sum(groups[g][j][1] for g, j in enumerate(picks)) == pytest.approx(val)


def test_separable_allocate_optimal():
    tensors = _instance(11, n=5, layers=5)
    errs = {T.name: float(i + 1) for i, T in enumerate(tensors)}

    def err(T, t):
        return errs[T.name] * 2.0 ** (-2 * nominal_bpw(t))

    types, total, bpw = separable_allocate(tensors, AllocConfig(budget_bpw=3.2, menu=MENU4), err)
    n_tot = sum(T.numel for T in tensors)
    best = math.inf
    for combo in itertools.product(MENU4, repeat=len(tensors)):
        if sum(tensor_nbytes(t, T.shape) for t, T in zip(combo, tensors)) <= math.floor(3.2 * n_tot / 8):
            best = min(best, sum(err(T, t) for T, t in zip(tensors, combo)))
    assert total == pytest.approx(best, rel=REL_TOL)
    assert bpw <= 3.2 + 1e-12
