"""Pi05Config: presets, validation messages, JSON round trip, K-quant-friendly small preset."""

from __future__ import annotations

import math

import pytest
import torch

from actquant_core.policies.pi05.canonical import canonical_shapes
from actquant_core.policies.pi05.config import PRESET_NAMES, Pi05Config, get_preset
from actquant_core.policies.pi05.model import Pi05Model

SMALL_PARAMS_RANGE = (10e6, 25e6)
# tensors of pi05-small whose row length may not be a multiple of 256 (small, kept high precision)
SMALL_NON_KQUANT_MATRICES = {"v.patch_embd.weight", "act.in_proj.weight"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_valid_and_json_roundtrip(name):
    cfg = get_preset(name)
    assert Pi05Config.from_json(cfg.to_json()) == cfg
    assert cfg.action_dim == 32 and cfg.num_steps == 10
    assert cfg.expert_depth == cfg.lm_depth


def test_real_sizes():
    c = get_preset("pi05")
    assert (c.num_patches, c.vision_width, c.vision_depth, c.vision_mlp, c.vision_heads) == (256, 1152, 27, 4304, 16)
    assert (c.lm_width, c.lm_depth, c.num_heads, c.num_kv_heads, c.head_dim, c.lm_mlp) == (2048, 18, 8, 1, 256, 16384)
    assert (c.vocab_size, c.expert_width, c.expert_mlp, c.max_token_len) == (257152, 1024, 4096, 200)
    shapes = canonical_shapes(c)
    assert shapes["ex.blk.0.attn_q.weight"] == (2048, 1024)
    assert shapes["ex.blk.0.attn_k.weight"] == (256, 1024)
    assert shapes["ex.blk.0.attn_output.weight"] == (1024, 2048)
    assert shapes["v.patch_embd.weight"] == (1152, 588)


def test_embed_scale_modes():
    c = get_preset("pi05")
    assert c.embed_scale == pytest.approx(math.sqrt(2048), rel=1e-7)
    b = c.replace(embed_scale_mode="sqrt_bf16")
    assert b.embed_scale == 45.25
    assert torch.tensor(math.sqrt(2048)).to(torch.bfloat16).item() == b.embed_scale


def test_tiny_has_every_structural_feature():
    c = get_preset("pi05-tiny")
    assert c.num_kv_heads == 1 < c.num_heads  # MQA
    assert c.num_cameras == 3
    assert c.expert_width != c.lm_width and c.expert_mlp != c.lm_mlp


def test_small_preset_size_and_kquant_rows():
    c = get_preset("pi05-small")
    with torch.device("meta"):
        n = Pi05Model(c).num_parameters()
    assert SMALL_PARAMS_RANGE[0] <= n <= SMALL_PARAMS_RANGE[1], n
    for name, shape in canonical_shapes(c).items():
        if len(shape) == 2 and name not in SMALL_NON_KQUANT_MATRICES and "position_embd" not in name:
            assert shape[1] % 256 == 0, (name, shape)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"image_size": 225}, "multiple of patch_size"),
        ({"vision_heads": 5}, "divisible by vision_heads"),
        ({"num_heads": 3, "num_kv_heads": 2}, "multiple of num_kv_heads"),
        ({"expert_depth": 3}, "must equal lm_depth"),
        ({"embed_scale_mode": "sqrt"}, "embed_scale_mode"),
        ({"action_horizon": 0}, "action_horizon must be a positive int, got 0"),
        ({"camera_slots": ("a", "a")}, "duplicates"),
        ({"rms_eps": -1.0}, "rms_eps"),
    ],
)
def test_validation_messages(change, match):
    with pytest.raises(ValueError, match=match):
        get_preset("pi05-tiny").replace(**change)


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown pi05 preset 'pi0'"):
        get_preset("pi0")
    with pytest.raises(ValueError, match="unknown fields"):
        Pi05Config.from_dict({"bogus": 1})
