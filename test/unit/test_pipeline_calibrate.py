"""Calibration: seeded frame sampling and splits, pooled activations, activation importance, Fisher layout,
clear errors (empty set, NaN activations), rosbag topic mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.config import get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.quant.adapters import Pi05Adapter
from actquant_core.quant.calibrate import CalibConfig, CalibFrame, calibrate, calibrate_fisher, sample_frames
from actquant_core.sim.episodes import Episode

# float32 forward vs float64 manual pooling of the same activations
TOL_POOL = 1e-5


def _episodes(n_eps: int = 3, T: int = 5, seed: int = 0, size: int = 24) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [Episode(f"task {i % 2}", {"base_0_rgb": rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8),
                                      "left_wrist_0_rgb": rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8)},
                    rng.standard_normal((T, 7)).astype(np.float32), rng.standard_normal((T, 7)).astype(np.float32),
                    index=i) for i in range(n_eps)]


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("pi05-tiny")
    model = Pi05Model(cfg).init_random(0).eval()
    return Pi05Adapter(model, None, SentencePieceTokenizer.small())


def test_sample_frames_seeded_and_split():
    eps = _episodes(n_eps=5, T=6)
    a = sample_frames(eps, horizon=4, max_frames=7, seed=3)
    b = sample_frames(eps, horizon=4, max_frames=7, seed=3)
    c = sample_frames(eps, horizon=4, max_frames=7, seed=4)
    key = lambda fr: [(f.episode, f.t) for f in fr]  # noqa: E731
    assert key(a) == key(b) and len(a) == 7
    assert key(a) != key(c)
    # the chunk is the next H actions, padded with the episode's last action
    f = next(f for f in sample_frames(eps, 4, None) if f.episode == 1 and f.t == 4)
    np.testing.assert_array_equal(f.actions, eps[1].action[[4, 5, 5, 5]])
    cal = {f.episode for f in sample_frames(eps, 4, None, split="calib", holdout_every=2)}
    hold = {f.episode for f in sample_frames(eps, 4, None, split="holdout", holdout_every=2)}
    assert cal == {0, 2, 4} and hold == {1, 3}
    assert sample_frames(eps, 4, None, split="all").__len__() == 30


def test_activation_importance_and_pooling_match_manual(tiny):
    frames = sample_frames(_episodes(), tiny.config.action_horizon, 4, seed=0)
    name = "lm.blk.0.attn_q.weight"
    res = calibrate(tiny, frames, CalibConfig(batch_size=4, progress=False, device="cpu"),
                    hsic_targets=[name, "lm.blk.1.ffn_down.weight"], importance_targets=[name])
    # manual: the input of lm.layers.0.q_proj over valid prefix tokens
    seen = {}
    h = tiny.model.lm.layers[0].q_proj.register_forward_hook(lambda m, i, o: seen.update(x=i[0].double()))
    batch = tiny.prepare_batch(frames, torch.device("cpu"))
    tiny.add_loss_randomness(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny.run_forward(batch, torch.Generator())
    h.remove()
    mask = tiny._prefix_mask(batch)
    rows = seen["x"][mask]
    want = (rows**2).mean(0).numpy()
    np.testing.assert_allclose(res.activation_importance[name], want, rtol=TOL_POOL, atol=1e-7)
    assert res.hsic is not None and set(res.hsic.scores) == {name, "lm.blk.1.ffn_down.weight"}
    assert all(np.isfinite(v) and v >= 0 for v in res.hsic.scores.values())
    # pooled vector == masked token mean (checked through the adapter's pool on the captured input)
    pooled = tiny.pool("prefix", seen["x"], batch, "valid").numpy()
    manual = np.stack([seen["x"][b][mask[b]].mean(0).numpy() for b in range(len(frames))])
    np.testing.assert_allclose(pooled, manual, rtol=TOL_POOL, atol=1e-7)


def test_empty_calibration_set_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate(tiny, [], CalibConfig(progress=False), importance_targets=["lm.blk.0.attn_q.weight"])
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate_fisher(tiny, [], CalibConfig(progress=False), ["lm.blk.0.attn_q.weight"])
    assert sample_frames([], 4, 10) == []


def test_nan_activation_names_the_tensor():
    cfg = get_preset("pi05-tiny")
    model = Pi05Model(cfg).init_random(0).eval()
    with torch.no_grad():
        model.lm.layers[0].k_proj.weight[0, 0] = float("nan")
    ad = Pi05Adapter(model, None, SentencePieceTokenizer.small())
    frames = sample_frames(_episodes(), cfg.action_horizon, 2)
    with pytest.raises(ValueError, match=r"NaN or Inf activation at 'lm\.blk\.0\.attn_k\.weight'"):
        calibrate(ad, frames, CalibConfig(progress=False, device="cpu"), importance_targets=["lm.blk.0.attn_k.weight"])


def test_fisher_canonical_layout_and_inactive_tensors(tiny):
    frames = sample_frames(_episodes(), tiny.config.action_horizon, 4)
    last = tiny.config.lm_depth - 1
    names = ["v.patch_embd.weight", f"lm.blk.{last}.attn_k.weight", f"lm.blk.{last}.ffn_up.weight",
             "lm.blk.0.attn_norm.weight"]
    F, nb, losses, _ = calibrate_fisher(tiny, frames, CalibConfig(progress=False, device="cpu", fisher_batch_size=2), names)
    shapes = {t.name: t.shape for t in tiny.tensor_table()}
    assert nb == 2 and np.isfinite(losses["action"])
    assert "lm.blk.0.attn_norm.weight" not in F  # folded norm: not quantized, no Fisher
    assert F["v.patch_embd.weight"].shape == shapes["v.patch_embd.weight"]
    assert F[f"lm.blk.{last}.attn_k.weight"].min() > 0
    # the last LM layer's MLP reaches no action: its Fisher is exactly zero -> uniform importance 1
    assert f"lm.blk.{last}.ffn_up.weight" in tiny.inactive_tensors()
    np.testing.assert_array_equal(F[f"lm.blk.{last}.ffn_up.weight"], 1.0)


def test_rosbag_topic_mapping(tmp_path):
    from actquant_core.data.rosbag_io import BagWriter, TopicMap
    from actquant_core.quant.calibrate import BagMapping, load_episodes

    rng = np.random.default_rng(0)
    joints = ("j1", "j2")
    path = tmp_path / "bag"
    with BagWriter(path, storage="mcap") as w:
        w.write_instruction(0, "stack the cubes", topic="/task")
        for k in range(4):
            t = 1_000_000 + k * 100_000_000
            w.write_image("/cam/front", t, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
            w.write_joint_state(t + 1, list(joints), np.array([k, -k], float), topic="/js")
    mapping = BagMapping(TopicMap(cameras={"/cam/front": "base_0_rgb"}, joint_states="/js", instruction="/task",
                                  action_chunk=""), joint_names=joints, action_source="future_state")
    (ep,) = list(load_episodes(tmp_path, mapping))
    assert ep.instruction == "stack the cubes" and len(ep) == 4
    np.testing.assert_array_equal(ep.state[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(ep.action[:, 0], [1, 2, 3, 3])  # next joint state, last repeated
    assert ep.images["base_0_rgb"].shape == (4, 8, 8, 3)


def test_policy_targets_use_the_policys_own_actions_and_no_sampling_activations(tiny):
    frames = sample_frames(_episodes(), tiny.config.action_horizon, 3, seed=0)
    name = "ex.blk.0.ffn_down.weight"
    seed = 5
    res = calibrate(tiny, frames, CalibConfig(batch_size=3, progress=False, device="cpu", seed=seed, targets="policy"),
                    importance_targets=[name])
    # manual: actions = the policy's sampled chunk, then one flow-matching forward; only that forward counts
    batch = tiny.prepare_batch(frames, torch.device("cpu"))
    batch["actions"] = tiny.policy_actions(batch, torch.Generator().manual_seed(seed + 2))
    assert not torch.allclose(batch["actions"], tiny.prepare_batch(frames, torch.device("cpu"))["actions"])
    tiny.add_loss_randomness(batch, torch.Generator().manual_seed(seed))
    seen = []
    h = tiny.model.expert.layers[0].down_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].double()))
    with torch.no_grad():
        tiny.run_forward(batch, torch.Generator())
    h.remove()
    (x,) = seen
    want = (x.reshape(-1, x.shape[-1]) ** 2).mean(0).numpy()
    np.testing.assert_allclose(res.activation_importance[name], want, rtol=TOL_POOL, atol=1e-7)


def test_activation_importance_accumulator_streams_mean_square():
    """Mean of x_c^2 over every row of every batch, numpy and torch batches mixed (torch sums stay on the
    batch's device); bad batches are named."""
    import torch

    from actquant_core.quant.importance import ActivationImportanceAccumulator

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 5, 6)).astype(np.float32) * (i + 1) for i in range(3)]
    acc = ActivationImportanceAccumulator()
    acc.add_batch("w", xs[0])
    acc.add_batch("w", torch.from_numpy(xs[1]))
    acc.add_batch("w", torch.from_numpy(xs[2]).reshape(10, 6))
    want = np.concatenate([x.reshape(-1, 6) for x in xs]).astype(np.float64)
    got = acc.solve()["w"]
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, np.square(want).mean(0), rtol=1e-6)
    bad = xs[0].copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="w: activation contains NaN"):
        acc.add_batch("w", torch.from_numpy(bad))
    with pytest.raises(ValueError, match="column count changed from 6 to 4"):
        acc.add_batch("w", xs[0][..., :4])
    with pytest.raises(ValueError, match="empty activation batch"):
        acc.add_batch("v", np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="no activation was added"):
        ActivationImportanceAccumulator().solve()
