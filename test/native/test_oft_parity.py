"""OpenVLA-OFT: torch reference vs native GGML graph, stage by stage (named tolerances)."""

import numpy as np
import pytest
import torch

from actquant_core import native
from actquant_core.export import default_type_for, export_openvla_oft, export_tensors
from actquant_core.gguf import TensorEntry, read_policy_gguf, write_policy_gguf
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.canonical import canonical_state_dict, model_from_canonical
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.policies.openvla_oft.preprocess import OftNormStats, BoundsStats, unnormalize_bounds
from actquant_core.runtime.openvla_oft import OftRuntime
from actquant_core.runtime.types import Observation

# F32 weights: the same float32 math in another order -> relative error per stage (measured <= 1e-6).
TOL_F32 = 1e-5
# Q4_K weights vs torch with the *dequantized* weights: GGML also rounds activations to Q8_K in every
# K-quant matmul (F16 weights: to F16), ~0.5% per matmul, compounding over ~25 sequential matmuls.
# Measured on openvla-oft-small (seed 1): dino_feat 1.1e-2, projector_out 2.1e-2, action_hidden 2.2e-2,
# actions 3.6e-2 at 112 px (2.5e-2 at 224 px; Q8_0 weights give 2.1e-2: activation rounding dominates).
TOL_QUANT_STAGE = 4e-2
TOL_QUANT_ACTIONS = 7e-2

STAGES_TINY = ["dino_feat.0", "dino_feat.1", "siglip_feat.0", "siglip_feat.1", "projector_out", "proprio_emb",
               "input_emb", "action_hidden"]


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-30))


def _obs_inputs(rt, cfg, seed=0, task="Pick up the red cube and put it in the bowl"):
    rng = np.random.default_rng(seed)
    images = {s: rng.integers(0, 255, (60 + 10 * k, 80, 3), dtype=np.uint8) for k, s in enumerate(cfg.image_slots)}
    return rt.preprocessor(images, rng.uniform(-1, 1, cfg.proprio_dim), task)


def _torch_ref(model, inp):
    with torch.no_grad():
        return model.predict_actions(*(torch.from_numpy(x) for x in inp.as_dict().values()), return_intermediates=True)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "film"])
def tiny(request, tmp_path_factory):
    cfg = get_preset("openvla-oft-tiny").replace(use_film=request.param)
    model = OftModel(cfg).init_random(0).eval()
    path = tmp_path_factory.mktemp("oft") / f"tiny-{request.param}.gguf"
    stats = OftNormStats(BoundsStats(-np.ones(7), np.linspace(1, 2, 7), np.array([True] * 6 + [False])),
                         BoundsStats(-np.ones(8), np.ones(8), None))
    export_openvla_oft(model, path, norm_stats=stats, tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    return cfg, model, path


def test_reused_graph_equals_a_fresh_one(tiny):
    """The runtime reuses its last graph (no intermediates) while the token count is the same: each call must
    equal a fresh runtime's bit for bit, across new inputs, another prompt length, a collecting call, and back."""
    cfg, _, path = tiny
    rt = OftRuntime(path, n_threads=1)
    args = {"a": _obs_inputs(rt, cfg), "b": _obs_inputs(rt, cfg, seed=1),
            "c": _obs_inputs(rt, cfg, seed=2, task="open the top drawer of the cabinet and put the bowl inside it")}
    assert args["c"].input_ids.shape != args["a"].input_ids.shape
    expected = {k: OftRuntime(path, n_threads=1).infer_model_inputs(v)[0] for k, v in args.items()}
    for key, collect in [("a", ()), ("a", ()), ("b", ()), ("c", ()), ("b", ()), ("b", (STAGES_TINY[0],)),
                         ("b", ()), ("a", ())]:
        actions, _, inter = rt.infer_model_inputs(args[key], collect)
        np.testing.assert_array_equal(actions, expected[key], err_msg=f"call {key} collect={collect}")
        assert set(inter) == set(collect)
    assert not np.array_equal(expected["a"], expected["b"])


def test_stage_by_stage_f32(tiny):
    cfg, model, path = tiny
    rt = OftRuntime(path, n_threads=1)  # tiny graphs: one thread is robust on a loaded machine
    inp = _obs_inputs(rt, cfg)
    collect = STAGES_TINY + (["film_cond"] if cfg.use_film else [])
    actions, timing, inter = rt.infer_model_inputs(inp, collect)
    ref, rinter = _torch_ref(model, inp)
    for name in collect:
        r = rinter[name][0].numpy()
        assert inter[name].size == r.size, name
        err = _rel(inter[name].reshape(r.shape), r)
        assert err < TOL_F32, (name, err)
    assert _rel(actions, ref[0].numpy()) < TOL_F32
    assert timing["compute"] > 0
    # the graph compared above read each Llama block's q/k/v as one stacked matrix (the F32 file has them back
    # to back): the fused path is the one under test
    assert rt.fused_weights == sorted(f"lm.blk.{i}.attn_qkv.weight" for i in range(cfg.lm_depth)), rt.fused_weights


def test_observation_path_unnormalises(tiny):
    cfg, model, path = tiny
    if cfg.use_film:
        pytest.skip("one parametrisation is enough")
    rt = OftRuntime(path, n_threads=1)
    rng = np.random.default_rng(3)
    images = {s: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for s in cfg.image_slots}
    obs = Observation(images=images, state=rng.uniform(-1, 1, 8), instruction="open the drawer")
    chunk = rt.infer(obs)
    ref, _ = _torch_ref(model, rt.preprocessor(images, obs.state, obs.instruction))
    expect = unnormalize_bounds(ref[0].numpy(), rt.norm_stats.action)
    assert chunk.actions.shape == (cfg.chunk, cfg.action_dim)
    assert _rel(chunk.actions, expect) < TOL_F32
    # the gripper dim has mask False: it passes through un-normalised
    np.testing.assert_allclose(chunk.actions[:, 6], ref[0, :, 6].numpy(), rtol=TOL_F32, atol=1e-6)


def test_quantized_q4k_matches_torch_with_dequantized_weights(tmp_path):
    # the small preset's widths (every row length a multiple of 256), at 112 px to keep the test short
    cfg = get_preset("openvla-oft-small").replace(image_size=112)
    model = OftModel(cfg).init_random(1).eval()
    path = tmp_path / "small-q4k.gguf"
    export_openvla_oft(model, path, type_for=default_type_for("Q4_K"),
                       tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    pf = read_policy_gguf(path)
    quantized = [n for n, t in pf.tensors.items() if t.type_name == "Q4_K"]
    assert len(quantized) > 50, "most matrices of openvla-oft-small must take Q4_K"
    assert pf.tensors["vd.reg_embd.weight"].type_name == "F32"
    deq = {}
    for n, t in pf.tensors.items():
        raw = pf.tensor(n)
        deq[n] = (np.asarray(raw, np.float32) if t.type_name in ("F32", "F16")
                  else native.dequantize(raw.tobytes(), t.type_name, t.shape)).reshape(t.shape)
    ref_model = model_from_canonical(cfg, deq)
    rt = OftRuntime(path, n_threads=2)
    inp = _obs_inputs(rt, cfg, seed=1)
    actions, _, inter = rt.infer_model_inputs(inp, ["projector_out", "action_hidden"])
    ref, rinter = _torch_ref(ref_model, inp)
    for name in ("projector_out", "action_hidden"):
        r = rinter[name][0].numpy()
        assert _rel(inter[name].reshape(r.shape), r) < TOL_QUANT_STAGE, name
    err = _rel(actions, ref[0].numpy())
    assert err < TOL_QUANT_ACTIONS
    # the native graph follows the dequantized weights, not the original ones: its distance to torch-with-
    # dequantized-weights is well below the weight quantization's own effect on the actions
    with torch.no_grad():
        orig = model.predict_actions(*(torch.from_numpy(x) for x in inp.as_dict().values()))
    assert err < 0.5 * _rel(orig[0].numpy(), ref[0].numpy())


def test_bad_inputs(tiny, tmp_path):
    cfg, model, path = tiny
    if cfg.use_film:
        pytest.skip("one parametrisation is enough")
    rt = OftRuntime(path, n_threads=1)
    img = np.zeros((40, 40, 3), np.uint8)
    ok_images = {s: img for s in cfg.image_slots}
    with pytest.raises(ValueError, match="unknown image slot"):
        rt.infer(Observation(images={**ok_images, "front": img}, state=np.zeros(8), instruction="x"))
    with pytest.raises(ValueError, match="missing image slot"):
        rt.infer(Observation(images={cfg.image_slots[0]: img}, state=np.zeros(8), instruction="x"))
    with pytest.raises(ValueError, match="NaN"):
        rt.infer(Observation(images=ok_images, state=np.full(8, np.nan), instruction="x"))
    with pytest.raises(ValueError, match="proprio has 6 entries"):
        rt.infer(Observation(images=ok_images, state=np.zeros(6), instruction="x"))
    inp = _obs_inputs(rt, cfg)
    px = inp.pixels[0].reshape(cfg.num_images, 6, cfg.image_size, cfg.image_size)
    ids = inp.input_ids[0].astype(np.int32)
    with pytest.raises(ValueError, match=r"openvla_oft: images must have shape \[2, 6, 32, 32\]"):
        rt._rt.infer(px[:1], inp.proprio[0], ids, [])
    with pytest.raises(ValueError, match=r"proprio must have shape \[8\]"):
        rt._rt.infer(px, inp.proprio[0, :3], ids, [])
    bad = ids.copy()
    bad[2] = 10**6
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rt._rt.infer(px, inp.proprio[0], bad, [])
    with pytest.raises(ValueError, match="action placeholders"):
        rt._rt.infer(px, inp.proprio[0], ids[:5], [])
    nan_px = px.copy()
    nan_px[1, 4, 3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rt._rt.infer(nan_px, inp.proprio[0], ids, [])
    with pytest.raises(ValueError, match="unknown intermediate 'nope'"):
        rt.infer_model_inputs(inp, ["nope"])

    other = tmp_path / "other.gguf"
    write_policy_gguf(other, "pi05", {}, [TensorEntry("x", np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match="holds a 'pi05' policy, not 'openvla_oft'"):
        OftRuntime(other)
    notok = tmp_path / "notok.gguf"
    export_openvla_oft(model, notok)
    with pytest.raises(ValueError, match="no embedded tokenizer"):
        OftRuntime(notok)
    t = canonical_state_dict(model, include_lm_head=False)
    t["lm.blk.1.attn_k.weight"] = t["lm.blk.1.attn_k.weight"][:32].copy()
    badf = tmp_path / "badshape.gguf"
    export_tensors(badf, "openvla_oft", cfg.to_dict(), t, lambda n, s: "F32",
                   tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    with pytest.raises(native.GgufError, match=r"badshape\.gguf.*lm\.blk\.1\.attn_k\.weight.*shape \[32, 64\], expected \[64, 64\]"):
        OftRuntime(badf)


@pytest.mark.slow
def test_real_vit_widths_f32(tmp_path):
    """The real DINOv2-L / SigLIP-So400m block shapes (head_dim 64 / 72, MLP 4096 / 4304, projector 2176 ->
    8704) with one feature block each and a small LM: stage parity at F32 (~8 s)."""
    real = get_preset("openvla-oft")
    cfg = get_preset("openvla-oft-small").replace(
        dino_width=real.dino_width, dino_heads=real.dino_heads, dino_mlp=real.dino_mlp, dino_depth=2,
        siglip_width=real.siglip_width, siglip_heads=real.siglip_heads, siglip_mlp=real.siglip_mlp, siglip_depth=2,
        projector_hidden=real.projector_hidden, lm_width=256, lm_depth=1, num_heads=2, num_kv_heads=2, lm_mlp=512,
        head_hidden=256)
    model = OftModel(cfg).init_random(0).eval()
    path = tmp_path / "realvit.gguf"
    export_openvla_oft(model, path, tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    rt = OftRuntime(path, n_threads=2)
    inp = _obs_inputs(rt, cfg)
    names = ["dino_feat.0", "siglip_feat.1", "projector_out", "action_hidden"]
    actions, _, inter = rt.infer_model_inputs(inp, names)
    ref, rinter = _torch_ref(model, inp)
    for name in names:
        r = rinter[name][0].numpy()
        assert _rel(inter[name].reshape(r.shape), r) < TOL_F32, name
    assert _rel(actions, ref[0].numpy()) < TOL_F32


# CUDA F32: ggml-cuda's F32 matmuls go through cuBLAS with reduced-precision (TF32-class) compute;
# measured on an H200: 1.3e-3 (tiny), 2.7e-3 (tiny + FiLM) relative on actions, ~1e-3 per stage.
TOL_CUDA_F32 = 1e-2


@pytest.mark.gpu
def test_cuda_matches_torch(tiny):
    if not native.has_cuda() or native.native_module().cuda_device_count() < 1:
        pytest.skip("this build has no CUDA backend or no CUDA device is present")
    cfg, model, path = tiny
    rt = OftRuntime(path, n_threads=2, device="cuda")
    assert rt.backend.startswith("CUDA")
    inp = _obs_inputs(rt, cfg)
    actions, _, inter = rt.infer_model_inputs(inp, STAGES_TINY)
    ref, rinter = _torch_ref(model, inp)
    for name in STAGES_TINY:
        r = rinter[name][0].numpy()
        assert _rel(inter[name].reshape(r.shape), r) < TOL_CUDA_F32, name
    assert _rel(actions, ref[0].numpy()) < TOL_CUDA_F32
