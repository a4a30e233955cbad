"""`eval-actions` for OpenVLA-OFT GGUFs: the family-generic runtime path of evaluate_actions / runtime_actions
(deterministic L1 head, no noise), the CLI on a LeRobot-style dataset, and clear errors for mixed families."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actquant_core.constants import OFT_FAMILY, SIM_CAMERA_BASE, SIM_CAMERA_WRIST
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.quant.adapters import make_adapter
from actquant_core.quant.calibrate import CalibFrame
from actquant_core.quant.pipeline import (evaluate_actions, export_reference, gguf_policy, policy_horizon,
                                          runtime_actions)

# every weight of a random tiny OFT at Q4_K vs its F32 file: normalised L1 relative to the mean |action| of
# the reference (measured 0.38; random weights amplify quantization noise: Q8_0 0.04, F16 0.002)
MAX_REL_L1_Q4K = 0.6
# native F32 graph vs the torch reference (relative to the largest action), as in test_pipeline_oft
TOL_REF = 1e-4


def small_config():
    """openvla-oft-tiny with an LM whose rows are multiples of 256 (Q4_K fits every LM weight)."""
    return get_preset("openvla-oft-tiny").replace(lm_width=256, lm_mlp=256, num_heads=2, num_kv_heads=2)


def _frames(cfg, n=3, seed=0, size=24):
    rng = np.random.default_rng(seed)
    return [CalibFrame(images={SIM_CAMERA_BASE: rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                               SIM_CAMERA_WRIST: rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
                       state=rng.standard_normal(7).astype(np.float32), instruction=f"pick up the block {i}",
                       actions=rng.uniform(-0.9, 0.9, (cfg.chunk, 7)).astype(np.float32), episode=i, t=0)
            for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_oft")
    model = OftModel(small_config()).init_random(0).eval()
    adapter = make_adapter(OFT_FAMILY, model, norm_stats=None, tokenizer=SentencePieceTokenizer.small())
    f32 = export_reference(adapter, root / "ref-f32.gguf")
    q4 = export_reference(adapter, root / "q4_k.gguf", "Q4_K")
    q8 = export_reference(adapter, root / "q8_0.gguf", "Q8_0")
    return root, adapter, f32, q4, q8


def test_runtime_actions_match_torch_and_are_deterministic(files):
    import torch

    _, adapter, f32, _, _ = files
    frames = _frames(adapter.config, n=2)
    A, pre = runtime_actions(f32, frames, n_threads=1)
    c = adapter.config
    assert A.shape == (2, c.chunk, c.action_dim) and pre.config == c
    batch = adapter.prepare_batch(frames, torch.device("cpu"))
    want = adapter.policy_actions(batch, torch.Generator()).numpy()
    np.testing.assert_allclose(A, want, rtol=TOL_REF, atol=TOL_REF * np.abs(want).max())
    B, _ = runtime_actions(f32, frames, seed=123, n_threads=1)  # no noise input: the seed changes nothing
    np.testing.assert_array_equal(A, B)
    assert gguf_policy(f32) == (OFT_FAMILY, c) and policy_horizon(OFT_FAMILY, c) == c.chunk


def test_q4k_vs_f32_small_finite_error_and_f32_vs_itself_zero(files):
    _, adapter, f32, q4, q8 = files
    frames = _frames(adapter.config, n=3)
    A_ref, _ = runtime_actions(f32, frames, n_threads=1)
    err = evaluate_actions(q4, f32, frames, n_threads=1)
    err8 = evaluate_actions(q8, f32, frames, n_threads=1)
    assert err.n_frames == 3
    assert all(np.isfinite(v) for v in (err.l1, err.nmse, err.l1_robot, err.max_abs))
    assert 0.0 < err8.l1 < err.l1 < MAX_REL_L1_Q4K * float(np.abs(A_ref[..., :7]).mean())
    assert 0.0 < err8.nmse < err.nmse
    assert err.l1_robot == pytest.approx(err.l1)  # no norm stats: robot units = normalised units
    same = evaluate_actions(f32, f32, frames, n_threads=1)
    assert same.l1 == 0.0 and same.nmse == 0.0 and same.max_abs == 0.0


def test_mixed_families_and_missing_cameras_are_clear_errors(files, tmp_path):
    from actquant_core.policies.pi05.config import get_preset as pi05_preset
    from actquant_core.policies.pi05.model import Pi05Model
    from actquant_core.quant.adapters import Pi05Adapter

    _, adapter, f32, _, _ = files
    cfg = pi05_preset("pi05-small").replace(
        image_size=28, patch_size=14, vision_width=64, vision_depth=1, vision_mlp=64, vision_heads=2, lm_width=64,
        lm_depth=1, expert_depth=1, num_heads=2, head_dim=32, lm_mlp=64, expert_width=64, expert_mlp=64,
        action_horizon=4, max_token_len=12, discrete_state_input=False)
    pi05 = export_reference(Pi05Adapter(Pi05Model(cfg).init_random(0).eval(), None, SentencePieceTokenizer.small()),
                            tmp_path / "pi05.gguf")
    frames = _frames(adapter.config, n=1)
    with pytest.raises(ValueError, match=r"holds a 'pi05' policy but the reference .*ref-f32.gguf a 'openvla_oft' one"):
        evaluate_actions(pi05, f32, frames, n_threads=1)
    wrist_only = [CalibFrame({SIM_CAMERA_WRIST: frames[0].images[SIM_CAMERA_WRIST]}, frames[0].state, "x",
                             frames[0].actions)]
    with pytest.raises(ValueError, match="OFT slot 'full_image' is missing"):
        runtime_actions(f32, wrist_only, n_threads=1)


def test_cli_eval_actions_oft(files, capsys):
    from actquant_core.cli import main
    from actquant_core.sim.episodes import Episode, write_lerobot_episode, write_lerobot_meta

    root, adapter, f32, q4, _ = files
    rng = np.random.default_rng(0)
    data = root / "lerobot"
    metas = []
    for i in range(2):
        T = 3
        ep = Episode(f"pick up the block {i}", {c: rng.integers(0, 255, (T, 24, 24, 3), dtype=np.uint8)
                                                for c in (SIM_CAMERA_BASE, SIM_CAMERA_WRIST)},
                     rng.standard_normal((T, 7)).astype(np.float32), rng.standard_normal((T, 7)).astype(np.float32),
                     index=i)
        write_lerobot_episode(data, ep, task_index=i, compress=False)
        metas.append({"episode_index": i, "task_index": i, "task": ep.instruction, "key": "", "length": T,
                      "success": True, "seed": i})
    write_lerobot_meta(data, metas, [{"task_index": i, "task": m["task"], "key": ""} for i, m in enumerate(metas)],
                       fps=10.0, image_size=24, robot_type="ur3", cameras=(SIM_CAMERA_BASE, SIM_CAMERA_WRIST))
    out = root / "eval.json"
    assert main(["eval-actions", "--gguf", str(q4), str(f32), "--reference", str(f32), "--calib", str(data),
                 "--split", "all", "--frames", "2", "--threads", "1", "--json", str(out)]) == 0
    capsys.readouterr()
    res = json.loads(out.read_text())
    assert res[str(f32)]["l1"] == 0.0 and res[str(f32)]["n_frames"] == 2
    A_ref, _ = runtime_actions(f32, _frames(adapter.config, n=1), n_threads=1)
    assert 0.0 < res[str(q4)]["l1"] < MAX_REL_L1_Q4K * float(np.abs(A_ref[..., :7]).mean())


def test_gptq_oft_gguf_evaluates(files):
    """method gptq on OFT (Llama q/k/v/o/gate/up/down hooked through OftAdapter.rows) -> a GGUF that
    eval-actions runs against the F32 reference."""
    from actquant_core.quant.calibrate import CalibConfig
    from actquant_core.quant.pipeline import PipelineConfig, quantize_policy

    root, adapter, f32, q4, _ = files
    frames = _frames(adapter.config, n=3)
    cfg = PipelineConfig(method="gptq", bpw=4.5, menu=("Q2_K", "Q3_K", "Q4_K"), report=False, n_threads=1,
                         calib=CalibConfig(batch_size=3, progress=False, device="cpu"))
    res = quantize_policy(adapter, frames, out_path=root / "gptq.gguf", config=cfg)
    lm = {e.name for e in res.plan.entries if e.role == "linear"}
    assert len(lm) == 7 * adapter.config.lm_depth and set(res.gptq) == lm and set(res.gptq.values()) == {"gptq"}
    err = evaluate_actions(res.gguf_path, f32, frames, n_threads=1)
    q4_err = evaluate_actions(q4, f32, frames, n_threads=1)
    # only the LM is quantized (vision Q4_K fixed, projector / head F16): less error than every weight at Q4_K
    assert np.isfinite(err.l1) and 0.0 < err.l1 < q4_err.l1
