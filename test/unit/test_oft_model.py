"""OpenVLA-OFT torch reference: structural behaviour (padding, zeroed action embeddings, bidirectional
attention, FiLM, dead blocks), canonical round trip, losses."""

import numpy as np
import pytest
import torch

from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.canonical import (
    canonical_shapes,
    canonical_state_dict,
    canonical_tensor_names,
    model_from_canonical,
)
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.policies.openvla_oft.preprocess import OftInputs, OftPreprocessor, actions_to_token_ids

TOL = 1e-5  # float32 reorderings (batching, padding)


def _t(inp):
    return [torch.from_numpy(x) for x in inp.as_dict().values()]


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("openvla-oft-tiny")
    model = OftModel(cfg).init_random(0).eval()
    pre = OftPreprocessor(cfg, SentencePieceTokenizer.small(), None)
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for s in cfg.image_slots}
    a = pre(imgs, rng.uniform(-1, 1, 8), "pick up the red cube")
    b = pre(imgs, rng.uniform(-1, 1, 8), "put the green cube on the plate and open the drawer")
    return cfg, model, a, b


def test_padded_batch_equals_single(tiny):
    cfg, model, a, b = tiny
    batch = OftInputs.stack([a, b], cfg.pad_token_id)
    assert batch.input_ids.shape[1] == b.input_ids.shape[1] > a.input_ids.shape[1]
    with torch.no_grad():
        both = model.predict_actions(*_t(batch))
        single = model.predict_actions(*_t(a))
        # pad ids do not matter: pads are masked keys
        batch.input_ids[0, a.input_ids.shape[1]:] = 5
        both2 = model.predict_actions(*_t(batch))
    assert torch.allclose(both[:1], single, atol=TOL)
    assert torch.allclose(both, both2, atol=TOL)


def test_action_embeddings_are_zeroed_and_attention_is_bidirectional(tiny):
    cfg, model, a, _ = tiny
    with torch.no_grad():
        base, inter = model.predict_actions(*_t(a), return_intermediates=True)
        ids = a.input_ids.copy()
        ids[a.action_mask] = 7  # another placeholder id: embeddings are zeroed, nothing changes
        same = model.predict_actions(torch.from_numpy(a.pixels), torch.from_numpy(a.proprio), torch.from_numpy(ids),
                                     torch.from_numpy(a.attention_mask), torch.from_numpy(a.action_mask))
        # the stop token comes AFTER the action slots: with causal attention it could not matter
        ids = a.input_ids.copy()
        ids[0, -1] = 9
        changed = model.predict_actions(torch.from_numpy(a.pixels), torch.from_numpy(a.proprio), torch.from_numpy(ids),
                                        torch.from_numpy(a.attention_mask), torch.from_numpy(a.action_mask))
    assert torch.equal(base, same)
    assert (base - changed).abs().max() > 1e-4
    emb = inter["input_emb"][0]
    nv = cfg.num_vision_tokens
    slots = np.nonzero(a.action_mask[0])[0] + nv
    assert torch.count_nonzero(emb[slots]) == 0 and torch.count_nonzero(emb[slots[0] - 1]) > 0


def test_film_changes_vision_features_with_the_prompt():
    cfg = get_preset("openvla-oft-tiny").replace(use_film=True)
    model = OftModel(cfg).init_random(2).eval()
    pre = OftPreprocessor(cfg, SentencePieceTokenizer.small(), None)
    imgs = {s: np.full((32, 32, 3), 100, np.uint8) for s in cfg.image_slots}

    def dino(task):
        px, _, ids, att, act = _t(pre(imgs, np.zeros(8), task))
        return model.vision_features(px, model.film_condition(ids, att, act))[0]

    with torch.no_grad():
        d1, d2, d3 = dino("open the drawer"), dino("close the drawer"), dino("open the drawer")
    assert (d1 - d2).abs().max() > 1e-4 and torch.equal(d1, d3)
    with pytest.raises(ValueError, match="use_film needs film_cond"):
        model.vision_features(_t(pre(imgs, np.zeros(8), "x"))[0])


def test_registers_and_dead_blocks(tiny):
    cfg, model, _, _ = tiny
    assert len(model.dino.blocks) == cfg.dino_depth - 1 and len(model.siglip.blocks) == cfg.siglip_depth - 1
    assert model.dino.num_prefix == 1 + cfg.dino_registers and model.siglip.num_prefix == 0
    px = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        f0 = model.dino(px)
        saved = model.dino.reg_token.clone()
        model.dino.reg_token.copy_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(0)))
        f1 = model.dino(px)  # registers are attended to: features move
        model.dino.reg_token.copy_(saved)
    assert f0.shape == (1, cfg.num_patches, cfg.dino_width) and (f0 - f1).abs().max() > 1e-4


def test_canonical_round_trip_and_errors(tiny):
    cfg, model, a, _ = tiny
    sd = canonical_state_dict(model)
    assert list(sd) == canonical_tensor_names(cfg)
    assert {k: v.shape for k, v in sd.items()} == canonical_shapes(cfg)
    assert sd["vd.patch_embd.weight"].shape == (cfg.dino_width, 3 * cfg.patch_size**2)
    m2 = model_from_canonical(cfg, sd)
    with torch.no_grad():
        assert torch.equal(model.predict_actions(*_t(a)), m2.predict_actions(*_t(a)))
    no_head = canonical_state_dict(model, include_lm_head=False)
    assert "lm.output.weight" not in no_head
    assert torch.count_nonzero(model_from_canonical(cfg, no_head).lm_head.weight) == 0
    bad = dict(sd)
    bad["mm.fc2.weight"] = bad["mm.fc2.weight"][:, :5]
    with pytest.raises(ValueError, match=r"mm\.fc2\.weight: \(64, 5\) != \(64, 96\)"):
        model_from_canonical(cfg, bad)
    bad = dict(sd)
    del bad["vd.blk.0.ls1.weight"]
    bad["vd.blk.9.ls1.weight"] = sd["vd.blk.0.ls1.weight"]
    with pytest.raises(ValueError, match=r"missing 1 \['vd\.blk\.0\.ls1\.weight'\].*unexpected 1"):
        model_from_canonical(cfg, bad)
    film = canonical_tensor_names(cfg.replace(use_film=True))
    assert "vs.blk.1.film_shift.bias" in film and "vs.blk.1.film_shift.bias" not in sd


def test_losses_match_their_definitions(tiny):
    cfg, model, a, b = tiny
    batch_np = OftInputs.stack([a, b], cfg.pad_token_id)
    batch = {k: torch.from_numpy(v) for k, v in batch_np.as_dict().items()}
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (2, cfg.chunk, cfg.action_dim)).astype(np.float32)
    batch["actions"] = torch.from_numpy(actions)
    batch["action_token_ids"] = torch.from_numpy(actions_to_token_ids(actions, cfg))
    out = model.losses(batch)
    with torch.no_grad():
        pred = model.predict_actions(*_t(batch_np))
        hidden, slots = model.forward_hidden(*_t(batch_np))
        logp = torch.log_softmax(model.lm_head(hidden), dim=-1)
    assert abs(out["l1"].item() - (pred - batch["actions"]).abs().mean().item()) < TOL
    nll = -np.mean([logp[r, int(slots[r, j]) - 1, int(batch["action_token_ids"][r, j])].item()
                    for r in range(2) for j in range(cfg.num_action_tokens)])
    assert abs(out["nll"].item() - nll) < 1e-4
    (out["l1"] + out["nll"]).backward()
    assert model.lm_head.weight.grad is not None and model.action_head.fc2.weight.grad.abs().sum() > 0
    assert model.dino.blocks[0].qkv.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    none = model.losses(batch, reduction="none")
    assert none["l1"].shape == (2, cfg.chunk, cfg.action_dim) and none["nll"].shape == (2, cfg.num_action_tokens)


def test_bad_inputs(tiny):
    cfg, model, a, _ = tiny
    px, pr, ids, att, act = _t(a)
    with pytest.raises(ValueError, match=r"pixels must be \[B, 12, 32, 32\]"):
        model.predict_actions(px[:, :6], pr, ids, att, act)
    with pytest.raises(ValueError, match="action_mask must mark 21 slots"):
        model.predict_actions(px, pr, ids, att, act & False)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 1024\)"):
        model.predict_actions(px, pr, ids + 5000, att, act)
    with pytest.raises(ValueError, match=r"proprio must be \[B, 8\]"):
        model.predict_actions(px, pr[:, :3], ids, att, act)
