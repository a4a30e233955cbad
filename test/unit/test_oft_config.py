"""OpenVLA-OFT config: presets, validation messages, JSON round trip, sizes."""

import numpy as np
import pytest

from actquant_core.policies.openvla_oft.config import PRESET_NAMES, OftConfig, get_preset


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_round_trip(name):
    cfg = get_preset(name)
    assert OftConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_action_tokens == cfg.chunk * cfg.action_dim


def test_real_preset_matches_the_facts():
    c = get_preset("openvla-oft")
    assert (c.num_patches, c.vision_dim, c.num_action_tokens) == (256, 2176, 56)
    assert c.num_images * c.num_patches == 512 and c.head_dim == 128 and c.num_kv_heads == c.num_heads
    assert (c.dino_blocks_used, c.siglip_blocks_used) == (23, 26)
    aloha = get_preset("openvla-oft-aloha")
    assert (aloha.chunk, aloha.action_dim, aloha.proprio_dim, aloha.use_film) == (25, 14, 14, True)


def test_real_preset_parameter_count():
    torch = pytest.importorskip("torch")
    from actquant_core.policies.openvla_oft.model import OftModel

    with torch.device("meta"):
        m = OftModel(get_preset("openvla-oft"))
    n = m.num_parameters()
    # facts §11: 7.709B with the SigLIP attn_pool (15.2M, dropped); we also drop each ViT's last block
    # and final norm (dead: features come from the second-to-last block)
    d_blk = 4 * 1024**2 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024 + 2 * 1024
    s_blk = 4 * 1152**2 + 4 * 1152 + 2 * 1152 * 4304 + 4304 + 1152 + 4 * 1152
    full = n + d_blk + s_blk + 2 * 1024 + 2 * 1152
    assert abs(full - (7.709e9 - 15.2e6)) < 5e6, full


def test_small_preset_size_and_rows():
    torch = pytest.importorskip("torch")
    from actquant_core.policies.openvla_oft.canonical import canonical_shapes

    cfg = get_preset("openvla-oft-small")
    shapes = canonical_shapes(cfg, include_lm_head=False)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert 10e6 <= total <= 25e6, total
    big = {n: s for n, s in shapes.items() if len(s) == 2 and np.prod(s) >= 65536 and "patch_embd" not in n
           and "position_embd" not in n}
    assert len(big) > 40
    assert all(s[1] % 256 == 0 for s in big.values()), {n: s for n, s in big.items() if s[1] % 256}


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(lm_width=100, num_heads=3), r"lm_width \(100\) must be divisible by num_heads \(3\)"),
        (dict(image_size=30), r"image_size \(30\) must be a multiple of patch_size \(14\)"),
        (dict(dino_depth=1), r"dino_depth must be >= 2"),
        (dict(num_kv_heads=5), r"num_heads \(32\) must be a multiple of num_kv_heads \(5\)"),
        (dict(siglip_gelu="relu"), r"siglip_gelu must be one of .* got 'relu'"),
        (dict(num_images=3), r"image_slots must be a tuple of num_images=3"),
        (dict(chunk=0), r"chunk must be a positive int, got 0"),
        (dict(use_film=1), r"use_film must be a bool"),
        (dict(stop_token_id=40000), r"stop_token_id \(40000\) must be < vocab_size"),
        (dict(empty_token_id=-5), r"empty_token_id must be -1 or in"),
    ],
)
def test_validation_names_field_and_value(changes, match):
    with pytest.raises(ValueError, match=match):
        get_preset("openvla-oft").replace(**changes)


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown openvla_oft preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        OftConfig.from_dict({**get_preset("openvla-oft").to_dict(), "bogus": 1})
