"""QuantPlan: YAML round trip, apply-ready maps, diff, model checks."""

from __future__ import annotations

import pytest
import yaml

from actquant_core.quant.allocate import AllocConfig, TensorSpec, allocate
from actquant_core.quant.plan import PlanEntry, QuantPlan, diff_plans
from actquant_core.quant.types import tensor_nbytes


def _tensors():
    return [
        TensorSpec("blk.0.q", (256, 512), layer=0, score=2.0),
        TensorSpec("blk.0.k", (128, 512), layer=0, score=0.1),
        TensorSpec("blk.1.q", (256, 512), layer=1, score=0.5),
        TensorSpec("blk.1.odd", (32, 96), layer=1, score=1.0),
        TensorSpec("blk.0.norm", (512,), role="norm"),
        TensorSpec("token_embd", (100, 512), role="embedding"),
    ]


def _plan(budget=3.0):
    T = _tensors()
    alloc = allocate(T, AllocConfig(budget_bpw=budget, menu=("Q2_K", "Q3_K", "Q4_K", "Q8_0")))
    return QuantPlan.from_allocation("actquant", T, alloc, meta={"seed": 42}), alloc


def test_round_trip(tmp_path):
    plan, alloc = _plan()
    path = plan.save(tmp_path / "plan.yaml")
    back = QuantPlan.load(path)
    assert back == plan
    assert back.type_map() == alloc.types
    assert diff_plans(plan, back).identical
    raw = yaml.safe_load(path.read_text())
    assert raw["tensors"][0].keys() >= {"name", "shape", "type", "bits", "score", "reason"}


def test_bpw_and_maps_follow_entries():
    plan, alloc = _plan()
    assert plan.bpw_backbone == pytest.approx(alloc.bpw_backbone, rel=1e-12)
    assert plan.bpw_whole == pytest.approx(alloc.bpw_whole, rel=1e-12)
    assert plan.nbytes == sum(tensor_nbytes(e.ggml_type, e.shape) for e in plan.entries)
    imp = plan.importance_map()
    assert imp["blk.0.norm"] == "none" and imp["blk.0.q"] == "fisher"
    s = plan.summary()
    assert s["n_tensors"] == 6 and sum(s["type_counts"].values()) == 6
    assert plan.objectives["chosen"] == pytest.approx(alloc.objective)


def test_diff():
    a, _ = _plan(3.0)
    b, _ = _plan(6.0)
    d = diff_plans(a, b)
    assert d.changed and not d.only_a and not d.only_b
    assert d.bpw_backbone[1] > d.bpw_backbone[0]
    for name, ta, tb in d.changed:
        assert a.type_map()[name] == ta and b.type_map()[name] == tb
    c = QuantPlan(method="x", entries=a.entries[:-1])
    assert diff_plans(a, c).only_a == (a.entries[-1].name,)


def test_check_model_errors():
    plan, _ = _plan()
    shapes = {e.name: e.shape for e in plan.entries}
    plan.check_model(shapes)
    with pytest.raises(ValueError, match="does not have"):
        plan.check_model({k: v for k, v in shapes.items() if k != "blk.0.q"})
    with pytest.raises(ValueError, match="shape mismatch"):
        plan.check_model({**shapes, "blk.0.q": (512, 256)})
    with pytest.raises(ValueError, match="does not cover"):
        plan.check_model({**shapes, "extra.w": (4, 4)})
    plan.check_model({**shapes, "extra.w": (4, 4)}, require_all=False)


def test_entry_validation(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        PlanEntry("w", (4, 256), "Q4_K", bits=4.0)
    with pytest.raises(ValueError, match="multiple of 256"):
        PlanEntry("w", (4, 100), "Q4_K", bits=4.5)
    with pytest.raises(ValueError, match="unknown GGML type"):
        PlanEntry("w", (4, 256), "Q4_X", bits=4.5)
    e = PlanEntry("w", (4, 256), "Q4_K", bits=4.5)
    with pytest.raises(ValueError, match="duplicate"):
        QuantPlan("m", (e, e))
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"format_version": 99, "method": "m", "tensors": []}))
    with pytest.raises(ValueError, match="format_version"):
        QuantPlan.load(p)


def test_quantize_with_plan_passes_the_right_importance():
    import numpy as np

    from actquant_core.quant.plan import quantize_with_plan

    plan, _ = _plan()
    plan = QuantPlan(plan.method, tuple(
        PlanEntry(e.name, e.shape, e.ggml_type, e.bits, e.score, e.reason, e.role,
                  "activation" if e.name == "blk.0.k" else e.importance) for e in plan.entries))
    rng = np.random.default_rng(0)
    weights = {e.name: rng.standard_normal(e.shape).astype(np.float32) for e in plan.entries}
    fisher = {e.name: np.abs(rng.standard_normal(e.shape)) for e in plan.entries if e.importance == "fisher"}
    act = {"blk.0.k": np.ones(512)}
    seen = {}

    def fake(W, t, imp):
        seen[t, W.shape] = None if imp is None else imp.shape
        return W.astype(np.float16).tobytes()

    out = quantize_with_plan(plan, weights, fake, activation_importance=act, fisher=fisher)
    assert {n: t for n, (t, _) in out.items()} == plan.type_map()
    assert seen[plan.type_map()["blk.0.q"], (256, 512)] == (256, 512)  # per-element Fisher
    assert seen[plan.type_map()["blk.0.k"], (128, 512)] == (512,)  # per-column activation
    with pytest.raises(KeyError, match="importance"):
        quantize_with_plan(plan, weights, fake, activation_importance=act)


def test_product_defaults_resolve_what_is_not_given():
    """One resolution of actquant quantize's defaults (CLI, quantizer node, benches, demo cache key)."""
    from actquant_core.quant.types import (DEFAULT_MENU, DEFAULT_OUTPUT_ROWS, IQ2_FLOOR_MENU, product_defaults)

    d = product_defaults("actquant")
    assert d == {"stage2": "best", "noise": "output", "menu": IQ2_FLOOR_MENU, "output_rows": DEFAULT_OUTPUT_ROWS}
    # compensation keeps the paper's stage 2, and then the paper's noise model
    assert product_defaults("actquant", "gptq")["stage2"] == "fisher"
    assert product_defaults("actquant", "gptq")["noise"] == "bits"
    assert product_defaults("actquant", stage2="plain")["noise"] == "bits"
    assert product_defaults("rtn") == {"stage2": "fisher", "noise": "bits", "menu": DEFAULT_MENU,
                                       "output_rows": DEFAULT_OUTPUT_ROWS}
    # given values win; 0 rows means every row (None)
    g = product_defaults("actquant", stage2="fisher", noise="measured", menu=["Q4_K"], output_rows=0)
    assert g == {"stage2": "fisher", "noise": "measured", "menu": ("Q4_K",), "output_rows": None}
