"""pi05 checkpoint loader: real key layouts (lerobot, openpi), shards, bf16, norm stats, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actquant_core.policies.common.normalize import NormStats
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.loader import (
    CheckpointLayoutError,
    checkpoint_state_dict,
    load_pi05_checkpoint,
)
from actquant_core.policies.pi05.model import Pi05Model

LOAD_TOL = 1e-6  # fp32 checkpoint -> same forward (norm fold/unfold rounding only)

TINY_HEADS = {"head_dim": 16, "vision_heads": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def source():
    cfg = get_preset("pi05-tiny")
    return Pi05Model(cfg).init_random(seed=11).eval()


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, cfg.num_cameras, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    im = torch.tensor([[True, False, True]])
    tok = torch.randint(0, cfg.vocab_size, (1, cfg.max_token_len), generator=g)
    tm = torch.zeros(1, cfg.max_token_len, dtype=torch.bool)
    tm[0, :7] = True
    noise = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=g)
    return images, im, tok, tm, noise


def _write_sharded(sd: dict[str, torch.Tensor], folder, n_shards=2):
    names = sorted(sd)
    weight_map = {}
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in names[s::n_shards]}
        save_file(part, str(folder / fname))
        weight_map.update({k: fname for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_lerobot_layout_single_file_fp32(tmp_path, source):
    cfg = source.config
    sd = checkpoint_state_dict(source, "lerobot")
    assert all(k.startswith("model.") for k in sd)
    assert "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight" in sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps({"type": "pi05", "chunk_size": cfg.action_horizon, "tokenizer_max_length": cfg.max_token_len,
                    "num_inference_steps": 10})
    )
    q01 = np.linspace(-1, 0, 8).astype(np.float32)
    stats = {
        "observation.state.q01": torch.from_numpy(q01),
        "observation.state.q99": torch.from_numpy(q01 + 2),
        "action.q01": torch.zeros(7),
        "action.q99": torch.ones(7),
        "action.mean": torch.zeros(7),
        "action.std": torch.ones(7),
    }
    save_file(stats, str(tmp_path / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    cfg2, model, norm = load_pi05_checkpoint(tmp_path, **TINY_HEADS)
    assert cfg2 == cfg.replace(discrete_state_input=True)  # real-model default when config.json is silent
    x = _inputs(cfg)
    torch.testing.assert_close(model.sample_actions(*x), source.sample_actions(*x), rtol=0, atol=LOAD_TOL)
    assert isinstance(norm, NormStats)
    np.testing.assert_array_equal(norm.state.q01, q01)
    assert norm.actions.dim == 7


def test_openpi_layout_sharded_bf16_old_names_tied_head(tmp_path, source):
    cfg = source.config
    sd = checkpoint_state_dict(source, "openpi")
    assert not any(k.startswith("model.") for k in sd)
    assert not any("embed_tokens" in k for k in sd)
    assert "paligemma_with_expert.paligemma.language_model.lm_head.weight" in sd
    assert "action_time_mlp_in.weight" in sd
    # extras a loader must drop
    sd["paligemma_with_expert.gemma_expert.model.embed_tokens.weight"] = torch.zeros(4, cfg.expert_width)
    sd["state_proj.weight"] = torch.zeros(cfg.expert_width, 32)
    sd["state_proj.bias"] = torch.zeros(cfg.expert_width)
    sd_bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    _write_sharded(sd_bf16, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"head_dim": 16, "vision_config": {"num_attention_heads": 2},
                                                      "action_horizon": cfg.action_horizon,
                                                      "max_token_len": cfg.max_token_len,
                                                      "discrete_state_input": False}))
    (tmp_path / "assets" / "physical-intelligence" / "libero").mkdir(parents=True)
    (tmp_path / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").write_text(json.dumps(
        {"norm_stats": {"state": {"mean": [0.0] * 8, "std": [1.0] * 8, "q01": [-1.0] * 8, "q99": [1.0] * 8},
                        "actions": {"mean": [0.0] * 7, "std": [1.0] * 7, "q01": [-2.0] * 7, "q99": [2.0] * 7}}}))
    cfg2, model, norm = load_pi05_checkpoint(tmp_path)  # heads from config.json
    assert cfg2 == cfg
    # reference: the source module with every weight rounded to bf16
    ref = Pi05Model(cfg)
    ref.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in source.state_dict().items()})
    ref.eval()
    x = _inputs(cfg, seed=3)
    torch.testing.assert_close(model.sample_actions(*x), ref.sample_actions(*x), rtol=0, atol=LOAD_TOL)
    # and bf16 rounding made a (small) difference from the fp32 source
    assert (model.sample_actions(*x) - source.sample_actions(*x)).abs().max() > 0
    np.testing.assert_array_equal(norm.actions.q99, np.full(7, 2.0, np.float32))


def test_single_safetensors_file_path_and_missing_stats(tmp_path, source, caplog):
    sd = checkpoint_state_dict(source, "lerobot")
    f = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    with caplog.at_level("WARNING"):
        cfg, model, norm = load_pi05_checkpoint(f, **TINY_HEADS)
    assert norm is None and "no norm stats" in caplog.text
    assert cfg.lm_depth == source.config.lm_depth


def test_missing_and_unexpected_keys_are_listed(tmp_path, source):
    sd = checkpoint_state_dict(source, "lerobot")
    gone = "model.paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"
    del sd[gone]
    sd["model.some_new_head.weight"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointLayoutError) as err:
        load_pi05_checkpoint(tmp_path, **TINY_HEADS)
    msg = str(err.value)
    assert "missing 1" in msg and "gemma_expert.model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected 1" in msg and "some_new_head.weight" in msg


def test_wrong_head_dim_is_reported(tmp_path, source):
    sd = checkpoint_state_dict(source, "lerobot")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointLayoutError, match="head_dim 24"):
        load_pi05_checkpoint(tmp_path, head_dim=24, vision_heads=2)


def test_no_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pi05_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pi05_checkpoint(tmp_path / "nope")


def test_missing_shard_is_reported(tmp_path, source):
    sd = checkpoint_state_dict(source, "lerobot")
    _write_sharded(sd, tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_pi05_checkpoint(tmp_path, **TINY_HEADS)


def test_lerobot_config_camera_slots_and_overrides(tmp_path, source):
    sd = checkpoint_state_dict(source, "lerobot")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "input_features": {
            "observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]},
            "observation.images.image2": {"type": "VISUAL", "shape": [3, 256, 256]},
            "observation.state": {"type": "STATE", "shape": [8]},
        },
        "empty_cameras": 1,
        "chunk_size": 7,
    }))
    cfg, model, _ = load_pi05_checkpoint(tmp_path, **TINY_HEADS, max_token_len=source.config.max_token_len)
    assert cfg.camera_slots == ("image", "image2", "empty_camera_0")
    assert cfg.action_horizon == 7
    cfg2, _, _ = load_pi05_checkpoint(tmp_path, **TINY_HEADS, action_horizon=3, camera_slots=("a", "b", "c"))
    assert cfg2.action_horizon == 3 and cfg2.camera_slots == ("a", "b", "c")
    # invalid slot lists are rejected with the config validation message
    with pytest.raises(CheckpointLayoutError, match="camera_slots"):
        load_pi05_checkpoint(tmp_path, **TINY_HEADS, camera_slots=("a", "a"))
