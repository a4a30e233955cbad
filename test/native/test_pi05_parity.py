"""π₀.₅: torch reference vs native GGML graph, stage by stage, on pi05-tiny (named tolerances)."""

import numpy as np
import pytest
import torch

from actquant_core import native
from actquant_core.export import default_type_for, export_pi05
from actquant_core.gguf import read_policy_gguf
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.canonical import model_from_canonical
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.runtime.pi05 import Pi05Runtime
from actquant_core.runtime.types import Observation

# F32 weights: the graph does the same float32 math in another order -> relative error per stage.
TOL_F32 = 1e-5
# Quantized weights vs torch run with the *dequantized* weights: GGML also rounds activations to the
# weight's dot type (Q8_K for K-quants, Q8_0 for Q8_0) in every matmul; measured ~1e-3 on tiny/small.
TOL_QUANT = 3e-2


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-30))


def _inputs(rt, cfg, seed=0, drop_slot=True):
    rng = np.random.default_rng(seed)
    images = {cfg.camera_slots[0]: rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)}
    if not drop_slot:
        images[cfg.camera_slots[2]] = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    images[cfg.camera_slots[1]] = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    inp = rt.preprocessor(images, np.zeros(8, np.float32), "put the red cube in the bowl")
    noise = rng.standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    return inp, noise


def _torch_ref(model, inp, noise):
    with torch.no_grad():
        return model.sample_actions(
            torch.from_numpy(inp.images), torch.from_numpy(inp.image_masks), torch.from_numpy(inp.tokens),
            torch.from_numpy(inp.token_masks), torch.from_numpy(noise[None]), return_intermediates=True,
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = get_preset("pi05-tiny")
    model = Pi05Model(cfg).init_random(0).eval()
    path = tmp_path_factory.mktemp("pi05") / "tiny-f32.gguf"
    export_pi05(model, path, tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    return cfg, model, path


def _collect(cfg, inp):
    return (
        [f"vision_emb.{c}" for c in range(cfg.num_cameras) if inp.image_masks[0, c]]
        + ["prefix_emb"]
        + [f"prefix_{kv}.{i}" for kv in "kv" for i in range(cfg.lm_depth)]
        + [f"x_t.{s}" for s in range(cfg.num_steps)]
        + [f"time_cond.{s}" for s in range(cfg.num_steps)]
        + [f"velocity.{s}" for s in range(cfg.num_steps)]
    )


@pytest.mark.parametrize("drop_slot", [True, False])
def test_stage_by_stage_f32(tiny, drop_slot):
    cfg, model, path = tiny
    rt = Pi05Runtime(path, n_threads=2)
    inp, noise = _inputs(rt, cfg, drop_slot=drop_slot)
    assert bool(inp.image_masks[0, 2]) is (not drop_slot)
    collect = _collect(cfg, inp)
    actions, timing, inter = rt.infer_model_inputs(inp, noise, collect)
    ref, rinter = _torch_ref(model, inp, noise)
    # The native prefix holds the valid tokens only (masked cameras and padded text are dropped): compare the
    # reference's valid rows.
    valid = np.concatenate([np.repeat(inp.image_masks[0], cfg.num_patches), inp.token_masks[0]]).astype(bool)
    assert not valid.all()
    for name in collect:
        r = rinter[name][0].numpy()
        if name.startswith("prefix_"):
            r = r[valid]
        assert inter[name].size == r.size, name
        err = _rel(inter[name].reshape(r.shape), r)
        assert err < TOL_F32, (name, err)
    assert _rel(actions, ref[0].numpy()) < TOL_F32
    assert timing["compute"] > 0 and timing["denoise"] >= 0


def test_masked_camera_changes_nothing_but_its_tokens(tiny):
    """A masked slot's pixels must not influence the actions (its tokens are padding)."""
    cfg, _, path = tiny
    rt = Pi05Runtime(path, n_threads=1)
    inp, noise = _inputs(rt, cfg, drop_slot=True)
    a0, _, _ = rt.infer_model_inputs(inp, noise)
    inp.images[0, 2] = np.random.default_rng(5).uniform(-1, 1, inp.images[0, 2].shape).astype(np.float32)
    a1, _, _ = rt.infer_model_inputs(inp, noise)
    np.testing.assert_array_equal(a0, a1)


def test_reused_graph_equals_a_fresh_one(tiny):
    """The runtime keeps its last graph (no intermediates) and reuses it while the valid cameras and prompt length
    stay the same: every call must still equal a fresh runtime's, bit for bit, across new inputs, a shape change
    (other prompt length, a masked camera), a call collecting intermediates in between, and back."""
    cfg, _, path = tiny
    rt = Pi05Runtime(path, n_threads=1)
    inp, noise = _inputs(rt, cfg, drop_slot=True)
    inp2, noise2 = _inputs(rt, cfg, seed=1, drop_slot=True)  # same shapes, other pixels and noise
    rng = np.random.default_rng(9)
    images3 = {s: rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for s in cfg.camera_slots}
    inp3 = rt.preprocessor(images3, np.zeros(8, np.float32), "open the drawer")  # 3 cameras, other prompt
    assert int(inp3.token_masks.sum()) != int(inp.token_masks.sum()) or inp3.image_masks.sum() != inp.image_masks.sum()

    def fresh(i, n):
        return Pi05Runtime(path, n_threads=1).infer_model_inputs(i, n)[0]

    expected = {k: fresh(i, n) for k, (i, n) in {"a": (inp, noise), "b": (inp2, noise2), "c": (inp3, noise)}.items()}
    seq = [("a", ()), ("a", ()), ("b", ()), ("c", ()), ("b", ()), ("b", ("prefix_k.0",)), ("b", ()), ("a", ())]
    args = {"a": (inp, noise), "b": (inp2, noise2), "c": (inp3, noise)}
    for key, collect in seq:
        actions, timing, inter = rt.infer_model_inputs(*args[key], collect)
        np.testing.assert_array_equal(actions, expected[key], err_msg=f"call {key} collect={collect}")
        assert set(inter) == set(collect)
    assert not np.array_equal(expected["a"], expected["b"])


@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_K"])
def test_quantized_matches_torch_with_dequantized_weights(tmp_path, wtype):
    cfg = get_preset("pi05-small")
    model = Pi05Model(cfg).init_random(1).eval()
    path = tmp_path / f"small-{wtype}.gguf"
    export_pi05(model, path, type_for=default_type_for(wtype), tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    pf = read_policy_gguf(path)
    quantized = [n for n, t in pf.tensors.items() if t.type_name == wtype]
    assert len(quantized) > 50, "most matrices of pi05-small must take the K-quant"
    # torch model with exactly the weights the GGUF holds
    deq = {}
    for n, t in pf.tensors.items():
        raw = pf.tensor(n)
        deq[n] = (np.asarray(raw, np.float32) if t.type_name in ("F32", "F16")
                  else native.dequantize(raw.tobytes(), t.type_name, t.shape)).reshape(t.shape)
    ref_model = model_from_canonical(cfg, deq)
    rt = Pi05Runtime(path, n_threads=2)
    inp, noise = _inputs(rt, cfg)
    actions, _, inter = rt.infer_model_inputs(inp, noise, ["prefix_k.0", f"velocity.{cfg.num_steps - 1}"])
    ref, rinter = _torch_ref(ref_model, inp, noise)
    valid = np.concatenate([np.repeat(inp.image_masks[0], cfg.num_patches), inp.token_masks[0]]).astype(bool)
    rk = rinter["prefix_k.0"][0].numpy()[valid]
    assert _rel(inter["prefix_k.0"].reshape(rk.shape), rk) < TOL_QUANT
    assert _rel(actions, ref[0].numpy()) < TOL_QUANT


def test_reseed_makes_an_episode_independent_of_earlier_calls(tiny):
    """eval-sim reseeds the runtime per episode from (seed, task, init state): the same episode then draws the
    same noise whichever worker runs it and whatever that worker ran before."""
    from actquant_core.sim.evaluate import episode_seed

    cfg, _, path = tiny
    rt = Pi05Runtime(path, n_threads=1, seed=7)
    obs = Observation(images={cfg.camera_slots[0]: np.full((48, 48, 3), 90, np.uint8)}, state=np.zeros(8),
                      instruction="open the drawer")
    rt.reseed(episode_seed(7, "goal/open_drawer", 3))
    first = [rt.infer(obs).actions for _ in range(2)]
    rt.infer(obs)  # another episode's calls in between
    rt.reseed(episode_seed(7, "goal/open_drawer", 3))
    again = [rt.infer(obs).actions for _ in range(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # the stream advances within an episode
    rt.reseed(episode_seed(7, "goal/open_drawer", 4))
    assert not np.array_equal(rt.infer(obs).actions, first[0])  # another init state, other noise
    rt.reseed(episode_seed(7, "goal/mug_on_plate", 3))
    assert not np.array_equal(rt.infer(obs).actions, first[0])


def test_observation_path_and_bad_inputs(tiny, tmp_path):
    cfg, model, path = tiny
    rt = Pi05Runtime(path, n_threads=1, seed=3)
    img = np.zeros((48, 48, 3), np.uint8)
    chunk = rt.infer(Observation(images={cfg.camera_slots[0]: img}, state=np.zeros(8), instruction="open the drawer"))
    assert chunk.actions.shape == (cfg.action_horizon, cfg.action_dim)
    assert np.all(np.isfinite(chunk.actions)) and chunk.timing_ms["total"] > 0

    with pytest.raises(ValueError, match="unknown camera slot"):
        rt.infer(Observation(images={"front": img}, state=np.zeros(8), instruction="x"))
    with pytest.raises(ValueError, match="no camera image"):
        rt.infer(Observation(images={}, state=np.zeros(8), instruction="x"))
    with pytest.raises(ValueError, match="NaN"):
        rt.infer(Observation(images={cfg.camera_slots[0]: img}, state=np.full(8, np.nan), instruction="x"))
    inp, noise = _inputs(rt, cfg)
    with pytest.raises(ValueError, match=r"noise must have shape \[4, 32\]"):
        rt._rt.infer(inp.images[0], inp.image_masks[0].astype(np.uint8), inp.tokens[0].astype(np.int32),
                     inp.token_masks[0].astype(np.uint8), noise[:2], [])
    with pytest.raises(ValueError, match="images must have shape"):
        rt._rt.infer(inp.images[0, :2], inp.image_masks[0].astype(np.uint8), inp.tokens[0].astype(np.int32),
                     inp.token_masks[0].astype(np.uint8), noise, [])
    bad_tokens = inp.tokens[0].astype(np.int32).copy()
    bad_tokens[0] = 10**6
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rt._rt.infer(inp.images[0], inp.image_masks[0].astype(np.uint8), bad_tokens,
                     inp.token_masks[0].astype(np.uint8), noise, [])
    with pytest.raises(ValueError, match="unknown intermediate 'nope'"):
        rt.infer_model_inputs(inp, noise, ["nope"])
    with pytest.raises(ValueError, match="unknown intermediate 'vision_emb.2'"):  # a masked slot is not computed
        rt.infer_model_inputs(inp, noise, ["vision_emb.2"])
    no_cams = inp.image_masks[0].astype(np.uint8) * 0
    with pytest.raises(ValueError, match="every camera slot is masked"):
        rt._rt.infer(inp.images[0], no_cams, inp.tokens[0].astype(np.int32), inp.token_masks[0].astype(np.uint8),
                     noise, [])

    # A GGUF of another family, and one without a tokenizer.
    from actquant_core.gguf import TensorEntry, write_policy_gguf

    other = tmp_path / "other.gguf"
    write_policy_gguf(other, "openvla_oft", {}, [TensorEntry("x", np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match="holds a 'openvla_oft' policy, not 'pi05'"):
        Pi05Runtime(other)
    notok = tmp_path / "notok.gguf"
    export_pi05(model, notok)
    with pytest.raises(ValueError, match="no embedded tokenizer"):
        Pi05Runtime(notok)
    # A pi05 file whose tensor has the wrong shape: named before any compute.
    from actquant_core.policies.pi05.canonical import canonical_state_dict
    from actquant_core.export import export_tensors

    t = canonical_state_dict(model)
    t["lm.blk.1.attn_q.weight"] = t["lm.blk.1.attn_q.weight"][:, :32].copy()
    bad = tmp_path / "badshape.gguf"
    export_tensors(bad, "pi05", cfg.to_dict(), t, lambda n, s: "F32", tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    with pytest.raises(native.GgufError, match=r"badshape\.gguf.*lm\.blk\.1\.attn_q\.weight.*shape \[32, 32\], expected \[32, 64\]"):
        Pi05Runtime(bad)


# CUDA F32: cuBLAS F32 matmuls run with reduced-precision (TF32-class) compute (see test_oft_parity.py).
TOL_CUDA_F32 = 1e-2


@pytest.mark.gpu
def test_cuda_matches_torch_and_graph_replay(tiny):
    """CUDA backend vs torch, stage by stage; then the reused graph (replayed as a CUDA graph from the third call
    on) on alternating inputs: each call matches torch, and repeats of the same input give the same actions."""
    if not native.has_cuda() or native.native_module().cuda_device_count() < 1:
        pytest.skip("this build has no CUDA backend or no CUDA device is present")
    cfg, model, path = tiny
    rt = Pi05Runtime(path, n_threads=2, device="cuda")
    assert rt.backend.startswith("CUDA")
    # F32 weights on the GPU: q/k/v and gate/up stacked, GEGLU as one node -- the comparisons below cover it
    inp, noise = _inputs(rt, cfg)
    collect = _collect(cfg, inp)
    actions, _, inter = rt.infer_model_inputs(inp, noise, collect)
    ref, rinter = _torch_ref(model, inp, noise)
    valid = np.concatenate([np.repeat(inp.image_masks[0], cfg.num_patches), inp.token_masks[0]]).astype(bool)
    for name in collect:
        r = rinter[name][0].numpy()
        if name.startswith("prefix_"):
            r = r[valid]
        assert _rel(inter[name].reshape(r.shape), r) < TOL_CUDA_F32, name
    assert _rel(actions, ref[0].numpy()) < TOL_CUDA_F32
    inp2, noise2 = _inputs(rt, cfg, seed=1)
    refs = {0: ref[0].numpy(), 1: _torch_ref(model, inp2, noise2)[0][0].numpy()}
    first = {}
    for i in [0, 1, 0, 1, 0, 1, 0]:
        a, _, _ = rt.infer_model_inputs(*((inp, noise) if i == 0 else (inp2, noise2)))
        assert _rel(a, refs[i]) < TOL_CUDA_F32, i
        first.setdefault(i, a)
        np.testing.assert_allclose(a, first[i], rtol=0, atol=1e-5)


# CPU vs CUDA on the same Q4_K file: both run the same GGML quantized kernels (Q8_K / Q8_1 activation rounding
# differs); measured ~2e-3 relative on pi05-small.
TOL_CUDA_VS_CPU_Q4K = 2e-2


@pytest.mark.gpu
def test_cuda_keeps_ungatherable_embedding_in_host_memory(tmp_path):
    """A K-quant token table (no CUDA GET_ROWS kernel) stays in host memory on the GPU backend -- its rows are
    gathered on the CPU, not the whole table copied back per call -- and the policy still matches the CPU run;
    an F16 table (gathered on the GPU) is uploaded as before."""
    if not native.has_cuda() or native.native_module().cuda_device_count() < 1:
        pytest.skip("this build has no CUDA backend or no CUDA device is present")
    cfg = get_preset("pi05-small")
    model = Pi05Model(cfg).init_random(1).eval()
    tok = SentencePieceTokenizer.small().model_bytes
    q4, f16 = tmp_path / "small-q4k.gguf", tmp_path / "small-f16.gguf"
    export_pi05(model, q4, type_for=default_type_for("Q4_K"), tokenizer_model=tok)
    export_pi05(model, f16, type_for=default_type_for("F16"), tokenizer_model=tok)
    assert read_policy_gguf(q4).tensors["lm.token_embd.weight"].type_name == "Q4_K"
    gpu = native.Backend(2, "cuda")
    assert native.GgufModel(str(q4), gpu).host_resident == ["lm.token_embd.weight"]
    assert native.GgufModel(str(f16), gpu).host_resident == []
    cpu_rt, gpu_rt = Pi05Runtime(q4, n_threads=2), Pi05Runtime(q4, n_threads=2, device="cuda")
    assert gpu_rt.host_resident == ["lm.token_embd.weight"]
    inp, noise = _inputs(cpu_rt, cfg)
    a_cpu, _, _ = cpu_rt.infer_model_inputs(inp, noise)
    for _ in range(3):  # the third call replays a CUDA graph
        a_gpu, _, _ = gpu_rt.infer_model_inputs(inp, noise)
        assert _rel(a_gpu, a_cpu) < TOL_CUDA_VS_CPU_Q4K
    # on the GPU q/k/v and gate/up are read as stacked matrices (one matmul each; GEGLU on the stacked output);
    # on the CPU the Q4_K weights sit in the repack buffer, which is per tensor: nothing is fused there
    # (pi05-small's expert rows are 256 wide: CUDA pads each quantized tensor whose rows are not a multiple of
    # 512 values, so its q/k/v are not back to back and stay three matmuls -- measured on an H200)
    fused = gpu_rt.fused_weights
    assert "lm.blk.0.attn_qkv.weight" in fused and "lm.blk.0.ffn_gate_up.weight" in fused, fused
    assert all(n.endswith((".attn_qkv.weight", ".ffn_gate_up.weight")) for n in fused), fused
    assert cpu_rt.fused_weights == []


def test_qkv_read_as_one_stacked_matrix_where_the_file_allows(tiny, tmp_path):
    """q/k/v back to back in a plain buffer are read by one matmul (the stage-by-stage parity tests above run
    that graph); Q4_K weights in the CPU repack buffer are not fused and give the same actions as the mapped,
    fused file within the quantized tolerance; the CPU never fuses gate/up (its GELU must stay composed)."""
    cfg, model, path = tiny
    rt = Pi05Runtime(path, n_threads=2)
    assert rt.fused_weights == []  # nothing is built before the first call
    inp, noise = _inputs(rt, cfg)
    rt.infer_model_inputs(inp, noise)
    fused = rt.fused_weights
    want = [f"{p}.blk.{i}.attn_qkv.weight" for p in ("ex", "lm") for i in range(cfg.lm_depth)]
    assert fused == sorted(want), fused
    small = get_preset("pi05-small")
    q4 = tmp_path / "small-q4k.gguf"
    export_pi05(Pi05Model(small).init_random(1).eval(), q4, type_for=default_type_for("Q4_K"),
                tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    packed, mapped = Pi05Runtime(q4, n_threads=2), Pi05Runtime(q4, n_threads=2, repack=False)
    inp, noise = _inputs(packed, small)
    a_packed, _, _ = packed.infer_model_inputs(inp, noise)
    a_mapped, _, _ = mapped.infer_model_inputs(inp, noise)
    assert packed.fused_weights == []
    assert "lm.blk.0.attn_qkv.weight" in mapped.fused_weights
    assert _rel(a_mapped, a_packed) < TOL_QUANT


# The fused attention node (GGML_OP_FLASH_ATTN_EXT, F32 precision) against the explicit matmul / softmax / matmul
# form, same weights and inputs: both are f32 on the CPU; measured ~1e-7 relative on pi05-small.
TOL_FLASH_VS_EXPLICIT_CPU = 1e-5


@pytest.fixture(scope="module")
def small_f32(tmp_path_factory):
    cfg = get_preset("pi05-small")  # head sizes 64 (vision) and 128 (Gemma): sizes the CUDA fused kernel takes
    model = Pi05Model(cfg).init_random(2).eval()
    path = tmp_path_factory.mktemp("pi05s") / "small-f32.gguf"
    export_pi05(model, path, type_for=default_type_for("F32"), tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    return cfg, path


def _actions_with_flash(monkeypatch, path, cfg, mode, device="cpu"):
    monkeypatch.setenv("ACTQUANT_FLASH_ATTN", mode)  # read when the graph is built
    rt = Pi05Runtime(path, n_threads=2, device=device)
    inp, noise = _inputs(rt, cfg, drop_slot=False)
    return rt.infer_model_inputs(inp, noise)[0]


def test_flash_attention_matches_explicit_form(small_f32, monkeypatch):
    """ACTQUANT_FLASH_ATTN=all runs the fused attention node on the CPU too: the same actions as the explicit form
    (and not bit-identical ones, so the fused node really ran)."""
    cfg, path = small_f32
    explicit = _actions_with_flash(monkeypatch, path, cfg, "0")
    fused = _actions_with_flash(monkeypatch, path, cfg, "all")
    assert _rel(fused, explicit) < TOL_FLASH_VS_EXPLICIT_CPU
    assert not np.array_equal(fused, explicit)
    np.testing.assert_array_equal(_actions_with_flash(monkeypatch, path, cfg, "gpu"), explicit)  # CPU default
    monkeypatch.setenv("ACTQUANT_FLASH_ATTN", "yes")
    rt = Pi05Runtime(path, n_threads=2)
    inp, noise = _inputs(rt, cfg)
    with pytest.raises(Exception, match="ACTQUANT_FLASH_ATTN must be gpu, 0 or all, got 'yes'"):
        rt.infer_model_inputs(inp, noise)


@pytest.mark.gpu
def test_cuda_flash_attention_matches_cpu(small_f32, monkeypatch):
    """pi05-small (head sizes the CUDA fused kernel supports) on the GPU with the fused attention (the default
    there) and with the explicit form: both match the CPU run."""
    if not native.has_cuda() or native.native_module().cuda_device_count() < 1:
        pytest.skip("this build has no CUDA backend or no CUDA device is present")
    cfg, path = small_f32
    cpu = _actions_with_flash(monkeypatch, path, cfg, "0")
    for mode in ("gpu", "0"):
        assert _rel(_actions_with_flash(monkeypatch, path, cfg, mode, device="cuda"), cpu) < TOL_CUDA_F32, mode


def test_graph_lines_up_every_adarms_for_fusion(tiny):
    """Every adaRMS (two per expert layer and step, one final per step) is RMS_NORM, MUL, ADD at consecutive
    graph nodes, the sequence GGML's CUDA backend runs as one kernel (its scale / shift views are placed before
    it; placed by the traversal they sat between the three, and none fused: 0 of them before the fix)."""
    cfg, _, path = tiny
    rt = Pi05Runtime(path, n_threads=2)
    assert rt.graph_stats() == {}
    inp, noise = _inputs(rt, cfg)
    rt.infer_model_inputs(inp, noise)
    st = rt.graph_stats()
    n_ada = cfg.num_steps * (2 * cfg.expert_depth + 1)
    assert st["rms_norm_mul_add"] == n_ada
    assert st["RMS_NORM"] >= n_ada and st["nodes"] > st["RMS_NORM"]


@pytest.mark.gpu
def test_cuda_f16_weights_accumulate_in_f32(tmp_path):
    """A CUDA backend asks GGML for F32 cuBLAS accumulation (F16 weights would otherwise be multiplied with FP16
    sums into an FP16 result), and pi05-small with F16 weights then matches the CPU run."""
    import ctypes

    if not native.has_cuda() or native.native_module().cuda_device_count() < 1:
        pytest.skip("this build has no CUDA backend or no CUDA device is present")
    native.Backend(2, "cuda")
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    assert libc.getenv(b"GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F") == b"1"
    cfg = get_preset("pi05-small")
    model = Pi05Model(cfg).init_random(3).eval()
    f16 = tmp_path / "small-f16.gguf"
    export_pi05(model, f16, type_for=default_type_for("F16"), tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    cpu_rt, gpu_rt = Pi05Runtime(f16, n_threads=2), Pi05Runtime(f16, n_threads=2, device="cuda")
    inp, noise = _inputs(cpu_rt, cfg)
    assert _rel(gpu_rt.infer_model_inputs(inp, noise)[0], cpu_rt.infer_model_inputs(inp, noise)[0]) < TOL_CUDA_F32


def test_stage_timing_off_runs_the_same_graph_in_one_piece(tiny):
    """Without stage timing the scheduler does not stop at the stage marks: the same actions, bit for bit, and a
    timing without the per-stage entries (which the default reports)."""
    cfg, _, path = tiny
    on, off = Pi05Runtime(path, n_threads=2), Pi05Runtime(path, n_threads=2, stage_timing=False)
    inp, noise = _inputs(on, cfg)
    a_on, t_on, _ = on.infer_model_inputs(inp, noise)
    for _ in range(2):  # the first call builds the graph, the second reuses it
        a_off, t_off, _ = off.infer_model_inputs(inp, noise)
        np.testing.assert_array_equal(a_off, a_on)
    assert {"vision", "prefix", "denoise"} <= set(t_on) and not {"vision", "prefix", "denoise"} & set(t_off)
    assert t_off["compute"] > 0 and t_off["total"] >= t_off["compute"]


def test_op_profile_accounts_for_every_compute_node(tiny):
    """The per-op profile runs every compute node of the cached graph once (node counts equal graph_stats'),
    its times are positive and sum to about the call's compute time, and the actions are those of a normal call."""
    cfg, _, path = tiny
    rt = Pi05Runtime(path, n_threads=2)
    inp, noise = _inputs(rt, cfg)
    a0, _, _ = rt.infer_model_inputs(inp, noise)
    stats = rt.graph_stats()
    prof = rt.profile_ops(inp, noise)
    assert {op: n for op, (_, n) in prof.items()} == {k: v for k, v in stats.items()
                                                       if k not in ("nodes", "rms_norm_mul_add")}
    assert all(ms >= 0 for ms, _ in prof.values()) and sum(ms for ms, _ in prof.values()) > 0
    a1, t1, _ = rt.infer_model_inputs(inp, noise)  # profile off again: stage timing back, same actions
    np.testing.assert_array_equal(a1, a0)
    assert "denoise" in t1 and not any(k.startswith("op:") for k in t1)
