"""GPTQ on GGML's grids (actquant_core.quant.gptq): output error vs RTN / imatrix on correlated inputs,
bytes = GGML's bytes of the updated weight (gguf.quants agrees), identity Hessian = plain GGML quantize,
Gram accumulation, bad input, and the ``gptq`` method through the pipeline to a GGUF the runtime loads."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from actquant_core import native
from actquant_core.quant.gptq import (GptqConfig, GptqError, GramAccumulator, GramStats, gptq_eligible, gptq_factor,
                                      gptq_quantize, gptq_tensors, hessian_from_gram)

# GPTQ's output error ||X W^T - X Ŵ^T|| must be at most this fraction of the better of RTN / imatrix on
# inputs with a shared low-rank component, 4 blocks per row (measured ~0.2 for Q4_K and Q3_K at this size)
GPTQ_MARGIN = 0.4
# ... and the recursion inside a block (intra_group 16) at most this fraction of block-wise GPTQ alone
# (measured ~0.4)
INTRA_MARGIN = 0.7
# pipeline (4 frames: fewer token rows than columns, so H is low-rank and GPTQ removes most of the error in
# its span): calibration output error of every GPTQ tensor below this fraction of imatrix's (measured <= 0.17)
PIPELINE_MARGIN = 0.5
# float64 Gram of a float32 batch vs numpy float64
TOL_GRAM = 1e-9


def _layer(seed=0, rows=32, cols=1024, n=2048, rank=16):
    """W [rows, cols] and inputs X [n, cols] = low-rank shared factors + noise (strongly correlated columns)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, cols)) + 0.3 * rng.standard_normal((n, cols))
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    return W, X


def _q(W, t, imp):
    return native.quantize(W, t, imp, n_threads=1)


def _out_err(X, W, Wq):
    return float(np.linalg.norm(X @ (W.astype(np.float64) - Wq).T))


@pytest.mark.parametrize("t", ["Q4_K", "Q3_K"])
def test_gptq_beats_rtn_and_imatrix_on_output_error(t):
    W, X = _layer()
    H = 2.0 * X.T @ X / X.shape[0]
    imp = np.square(X).mean(0).astype(np.float32)
    rtn = _out_err(X, W, native.dequantize(_q(W, t, None), t, W.shape))
    imx = _out_err(X, W, native.dequantize(_q(W, t, imp), t, W.shape))
    res = gptq_quantize(W, t, H, imp, quantize=_q)
    gptq = _out_err(X, W, native.dequantize(res.data, t, W.shape))
    assert gptq <= GPTQ_MARGIN * min(rtn, imx), (t, gptq, rtn, imx)
    assert res.loss > 0 and res.dead_columns == 0
    blockwise = gptq_quantize(W, t, H, imp, config=GptqConfig(intra_group=0), quantize=_q)
    assert gptq <= INTRA_MARGIN * _out_err(X, W, native.dequantize(blockwise.data, t, W.shape))
    assert res.loss < blockwise.loss  # the OBS proxy agrees
    # the recursion only runs for tensors of at most intra_max_cols columns: a narrower limit gives exactly the
    # block-wise bytes, a limit at the row length keeps the recursion
    cols = W.shape[1]
    narrow = gptq_quantize(W, t, H, imp, config=GptqConfig(intra_max_cols=cols - 1), quantize=_q)
    assert narrow.data == blockwise.data
    assert gptq_quantize(W, t, H, imp, config=GptqConfig(intra_max_cols=cols), quantize=_q).data == res.data


@pytest.mark.parametrize("t", ["Q4_K", "Q3_K", "Q8_0"])
def test_bytes_are_ggml_bytes_of_the_updated_weight(t):
    W, X = _layer(seed=1, rows=8, cols=256 * 2)
    H = 2.0 * X.T @ X / X.shape[0]
    imp = np.square(X).mean(0).astype(np.float32)
    res = gptq_quantize(W, t, H, imp, quantize=_q)
    # blocks are independent along a row: per-block bytes concatenated == one quantize of the final weight
    assert res.data == _q(res.weight, t, imp)
    assert not np.array_equal(res.weight, W)  # errors were propagated
    # block-wise only: the first block is quantized as it is (nothing was propagated into it yet)
    plain = gptq_quantize(W, t, H, imp, config=GptqConfig(intra_group=0), quantize=_q)
    assert plain.data == _q(plain.weight, t, imp)
    bs = 32 if t == "Q8_0" else 256
    np.testing.assert_array_equal(plain.weight[:, :bs], W[:, :bs])
    ours = native.dequantize(res.data, t, W.shape)
    theirs = gguf_dequantize(np.frombuffer(res.data, np.uint8).reshape(W.shape[0], -1), GGMLQuantizationType[t])
    np.testing.assert_array_equal(ours, theirs.reshape(W.shape))


@pytest.mark.parametrize("t", ["Q4_K", "Q2_K", "Q8_0"])
def test_identity_hessian_is_plain_ggml_quantize(t):
    W, _ = _layer(seed=2, rows=8, cols=512)
    imp = np.random.default_rng(3).uniform(0.5, 2.0, 512).astype(np.float32)
    for importance in (imp, None):
        res = gptq_quantize(W, t, np.eye(512), importance, quantize=_q)
        assert res.data == _q(W, t, importance)
        np.testing.assert_array_equal(res.weight, W)


def test_gram_accumulator_streams_xtx():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 5, 16)).astype(np.float32) for _ in range(3)]
    acc = GramAccumulator(max_cols=16)
    for x in xs:
        acc.add_batch("w", torch.from_numpy(x))
    st = acc.solve()["w"]
    flat = np.concatenate([x.reshape(-1, 16) for x in xs]).astype(np.float64)
    assert st.n == 45
    np.testing.assert_allclose(st.gram, flat.T @ flat, rtol=TOL_GRAM, atol=TOL_GRAM)
    np.testing.assert_allclose(hessian_from_gram(st), 2.0 * flat.T @ flat / 45, rtol=TOL_GRAM)
    with pytest.raises(ValueError, match="exceed the Gram limit max_cols=8"):
        GramAccumulator(max_cols=8).add_batch("wide", xs[0])
    bad = xs[0].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="w: activation contains NaN"):
        acc.add_batch("w", bad)
    with pytest.raises(ValueError, match="column count changed from 16 to 8"):
        acc.add_batch("w", xs[0][..., :8])


def test_hessian_factor_is_reused_across_types_bit_exactly():
    """gptq_tensors(factors=...): the Hessian is factored once per tensor and the cached factor gives the same
    bytes at every type as factoring it each time; a factor of another width is refused by name."""
    W, X = _layer(seed=3, rows=8, cols=512)
    g = {"w": GramStats(gram=X.T @ X, n=X.shape[0])}
    imp = {"w": np.square(X).mean(0).astype(np.float32)}
    cfg = GptqConfig()
    factors: dict = {}
    for t in ("Q2_K", "IQ3_S", "Q4_K"):
        fresh, st = gptq_tensors({"w": W}, {"w": t}, g, imp, cfg, _q, native.dequantize)
        cached, st2 = gptq_tensors({"w": W}, {"w": t}, g, imp, cfg, _q, native.dequantize, factors=factors)
        assert st == st2 == {"w": "gptq"} and cached["w"] == fresh["w"], t
    assert set(factors) == {"w"} and tuple(factors["w"].U.shape) == (512, 512)
    f = gptq_factor(hessian_from_gram(g["w"]), cfg, "w")
    torch.testing.assert_close(f.U, factors["w"].U, rtol=0, atol=0)
    with pytest.raises(GptqError, match="w: factor shape \\(512, 512\\) does not match 256 weight columns"):
        gptq_quantize(W[:, :256], "Q4_K", None, factor=f, quantize=_q, name="w")
    with pytest.raises(GptqError, match="Hessian must be square"):
        gptq_factor(np.ones((4, 3)))


def test_bad_input_is_a_clear_error_or_a_logged_fallback(caplog):
    W, X = _layer(seed=5, rows=4, cols=256)
    H = 2.0 * X.T @ X / X.shape[0]
    Hn = H.copy()
    Hn[0, 1] = np.nan
    with pytest.raises(GptqError, match="Hessian contains NaN"):
        gptq_quantize(W, "Q4_K", Hn, quantize=_q)
    with pytest.raises(GptqError, match="row length 200 is not a multiple of Q4_K's block size 256"):
        gptq_quantize(W[:, :200], "Q4_K", H[:200, :200], quantize=_q)
    neg = -np.eye(256)  # negative definite: damping (1 % of a negative mean) cannot fix it
    with pytest.raises(GptqError, match="not positive definite after damping percdamp=0.01"):
        gptq_quantize(W, "Q4_K", neg, quantize=_q)
    with pytest.raises(GptqError, match="F16 is not a quantized type"):
        gptq_quantize(W, "F16", H, quantize=_q)
    with pytest.raises(ValueError, match="percdamp must be finite and >= 0, got -1"):
        GptqConfig(percdamp=-1)
    assert gptq_eligible("Q4_K", (4, 512), GptqConfig(max_cols=256)) == \
        "row length 512 exceeds gptq max_cols=256 (Gram memory bound)"
    # the pipeline's per-tensor driver falls back to imatrix quantization, logged, for a non-PD H / no Gram
    imp = np.square(X).mean(0).astype(np.float32)
    grams = {"a": GramStats(-np.eye(256), 10), "b": GramStats(X.T @ X, X.shape[0])}
    with caplog.at_level(logging.WARNING, logger="actquant_core.quant.gptq"):
        data, status = gptq_tensors({"a": W, "b": W, "c": W}, {"a": "Q4_K", "b": "Q4_K", "c": "Q4_K"}, grams,
                                    {"a": imp, "b": imp, "c": imp}, GptqConfig(), _q, native.dequantize)
    assert status["b"] == "gptq" and data["b"] == gptq_quantize(W, "Q4_K", hessian_from_gram(grams["b"]), imp,
                                                                  quantize=_q).data
    assert status["a"].startswith("imatrix fallback: a: Hessian is not positive definite") and data["a"] == _q(W, "Q4_K", imp)
    assert status["c"] == "imatrix fallback: c: no Gram statistics were collected" and data["c"] == _q(W, "Q4_K", imp)
    assert "GPTQ fallback" in caplog.text


def test_nan_calibration_input_names_the_tensor():
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.quant.adapters import Pi05Adapter
    from actquant_core.quant.calibrate import CalibConfig, calibrate

    adapter = Pi05Adapter(_tiny_pi05().init_random(0).eval(), None, SentencePieceTokenizer.small())
    frames = _frames(adapter.config, 2)
    name = "lm.blk.0.attn_q.weight"
    mod = adapter.model.get_submodule(next(t.module for t in adapter.linear_targets() if t.name == name))
    h = mod.register_forward_pre_hook(lambda m, inp: (inp[0].masked_fill(torch.ones_like(inp[0], dtype=torch.bool), float("nan")),))
    try:
        with pytest.raises(ValueError, match="NaN or Inf activation at 'lm.blk.0.attn_q.weight'"):
            calibrate(adapter, frames, CalibConfig(progress=False, device="cpu"), gram_targets=[name])
    finally:
        h.remove()


# ----------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------


def _tiny_pi05():
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.model import Pi05Model

    cfg = get_preset("pi05-small").replace(
        image_size=28, patch_size=14, vision_width=256, vision_depth=1, vision_mlp=256, vision_heads=4,
        lm_width=256, lm_depth=2, expert_depth=2, num_heads=2, head_dim=128, lm_mlp=512, expert_width=256,
        expert_mlp=256, action_horizon=4, max_token_len=12, discrete_state_input=False)
    return Pi05Model(cfg)


def _frames(cfg, n, seed=0):
    from actquant_core.quant.calibrate import CalibFrame

    rng = np.random.default_rng(seed)
    return [CalibFrame(images={"base_0_rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
                       state=rng.standard_normal(7).astype(np.float32), instruction=f"put the cube {i}",
                       actions=rng.standard_normal((cfg.action_horizon, 7)).astype(np.float32), episode=i)
            for i in range(n)]


def test_gptq_plan_falls_back_above_max_cols():
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.quant.adapters import Pi05Adapter
    from actquant_core.quant.pipeline import PipelineConfig, build_plan

    adapter = Pi05Adapter(_tiny_pi05(), None, SentencePieceTokenizer.small())
    plan = build_plan(adapter, PipelineConfig(method="gptq", bpw=4.5, gptq=GptqConfig(max_cols=256)), None)
    lin = [e for e in plan.entries if e.role == "linear"]
    down = {e.name for e in lin if e.name.endswith("ffn_down.weight")}  # the only 512-wide rows
    assert set(plan.meta["gptq_fallbacks"]) == down and set(plan.meta["gptq_tensors"]) == {e.name for e in lin} - down
    assert all("imatrix (no GPTQ: row length 512 exceeds gptq max_cols=256" in plan.entry(n).reason for n in down)
    assert {e.importance for e in lin} == {"activation"} and {e.ggml_type for e in lin} == {"Q4_K"}


def test_pipeline_gptq_writes_a_gguf_that_loads(tmp_path):
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.quant.adapters import Pi05Adapter
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy
    from actquant_core.quant.plan import QuantPlan

    adapter = Pi05Adapter(_tiny_pi05().init_random(0).eval(), None, SentencePieceTokenizer.small())
    frames = _frames(adapter.config, 4)
    cfg = PipelineConfig(method="gptq", bpw=4.5, menu=("Q2_K", "Q3_K", "Q4_K"), report=False, n_threads=1,
                         calib=CalibConfig(batch_size=4, progress=False, device="cpu"))
    res = quantize_policy(adapter, frames, out_path=tmp_path / "gptq.gguf", config=cfg)
    plan = res.plan
    lin = {e.name for e in plan.entries if e.role == "linear"}
    assert plan.method == "gptq" and {plan.entry(n).ggml_type for n in lin} == {"Q4_K"}
    assert set(plan.meta["gptq_tensors"]) == lin and not plan.meta["gptq_fallbacks"]
    assert set(res.gptq) == lin and set(res.gptq.values()) == {"gptq"} and set(res.calibration.gram) == lin
    assert QuantPlan.load(res.plan_path).meta["gptq_tensors"] == plan.meta["gptq_tensors"]
    assert _runtime_actions(res, adapter, frames)[0].plan_summary["method"] == "gptq"
    # the written bytes lower the calibration output error tr(D G Dᵀ), D = W - Ŵ, vs imatrix quantization
    ratios = _gptq_vs_imatrix_output_error(res, adapter, lin)
    assert max(ratios.values()) < PIPELINE_MARGIN, ratios
    # re-applying the plan (same frames) reproduces the file
    res2 = quantize_policy(adapter, frames, out_path=tmp_path / "gptq2.gguf", plan=res.plan_path, config=cfg)
    assert res2.gguf_path.read_bytes() == res.gguf_path.read_bytes()


def _runtime_actions(res, adapter, frames):
    """Loads the written GGUF in the runtime and runs one frame; asserts finite actions. Returns (runtime, actions)."""
    from actquant_core.runtime import load_runtime

    rt = load_runtime(res.gguf_path, n_threads=1)
    inp = rt.preprocessor(frames[0].images, frames[0].state, frames[0].instruction)
    a, _, _ = rt.infer_model_inputs(inp, np.zeros((adapter.config.action_horizon, adapter.config.action_dim), np.float32))
    assert np.isfinite(a).all()
    return rt, a


def _gptq_vs_imatrix_output_error(res, adapter, names):
    """name -> tr(D G Dᵀ) of the written (GPTQ) bytes / that of imatrix quantization at the tensor's planned type."""
    weights = adapter.canonical_weights()
    imp = res.calibration.activation_importance
    ratios = {}
    for name in sorted(names):
        t = res.plan.entry(name).ggml_type
        G, W = res.calibration.gram[name].gram, weights[name].astype(np.float64)
        out_err = {}
        for kind, raw in (("gptq", _tensor_bytes(res.gguf_path, name)),
                          ("imatrix", native.quantize(weights[name], t, imp[name], n_threads=1))):
            D = W - native.dequantize(raw, t, W.shape)
            out_err[kind] = float(np.sum((D @ G) * D))
        ratios[name] = out_err["gptq"] / out_err["imatrix"]
    return ratios


def _tensor_bytes(path, name):
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(path).tensors if t.name == name)
    return bytes(np.asarray(t.data).tobytes())


def test_cli_accepts_gptq_options():
    from actquant_core.cli import build_parser

    args = build_parser().parse_args(["quantize", "--checkpoint", "random:pi05-small", "--calib", "x", "-o", "y.gguf",
                                      "--method", "gptq", "--gptq-damp", "0.05", "--gptq-max-cols", "4096",
                                      "--gptq-intra-group", "32", "--gptq-intra-max-cols", "0"])
    assert (args.method, args.gptq_damp, args.gptq_max_cols, args.gptq_intra_group) == ("gptq", 0.05, 4096, 32)
    assert args.gptq_intra_max_cols == 0  # 0 = every tensor (GptqConfig.intra_max_cols None)
    with pytest.raises(ValueError, match="intra_max_cols must be >= 1 or None"):
        GptqConfig(intra_max_cols=0)


def test_actquant_with_gptq_compensation(tmp_path):
    """actquant + compensate='gptq': the HSIC allocation's mixed types, each allocated tensor GPTQ-quantized at
    its own type (bytes = GPTQ of that type, lower calibration output error than plain quantization), a GGUF
    that loads, and a plan that re-applies to the same bytes."""
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.quant.adapters import Pi05Adapter
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy

    adapter = Pi05Adapter(_tiny_pi05().init_random(0).eval(), None, SentencePieceTokenizer.small())
    frames = _frames(adapter.config, 4)
    with pytest.raises(ValueError, match="compensate='gptq' is a setting of method 'actquant'"):
        PipelineConfig(method="rtn", compensate="gptq")
    cfg = PipelineConfig(method="actquant", compensate="gptq", score_floor=0.5, bpw=3.0,
                         menu=("Q2_K", "Q3_K", "Q4_K", "Q6_K"), report=False, n_threads=1,
                         calib=CalibConfig(batch_size=4, progress=False, device="cpu"))
    res = quantize_policy(adapter, frames, out_path=tmp_path / "aq.gguf", config=cfg)
    plan = res.plan
    lin = {e.name for e in plan.entries if e.role == "linear"}
    assert plan.method == "actquant" and plan.meta["compensate"] == "gptq" and plan.bpw_backbone <= 3.0 + 1e-9
    assert len({plan.entry(n).ggml_type for n in lin}) > 1  # mixed types from the allocator
    assert set(plan.meta["gptq_tensors"]) == lin and set(res.gptq.values()) == {"gptq"}
    assert {plan.entry(n).importance for n in lin} == {"activation"}
    _runtime_actions(res, adapter, frames)
    ratios = _gptq_vs_imatrix_output_error(res, adapter, lin)
    assert max(ratios.values()) < PIPELINE_MARGIN, ratios
    res2 = quantize_policy(adapter, frames, out_path=tmp_path / "aq2.gguf", plan=res.plan_path, config=cfg)
    assert res2.gguf_path.read_bytes() == res.gguf_path.read_bytes()


def test_quantize_policy_with_measured_noise(tmp_path):
    """noise='measured' through quantize_policy (the CLI path): Fisher collected, plan meta says so, GGUF loads."""
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.quant.adapters import Pi05Adapter
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy

    adapter = Pi05Adapter(_tiny_pi05().init_random(0).eval(), None, SentencePieceTokenizer.small())
    frames = _frames(adapter.config, 4)
    cfg = PipelineConfig(method="actquant", noise="measured", bpw=3.0, menu=("Q2_K", "Q3_K", "Q4_K", "Q6_K"),
                         report=False, n_threads=1, calib=CalibConfig(batch_size=4, progress=False, device="cpu"))
    res = quantize_policy(adapter, frames, out_path=tmp_path / "m.gguf", config=cfg)
    assert res.plan.meta["noise"] == "measured" and res.plan.bpw_backbone <= 3.0 + 1e-9
    assert res.calibration.fisher and _runtime_actions(res, adapter, frames)[0].plan_summary["method"] == "actquant"
