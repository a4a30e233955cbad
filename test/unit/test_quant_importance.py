"""Activation importance and the baseline allocators (with a numpy stand-in for GGML's codecs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actquant_core.quant.allocate import AllocConfig, TensorSpec, allocate
from actquant_core.quant.importance import (
    ActivationImportanceAccumulator,
    plan_error_driven,
    plan_fisher_only,
    plan_hsic_only,
    plan_imatrix,
    plan_uniform,
    weighted_error_fn,
)
from actquant_core.quant.types import nominal_bpw, type_bpw

MENU = ("Q2_K", "Q3_K", "Q4_K", "Q6_K")


def _fake_quantize(W, t, imp):
    """Uniform grid with step 2^-bits: stands in for GGML (deterministic, error shrinks with bits)."""
    step = 2.0 ** -(nominal_bpw(t) - 1)
    return np.round(np.asarray(W, np.float32) / step).astype(np.float32).tobytes()


def _fake_dequantize(data, t, shape):
    step = 2.0 ** -(nominal_bpw(t) - 1)
    return np.frombuffer(data, np.float32).reshape(shape) * step


def test_activation_importance_matches_numpy_and_hooks():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    acc = ActivationImportanceAccumulator()
    handles = acc.attach({"fc.weight": lin})
    xs = [torch.randn(2, 4, 5), torch.randn(3, 5)]
    with torch.no_grad():
        for x in xs:
            lin(x)
    for h in handles:
        h.remove()
    flat = torch.cat([x.reshape(-1, 5) for x in xs]).numpy().astype(np.float64)
    np.testing.assert_allclose(acc.solve()["fc.weight"], (flat**2).mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        acc.add_batch("fc.weight", np.full((2, 5), np.nan))
    with pytest.raises(ValueError, match="column count"):
        acc.add_batch("fc.weight", np.ones((2, 4)))
    with pytest.raises(ValueError, match="no activation"):
        ActivationImportanceAccumulator().solve()


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    tensors = [TensorSpec(f"blk.{i // 2}.w{i}", (int(rng.integers(2, 6)), 256 * int(rng.integers(1, 3))),
                          layer=i // 2, score=float(rng.lognormal())) for i in range(6)]
    weights = {T.name: rng.standard_normal(T.shape).astype(np.float32) * float(rng.uniform(0.2, 3)) for T in tensors}
    imp = {T.name: rng.uniform(0.1, 2, T.shape[-1]).astype(np.float32) for T in tensors}
    return tensors, weights, imp


def test_weighted_error_fn_decreases_with_bits():
    tensors, weights, imp = _setup()
    err = weighted_error_fn(weights, imp, _fake_quantize, _fake_dequantize)
    T = tensors[0]
    e = [err(T, t) for t in MENU]
    assert all(a > b for a, b in zip(e, e[1:]))
    W = weights[T.name]
    ref = (imp[T.name] * (W - _fake_dequantize(_fake_quantize(W, "Q4_K", None), "Q4_K", W.shape)) ** 2).sum()
    assert e[2] == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("budget", [2.8, 3.6, 4.9])
def test_error_driven_lagrangian_vs_exact(budget):
    tensors, weights, imp = _setup(1)
    err = weighted_error_fn(weights, imp, _fake_quantize, _fake_dequantize)
    cfg = AllocConfig(budget_bpw=budget, menu=MENU)
    lag = plan_error_driven(tensors, cfg, err, solver="lagrangian")
    dp = plan_error_driven(tensors, cfg, err, solver="dp")
    for p in (lag, dp):
        assert p.bpw_backbone <= budget + 1e-12
        assert p.method == "generic"
        assert p.objectives["chosen"] == pytest.approx(sum(err(T, p.type_map()[T.name]) for T in tensors))
    assert lag.objectives["chosen"] >= dp.objectives["chosen"] * (1 - 1e-12)


def test_fixed_type_baselines_and_fallback():
    tensors = [TensorSpec("a", (4, 512), layer=0, score=1.0), TensorSpec("odd", (4, 96), layer=0, score=1.0),
               TensorSpec("n", (512,), role="norm")]
    for fn, method, imp in ((plan_uniform, "rtn", "none"), (plan_imatrix, "imatrix", "activation"),
                            (plan_fisher_only, "fisher-only", "fisher")):
        p = fn(tensors, "Q3_K", AllocConfig(budget_bpw=8.5, fallback_menu=("Q4_0", "Q5_0", "Q8_0")))
        assert p.method == method
        tm = p.type_map()
        assert tm["a"] == "Q3_K" and tm["n"] == "F32"
        assert tm["odd"] == "Q4_0" and type_bpw(tm["odd"]) >= type_bpw("Q3_K")  # compatible fallback
        assert p.importance_map()["a"] == imp and p.importance_map()["n"] == "none"
    assert plan_uniform(tensors, "Q3_K").type_map()["odd"] == "Q8_0"  # default fallback menu


def test_hsic_only_equals_allocation():
    tensors, _, _ = _setup(2)
    cfg = AllocConfig(budget_bpw=3.3, menu=MENU)
    p = plan_hsic_only(tensors, cfg)
    assert p.type_map() == allocate(tensors, cfg).types
    assert p.method == "hsic-only" and set(p.importance_map().values()) == {"activation"}
