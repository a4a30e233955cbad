"""Small-policy training: pixel-exact downsampling, augmentation geometry, the time-boxed loop, sharded
dataset reading, warm starts at another image size, and a tiny pi05 / OFT run whose output exports to a
GGUF the native runtime loads."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from actquant_core.constants import SIM_CAMERAS
from actquant_core.policies.common.image import area_downsample, resize_with_pad
from actquant_core.policies.openvla_oft.preprocess import center_crop_resize
from actquant_core.sim.episodes import Episode, read_lerobot, write_lerobot_episode, write_lerobot_meta
from actquant_core.train.common import LoopConfig, TrainLoop, random_shift, read_episodes_at
from actquant_core.train.openvla_oft import CROP_AREA, crop_resize

S = 64  # synthetic camera frames (downsampled 2x to the tiny presets' 32 px)


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8])
def test_area_downsample_is_bit_exact_with_opencv(factor):
    rng = np.random.default_rng(factor)
    img = rng.integers(0, 256, (factor * 9, factor * 11, 3), dtype=np.uint8)
    ref = cv2.resize(img, (11, 9), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(area_downsample(img, factor), ref)
    # and resize_with_pad takes that path for integer downscales (same pixels as before, no OpenCV call)
    sq = rng.integers(0, 256, (factor * 10, factor * 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_with_pad(sq, 10, 10), cv2.resize(sq, (10, 10), interpolation=cv2.INTER_AREA))


def test_area_downsample_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of the factor"):
        area_downsample(np.zeros((10, 10, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        area_downsample(np.zeros((10, 10, 3), np.float32), 2)


def test_random_shift_moves_whole_images_by_at_most_pad():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    y = random_shift(x, 2)
    assert y.shape == x.shape
    for b in range(2):
        # a shifted image equals a crop of the replicate-padded input at one offset within [0, 2*pad]
        xp = torch.nn.functional.pad(x[b : b + 1], (2, 2, 2, 2), mode="replicate")[0]
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(xp[:, dy : dy + 12, dx : dx + 12], y[b])]
        assert len(hits) == 1
    assert torch.equal(random_shift(x, 0), x)


def test_training_crop_grid_matches_the_runtime_centre_crop():
    """The training crop at the centre offset samples the grid of the runtime's centre crop."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    ref = center_crop_resize(img).astype(np.float32)
    x = torch.from_numpy(img).float().div(255.0).permute(2, 0, 1)[None]
    off = (1.0 - np.sqrt(CROP_AREA)) / 2.0
    got = crop_resize(x, torch.full((1, 2), off)).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0
    # the reference converts to uint8 by truncating x*255.5: within one level of the float result
    assert np.abs(got - ref).max() <= 1.0 + 1e-3
    assert np.abs(got - ref).mean() < 0.6
    # a non-centre offset samples a different window
    shifted = crop_resize(x, torch.zeros((1, 2)))[0].permute(1, 2, 0).numpy() * 255.0
    assert np.abs(shifted - ref).mean() > 5.0


def test_train_loop_respects_deadline_and_updates_ema():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    loop = TrainLoop(model, LoopConfig(lr=1e-2, warmup_steps=1, minutes=10.0, ema=0.9), log_every=5)
    t0 = time.time()
    loop.run(lambda step: ((model(x) - y) ** 2).mean(), deadline=time.time() + 0.5)
    assert time.time() - t0 < 5.0, "the deadline must cut the 10-minute time box"
    assert loop.step > 5 and loop.history
    ema = loop.ema_state()["weight"]
    assert not torch.equal(ema, model.weight.detach().cpu())  # a lagging average, not the weights
    with pytest.raises(ValueError, match="no training time left"):
        loop.run(lambda step: model(x).mean(), deadline=time.time() - 1)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        TrainLoop(model, LoopConfig(minutes=0.05), log_every=1).run(lambda step: model(x).mean() * float("nan"))


def _write_dataset(root, n_episodes: int = 4, T: int = 6) -> list[Episode]:
    rng = np.random.default_rng(1)
    eps, rows = [], []
    for i in range(n_episodes):
        ep = Episode(instruction=f"put the cube in bowl {i % 2}",
                     images={c: rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8) for c in SIM_CAMERAS},
                     state=rng.standard_normal((T, 7)).astype(np.float32),
                     action=rng.standard_normal((T, 7)).astype(np.float32), key=f"goal/t{i % 2}", index=i)
        write_lerobot_episode(root, ep, i % 2, compress=i % 2 == 0)
        rows.append({"episode_index": i, "task_index": i % 2, "task": ep.instruction, "key": ep.key, "length": T,
                     "success": True, "seed": i})
        eps.append(ep)
    write_lerobot_meta(root, rows, [{"task_index": k, "task": f"put the cube in bowl {k}", "key": f"goal/t{k}"}
                                    for k in range(2)], 10.0, S, "ur3")
    return eps


def test_sharded_parallel_reading_keeps_order_and_downsamples(tmp_path):
    eps = _write_dataset(tmp_path)
    assert [e.index for e in read_lerobot(tmp_path, shard=(1, 3))] == [1]
    with pytest.raises(ValueError, match="shard"):
        list(read_lerobot(tmp_path, shard=(3, 3)))
    got = read_episodes_at(tmp_path, S // 2, SIM_CAMERAS, workers=2)
    assert [e.index for e in got] == [e.index for e in eps]
    for a, b in zip(got, eps):
        for c in SIM_CAMERAS:
            np.testing.assert_array_equal(a.images[c], area_downsample(b.images[c], 2))
        np.testing.assert_array_equal(a.action, b.action)


def test_frame_cache_round_trips_and_is_invalidated_by_a_changed_dataset(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_dataset(data)
    first = read_episodes_at(data, S // 2, SIM_CAMERAS, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    again = read_episodes_at(data, S // 2, SIM_CAMERAS, cache_dir=cache)  # memory-mapped from the cache
    assert isinstance(again[0].images[SIM_CAMERAS[0]], np.memmap)
    assert [e.index for e in again] == [e.index for e in first]
    for a, b in zip(again, first):
        assert (a.instruction, a.key, a.success, a.seed, a.fps) == (b.instruction, b.key, b.success, b.seed, b.fps)
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.action, b.action)
        for c in SIM_CAMERAS:
            np.testing.assert_array_equal(a.images[c], b.images[c])
    assert len(read_episodes_at(data, S // 2, SIM_CAMERAS, max_episodes=2, cache_dir=cache)) == 2
    # a slot the dataset does not record (pi05's masked third camera) reads the same cache entry
    assert len(read_episodes_at(data, S // 2, SIM_CAMERAS + ("right_wrist_0_rgb",), cache_dir=cache)) == len(first)
    assert len(list(cache.iterdir())) == 1
    _write_dataset(data, n_episodes=3)  # rewritten dataset (meta changes): a new cache entry, new content
    got = read_episodes_at(data, S // 2, SIM_CAMERAS, cache_dir=cache)
    assert len(got) == 3 and len(list(cache.iterdir())) == 2


def test_warm_start_at_another_image_size_resamples_position_embedding(tmp_path):
    from actquant_core.policies.common.normalize import FeatureStats, NormStats
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.model import Pi05Model
    from actquant_core.train import pi05 as tpi

    cfg = get_preset("pi05-tiny")  # 32 px, 4x4 patches
    model = Pi05Model(cfg)
    v = torch.linspace(-1, 1, cfg.vision_width)
    with torch.no_grad():
        model.vision.position_embedding.copy_(v[None].expand(cfg.num_patches, -1))  # the same at every patch
    fs = FeatureStats(mean=np.zeros(7, np.float32), std=np.ones(7, np.float32), q01=-np.ones(7, np.float32),
                      q99=np.ones(7, np.float32))
    tpi.save_trained(tmp_path, model, NormStats(state=fs, actions=fs), SentencePieceTokenizer.small(), {})
    c, m, _, _ = tpi.load_trained(tmp_path, target=cfg.replace(image_size=16))
    assert c.image_size == 16 and m.vision.position_embedding.shape == (4, cfg.vision_width)
    bf16 = torch.from_numpy(v.numpy()).to(torch.bfloat16).float()  # the folder stores bf16
    torch.testing.assert_close(m.vision.position_embedding.detach(), bf16[None].expand(4, -1), rtol=0, atol=1e-6)
    for name in ("lm.layers.0.q_proj.weight", "expert.layers.1.down_proj.weight"):
        a = dict(m.named_parameters())[name].detach()
        b = dict(model.named_parameters())[name].detach().to(torch.bfloat16).float()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than image_size"):
        tpi.load_trained(tmp_path, target=cfg.replace(image_size=16, lm_mlp=cfg.lm_mlp * 2))


def test_warm_start_norm_stats_are_replaced_when_they_do_not_cover_the_data(tmp_path, caplog):
    """A warm start keeps its norm stats only while they cover the new data: a joint the old expert never
    moved (range ~1e-4 rad) that perturbed (DART) data now moves by centimetres would otherwise be
    normalised to values of +-100 (openpi's quantile map does not clip) and swamp the loss."""
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.train import pi05 as tpi

    cfg = get_preset("pi05-tiny").replace(image_size=S)
    tok = SentencePieceTokenizer.small()
    eps = _write_dataset(tmp_path)
    own = tpi.FrameDataset(eps, cfg, tok).norm_stats
    assert tpi.stats_not_covering(own, own) == []
    kept = tpi.FrameDataset(eps, cfg, tok, norm_stats=own)  # same data: the given stats are used
    assert kept.norm_stats is own
    narrow = type(own)(state=own.state, actions=type(own.actions)(
        mean=own.actions.mean, std=own.actions.std, q01=own.actions.q01.copy(), q99=own.actions.q99.copy()))
    narrow.actions.q01[4] = narrow.actions.q99[4] - 1e-4  # joint 5 "never moved" in the old data
    bad = tpi.stats_not_covering(narrow, own)
    assert len(bad) == 1 and bad[0].startswith("actions[4]")
    with caplog.at_level("WARNING", logger="actquant.train.pi05"):
        ds = tpi.FrameDataset(eps, cfg, tok, norm_stats=narrow)
    assert "do not cover" in caplog.text and ds.norm_stats is not narrow
    np.testing.assert_array_equal(ds.norm_stats.actions.q01, own.actions.q01)
    assert np.abs(ds.actions[..., :7]).max() < 2.0  # the data's own stats: no exploded targets
    assert np.abs(tpi.FrameDataset(eps, cfg, tok, norm_stats=own).actions[..., :7]).max() < 2.0


def test_tiny_pi05_and_oft_train_then_export_and_run(tmp_path):
    from actquant_core.export import default_type_for, export_pi05
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.quant.pipeline import export_reference, load_policy
    from actquant_core.runtime import load_runtime
    from actquant_core.runtime.types import Observation
    from actquant_core.sim.evaluate import sim_images_to_slots
    from actquant_core.train import openvla_oft as toft
    from actquant_core.train import pi05 as tpi

    data = tmp_path / "data"
    eps = _write_dataset(data)
    obs = Observation(images={c: eps[0].images[c][0] for c in SIM_CAMERAS}, state=eps[0].state[0],
                      instruction=eps[0].instruction)

    cfg = get_preset("pi05-tiny").replace(delta_action_dims=6)  # joint targets relative to the state
    log = tpi.train(data, tmp_path / "pi", tpi.TrainConfig(batch_size=4, minutes=0.05, warmup_steps=1), config=cfg,
                    load_workers=2)
    assert log["steps"] >= 1 and log["frames"] == 24
    c2, m2, ns, tok = tpi.load_trained(tmp_path / "pi")
    assert c2 == cfg
    g = tmp_path / "pi.gguf"
    export_pi05(m2, g, type_for=default_type_for("F32"), norm_stats=ns, tokenizer_model=tok.model_bytes)
    rt = load_runtime(g, n_threads=1)
    noise = np.random.default_rng(0).standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    chunk = rt.infer(obs, noise=noise)  # 64 px frames, downsampled 2x by the runtime
    assert chunk.actions.shape == (cfg.action_horizon, 7) and np.isfinite(chunk.actions).all()
    # the tiny preset has no state in the prompt: moving the arm shifts the delta policy's joint targets 1:1
    moved = Observation(images=obs.images, state=obs.state + np.r_[np.full(6, 0.25), 0.0], instruction=obs.instruction)
    shifted = rt.infer(moved, noise=noise).actions
    np.testing.assert_allclose(shifted[:, :6] - chunk.actions[:, :6], 0.25, atol=1e-5)
    np.testing.assert_allclose(shifted[:, 6], chunk.actions[:, 6], atol=1e-6)

    ocfg = toft.sim_config("openvla-oft-tiny").replace(image_size=32)
    olog = toft.train(data, tmp_path / "oft", toft.OftTrainConfig(batch_size=4, minutes=0.05, warmup_steps=1),
                      config=ocfg)
    assert olog["steps"] >= 1
    oc, om, ons, otok = toft.load_trained(tmp_path / "oft")
    assert oc == ocfg and ons.proprio is not None and ons.action.dim == 7
    adapter = load_policy(str(tmp_path / "oft"))  # `actquant quantize/export --checkpoint` take the folder
    assert type(adapter).__name__ == "OftAdapter"
    og = export_reference(adapter, tmp_path / "oft.gguf")
    rt = load_runtime(og, n_threads=1)
    a = rt.infer(Observation(images=sim_images_to_slots(obs.images, rt.config), state=obs.state,
                             instruction=obs.instruction)).actions
    assert a.shape == (ocfg.chunk, 7) and np.isfinite(a).all()
