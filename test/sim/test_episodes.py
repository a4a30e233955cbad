"""Demonstrations: parallel-free generation, LeRobot-style dataset and rosbag2 (mcap, sqlite3) round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actquant_core.constants import SIM_CAMERAS
from actquant_core.sim.demos import DemoConfig, generate
from actquant_core.sim.episodes import Episode, read_bag, read_episodes, write_bag

IMAGE_SIZE = 48
TASKS = ("goal/open_drawer", "goal/cube_on_plate")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    cfg = DemoConfig(out=out, suite="goal", episodes_per_task=1, workers=1, image_size=IMAGE_SIZE,
                     bag_episodes_per_task=1, chunk=4, task_keys=TASKS)
    report = generate(cfg)
    return out, report


def test_dataset_layout(demo_dir):
    out, report = demo_dir
    info = json.loads((out / "lerobot" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == len(TASKS) and info["fps"] == 10.0
    assert info["features"]["observation.images.base_0_rgb"]["shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
    assert all(v["successful"] == 1 for v in report["per_task"].values())


def test_lerobot_and_bag_round_trip(demo_dir):
    out, _ = demo_dir
    eps = list(read_episodes(out / "lerobot"))
    assert len(eps) == len(TASKS)
    ep0 = eps[0]
    assert ep0.success and ep0.key.startswith("goal/")
    assert set(ep0.images) == set(SIM_CAMERAS)
    assert ep0.images[SIM_CAMERAS[0]].shape == (len(ep0), IMAGE_SIZE, IMAGE_SIZE, 3)
    # actions are joint targets near the measured state (the expert moves smoothly)
    assert np.abs(ep0.action[:, :6] - ep0.state[:, :6]).max() < 0.5
    for storage in ("mcap", "sqlite3"):
        bags = list(read_episodes(out / f"rosbag2_{storage}"))
        assert len(bags) == len(TASKS)
        for b, e in zip(bags, eps):
            assert b.instruction == e.instruction and len(b) == len(e)
            for cam in SIM_CAMERAS:
                np.testing.assert_array_equal(b.images[cam], e.images[cam])
            np.testing.assert_array_equal(b.state, e.state)
            np.testing.assert_array_equal(b.action, e.action)
            assert b.fps == pytest.approx(e.fps)
            # chunk k holds actions k..k+3
            np.testing.assert_array_equal(b.action_chunks[0, :4], e.action[:4])
            assert np.isnan(b.action_chunks[-1, 1:]).all()
        frames = list(bags[0].frames())
        assert frames[0].instruction == eps[0].instruction and frames[0].state.shape == (7,)


def test_bag_writer_rejects_bad_input(tmp_path):
    T = 3
    ep = Episode(instruction="x", images={SIM_CAMERAS[0]: np.zeros((T, 8, 8, 3), np.uint8)},
                 state=np.zeros((T, 7), np.float32), action=np.ones((T, 7), np.float32))
    write_bag(tmp_path / "b", ep, "sqlite3", chunk=2)
    back = read_bag(tmp_path / "b")
    np.testing.assert_array_equal(back.action, ep.action)
    with pytest.raises(FileExistsError):
        write_bag(tmp_path / "b", ep, "sqlite3")
    with pytest.raises(ValueError, match="storage"):
        write_bag(tmp_path / "c", ep, "bagfile")
    with pytest.raises(ValueError, match="uint8"):
        Episode(instruction="x", images={"c": np.zeros((T, 8, 8, 3), np.float32)},
                state=np.zeros((T, 7), np.float32), action=np.zeros((T, 7), np.float32))
