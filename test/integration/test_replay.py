"""Rosbag replay evaluation on a generated bag: frame synchronisation, scores, schedules, CLI, republish."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from test_policy_node_support import START_Q, StubRuntime, export_tiny_policy

from actquant_ros.transport.loopback import use_loopback_config

use_loopback_config()

from actquant_core import constants as C  # noqa: E402
from actquant_core.runtime import load_runtime  # noqa: E402
from actquant_core.runtime.types import Observation  # noqa: E402
from actquant_core.data.rosbag_io import iter_bag_raw  # noqa: E402
from actquant_core.sim.episodes import Episode, write_bag  # noqa: E402
from actquant_ros import msgs as M  # noqa: E402
from actquant_ros.replay import ReplayConfig, evaluate_replay, main, read_frames, republish_bag  # noqa: E402
from actquant_ros.transport import QOS_DEFAULT, make_node  # noqa: E402

T = 12  # frames
FPS = 10.0
CHUNK = 4
EXACT = 1e-6  # float32 storage of the bag's states / actions vs our float64 arithmetic
DOMAIN = 230 + os.getpid() % 3


@pytest.fixture(scope="module")
def episode():
    rng = np.random.default_rng(3)
    state = (np.array(START_Q + (0.5,)) + 0.05 * rng.standard_normal((T, 7))).astype(np.float32)
    action = (state + 0.02 * rng.standard_normal((T, 7))).astype(np.float32)
    images = {cam: rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8) for cam in C.SIM_CAMERAS}
    return Episode(instruction="put the red cube in the bowl", images=images, state=state, action=action, fps=FPS)


@pytest.fixture(scope="module")
def bag(episode, tmp_path_factory):
    return write_bag(tmp_path_factory.mktemp("bag") / "episode_000000", episode, "mcap", chunk=CHUNK)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return export_tiny_policy(tmp_path_factory.mktemp("policy") / "tiny.gguf")


def test_read_frames_synchronised(bag, episode):
    frames = list(read_frames(ReplayConfig(bag=str(bag), gguf="unused")))
    assert len(frames) == T
    for k, fr in enumerate(frames):
        assert fr.t == pytest.approx(k / FPS, abs=1e-9)
        for cam in C.SIM_CAMERAS:
            np.testing.assert_array_equal(fr.images[cam], episode.images[cam][k])
        np.testing.assert_allclose(fr.state, episode.state[k], atol=EXACT)
        np.testing.assert_allclose(fr.recorded, episode.action[k:k + CHUNK], atol=EXACT)
        assert fr.instruction == episode.instruction
    assert len(list(read_frames(ReplayConfig(bag=str(bag), gguf="unused", max_frames=5)))) == 5


def test_scores_against_recorded_and_reference(bag, episode, tiny_gguf):
    res = evaluate_replay(ReplayConfig(bag=str(bag), gguf=str(tiny_gguf), reference=str(tiny_gguf), threads=1, seed=5))
    assert res["frames"] == {"read": T, "inferred": T, "skipped_busy": 0, "labelled": T, "nonfinite": 0}
    # same weights, same noise seed -> identical actions
    assert res["metrics"]["reference"]["joint_mae_rad"]["max"] == 0.0
    # frame 0 recomputed independently: fresh runtime with the same seed, first call
    rt = load_runtime(tiny_gguf, n_threads=1, seed=5)
    obs = Observation(images={c: episode.images[c][0] for c in C.SIM_CAMERAS}, state=episode.state[0],
                      instruction=episode.instruction)
    a = rt.infer(obs).actions
    n = min(a.shape[0], CHUNK)
    want = np.abs(a[:n, :6] - episode.action[:n, :6]).mean()
    assert res["per_frame"][0]["err_recorded"] == pytest.approx(want, abs=EXACT)
    assert res["metrics"]["recorded"]["joint_mae_rad"]["n"] == T
    assert len(res["metrics"]["recorded"]["joint_mae_by_step"]) == 4  # pi05-tiny horizon 4, recorded chunks 4
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]


def test_realtime_schedule_skips_frames_while_busy(bag):
    latency_s = 0.25  # 2.5 frame periods
    stub = StubRuntime(horizon=CHUNK, latency_s=latency_s)
    res = evaluate_replay(ReplayConfig(bag=str(bag), gguf="stub", schedule="realtime"), runtime=stub)
    inferred = res["frames"]["inferred"]
    # a call at frame k occupies the worker until k/10 + >=0.25 s: at most every 3rd frame is inferred
    assert inferred == stub.calls and inferred <= -(-T // 3)
    assert res["frames"]["skipped_busy"] == T - inferred
    assert np.all(np.diff([r["t"] for r in res["per_frame"]]) >= latency_s - 1e-9)


def test_cli_writes_json_and_plots(bag, tiny_gguf, tmp_path):
    rc = main(["--bag", str(bag), "--gguf", str(tiny_gguf), "--reference", str(tiny_gguf), "--threads", "1",
               "--out", str(tmp_path), "--max-frames", "6"])
    assert rc == 0
    res = json.loads((tmp_path / "replay.json").read_text())
    assert res["frames"]["inferred"] == 6 and "reference" in res["metrics"]
    for name in ("replay_error.png", "replay_latency.png", "replay_steps.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert main(["--bag", str(tmp_path / "missing"), "--gguf", str(tiny_gguf)]) == 2


def test_republish_over_dds(bag, episode):
    listener = make_node("replay_listener", backend="dds", argv=[], domain_id=DOMAIN)
    pub_node = make_node("bag_republisher", backend="dds", argv=[], domain_id=DOMAIN)
    got: list = []
    try:
        listener.create_subscription(M.JointState, C.TOPIC_JOINT_STATES, got.append, QOS_DEFAULT)
        listener.spin_in_thread()
        n_all = len(list(iter_bag_raw(bag)))
        n = republish_bag(bag, rate=5.0, topics=[C.TOPIC_JOINT_STATES], node=pub_node, wait_for_subscribers_s=5.0)
        deadline = time.monotonic() + 5.0
        while len(got) < T and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pub_node.shutdown()
        listener.shutdown()
    assert n == T and n_all == T * (len(C.SIM_CAMERAS) + 2) + 1  # per frame: images, joints, chunk; + instruction
    assert len(got) == T
    np.testing.assert_allclose(np.array([m.position for m in got]), episode.state, atol=EXACT)
