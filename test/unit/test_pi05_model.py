"""pi05 reference model: shapes, masks, KV-cache equivalence, positions, loss gradients, intermediates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actquant_core.constants import (
    PI05_INTER_ACTIONS,
    PI05_INTER_PREFIX_K,
    PI05_INTER_PREFIX_V,
    PI05_INTER_VELOCITY,
    PI05_INTER_VISION,
    PI05_INTER_X_T,
    PI05_MASK_VALUE,
)
from actquant_core.policies.pi05.canonical import canonical_shapes, canonical_state_dict, model_from_canonical
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import (
    Pi05Model,
    apply_rope,
    attention,
    make_attn_mask,
    posemb_sincos,
)

CACHE_TOL = 1e-5  # KV-cached denoise vs full joint forward (fp32)
ROUNDTRIP_TOL = 1e-6  # canonical export/import (Gemma norm fold (1+w)-1 rounding)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls run fastest single-threaded on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("pi05-tiny")
    torch.manual_seed(0)
    return Pi05Model(cfg).init_random(seed=1).eval()


def make_inputs(cfg, batch=2, seed=0, cam_mask=(True, True, False), text_lens=(5, 9)):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, cfg.num_cameras, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    image_masks = torch.tensor([list(cam_mask)] * batch)
    images[:, ~image_masks[0]] = -1.0
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.max_token_len), generator=g)
    token_masks = torch.zeros(batch, cfg.max_token_len, dtype=torch.bool)
    for b in range(batch):
        token_masks[b, : text_lens[b % len(text_lens)]] = True
    tokens[~token_masks] = 0
    noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)
    return images, image_masks, tokens, token_masks, noise


def test_shapes_and_intermediates(tiny):
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg)
    actions, inter = tiny.sample_actions(images, im, tok, tm, noise, return_intermediates=True)
    assert actions.shape == (2, cfg.action_horizon, cfg.action_dim)
    for cam in range(cfg.num_cameras):
        assert inter[PI05_INTER_VISION.format(cam=cam)].shape == (2, cfg.num_patches, cfg.lm_width)
    for i in range(cfg.lm_depth):
        assert inter[PI05_INTER_PREFIX_K.format(i=i)].shape == (2, cfg.prefix_len, cfg.num_kv_heads, cfg.head_dim)
        assert inter[PI05_INTER_PREFIX_V.format(i=i)].shape == (2, cfg.prefix_len, cfg.num_kv_heads, cfg.head_dim)
    # Euler integration reproduced from the named velocities
    x = noise.clone()
    for s in range(cfg.num_steps):
        torch.testing.assert_close(inter[PI05_INTER_X_T.format(s=s)], x, rtol=0, atol=1e-6)
        x = x + (-1.0 / cfg.num_steps) * inter[PI05_INTER_VELOCITY.format(s=s)]
    torch.testing.assert_close(inter[PI05_INTER_ACTIONS], actions, rtol=0, atol=0)
    torch.testing.assert_close(x, actions, rtol=0, atol=1e-6)
    assert torch.isfinite(actions).all()


def test_kv_cached_denoise_equals_joint_forward(tiny):
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg)
    t = torch.tensor([0.9, 0.25])
    with torch.no_grad():
        cache = tiny.compute_prefix_kv(images, im, tok, tm)
        v_cached = tiny.denoise_step(cache, None, noise, t)
        v_joint = tiny.joint_velocity(images, im, tok, tm, noise, t)
    assert v_cached.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(v_cached, v_joint, rtol=0, atol=CACHE_TOL)
    # and the cache does matter: a corrupted cache gives a different velocity
    cache.values[0] = cache.values[0] + torch.randn(cache.values[0].shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        v_bad = tiny.denoise_step(cache, None, noise, t)
    assert (v_bad - v_joint).abs().max() > 100 * CACHE_TOL


def test_prefix_never_attends_to_suffix(tiny):
    """Prefix K/V of the joint forward do not depend on the actions; they equal the cached ones."""
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg)
    with torch.no_grad():
        cache = tiny.compute_prefix_kv(images, im, tok, tm)
        emb, pad, ar, _ = tiny.embed_prefix(images, im, tok, tm)
        B, H = noise.shape[:2]
        lp = emb.shape[1]
        for scale in (1.0, -3.0):
            suffix = tiny.action_in_proj(noise * scale)
            full_pad = torch.cat([pad, torch.ones(B, H, dtype=torch.bool)], 1)
            suf_ar = torch.zeros(B, H, dtype=torch.bool)
            suf_ar[:, 0] = True
            mask = make_attn_mask(full_pad, torch.cat([ar, suf_ar], 1))
            assert not mask[:, :lp, lp:].any()
            pos = torch.cumsum(full_pad.long(), 1) - 1
            _, keys, values = tiny.joint_forward(
                [emb, suffix], mask, pos, tiny.time_condition(torch.tensor([0.5, 0.5])), collect_kv=True
            )
            # valid prefix rows match exactly; fully masked (pad) rows are finite but context dependent
            # (uniform attention over every key) and are never attended to, so they are not compared
            for li in range(cfg.lm_depth):
                torch.testing.assert_close(keys[li][:, :lp][pad], cache.keys[li][pad], rtol=0, atol=CACHE_TOL)
                torch.testing.assert_close(values[li][:, :lp][pad], cache.values[li][pad], rtol=0, atol=CACHE_TOL)
                assert torch.isfinite(keys[li]).all() and torch.isfinite(values[li]).all()


def test_mask_semantics_match_reference_example():
    # img0 img1 txt0 txt1 PAD | act0 act1 act2
    pad = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    ar = torch.tensor([[0, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    m = make_attn_mask(pad, ar)[0].int()
    assert m[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert m[3].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert m[4].tolist() == [0] * 8
    assert m[5].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]
    assert m[7].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]


def test_fully_masked_row_is_finite_with_finite_mask_value():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 2, 4, generator=g)
    k = torch.randn(1, 3, 1, 4, generator=g)
    v = torch.randn(1, 3, 1, 4, generator=g)
    mask = torch.tensor([[[True, True, False], [False, False, False], [True, False, True]]])
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    # a fully masked row is the uniform average of V (what -2.38e38 logits give)
    torch.testing.assert_close(out[0, 1].reshape(2, 4), v[0, :, 0].mean(0).expand(2, 4), rtol=0, atol=1e-6)
    # masked keys get zero weight
    ref = torch.softmax(q[0, 0] @ k[0, :2, 0].T, dim=-1) @ v[0, :2, 0]
    torch.testing.assert_close(out[0, 0].reshape(2, 4), ref, rtol=0, atol=1e-6)
    # -inf would produce NaN for that row: the finite value is what keeps it finite
    logits = torch.full((3,), float("-inf"))
    assert torch.isnan(torch.softmax(logits, 0)).all()
    assert np.float32(PI05_MASK_VALUE) == np.float32(-2.3819763e38)


def test_padding_rows_finite_and_padding_does_not_change_actions(tiny):
    """Extra pad tokens (and pad content) change nothing: positions skip padding and pad keys are masked."""
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg, batch=1, text_lens=(5,))
    with torch.no_grad():
        cache = tiny.compute_prefix_kv(images, im, tok, tm)
        assert all(torch.isfinite(k).all() for k in cache.keys)
        a1 = tiny.sample_actions(images, im, tok, tm, noise)
        tok2 = tok.clone()
        tok2[~tm] = 77  # different garbage in pad slots
        images2 = images.clone()
        images2[:, 2] = torch.rand_like(images2[:, 2])  # masked camera content must not matter
        a2 = tiny.sample_actions(images2, im, tok2, tm, noise)
    torch.testing.assert_close(a1, a2, rtol=0, atol=CACHE_TOL)


def test_position_ids_with_padding(tiny):
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg, batch=1, text_lens=(5,))
    _, pad, _, _ = tiny.embed_prefix(images, im, tok, tm)
    pos = torch.cumsum(pad.long(), 1) - 1
    P = cfg.num_patches
    # cameras 0,1 valid: positions 0..2P-1; camera 2 masked: stays at 2P-1; text continues at 2P
    assert pos[0, : 2 * P].tolist() == list(range(2 * P))
    assert (pos[0, 2 * P : 3 * P] == 2 * P - 1).all()
    assert pos[0, 3 * P : 3 * P + 5].tolist() == list(range(2 * P, 2 * P + 5))
    _, spos = tiny._suffix_masks(pad, cfg.action_horizon)
    assert spos[0].tolist() == list(range(2 * P + 5, 2 * P + 5 + cfg.action_horizon))


def test_time_condition_and_prefix_matter(tiny):
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg)
    with torch.no_grad():
        cache = tiny.compute_prefix_kv(images, im, tok, tm)
        v1 = tiny.denoise_step(cache, None, noise, torch.tensor([0.9, 0.9]))
        v2 = tiny.denoise_step(cache, None, noise, torch.tensor([0.1, 0.1]))
        cache2 = tiny.compute_prefix_kv(images, im, (tok + 1) % cfg.vocab_size, tm)
        v3 = tiny.denoise_step(cache2, None, noise, torch.tensor([0.9, 0.9]))
    assert (v1 - v2).abs().max() > 1e-3
    assert (v1 - v3).abs().max() > 1e-4


def test_rope_split_half_and_relative():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 1, 8, generator=g)
    y = torch.randn(1, 1, 1, 8, generator=g)
    r0 = apply_rope(x, torch.tensor([[0]]), 10000.0)
    torch.testing.assert_close(r0, x)
    # rotation of pair (j, j+4) at position p by angle p / 10000^(2j/8)
    p = 3
    r = apply_rope(x, torch.tensor([[p]]), 10000.0)[0, 0, 0]
    j = 1
    ang = p / 10000 ** (2 * j / 8)
    exp0 = x[0, 0, 0, j] * math.cos(ang) - x[0, 0, 0, j + 4] * math.sin(ang)
    assert abs(r[j].item() - exp0.item()) < 1e-6
    # dot products depend only on relative positions
    d1 = (apply_rope(x, torch.tensor([[5]]), 1e4) * apply_rope(y, torch.tensor([[2]]), 1e4)).sum()
    d2 = (apply_rope(x, torch.tensor([[13]]), 1e4) * apply_rope(y, torch.tensor([[10]]), 1e4)).sum()
    assert abs(d1.item() - d2.item()) < 1e-5


def test_posemb_sincos_values():
    t = torch.tensor([0.0, 0.5])
    e = posemb_sincos(t, 8, 4e-3, 4.0)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    period = 4e-3 * (4.0 / 4e-3) ** (torch.arange(4, dtype=torch.float64) / 3)
    torch.testing.assert_close(e[1, :4], torch.sin(2 * math.pi * 0.5 / period).float(), rtol=0, atol=1e-6)


def test_loss_gradient_flows_everywhere(tiny):
    cfg = tiny.config
    model = Pi05Model(cfg).init_random(seed=3).train()
    images, im, tok, tm, noise = make_inputs(cfg)
    actions = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(9))
    batch = {"images": images, "image_masks": im, "tokens": tok, "token_masks": tm, "actions": actions}
    loss = model.flow_matching_loss(batch, noise=noise, t=torch.tensor([0.3, 0.7]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() == 0
    ]
    # unused by the actions: the LM's final norm, and in the LAST LM layer everything after its K/V
    # (the prefix output of the last layer is never read by the expert)
    last = cfg.lm_depth - 1
    unused = [f"lm.layers.{last}.{n}.weight" for n in ("q_proj", "o_proj", "post_attention_layernorm", "gate_proj", "up_proj", "down_proj")]
    assert sorted(no_grad) == sorted(unused + ["lm.norm.weight"]), no_grad
    # loss equals the MSE to (noise - actions) at x_t = t*noise + (1-t)*actions
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        v = model.joint_velocity(images, im, tok, tm, x_t, t)
        ref = ((v - (noise - actions)) ** 2).mean()
        per = model.flow_matching_loss(batch, noise=noise, t=t, reduction="none")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    assert per.shape == actions.shape


def test_beta_time_sampling_distribution(tiny):
    # t = u^(1/1.5)*0.999+0.001 has mean 0.999*0.6+0.001 for Beta(1.5, 1)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200000, generator=g)
    t = u.pow(1 / 1.5) * 0.999 + 0.001
    assert abs(t.mean().item() - (0.999 * 0.6 + 0.001)) < 3e-3
    assert t.min() >= 0.001


def test_canonical_roundtrip(tiny):
    cfg = tiny.config
    tensors = canonical_state_dict(tiny)
    shapes = canonical_shapes(cfg)
    assert set(tensors) == set(shapes)
    for name, arr in tensors.items():
        assert arr.dtype == np.float32 and arr.shape == shapes[name], name
    p = cfg.patch_size
    assert tensors["v.patch_embd.weight"].shape == (cfg.vision_width, 3 * p * p)
    # conv flatten order (c, ky, kx)
    w = tiny.vision.patch_embedding.weight.detach()
    assert tensors["v.patch_embd.weight"][5, 1 * p * p + 2 * p + 3] == w[5, 1, 2, 3].item()
    # Gemma norms folded as (1 + w)
    np.testing.assert_allclose(
        tensors["lm.blk.1.ffn_norm.weight"], 1 + tiny.lm.layers[1].post_attention_layernorm.weight.detach().numpy()
    )
    m2 = model_from_canonical(cfg, tensors)
    images, im, tok, tm, noise = make_inputs(cfg)
    a1 = tiny.sample_actions(images, im, tok, tm, noise)
    a2 = m2.sample_actions(images, im, tok, tm, noise)
    torch.testing.assert_close(a1, a2, rtol=0, atol=ROUNDTRIP_TOL)
    with pytest.raises(ValueError, match="missing"):
        model_from_canonical(cfg, {k: v for k, v in tensors.items() if k != "ex.blk.0.ffn_up.weight"})
    bad = dict(tensors)
    bad["lm.blk.0.attn_q.weight"] = bad["lm.blk.0.attn_q.weight"][:, :-1]
    with pytest.raises(ValueError, match="lm.blk.0.attn_q.weight"):
        model_from_canonical(cfg, bad)


def test_embed_scale_applied_once(tiny):
    cfg = tiny.config
    images, im, tok, tm, _ = make_inputs(cfg, batch=1)
    emb, _, _, _ = tiny.embed_prefix(images, im, tok, tm)
    lp_img = cfg.num_cameras * cfg.num_patches
    raw = tiny.lm.embed_tokens.weight[tok[0, 0]]
    torch.testing.assert_close(emb[0, lp_img], raw * math.sqrt(cfg.lm_width), rtol=1e-6, atol=0)


def test_input_validation(tiny):
    cfg = tiny.config
    images, im, tok, tm, noise = make_inputs(cfg)
    with pytest.raises(ValueError, match="images must be"):
        tiny.sample_actions(images[:, :2], im[:, :2], tok, tm, noise)
    with pytest.raises(ValueError, match="tokens must be"):
        tiny.sample_actions(images, im, tok[:, :-1], tm[:, :-1], noise)
    with pytest.raises(ValueError, match="noise must be"):
        tiny.sample_actions(images, im, tok, tm, noise[:, :-1])


@pytest.mark.slow
def test_real_widths_one_layer_cache_equals_joint():
    """Real pi05 widths/heads (vision hd 72, MQA hd 256, 968-token prefix) with one layer per stack."""
    cfg = get_preset("pi05").replace(num_steps=2, action_horizon=10, vision_depth=1, lm_depth=1, expert_depth=1,
                                     vocab_size=4096)
    model = Pi05Model(cfg).init_random(seed=0).eval()
    images, im, tok, tm, noise = make_inputs(cfg, batch=1, cam_mask=(True, True, False), text_lens=(20,))
    actions, inter = model.sample_actions(images, im, tok, tm, noise, return_intermediates=True)
    assert inter[PI05_INTER_PREFIX_K.format(i=0)].shape == (1, 968, 1, 256)
    assert torch.isfinite(actions).all()
    with torch.no_grad():
        cache = model.compute_prefix_kv(images, im, tok, tm)
        t = torch.tensor([0.4])
        torch.testing.assert_close(
            model.denoise_step(cache, None, noise, t), model.joint_velocity(images, im, tok, tm, noise, t),
            rtol=0, atol=CACHE_TOL,
        )
