"""pi05 preprocessing: prompts (plain and discretised state), padding, images, actions; no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from actquant_core.policies.common.normalize import FeatureStats, NormStats
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.policies.pi05.preprocess import (
    Pi05Inputs,
    Pi05Preprocessor,
    build_prompt_tokens,
    discretize_state,
)


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer.small()


def _stats():
    return NormStats(
        state=FeatureStats(q01=np.full(8, -2.0), q99=np.full(8, 2.0), mean=np.zeros(8), std=np.ones(8)),
        actions=FeatureStats(q01=np.linspace(-1, 0, 7), q99=np.linspace(1, 3, 7), mean=np.zeros(7), std=np.ones(7)),
    )


def test_plain_prompt_is_bos_task_newline(tok):
    tokens, mask = build_prompt_tokens(tok, "  put_the red cube\nin the bowl ", 24)
    expect = [tok.bos_id] + tok.encode("put the red cube in the bowl") + tok.encode("\n")
    n = len(expect)
    assert tokens[:n].tolist() == expect
    assert mask.tolist() == [True] * n + [False] * (24 - n)
    assert (tokens[n:] == 0).all() and tokens.dtype == np.int64


def test_discretised_state_prompt(tok):
    state = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 7.0, -9.0], dtype=np.float32)
    bins = discretize_state(state)
    assert bins.tolist() == [0, 0, 128, 192, 255, 255, -1]  # openpi: below -1 gives -1
    tokens, mask = build_prompt_tokens(tok, "open the drawer", 64, state)
    text = tok.decode(tokens[mask].tolist())
    assert text == "Task: open the drawer, State: 0 0 128 192 255 255 -1;\nAction: "
    assert tokens[0] == tok.bos_id


def test_truncation_warns(tok, caplog):
    with caplog.at_level("WARNING"):
        tokens, mask = build_prompt_tokens(tok, "put the red cube in the bowl " * 10, 8)
    assert mask.all() and len(tokens) == 8 and "truncated" in caplog.text


def test_preprocessor_outputs_and_torch_consumes_them(tok):
    cfg = get_preset("pi05-tiny")
    pre = Pi05Preprocessor(cfg, tok, _stats())
    rng = np.random.default_rng(0)
    imgs = {"base_0_rgb": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
            "left_wrist_0_rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)}
    inp = pre(imgs, np.linspace(-2, 2, 8), "pick up the green ball")
    assert inp.images.shape == (1, 3, 3, 32, 32) and inp.images.dtype == np.float32
    assert inp.image_masks.tolist() == [[True, True, False]]
    assert inp.tokens.shape == (1, cfg.max_token_len) and inp.token_masks[0, 0]
    np.testing.assert_allclose(inp.state[0, :8], np.linspace(-1, 1, 8), atol=1e-5)
    assert (inp.state[0, 8:] == 0).all() and inp.state.shape == (1, 32)
    model = Pi05Model(cfg).init_random(0).eval()
    batch = Pi05Inputs.stack([inp, inp])
    t = {k: torch.from_numpy(v) for k, v in batch.as_dict().items()}
    noise = torch.zeros(2, cfg.action_horizon, cfg.action_dim)
    a = model.sample_actions(t["images"], t["image_masks"], t["tokens"], t["token_masks"], noise)
    torch.testing.assert_close(a[0], a[1])
    # discrete-state variant puts the state into the tokens
    pre2 = Pi05Preprocessor(cfg.replace(discrete_state_input=True, max_token_len=48), tok, _stats())
    i1 = pre2(imgs, np.zeros(8), "pick up the green ball")
    i2 = pre2(imgs, np.ones(8), "pick up the green ball")
    assert not np.array_equal(i1.tokens, i2.tokens)


def test_actions_roundtrip_and_bad_state(tok):
    cfg = get_preset("pi05-tiny")
    pre = Pi05Preprocessor(cfg, tok, _stats())
    acts = np.random.default_rng(1).normal(size=(cfg.action_horizon, 7)).astype(np.float32)
    model_space = pre.normalize_actions(acts)
    assert model_space.shape == (cfg.action_horizon, 32) and (model_space[:, 7:] == 0).all()
    np.testing.assert_allclose(pre.unnormalize_actions(model_space), acts, atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        pre.normalize_state(np.array([np.nan] * 8))
    with pytest.raises(ValueError, match="state_dim"):
        pre.normalize_state(np.zeros(40))
    with pytest.raises(ValueError, match="vocab"):
        Pi05Preprocessor(cfg.replace(vocab_size=100), tok, None)


def test_preprocessing_imports_no_torch():
    code = (
        "import sys\n"
        "import actquant_core.policies.pi05 as p\n"
        "import actquant_core.policies.pi05.preprocess, actquant_core.policies.pi05.config\n"
        "import actquant_core.policies.common.image, actquant_core.policies.common.normalize\n"
        "import actquant_core.policies.common.tokenizer, actquant_core.policies.common.safetensors_io\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_small_preset_state_prompt_fits(tok, caplog):
    cfg = get_preset("pi05-small")
    assert cfg.discrete_state_input
    pre = Pi05Preprocessor(cfg, tok, None)
    with caplog.at_level("WARNING"):
        inp = pre({"base_0_rgb": np.zeros((224, 224, 3), np.uint8)}, np.array([0.9, -0.9, 0.1, 0.5, -0.5, 0.0, 1.0]),
                  "pick up the small red cube and put it in the basket on the left side")
    assert "truncated" not in caplog.text
    n = int(inp.token_masks.sum())
    assert n < cfg.max_token_len
    assert tok.decode(inp.tokens[0, :n].tolist()).endswith("State: 243 12 140 192 64 128 255 128;\nAction: ")


def test_delta_actions_are_relative_to_the_state(tok):
    cfg = get_preset("pi05-tiny").replace(delta_action_dims=6, state_dim=8)
    rng = np.random.default_rng(2)
    pre = Pi05Preprocessor(cfg, tok, _stats())
    absolute = Pi05Preprocessor(get_preset("pi05-tiny").replace(state_dim=8), tok, _stats())
    acts = rng.normal(size=(3, cfg.action_horizon, 7)).astype(np.float32)  # a batch of chunks
    state = rng.normal(size=(3, 7)).astype(np.float32)
    model_space = pre.normalize_actions(acts, state)
    # equals normalising the relative targets with the absolute preprocessor; the gripper stays absolute
    rel = acts.copy()
    rel[..., :6] -= state[:, None, :6]
    np.testing.assert_allclose(model_space, absolute.normalize_actions(rel), atol=1e-6)
    np.testing.assert_allclose(pre.unnormalize_actions(model_space, state=state), acts, atol=1e-5)
    # one observation's state [7] against one chunk [H, 7]
    np.testing.assert_allclose(pre.unnormalize_actions(model_space[0], state=state[0]), acts[0], atol=1e-5)
    # a zero state gives the relative motion
    np.testing.assert_allclose(pre.unnormalize_actions(model_space, state=np.zeros((3, 8))), rel, atol=1e-5)
    with pytest.raises(ValueError, match="state is required"):
        pre.unnormalize_actions(model_space)
    with pytest.raises(ValueError, match="state is required"):
        pre.normalize_actions(acts)
    with pytest.raises(ValueError, match="finite"):
        pre.normalize_actions(acts[0], np.full(7, np.nan))
    with pytest.raises(ValueError, match="delta_action_dims"):
        get_preset("pi05-tiny").replace(delta_action_dims=40)
