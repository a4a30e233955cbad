"""Pipeline plan building: budgets, fixed table, scopes, uniform baselines, inactive tensors, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.quant.adapters import Pi05Adapter
from actquant_core.quant.calibrate import CalibrationResult
from actquant_core.quant.hsic import HsicConfig, HsicResult
from actquant_core.quant.pipeline import PipelineConfig, build_plan, quantize_policy, uniform_type_for
from actquant_core.quant.plan import QuantPlan
from actquant_core.quant.types import nominal_bpw


def small_config():
    """pi05-small structure at test size: every linear row length is a multiple of 256."""
    return get_preset("pi05-small").replace(
        image_size=28, patch_size=14, vision_width=256, vision_depth=1, vision_mlp=256, vision_heads=4,
        lm_width=256, lm_depth=2, expert_depth=2, num_heads=2, head_dim=128, lm_mlp=512, expert_width=256,
        expert_mlp=256, action_horizon=4, max_token_len=12, discrete_state_input=False)


@pytest.fixture(scope="module")
def adapter():
    model = Pi05Model(small_config()).init_random(0).eval()
    return Pi05Adapter(model, None, SentencePieceTokenizer.small())


def _fake_calibration(adapter, seed=0):
    rng = np.random.default_rng(seed)
    names = [t.name for t in adapter.linear_targets()]
    scores = {n: float(rng.uniform(0.0, 1.0)) for n in names}
    return CalibrationResult(hsic=HsicResult(scores=scores, terms={}, n=8, config=HsicConfig()), n_frames=8)


@pytest.mark.parametrize("bpw", [2.25, 3.0, 4.0])
@pytest.mark.parametrize("method", ["actquant", "hsic-only"])
def test_allocation_meets_budget_and_fixed_table(adapter, method, bpw):
    plan = build_plan(adapter, PipelineConfig(method=method, bpw=bpw), _fake_calibration(adapter))
    types = plan.type_map()
    assert plan.bpw_backbone <= bpw + 1e-9
    assert plan.bpw_backbone >= bpw - 0.5  # the budget is spent, not wasted (one step of the menu)
    lin = [e for e in plan.entries if e.role == "linear"]
    assert {e.name.split(".")[0] for e in lin} == {"lm"} and len(lin) == 7 * adapter.config.lm_depth
    assert types["lm.token_embd.weight"] == "Q8_0"
    assert types["ex.blk.0.attn_q.weight"] == "F16" and types["mm.proj.weight"] == "F16"
    assert types["v.position_embd.weight"] == "F32" and types["lm.blk.0.attn_norm.weight"] == "F32"
    # vision: the largest K-quant within the budget (Q2_K at least); the 588-wide patch conv falls back to F16
    assert types["v.blk.0.attn_q.weight"] == ("Q3_K" if bpw >= 3.4375 else "Q2_K")
    assert types["v.patch_embd.weight"] == "F16" and "fallback" in plan.entry("v.patch_embd.weight").reason
    want_imp = "fisher" if method == "actquant" else "activation"
    assert {e.importance for e in lin} == {want_imp}


def test_higher_score_never_gets_fewer_bits_within_a_layer(adapter):
    cal = _fake_calibration(adapter)
    names = [f"lm.blk.0.{k}.weight" for k in ("attn_q", "attn_output")]  # equal shapes [256, 256]
    cal.hsic.scores[names[0]], cal.hsic.scores[names[1]] = 10.0, 1e-4
    plan = build_plan(adapter, PipelineConfig(bpw=3.0), cal)
    assert plan.entry(names[0]).bits >= plan.entry(names[1]).bits


def test_scope_all_allocates_vision_expert_and_heads(adapter):
    plan = build_plan(adapter, PipelineConfig(bpw=3.0, scope="all"), _fake_calibration(adapter))
    lin = {e.name for e in plan.entries if e.role == "linear"}
    assert {"v.blk.0.attn_q.weight", "ex.blk.1.ffn_down.weight", "mm.proj.weight", "time.mlp_in.weight"} <= lin
    assert plan.bpw_backbone <= 3.0 + 1e-9
    backbone = build_plan(adapter, PipelineConfig(bpw=3.0), _fake_calibration(adapter))
    assert plan.bpw_whole < backbone.bpw_whole  # the expert leaves F16


def test_inactive_tensors_get_the_cheapest_type_and_free_bits(adapter):
    cal = _fake_calibration(adapter)
    base = build_plan(adapter, PipelineConfig(bpw=3.0), cal)
    cheap = build_plan(adapter, PipelineConfig(bpw=3.0, inactive="cheapest"), cal)
    dead = adapter.inactive_tensors()
    assert dead and all(cheap.entry(n).ggml_type == "IQ1_S" for n in dead)
    assert cheap.bpw_backbone <= 3.0 + 1e-9
    live = [e.name for e in cheap.entries if e.role == "linear" and e.name not in dead]
    assert sum(cheap.entry(n).bits for n in live) > sum(base.entry(n).bits for n in live)


@pytest.mark.parametrize("method,bpw,want", [("rtn", 3.0, "Q2_K"), ("rtn", 4.0, "Q3_K"), ("imatrix", 2.5, "IQ2_XS"),
                                             ("fisher-only", 2.25, "IQ2_XXS"), ("imatrix", 4.5, "Q4_K")])
def test_uniform_baselines(adapter, method, bpw, want):
    plan = build_plan(adapter, PipelineConfig(method=method, bpw=bpw), None)
    assert {e.ggml_type for e in plan.entries if e.role == "linear"} == {want}
    assert nominal_bpw(want) <= bpw


def test_budget_below_the_cheapest_type_is_a_clear_error(adapter):
    with pytest.raises(ValueError, match="below the cheapest"):
        build_plan(adapter, PipelineConfig(method="actquant", bpw=1.0), _fake_calibration(adapter))
    with pytest.raises(ValueError, match="below the cheapest type"):
        build_plan(adapter, PipelineConfig(method="rtn", bpw=2.5), None)
    with pytest.raises(ValueError, match="below the cheapest type"):
        uniform_type_for(1.0, ("Q2_K", "Q4_K"))


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="method='awq'"):
        PipelineConfig(method="awq")
    with pytest.raises(ValueError, match="bpw must be a finite number > 0, got nan"):
        PipelineConfig(bpw=float("nan"))
    with pytest.raises(ValueError, match="scope='vision'"):
        PipelineConfig(scope="vision")


def test_plan_round_trip_and_unknown_tensor_in_plan(adapter, tmp_path):
    plan = build_plan(adapter, PipelineConfig(bpw=3.0), _fake_calibration(adapter))
    back = QuantPlan.load(plan.save(tmp_path / "p.plan.yaml"))
    assert back == plan
    d = plan.to_dict()
    d["tensors"][0]["name"] = "lm.blk.99.attn_q.weight"
    bad = QuantPlan.from_dict(d)
    with pytest.raises(ValueError, match=r"plan names 1 tensor\(s\) the model does not have: \['lm\.blk\.99"):
        quantize_policy(adapter, [], 3.0, "actquant", tmp_path / "x.gguf", plan=bad)


def test_empty_calibration_set_in_quantize_policy(adapter, tmp_path):
    with pytest.raises(ValueError, match="calibration set is empty"):
        quantize_policy(adapter, [], 3.0, "actquant", tmp_path / "x.gguf",
                        config=PipelineConfig(split="all"))


def test_score_floor_and_unclipped_score(adapter):
    from actquant_core.quant.hsic import TensorHsic

    cal = _fake_calibration(adapter)
    lm = [e for e in _lm_names(adapter)]
    zero = lm[:6]
    for n in zero:
        cal.hsic.scores[n] = 0.0  # clipped sensitivity
    cal.hsic.terms.update({n: TensorHsic(0.1, 0.2, 0.1, 0.05 + i, 0.0, 0.0, cal.hsic.scores[n]) for i, n in enumerate(cal.hsic.scores)})
    paper = build_plan(adapter, PipelineConfig(bpw=3.0), cal)
    assert {paper.entry(n).ggml_type for n in zero} == {"IQ1_S"}
    floored = build_plan(adapter, PipelineConfig(bpw=3.0, score_floor=0.5), cal)
    mean_pos = np.mean([v for v in cal.hsic.scores.values() if v > 0])
    assert all(floored.entry(n).score == pytest.approx(0.5 * mean_pos) for n in zero)
    assert all(floored.entry(n).ggml_type != "IQ1_S" for n in zero) and floored.bpw_backbone <= 3.0 + 1e-9
    out_y = build_plan(adapter, PipelineConfig(bpw=3.0, score="hsic_out_y"), cal)
    assert out_y.entry(zero[0]).score == pytest.approx(cal.hsic.terms[zero[0]].hsic_out_y)


def _lm_names(adapter):
    return [t.name for t in adapter.tensor_table() if t.group == "backbone" and t.linear]


def test_measured_noise_allocation(adapter):
    """noise='measured': every candidate type's relative Fisher-weighted error is measured with the GGML codecs;
    the allocation meets the budget and, scored on those measured errors, is at least as good as the paper's
    2^(-2b) allocation; clear errors without a Fisher or with another method."""
    from actquant_core.quant.pipeline import measured_noise_fn

    cal = _fake_calibration(adapter)
    weights = adapter.canonical_weights()
    rng = np.random.default_rng(5)
    cal.fisher = {n: rng.uniform(0.1, 2.0, size=weights[n].shape).astype(np.float32) for n in _lm_names(adapter)}
    with pytest.raises(ValueError, match="noise 'measured' needs the Fisher"):
        build_plan(adapter, PipelineConfig(bpw=3.0, noise="measured"), _fake_calibration(adapter))
    with pytest.raises(ValueError, match="noise='measured' is a setting of method 'actquant'"):
        PipelineConfig(method="rtn", noise="measured")
    noise = measured_noise_fn(weights, cal.fisher, n_threads=1)
    menu = ("IQ1_S", "Q2_K", "Q3_K", "Q4_K", "Q8_0")  # a short menu keeps the measuring quick
    measured = build_plan(adapter, PipelineConfig(bpw=3.0, menu=menu, noise="measured", n_threads=1), cal, weights, 1,
                          noise_fn=noise)
    paper = build_plan(adapter, PipelineConfig(bpw=3.0, menu=menu), cal, weights)
    assert measured.bpw_backbone <= 3.0 + 1e-9 and measured.meta["noise"] == "measured"
    specs = {e.name: e for e in measured.entries if e.role == "linear"}
    some = next(iter(specs))
    from actquant_core.quant.allocate import TensorSpec

    spec = TensorSpec(some, tuple(weights[some].shape))
    assert noise(spec, "IQ1_S") > noise(spec, "Q2_K") > noise(spec, "Q4_K") > noise(spec, "Q8_0") > 0

    def objective(plan):  # the allocator's layer-balanced objective on the measured noise
        S: dict = {}
        for e in plan.entries:
            if e.role == "linear":
                layer = e.name.split(".")[2]
                S[layer] = S.get(layer, 0.0) + e.score * noise(TensorSpec(e.name, tuple(weights[e.name].shape)), e.ggml_type)
        return sum(v * v for v in S.values())

    assert objective(measured) <= objective(paper) * (1 + 1e-9)


@pytest.mark.parametrize("bpw", [2.25, 3.0])
def test_stage2_plain_drops_importance_only_where_the_type_allows(adapter, bpw):
    """stage2 "plain": same types as the paper's plan; importance "none" for every allocated tensor whose GGML type
    can be quantized without one, the Fisher kept for the types that require it (IQ1 / IQ2_XXS / IQ2_XS)."""
    from actquant_core import native

    cal = _fake_calibration(adapter)
    paper = build_plan(adapter, PipelineConfig(method="actquant", bpw=bpw), cal)
    plain = build_plan(adapter, PipelineConfig(method="actquant", bpw=bpw, stage2="plain"), cal)
    assert paper.type_map() == plain.type_map()
    for e in plain.entries:
        p = paper.entry(e.name)
        if p.importance != "fisher" or not (e.role == "linear" and e.name.startswith("lm.")):  # not allocated
            assert e == p, e.name
        elif native.type_traits(e.ggml_type)["requires_importance"]:
            assert e.importance == "fisher", e.name
        else:
            assert e.importance == "none" and "stage2 plain" in e.reason, e.name
    assert plain.meta["stage2"] == "plain"
    assert any(e.importance == "none" and e.role == "linear" for e in plain.entries)
    with pytest.raises(ValueError, match="stage2"):
        PipelineConfig(method="actquant", stage2="none")
    with pytest.raises(ValueError, match="stage2"):
        PipelineConfig(method="rtn", stage2="plain")
    with pytest.raises(ValueError, match="stage2"):
        PipelineConfig(method="actquant", stage2="plain", compensate="gptq")
    PipelineConfig(method="rtn", stage2="best")  # best: any method whose own quantizer is not GPTQ already
    with pytest.raises(ValueError, match="stage2='best'"):
        PipelineConfig(method="gptq", stage2="best")
    with pytest.raises(ValueError, match="stage2='best'"):
        PipelineConfig(method="actquant", stage2="best", compensate="gptq")


def test_needed_statistics_follows_the_config():
    from actquant_core.quant.pipeline import needed_statistics

    assert needed_statistics("actquant") == {"hsic": True, "activation": False, "fisher": True, "gram": False}
    best = needed_statistics("actquant", PipelineConfig(stage2="best", noise="output"))
    assert best["gram"] and best["activation"] and best["fisher"]
    assert needed_statistics("rtn")["fisher"] is False
    assert needed_statistics("rtn", PipelineConfig(method="rtn", stage2="best"))["gram"] is True
    assert needed_statistics("gptq")["gram"] is True
    with pytest.raises(ValueError, match="unknown method"):
        needed_statistics("nope")
    with pytest.raises(ValueError, match="stage2='best'"):
        PipelineConfig(noise="output")


def test_output_error_leaves_its_inputs_alone():
    """tr(dW G dW^T)/n against the numpy formula, for float32 and float64 inputs, without touching them."""
    from types import SimpleNamespace

    from actquant_core.quant.pipeline import output_error

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 16))
    g = SimpleNamespace(gram=X.T @ X, n=50)
    for dt in (np.float32, np.float64):
        W = rng.standard_normal((8, 16)).astype(dt)
        Wq = (W + 0.1 * rng.standard_normal((8, 16))).astype(dt)
        W0, Wq0 = W.copy(), Wq.copy()
        D = W.astype(np.float64) - Wq.astype(np.float64)
        np.testing.assert_allclose(output_error(W, Wq, g), np.einsum("rc,rc->", D @ g.gram, D) / 50, rtol=1e-12)
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(Wq, Wq0)


def test_output_noise_row_sample_is_the_rows_of_the_whole_search():
    """--output-noise-rows: every stage-2 candidate (Fisher / plain / activation importance, GPTQ) quantizes each
    row on its own, so the candidates of a row sample are bit-exactly those rows of the whole tensor's; the
    sampled noise is the output-error ratio on those rows, the sample is seeded per tensor and shared by every
    type, a tensor no taller than the sample is priced whole (and its winners cached), and the estimate is close
    to the whole tensor's."""
    from actquant_core import native
    from actquant_core.quant.allocate import TensorSpec
    from actquant_core.quant.calibrate import CalibrationResult
    from actquant_core.quant.gptq import GptqConfig, GramStats
    from actquant_core.quant.pipeline import output_error, output_noise_fn, stage2_candidates

    rng = np.random.default_rng(1)
    R, K, k = 384, 256, 96
    W = rng.standard_normal((R, K)).astype(np.float32)
    X = rng.standard_normal((400, 8)) @ rng.standard_normal((8, K)) + 0.3 * rng.standard_normal((400, K))  # correlated
    cal = CalibrationResult(activation_importance={"w": (X ** 2).mean(0).astype(np.float32)})
    cal.gram = {"w": GramStats(gram=X.T @ X, n=400)}
    cal.fisher = {"w": rng.uniform(0.1, 2.0, (R, K)).astype(np.float32)}
    cfg = GptqConfig(intra_group=16)

    def ggml(A, t, imp):
        return native.quantize(A, t, imp, n_threads=1)

    noise = output_noise_fn({"w": W}, cal, cfg, n_threads=1, sample_rows=k, seed=3)
    rows = noise.rows_of("w", R)
    assert rows.shape == (k,) and np.all(np.diff(rows) > 0) and rows[-1] < R
    again = output_noise_fn({"w": W}, cal, cfg, n_threads=1, sample_rows=k, seed=3)
    np.testing.assert_array_equal(again.rows_of("w", R), rows)
    assert not np.array_equal(noise.rows_of("other", R), rows)  # seeded by the tensor's name too
    assert noise.rows_of("short", k) is None  # no taller than the sample: every row
    spec = TensorSpec(name="w", shape=(R, K), score=1.0)
    Ws = np.ascontiguousarray(W[rows])
    for t in ("Q2_K", "IQ2_XS", "Q4_K"):
        full, _ = stage2_candidates("w", W, t, cal, cfg, ggml)
        part, errs = stage2_candidates("w", Ws, t, cal, cfg, ggml, rows=rows)
        assert set(part) == set(full) and "gptq" in part and "fisher" in part
        for c in part:
            np.testing.assert_array_equal(native.dequantize(part[c], t, Ws.shape),
                                          native.dequantize(full[c], t, W.shape)[rows], err_msg=f"{t} {c}")
        want = min(errs.values()) / output_error(Ws, np.zeros_like(Ws), cal.gram["w"])
        np.testing.assert_allclose(noise(spec, t), want, rtol=1e-12)
        whole = output_noise_fn({"w": W}, cal, cfg, n_threads=1)(spec, t)
        assert abs(noise(spec, t) / whole - 1) < 0.15, (t, noise(spec, t), whole)
    assert noise.best == {}  # sampled winners are not stage 2's bytes
    tall = output_noise_fn({"w": W}, cal, cfg, n_threads=1, sample_rows=R)
    assert tall.rows_of("w", R) is None and tall(spec, "Q2_K") > 0 and ("w", "Q2_K") in tall.best
    with pytest.raises(ValueError, match="sample_rows"):
        output_noise_fn({"w": W}, cal, cfg, sample_rows=0)


def test_output_noise_block_wise_pricing():
    """price_intra=False: GPTQ is priced block-wise (intra_group 0), every other setting as stage 2's; nothing is
    cached for stage 2, whose GPTQ still recurses; with the recursion the price is stage 2's own search."""
    from actquant_core import native
    from actquant_core.quant.allocate import TensorSpec
    from actquant_core.quant.calibrate import CalibrationResult
    from actquant_core.quant.gptq import GptqConfig, GramStats
    from actquant_core.quant.pipeline import output_error, output_noise_fn, stage2_candidates

    rng = np.random.default_rng(2)
    W = rng.standard_normal((64, 512)).astype(np.float32)
    X = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 512)) + 0.2 * rng.standard_normal((300, 512))
    cal = CalibrationResult(activation_importance={"w": (X ** 2).mean(0).astype(np.float32)})
    cal.gram = {"w": GramStats(gram=X.T @ X, n=300)}
    cfg = GptqConfig(intra_group=16, percdamp=0.02)
    spec = TensorSpec(name="w", shape=(64, 512), score=1.0)

    def ggml(A, t, imp):
        return native.quantize(A, t, imp, n_threads=1)

    flat = output_noise_fn({"w": W}, cal, cfg, n_threads=1, price_intra=False)
    deep = output_noise_fn({"w": W}, cal, cfg, n_threads=1)
    assert flat.price_cfg == GptqConfig(intra_group=0, percdamp=0.02) and deep.price_cfg == cfg
    base = output_error(W, np.zeros_like(W), cal.gram["w"])
    for t in ("Q2_K", "Q4_K"):
        _, errs = stage2_candidates("w", W, t, cal, GptqConfig(intra_group=0, percdamp=0.02), ggml)
        np.testing.assert_allclose(flat(spec, t), min(errs.values()) / base, rtol=1e-12)
        _, errs = stage2_candidates("w", W, t, cal, cfg, ggml)
        np.testing.assert_allclose(deep(spec, t), min(errs.values()) / base, rtol=1e-12)
    assert flat.best == {} and set(deep.best) == {("w", "Q2_K"), ("w", "Q4_K")}


def test_output_noise_without_a_gram_uses_the_diagonal_approximation():
    """A tensor without a Gram (row length over gptq.max_cols) is priced by the activation-weighted relative error,
    uniform weights without activation statistics, also for types that require an importance (IQ2_XXS)."""
    from actquant_core import native
    from actquant_core.quant.allocate import TensorSpec
    from actquant_core.quant.calibrate import CalibrationResult
    from actquant_core.quant.gptq import GptqConfig
    from actquant_core.quant.pipeline import output_noise_fn

    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 256)).astype(np.float32)
    spec = TensorSpec(name="w", shape=(8, 256), score=1.0)
    for act in (None, rng.uniform(0.1, 2.0, 256).astype(np.float32)):
        cal = CalibrationResult(activation_importance=None if act is None else {"w": act})
        cal.gram = {"other": object()}  # some Gram exists, none for "w"
        noise = output_noise_fn({"w": W}, cal, GptqConfig(), n_threads=1)
        a = np.ones(256, np.float32) if act is None else act
        for t in ("IQ2_XXS", "Q4_K"):
            D = W.astype(np.float64) - native.dequantize(native.quantize(W, t, a), t, W.shape)
            want = float((D * D * a).sum() / (W.astype(np.float64) ** 2 * a).sum())
            np.testing.assert_allclose(noise(spec, t), want, rtol=1e-9)
        assert noise(spec, "IQ2_XXS") > noise(spec, "Q4_K") > 0.0 and noise(spec, "F16") == 0.0
