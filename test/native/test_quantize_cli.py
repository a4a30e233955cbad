"""`actquant quantize / export / eval-actions` end to end on a test-size pi05-small (random weights, synthetic
LeRobot-style episodes): outputs load in the native runtime and run, the plan meets the budget, re-applying
the plan gives identical bytes, clear CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actquant_core.cli import main
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.quant.plan import QuantPlan
from actquant_core.quant.types import DEFAULT_OUTPUT_ROWS
from actquant_core.runtime.pi05 import Pi05Runtime
from actquant_core.runtime.types import Observation

# actions of a quantized random policy stay within this normalised L1 of the F32 one (measured ~0.03 at 3 bpw)
MAX_L1_3BPW = 0.5


def small_config():
    return get_preset("pi05-small").replace(
        image_size=28, patch_size=14, vision_width=256, vision_depth=1, vision_mlp=256, vision_heads=4,
        lm_width=256, lm_depth=2, expert_depth=2, num_heads=2, head_dim=128, lm_mlp=512, expert_width=256,
        expert_mlp=256, action_horizon=4, max_token_len=12, discrete_state_input=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from actquant_core.policies.common.normalize import NormStats
    from actquant_core.sim.episodes import Episode, write_lerobot_episode, write_lerobot_meta
    from actquant_core.train.pi05 import quantile_stats, save_trained

    root = tmp_path_factory.mktemp("quantize_cli")
    rng = np.random.default_rng(0)
    data = root / "lerobot"
    metas, states, actions = [], [], []
    for i in range(3):
        T = 4
        ep = Episode(f"put the cube {i}", {c: rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8)
                                           for c in ("base_0_rgb", "left_wrist_0_rgb")},
                     rng.standard_normal((T, 7)).astype(np.float32), rng.standard_normal((T, 7)).astype(np.float32),
                     index=i)
        write_lerobot_episode(data, ep, task_index=i, compress=False)
        metas.append({"episode_index": i, "task_index": i, "task": ep.instruction, "key": "", "length": T,
                      "success": True, "seed": i})
        states.append(ep.state)
        actions.append(ep.action)
    write_lerobot_meta(data, metas, [{"task_index": i, "task": m["task"], "key": ""} for i, m in enumerate(metas)],
                       fps=10.0, image_size=32, robot_type="ur3", cameras=("base_0_rgb", "left_wrist_0_rgb"))
    model = Pi05Model(small_config()).init_random(0).eval()
    ns = NormStats(state=quantile_stats(np.concatenate(states)), actions=quantile_stats(np.concatenate(actions)))
    ckpt = root / "ckpt"
    save_trained(ckpt, model, ns, SentencePieceTokenizer.small(), {"note": "random weights (test)"})
    return root, ckpt, data


def _quantize(ckpt, data, out, *extra):
    return main(["quantize", "--checkpoint", str(ckpt), "--calib", str(data), "-o", str(out), "--calib-frames", "6",
                 "--split", "all", "--device", "cpu", "--no-progress", "--threads", "2", *extra])


def _run(path, cfg):
    rt = Pi05Runtime(path, n_threads=2)
    rng = np.random.default_rng(1)
    obs = Observation({"base_0_rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
                      rng.standard_normal(7).astype(np.float32), "put the cube 0")
    chunk = rt.infer(obs, noise=rng.standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32))
    assert chunk.actions.shape == (cfg.action_horizon, 7) and np.isfinite(chunk.actions).all()
    return rt


def test_quantize_reapply_and_eval(workdir, capsys):
    root, ckpt, data = workdir
    cfg = small_config()
    out = root / "aq3.gguf"
    assert _quantize(ckpt, data, out, "--bpw", "3.0", "--method", "actquant") == 0
    summary = json.loads(capsys.readouterr().out)
    plan = QuantPlan.load(root / "aq3.plan.yaml")
    assert plan.method == "actquant" and plan.bpw_backbone <= 3.0 + 1e-9 and summary["bpw_backbone"] == plan.bpw_backbone
    assert (root / "aq3.report.md").exists() and (root / "aq3.report.types.png").stat().st_size > 1000
    rt = _run(out, cfg)
    assert rt.plan_summary["method"] == "actquant"
    # re-applying the plan (same calibration frames and seed) gives the same bytes
    out2 = root / "aq3-replan.gguf"
    assert _quantize(ckpt, data, out2, "--plan", str(root / "aq3.plan.yaml"), "--no-report") == 0
    capsys.readouterr()
    assert out2.read_bytes() == out.read_bytes()
    # an F32 export equals the reference exactly; the 3-bpw policy is close but not equal
    f32 = root / "f32.gguf"
    assert main(["export", str(ckpt), "-o", str(f32), "--type", "f32"]) == 0
    capsys.readouterr()
    res_json = root / "eval.json"
    assert main(["eval-actions", "--gguf", str(out), str(f32), "--reference", str(ckpt), "--calib", str(data),
                 "--split", "all", "--frames", "3", "--threads", "2", "--json", str(res_json)]) == 0
    res = json.loads(res_json.read_text())
    assert res[str(f32)]["l1"] == 0.0 and res[str(f32)]["nmse"] == 0.0
    assert 0.0 < res[str(out)]["l1"] < MAX_L1_3BPW and res[str(out)]["nmse"] > 0.0


def test_stage2_best_picks_the_smallest_output_error_and_reapplies(workdir, capsys):
    """--stage2 best: per allocated tensor the candidate (Fisher / plain / activation / GPTQ) with the smallest
    layer-output error tr(dW G dW^T)/n; the file's bytes give exactly the error the plan records, never above the
    Fisher candidate's, and re-applying the plan gives the same bytes."""
    import re

    from actquant_core import native
    from actquant_core.gguf import read_policy_gguf  # noqa: F401  (the module the runtime loads with)
    from actquant_core.quant import pipeline as P

    root, ckpt, data = workdir
    out = root / "best.gguf"
    assert _quantize(ckpt, data, out, "--bpw", "3.0", "--method", "actquant", "--stage2", "best", "--noise", "bits",
                     "--no-report") == 0
    capsys.readouterr()
    plan = QuantPlan.load(root / "best.plan.yaml")
    assert plan.meta["stage2"] == "best" and sum(plan.meta["stage2_choices"].values()) > 0
    chosen = [e for e in plan.entries if "stage2 best" in e.reason]
    assert chosen and all(e.ggml_type not in ("F32", "F16") for e in chosen)
    assert any(e.name.startswith("v.") for e in chosen)  # fixed-type tensors (vision tower) are weighed too
    # recompute each recorded error from the file's bytes and the calibration Gram
    adapter = P.load_policy(str(ckpt))
    cfg = P.PipelineConfig(method="actquant", bpw=3.0, calib_frames=6, split="all",
                           calib=P.CalibConfig(device="cpu", progress=False))
    frames = P._frames_from(str(data), adapter, cfg, None)
    cal = P.calibrate(adapter, frames, cfg.calib, gram_targets=[e.name for e in chosen])
    weights = adapter.canonical_weights()
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(out).tensors}
    for e in chosen:
        m = re.search(r"stage2 best: (\w+) \(output error ([0-9.e+-]+), planned fisher ([0-9.e+-]+)\)", e.reason)
        assert m, e.reason
        kind, err, fisher_err = m.group(1), float(m.group(2)), float(m.group(3))
        assert err <= fisher_err * (1 + 1e-6)
        W = np.asarray(weights[e.name], np.float32).reshape(-1, e.shape[-1])
        Wq = native.dequantize(bytes(tensors[e.name].data), e.ggml_type, W.shape)
        np.testing.assert_allclose(P.output_error(W, Wq, cal.gram[e.name]), err, rtol=2e-3)
        assert (kind == "gptq") == (e.name in plan.meta.get("gptq_tensors", []))
    _run(out, small_config())
    out2 = root / "best-replan.gguf"
    assert _quantize(ckpt, data, out2, "--plan", str(root / "best.plan.yaml"), "--no-report") == 0
    capsys.readouterr()
    assert out2.read_bytes() == out.read_bytes()


def test_output_noise_prices_each_type_at_the_written_error(workdir, capsys):
    """--noise output: the allocator's noise of every allocated tensor at its chosen type is the relative layer-output
    error tr(dW G dW^T) / tr(W G W^T) of the bytes the file holds (stage 2 reuses the winners found while
    allocating), the budget holds, cheaper types are never priced below dearer ones' errors by construction of
    the search, and the plan re-applies to the same bytes."""
    from gguf import GGUFReader

    from actquant_core import native
    from actquant_core.quant import pipeline as P

    root, ckpt, data = workdir
    out = root / "outnoise.gguf"
    menu = "Q2_K,Q3_K,Q4_K,Q6_K"
    assert _quantize(ckpt, data, out, "--bpw", "3.5", "--method", "actquant", "--stage2", "best", "--noise", "output",
                     "--menu", menu, "--no-report") == 0
    capsys.readouterr()
    plan = QuantPlan.load(root / "outnoise.plan.yaml")
    assert plan.meta["noise"] == "output" and plan.bpw_backbone <= 3.5 + 1e-9
    allocated = [e for e in plan.entries if e.ggml_type in menu.split(",") and "stage2 best" in e.reason
                 and e.name.startswith("lm.")]
    assert allocated and len({e.ggml_type for e in allocated}) >= 1
    adapter = P.load_policy(str(ckpt))
    cfg = P.PipelineConfig(method="actquant", bpw=3.5, calib_frames=6, split="all",
                           calib=P.CalibConfig(device="cpu", progress=False))
    frames = P._frames_from(str(data), adapter, cfg, None)
    names = [e.name for e in allocated]
    cal = P.calibrate(adapter, frames, cfg.calib, importance_targets=names, gram_targets=names)
    fisher, *_ = P.calibrate_fisher(adapter, frames, cfg.calib, names)
    cal.fisher = fisher
    weights = adapter.canonical_weights()
    noise = P.output_noise_fn(weights, cal, cfg.gptq, n_threads=2)
    tensors = {t.name: t for t in GGUFReader(out).tensors}
    specs = {s.name: s for s in P._allocated_specs(adapter.tensor_table(), "backbone", None)}
    for e in allocated:
        W = np.asarray(weights[e.name], np.float64).reshape(-1, e.shape[-1])
        G = cal.gram[e.name]
        Wq = native.dequantize(bytes(tensors[e.name].data), e.ggml_type, W.shape).astype(np.float64)
        rel = P.output_error(W, Wq, G) / (P.output_error(W, np.zeros_like(W), G))
        np.testing.assert_allclose(noise(specs[e.name], e.ggml_type), rel, rtol=2e-3)
        assert noise(specs[e.name], "Q2_K") >= noise(specs[e.name], "Q6_K")
    out2 = root / "outnoise-replan.gguf"
    assert _quantize(ckpt, data, out2, "--plan", str(root / "outnoise.plan.yaml"), "--no-report") == 0
    capsys.readouterr()
    assert out2.read_bytes() == out.read_bytes()
    # priced without the GPTQ candidate ("fast"): never below the full search's error, no winner cached for
    # stage 2 (it searches again, GPTQ included), and the CLI runs it
    fast = P.output_noise_fn(weights, cal, cfg.gptq, n_threads=2, price_gptq=False)
    for e in allocated:
        assert fast(specs[e.name], e.ggml_type) >= noise(specs[e.name], e.ggml_type) * (1 - 1e-9)
        W = np.asarray(weights[e.name], np.float32).reshape(-1, e.shape[-1])
        cands, _ = P.stage2_candidates(e.name, W, e.ggml_type, cal, cfg.gptq,
                                       lambda W, t, imp: native.quantize(W, t, imp, n_threads=2), gptq=False)
        assert "gptq" not in cands and cands
    assert fast.best == {}
    out3 = root / "outnoise-fast.gguf"
    assert _quantize(ckpt, data, out3, "--bpw", "3.5", "--noise", "output", "--output-noise-candidates", "fast",
                     "--output-noise-rows", "8", "--menu", menu, "--no-report") == 0
    secs = json.loads(capsys.readouterr().out)["seconds"]
    assert 0.0 < secs["output_pricing"] <= secs["plan"]
    plan3 = QuantPlan.load(root / "outnoise-fast.plan.yaml")
    assert plan3.meta["noise"] == "output" and plan3.meta["stage2"] == "best" and plan3.bpw_backbone <= 3.5 + 1e-9
    assert plan3.meta["output_candidates"] == "fast" and plan3.meta["output_rows"] == 8
    # the default row sample: a sampled tensor's winners are not reused, stage 2 searches its whole rows, so the
    # file still holds each type's whole-tensor best (the exact match with the unsampled noise above)
    assert plan.meta["output_candidates"] == "all" and plan.meta["output_rows"] == DEFAULT_OUTPUT_ROWS


def test_output_noise_needs_stage2_best(workdir, capsys):
    root, ckpt, data = workdir
    with pytest.raises((SystemExit, ValueError)) as ei:
        rc = _quantize(ckpt, data, root / "x.gguf", "--noise", "output", "--stage2", "fisher", "--no-report")
        raise SystemExit(rc)
    assert ei.value.args and ei.value.args[0] != 0
    assert "stage2='best'" in (capsys.readouterr().err + str(ei.value))


@pytest.mark.parametrize("method,extra", [("rtn", ()), ("imatrix", ()), ("hsic-only", ()), ("fisher-only", ()),
                                          ("generic", ("--menu", "Q2_K,Q4_K")), ("gptq", ()),
                                          ("actquant", ("--scope", "all", "--inactive", "cheapest", "--noise", "bits"))])
def test_every_method_loads_and_runs(workdir, capsys, method, extra):
    root, ckpt, data = workdir
    out = root / f"{method}.gguf"
    assert _quantize(ckpt, data, out, "--bpw", "3.5", "--method", method, "--no-report", *extra) == 0
    capsys.readouterr()
    plan = QuantPlan.load(root / f"{method}.plan.yaml")
    assert plan.bpw_backbone <= 3.5 + 1e-9
    # the CLI's stage 2 default: "best" for actquant (no --compensate), every baseline keeps its own quantizer
    assert (plan.meta.get("stage2") == "best") == (method == "actquant"), plan.meta.get("stage2")
    if method == "actquant":  # … and the menu without the 1-bit codebooks
        from actquant_core.quant.types import IQ2_FLOOR_MENU

        assert tuple(plan.meta["menu"]) == IQ2_FLOOR_MENU and plan.meta["score_floor"] == 0.5
        assert not any(e.ggml_type.startswith("IQ1") for e in plan.entries)
    _run(out, small_config())


def test_cli_errors_are_clear(workdir, capsys):
    root, ckpt, data = workdir
    assert _quantize(ckpt, data, root / "bad.gguf", "--bpw", "1.0") == 1
    assert "below the cheapest feasible assignment" in capsys.readouterr().err
    assert _quantize(ckpt, data, root / "bad.gguf", "--split", "holdout", "--holdout-every", "9") == 1
    assert "calibration set is empty" in capsys.readouterr().err


def test_refine_never_worse_and_runs(workdir):
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy
    from actquant_core.quant.refine import RefineConfig

    root, ckpt, data = workdir
    cfg = PipelineConfig(method="fisher-only", bpw=4.5, menu=("Q2_K", "Q4_K"), refine=True, split="all", vision_type="Q8_0",
                         calib_frames=4, report=False, n_threads=2,
                         refine_config=RefineConfig(iterations=1, window=1, d_factors=(1.0,), device="cpu"),
                         calib=CalibConfig(progress=False, device="cpu"))
    res = quantize_policy(ckpt, data, out_path=root / "refined.gguf", config=cfg)
    lm = [e.name for e in res.plan.entries if e.role == "linear"]
    assert set(res.refine) == set(lm) and {res.plan.entry(n).ggml_type for n in lm} == {"Q4_K"}
    assert all(after <= before for before, after in res.refine.values())
    assert sum(b - a for b, a in res.refine.values()) > 0  # the wider search finds something
    _run(root / "refined.gguf", small_config())
