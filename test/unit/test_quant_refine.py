"""Stage-2 Q4_K / Q2_K refinement: exact bit layout vs gguf-py, decodes, never worse on the weighted error."""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from actquant_core.quant.refine import BlockParams, RefineConfig, pack_blocks, refine_tensor, unpack_blocks, weighted_block_error

LAYOUT = {"Q4_K": (8, 63, 15), "Q2_K": (16, 15, 3)}
ERR_SLACK = 1e-9  # relative: after <= before (same decoder, float64 sums)


def _random_params(rng, t, nb):
    ns, scmax, qmax = LAYOUT[t]
    return BlockParams(
        d=rng.uniform(0.001, 0.1, nb).astype(np.float16), dmin=rng.uniform(0.0, 0.1, nb).astype(np.float16),
        sc=rng.integers(0, scmax + 1, (nb, ns)).astype(np.uint8), m=rng.integers(0, scmax + 1, (nb, ns)).astype(np.uint8),
        q=rng.integers(0, qmax + 1, (nb, 256)).astype(np.uint8))


def _decode_params(p, t):
    ns = LAYOUT[t][0]
    nb = p.q.shape[0]
    s = p.d.astype(np.float32)[:, None] * p.sc.astype(np.float32)
    mn = p.dmin.astype(np.float32)[:, None] * p.m.astype(np.float32)
    return (s[..., None] * p.q.reshape(nb, ns, -1).astype(np.float32) - mn[..., None]).reshape(nb, 256)


def _naive_encode(W, t):
    """Plain per-sub-block min/max rounding (a weak but valid encoder) -> bytes."""
    ns, scmax, qmax = LAYOUT[t]
    x = W.reshape(-1, ns, 256 // ns)
    lo = np.minimum(x.min(-1), 0.0)
    scale = (x.max(-1) - lo) / qmax
    d = (scale.max(1) / scmax).astype(np.float16)
    dmin = (-lo.min(1) / scmax).astype(np.float16)
    sc = np.clip(np.ceil(scale / np.maximum(d.astype(np.float32)[:, None], 1e-12)), 0, scmax).astype(np.uint8)
    m = np.clip(np.ceil(-lo / np.maximum(dmin.astype(np.float32)[:, None], 1e-12)), 0, scmax).astype(np.uint8)
    s = d.astype(np.float32)[:, None, None] * sc[..., None]
    mn = dmin.astype(np.float32)[:, None, None] * m[..., None]
    q = np.clip(np.rint(np.where(s > 0, (x + mn) / np.where(s > 0, s, 1), 0)), 0, qmax).astype(np.uint8)
    return pack_blocks(BlockParams(d, dmin, sc, m, q.reshape(len(d), 256)), t)


@pytest.mark.parametrize("t", ["Q4_K", "Q2_K"])
def test_pack_layout_matches_gguf_dequantizer(t):
    rng = np.random.default_rng(0)
    p = _random_params(rng, t, 5)
    data = pack_blocks(p, t)
    raw = np.frombuffer(data, np.uint8).reshape(5, -1)
    ref = gguf_dequantize(raw, GGMLQuantizationType[t]).reshape(5, 256)
    np.testing.assert_array_equal(_decode_params(p, t), ref)
    back = unpack_blocks(data, t)
    for f in ("d", "dmin", "sc", "m", "q"):
        np.testing.assert_array_equal(getattr(back, f), getattr(p, f))
    assert pack_blocks(back, t) == data


@pytest.mark.parametrize("t", ["Q4_K", "Q2_K"])
def test_refine_never_worse_and_decodes(t):
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((4, 512)) * rng.uniform(0.01, 0.2, (4, 1))).astype(np.float32)
    F = rng.lognormal(0, 1.5, W.shape)  # heavy-tailed importance, as Fisher is
    data = _naive_encode(W, t)
    res = refine_tensor(data, t, W, F, RefineConfig(iterations=2))
    assert len(res.data) == len(data)
    nb = W.size // 256
    deq = gguf_dequantize(np.frombuffer(res.data, np.uint8).reshape(nb, -1), GGMLQuantizationType[t]).reshape(W.shape)
    err = float((F * (W.astype(np.float64) - deq) ** 2).sum())
    assert err == pytest.approx(res.error_after, rel=1e-9)
    assert res.error_after <= res.error_before * (1 + ERR_SLACK)
    assert res.error_after < 0.8 * res.error_before  # a naive start is clearly improvable
    # per block never worse either
    x = W.reshape(nb, 256)
    e0 = weighted_block_error(data, t, x, F.reshape(nb, 256))
    e1 = weighted_block_error(res.data, t, x, F.reshape(nb, 256))
    assert np.all(e1 <= e0 * (1 + ERR_SLACK))


def test_refine_on_ggml_bytes_if_native_available():
    native = pytest.importorskip("actquant_core.native")
    try:
        native.native_module()
    except Exception as exc:  # noqa: BLE001 - native module not built here
        pytest.skip(f"native module unavailable: {exc}")
    rng = np.random.default_rng(2)
    W = rng.standard_normal((8, 512)).astype(np.float32) * 0.05
    F = rng.lognormal(0, 2.0, W.shape).astype(np.float32)
    for t in ("Q4_K", "Q2_K"):
        data = native.quantize(W, t, F)
        res = refine_tensor(data, t, W, F)
        assert res.error_after <= res.error_before * (1 + ERR_SLACK)
        np.testing.assert_array_equal(
            native.dequantize(res.data, t, W.shape),
            gguf_dequantize(np.frombuffer(res.data, np.uint8).reshape(-1, len(data) // (W.size // 256)),
                            GGMLQuantizationType[t]).reshape(W.shape))


def test_refine_input_errors():
    W = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="supports"):
        refine_tensor(b"", "Q3_K", W, np.ones_like(W))
    with pytest.raises(ValueError, match="bytes"):
        refine_tensor(b"\0" * 10, "Q4_K", W, np.ones_like(W))
    with pytest.raises(ValueError, match="weights shape"):
        refine_tensor(b"\0" * 288, "Q4_K", W, np.ones((2, 255)))
