"""policies.common.safetensors_io: our torch-free reader vs the safetensors package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actquant_core.policies.common.safetensors_io import read_checkpoint_tensors, read_safetensors


def test_bf16_f16_f32_int_match_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = {
        "a": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "b": torch.randn(7, generator=g).to(torch.float16),
        "c": torch.randn(2, 2, 2, generator=g),
        "d": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    save_file(src, str(tmp_path / "x.safetensors"))
    out = read_safetensors(tmp_path / "x.safetensors")
    for k, v in src.items():
        ref = v.float().numpy() if v.is_floating_point() else v.numpy()
        np.testing.assert_array_equal(out[k], ref)
        assert out[k].dtype == (np.float32 if v.is_floating_point() else np.int64)
    raw = read_safetensors(tmp_path / "x.safetensors", to_float32=False, names={"a"})
    assert set(raw) == {"a"} and raw["a"].dtype == np.uint16
    np.testing.assert_array_equal(raw["a"], src["a"].view(torch.int16).numpy().view(np.uint16))


def test_sharded_and_duplicates(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"y": torch.zeros(3)}, str(tmp_path / "s2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}})
    )
    t = read_checkpoint_tensors(tmp_path)
    assert sorted(t) == ["x", "y"]
    save_file({"x": torch.ones(2)}, str(tmp_path / "s2.safetensors"))
    with pytest.raises(ValueError, match="also present in another shard"):
        read_checkpoint_tensors(tmp_path / "model.safetensors.index.json")


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(p)
