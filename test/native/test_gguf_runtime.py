"""GGUF loading in C++ (mmap), bad-input errors, and mul_mat parity with named tolerances."""

import struct

import numpy as np
import pytest

from actquant_core import native
from actquant_core.gguf import TensorEntry, read_policy_gguf, write_policy_gguf
from actquant_core.gguf.reader import PolicyFileError

# Named tolerances (relative Frobenius error of y = x @ W.T).
# vs an emulation that quantizes x exactly as GGML's CPU backend does (vec_dot_type): float summation order only.
TOL_EMULATED = 2e-6
# vs x @ deq(W).T with float x: GGML rounds activations to Q8_K / Q8_0 / F16 first.
TOL_FLOAT_X = {"F32": 1e-6, "F16": 2e-3, "Q8_0": 1e-2, "Q6_K": 1e-2, "Q4_K": 1e-2, "Q3_K": 1e-2, "Q2_K": 1e-2}


def _fp16_round(a):
    return a.astype(np.float16).astype(np.float64)


def emulate_activation_quant(x: np.ndarray, type_name: str) -> np.ndarray:
    """x rounded the way GGML's CPU backend rounds activations for a weight of type_name."""
    t = type_name.upper()
    x = x.astype(np.float32)
    if t == "F32":
        return x.astype(np.float64)
    if t == "F16":
        return _fp16_round(x)
    if t == "Q8_0":  # blocks of 32: d = amax/127 stored as fp16, q = round(x / d) with the unrounded d
        xb = x.reshape(x.shape[0], -1, 32)
        amax = np.abs(xb).max(-1, keepdims=True)
        d = amax / 127.0
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, np.round(xb * np.where(d > 0, 1.0 / d, 0.0)), 0.0)
        return (q * _fp16_round(d)).reshape(x.shape)
    # K-quants: Q8_K blocks of 256, scale from the signed value of largest magnitude, d kept in f32.
    xb = x.reshape(x.shape[0], -1, 256)
    idx = np.abs(xb).argmax(-1)[..., None]
    mx = np.take_along_axis(xb, idx, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127.0) / mx, 0.0).astype(np.float32)
        q = np.minimum(127, np.rint(iscale * xb)).astype(np.float64)
        d = np.where(iscale != 0, 1.0 / iscale.astype(np.float64), 0.0).astype(np.float32).astype(np.float64)
    return (q * d).reshape(x.shape)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("gguf") / "w.gguf"
    W = (rng.standard_normal((96, 512)) * 0.05).astype(np.float32)
    types = list(TOL_FLOAT_X)
    write_policy_gguf(
        path, "test", {"rows": 96}, [TensorEntry(f"w.{t}", W, t) for t in types], tokenizer_model=b"\x00tok"
    )
    return path, W, types


@pytest.mark.parametrize("repack", [True, False], ids=["repack", "mapped"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_mul_mat_parity(weight_file, batch, repack):
    """Both weight placements (repacked interleaved GEMM / straight from the mapping) at the same tolerances."""
    path, W, types = weight_file
    backend = native.Backend(n_threads=2, repack=repack)
    model = native.GgufModel(path, backend)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    for t in types:
        y = model_y = native.mul_mat(model, backend, f"w.{t}", x)
        assert y.shape == (batch, 96)
        raw = read_policy_gguf(path).tensor(f"w.{t}")
        Wd = W if t == "F32" else (raw.astype(np.float64) if t == "F16" else native.dequantize(raw.tobytes(), t, W.shape))
        Wd = np.asarray(Wd, np.float64)
        y_emul = emulate_activation_quant(x, t) @ Wd.T
        y_float = x.astype(np.float64) @ Wd.T
        assert _rel(model_y, y_emul) < TOL_EMULATED, (t, batch, _rel(model_y, y_emul))
        assert _rel(model_y, y_float) < TOL_FLOAT_X[t], (t, batch, _rel(model_y, y_float))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_repack_placement(tmp_path):
    """Q4_K weights with rows a multiple of 8 are repacked on AVX2 CPUs; embedding tables and rows not a
    multiple of 8 stay in the mapping; repack=False repacks nothing; outputs agree between the two."""
    rng = np.random.default_rng(3)
    W = (rng.standard_normal((64, 512)) * 0.05).astype(np.float32)
    path = tmp_path / "r.gguf"
    write_policy_gguf(path, "test", {}, [TensorEntry("blk.0.w.weight", W, "Q4_K"),
                                          TensorEntry("lm.token_embd.weight", W, "Q4_K"),
                                          TensorEntry("odd.weight", W[:60], "Q4_K")], tokenizer_model=b"\x00tok")
    off = native.GgufModel(path, native.Backend(n_threads=1, repack=False))
    assert off.n_repacked == 0 and off.repacked_nbytes == 0
    backend = native.Backend(n_threads=1)
    on = native.GgufModel(path, backend)
    if "avx2" in _cpu_flags():
        assert backend.repack and "repack" in backend.description
        assert on.n_repacked == 1, on.n_repacked  # blk.0.w only
        assert on.repacked_nbytes == on.tensor_info("blk.0.w.weight")[2]
    x = rng.standard_normal((33, 512)).astype(np.float32)
    b_off = native.Backend(n_threads=1, repack=False)
    off = native.GgufModel(path, b_off)
    for name in ("blk.0.w.weight", "odd.weight"):
        y_on, y_off = native.mul_mat(on, backend, name, x), native.mul_mat(off, b_off, name, x)
        assert _rel(y_on, y_off) < TOL_EMULATED, (name, _rel(y_on, y_off))


def test_metadata_round_trip(weight_file):
    path, W, types = weight_file
    pf = read_policy_gguf(path, expect_family="test")
    assert pf.config == {"rows": 96}
    assert pf.tokenizer_model == b"\x00tok"
    assert pf.tensors["w.Q4_K"].type_name == "Q4_K" and pf.tensors["w.Q4_K"].shape == (96, 512)
    m = native.GgufModel(path)
    assert m.metadata("actquant.family") == "test"
    assert m.metadata("actquant.tokenizer.model") == b"\x00tok"
    assert m.tensor_info("w.Q2_K") == ("q2_K", [96, 512], 96 * 512 // 256 * 84)
    with pytest.raises(PolicyFileError, match="holds a 'test' policy, expected 'pi05'"):
        read_policy_gguf(path, expect_family="pi05")


def _corrupt(src, dst, mutate):
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(mutate(data)))
    return dst


def test_bad_files_raise_named_errors(weight_file, tmp_path):
    path, _, _ = weight_file
    backend = native.Backend(n_threads=1)

    with pytest.raises(native.GgufError, match=r"missing\.gguf.*cannot open"):
        native.GgufModel(tmp_path / "missing.gguf", backend)

    bad_magic = _corrupt(path, tmp_path / "magic.gguf", lambda d: b"GGXF" + d[4:])
    with pytest.raises(native.GgufError, match=r"magic\.gguf.*bad magic 'GGXF'"):
        native.GgufModel(bad_magic, backend)

    bad_version = _corrupt(path, tmp_path / "version.gguf", lambda d: d[:4] + struct.pack("<I", 99) + d[8:])
    with pytest.raises(native.GgufError, match=r"version\.gguf.*unsupported GGUF version 99"):
        native.GgufModel(bad_version, backend)

    truncated = _corrupt(path, tmp_path / "trunc.gguf", lambda d: d[: len(d) - 1000])
    with pytest.raises(native.GgufError, match=r"trunc\.gguf.*truncated: tensor 'w\.Q2_K'"):
        native.GgufModel(truncated, backend)

    header_cut = _corrupt(path, tmp_path / "cut.gguf", lambda d: d[:200])
    with pytest.raises(native.GgufError, match=r"cut\.gguf"):
        native.GgufModel(header_cut, backend)

    model = native.GgufModel(path, backend)
    with pytest.raises(native.GgufError, match=r"w\.gguf.*missing tensor 'w\.Q5_K'"):
        native.mul_mat(model, backend, "w.Q5_K", np.zeros((1, 512), np.float32))
    with pytest.raises(ValueError, match="row length 512, activations have 256"):
        native.mul_mat(model, backend, "w.Q4_K", np.zeros((1, 256), np.float32))
    with pytest.raises(native.GgufError, match=r"missing metadata key 'actquant\.nope'"):
        model.metadata("actquant.nope")


def test_tensor_type_mismatch_is_reported(tmp_path):
    """A tensor whose declared type does not fit its shape (Q4_K over 100 columns) must not load."""
    good = tmp_path / "good.gguf"
    write_policy_gguf(good, "test", {}, [TensorEntry("bad", np.ones((2, 256), np.float32), "Q4_K")])
    # Patch the tensor-info record: name, n_dims=2, ne0=256 -> ne0=100 (no longer a whole Q4_K block).
    record = struct.pack("<Q", 3) + b"bad" + struct.pack("<IQ", 2, 256)
    path = _corrupt(good, tmp_path / "mismatch.gguf",
                    lambda d: d.replace(record, record[:-8] + struct.pack("<Q", 100), 1))
    assert path.read_bytes() != good.read_bytes()
    with pytest.raises(native.GgufError, match=r"mismatch\.gguf"):
        native.GgufModel(path, native.Backend(1))
    with pytest.raises(PolicyFileError, match=r"mismatch\.gguf"):
        read_policy_gguf(path)


def test_file_order_puts_fusion_groups_back_to_back():
    """q/k/v and gate/up of one block follow each other where the first appeared; everything else keeps its
    order; a block with only some members keeps those; nothing is lost or repeated."""
    from actquant_core.gguf.writer import file_order

    names = ["a.norm", "lm.blk.0.attn_q.weight", "lm.blk.1.attn_q.weight", "lm.blk.0.attn_k.weight",
             "lm.blk.1.attn_v.weight", "lm.blk.0.attn_v.weight", "lm.blk.1.attn_k.weight",
             "lm.blk.0.ffn_up.weight", "x.y", "lm.blk.0.ffn_gate.weight", "ex.blk.0.attn_k.weight",
             "ex.blk.0.attn_q.weight", "v.blk.0.attn_q.weight"]
    got = file_order(names)
    assert sorted(got) == sorted(names) and len(got) == len(names)
    assert got == ["a.norm", "lm.blk.0.attn_q.weight", "lm.blk.0.attn_k.weight", "lm.blk.0.attn_v.weight",
                   "lm.blk.1.attn_q.weight", "lm.blk.1.attn_k.weight", "lm.blk.1.attn_v.weight",
                   "lm.blk.0.ffn_gate.weight", "lm.blk.0.ffn_up.weight", "x.y",
                   "ex.blk.0.attn_q.weight", "ex.blk.0.attn_k.weight", "v.blk.0.attn_q.weight"]
