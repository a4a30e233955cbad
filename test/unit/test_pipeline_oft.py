"""OpenVLA-OFT through the ActQuant pipeline: OftAdapter tensor table / pooling / Fisher loss parts, and
quantize_policy on a random tiny OFT model -> a GGUF the native OftRuntime loads and runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actquant_core.constants import OFT_FAMILY, SIM_CAMERA_BASE, SIM_CAMERA_WRIST
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.quant.adapters import OftAdapter, make_adapter
from actquant_core.quant.calibrate import CalibConfig, CalibFrame
from actquant_core.quant.pipeline import PipelineConfig, export_reference, load_policy, quantize_policy

# float32 forward vs float64 manual pooling of the same activations
TOL_POOL = 1e-5
# budget check slack (float sums of bits * params)
TOL_BPW = 1e-9
# native F32 graph vs torch float32 (relative to the largest action)
TOL_REF = 1e-4
MENU = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def small_config():
    """openvla-oft-tiny with an LM whose rows are multiples of 256 (every K / IQ type is eligible)."""
    return get_preset("openvla-oft-tiny").replace(lm_width=256, lm_mlp=256, num_heads=2, num_kv_heads=2)


def _frames(cfg, n=6, seed=0, size=24):
    """Synthetic simulator frames: the sim's two cameras, a 7-d state, a [chunk, 7] action chunk."""
    rng = np.random.default_rng(seed)
    return [CalibFrame(images={SIM_CAMERA_BASE: rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                               SIM_CAMERA_WRIST: rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
                       state=rng.standard_normal(7).astype(np.float32),
                       instruction=f"pick up the block {i % 2}",
                       actions=rng.uniform(-0.9, 0.9, (cfg.chunk, 7)).astype(np.float32), episode=i, t=0)
            for i in range(n)]


@pytest.fixture(scope="module")
def adapter():
    model = OftModel(small_config()).init_random(0).eval()
    return make_adapter(OFT_FAMILY, model, norm_stats=None, tokenizer=SentencePieceTokenizer.small())


def test_tensor_table_targets_and_pooling(adapter):
    cfg = adapter.config
    assert isinstance(adapter, OftAdapter) and adapter.fisher_alpha == 0.5
    backbone = [t for t in adapter.linear_targets() if t.group == "backbone"]
    assert len(backbone) == 7 * cfg.lm_depth
    assert {t.layer for t in backbone} == set(range(cfg.lm_depth))
    table = {t.name: t for t in adapter.tensor_table()}
    assert "lm.output.weight" not in table  # NLL-only, not exported
    assert table["vd.position_embd.weight"].group == "position" and table["vd.cls_embd.weight"].group == "position"
    assert set(table) == set(adapter.canonical_weights())
    assert adapter.inactive_tensors() == set()

    frames = _frames(cfg, n=3)
    frames[1] = CalibFrame(frames[1].images, frames[1].state, "a much longer instruction with many more words here",
                           frames[1].actions)  # pads in the batch
    batch = adapter.prepare_batch(frames, torch.device("cpu"))
    assert adapter.action_target(batch).shape == (3, cfg.chunk * 7)
    seen = {}
    h = adapter.model.get_submodule(adapter.x_module).register_forward_hook(lambda m, i, o: seen.update(x=i[0].double()))
    with torch.no_grad():
        adapter.run_forward(batch, torch.Generator())
    h.remove()
    mask = adapter._seq_mask(batch)
    assert mask.shape == seen["x"].shape[:2] and not bool(mask.all())
    pooled = adapter.pool("prefix", seen["x"], batch, "valid").numpy()
    manual = np.stack([seen["x"][b][mask[b]].mean(0).numpy() for b in range(3)])
    np.testing.assert_allclose(pooled, manual, rtol=TOL_POOL, atol=1e-7)


def test_load_policy_random_oft():
    ad = load_policy("random:openvla-oft-tiny:3")
    assert isinstance(ad, OftAdapter) and ad.config == get_preset("openvla-oft-tiny")


def test_quantize_oft_end_to_end(adapter, tmp_path):
    from actquant_core.runtime.openvla_oft import OftRuntime
    from actquant_core.runtime.types import Observation

    frames = _frames(adapter.config, n=6)
    # K-quant menu: the IQ1 grids take ~10 s to initialise on this machine; the allocation is the same method
    cfg = PipelineConfig(bpw=4.0, report=False, n_threads=2, menu=MENU,
                         calib=CalibConfig(batch_size=3, fisher_batch_size=3, progress=False, device="cpu"))
    res = quantize_policy(adapter, frames, out_path=tmp_path / "oft.gguf", config=cfg)
    plan = res.plan
    assert plan.bpw_backbone <= 4.0 + TOL_BPW
    assert plan.bpw_backbone > 3.0  # the budget is spent, not ignored
    cal = res.calibration
    assert set(cal.fisher_losses) >= {"action", "language"}
    assert all(np.isfinite(v) and v > 0 for k, v in cal.fisher_losses.items() if k in ("action", "language"))
    q = "lm.blk.0.attn_q.weight"
    assert q in cal.fisher and cal.fisher[q].shape == tuple(adapter.model.layers[0].q_proj.weight.shape)
    assert float(cal.fisher[q].max()) > 0

    rt = OftRuntime(res.gguf_path)
    assert rt.config == adapter.config
    f = frames[0]
    obs = Observation(images={s: f.images[c] for c, s in adapter.camera_map.items()},
                      state=np.concatenate([f.state, [0.0]]).astype(np.float32), instruction=f.instruction)
    chunk = rt.infer(obs)
    assert chunk.actions.shape == (adapter.config.chunk, adapter.config.action_dim)
    assert np.isfinite(chunk.actions).all()
    # the same adapter's metadata written at F32 reproduces the torch reference through the runtime (config,
    # tokenizer and tensor layout round trip); the quantized file differs from it (weights really quantized)
    ref_path = export_reference(adapter, tmp_path / "ref.gguf")
    inp = adapter.preprocessor(obs.images, obs.state, obs.instruction)
    with torch.no_grad():
        want = adapter.model.predict_actions(*(torch.from_numpy(np.asarray(getattr(inp, k))) for k in
                                               ("pixels", "proprio", "input_ids", "attention_mask", "action_mask")))
    want = want[0].numpy()
    got_ref, _, _ = OftRuntime(ref_path).infer_model_inputs(inp)
    got_q, _, _ = rt.infer_model_inputs(inp)
    np.testing.assert_allclose(got_ref, want, rtol=TOL_REF, atol=TOL_REF * np.abs(want).max())
    assert np.abs(got_q - got_ref).max() > TOL_REF * np.abs(want).max()
