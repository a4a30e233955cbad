"""Bit-exact codec checks: GGML quantize (ours) -> dequantize (ours) == gguf-py's independent dequantizer."""

import gguf
import gguf.quants
import numpy as np
import pytest

from actquant_core import native
from actquant_core.gguf.bpw import block_layout, type_bpw

ALL_TYPES = native.supported_types()
QUANT_TYPES = [t for t in ALL_TYPES if native.type_traits(t)["is_quantized"]]


def _weights(rng, rows, cols):
    """Gaussian weights with an all-zero row and outlier columns (the cases block scales get wrong)."""
    W = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    W[1] = 0.0
    W[:, 3] *= 40.0
    W[:, cols // 2 + 7] *= -25.0
    return W


def test_type_traits_match_gguf_py():
    for t in ALL_TYPES:
        tr = native.type_traits(t)
        assert (tr["block_size"], tr["bytes_per_block"]) == block_layout(t), t
        assert tr["bpw"] == pytest.approx(type_bpw(t))
    assert native.type_traits("IQ2_XS")["requires_importance"]
    assert not native.type_traits("Q4_K")["requires_importance"]


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_dequantize_bit_exact_vs_gguf_py(rng, type_name):
    rows, cols = 8, 512
    W = _weights(rng, rows, cols)
    imp = rng.uniform(0.1, 2.0, size=cols).astype(np.float32)
    raw = native.quantize(W, type_name, imp if native.type_traits(type_name)["requires_importance"] else None,
                          n_threads=2, name="w")
    qt = gguf.GGMLQuantizationType[type_name.upper()]
    oracle = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(rows, -1), qt).reshape(rows, cols)
    ours = native.dequantize(raw, type_name, (rows, cols))
    np.testing.assert_array_equal(ours.view(np.uint32), oracle.astype(np.float32).view(np.uint32))
    assert not np.any(ours[1]), "an all-zero row must dequantize to zeros"
    if type_name.upper() in ("F32",):
        np.testing.assert_array_equal(ours, W)


@pytest.mark.parametrize("type_name", ["Q4_K", "Q8_0", "IQ2_XS"])
def test_threaded_quantize_is_identical(rng, type_name):
    W = _weights(rng, 33, 256)
    imp = rng.uniform(0.1, 2.0, size=(33, 256)).astype(np.float32)
    a = native.quantize(W, type_name, imp, n_threads=1)
    b = native.quantize(W, type_name, imp, n_threads=3)
    assert a == b


def test_per_row_importance_equals_row_by_row(rng):
    W = _weights(rng, 4, 256)
    imp = rng.uniform(0.1, 3.0, size=(4, 256)).astype(np.float32)
    whole = native.quantize(W, "Q3_K", imp, n_threads=2)
    per_row = b"".join(native.quantize(W[r : r + 1], "Q3_K", imp[r], n_threads=1) for r in range(4))
    assert whole == per_row


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K"])
def test_importance_is_honoured(rng, type_name):
    rows, cols = 64, 512
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    # Per-element importance with a few very important weights per block.
    F = np.full((rows, cols), 1e-3, np.float32)
    hot = rng.random((rows, cols)) < 0.05
    F[hot] = 1.0

    def weighted_err(raw):
        d = native.dequantize(raw, type_name, (rows, cols))
        return float(np.sum(F * (d - W) ** 2))

    plain = weighted_err(native.quantize(W, type_name))
    guided = weighted_err(native.quantize(W, type_name, F))
    assert guided < 0.8 * plain, (type_name, guided, plain)


def test_requires_importance_error(rng):
    with pytest.raises(ValueError, match=r"layers\.0\.q.*IQ2_XXS|iq2_xxs.*requires an importance"):
        native.quantize(_weights(rng, 2, 256), "IQ2_XXS", name="layers.0.q")


@pytest.mark.parametrize("type_name,cols", [("Q4_K", 1152), ("Q8_0", 4304), ("IQ3_S", 100)])
def test_row_length_error_names_tensor_shape_type(rng, type_name, cols):
    W = rng.standard_normal((4, cols)).astype(np.float32)
    with pytest.raises(ValueError) as e:
        native.quantize(W, type_name, np.ones(cols, np.float32), name="v.blk.0.ffn_down.weight")
    msg = str(e.value)
    assert "v.blk.0.ffn_down.weight" in msg and f"[4, {cols}]" in msg and type_name.lower() in msg.lower()


def test_bad_arguments(rng):
    W = rng.standard_normal((4, 256)).astype(np.float32)
    with pytest.raises(ValueError, match="unsupported GGML type 'Q9_K'"):
        native.quantize(W, "Q9_K")
    with pytest.raises(ValueError, match=r"importance shape \[3, 256\]"):
        native.quantize(W, "Q4_K", np.ones((3, 256), np.float32), name="w")
    Wn = W.copy()
    Wn[2, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite value at row 2, column 5"):
        native.quantize(Wn, "Q4_K", name="w")
    raw = native.quantize(W, "Q4_K")
    with pytest.raises(ValueError, match="bytes do not hold"):
        native.dequantize(raw[:-1], "Q4_K", (4, 256))
