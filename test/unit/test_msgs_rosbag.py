"""rosbag2 write/read (sqlite3 and mcap) of the project's topics, and bag bytes == our wire bytes."""

from __future__ import annotations

import numpy as np
import pytest

from actquant_core.data import (
    KIND_ACTION_CHUNK,
    KIND_IMAGE,
    KIND_INSTRUCTION,
    KIND_JOINT_STATE,
    BagWriter,
    TopicMap,
    bag_topics,
    read_bag,
)

pytest.importorskip("rosbags")

NAMES = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "gripper"]
BASE, WRIST = "/camera/base/image_raw", "/camera/wrist/image_raw"


def _write_episode(path, storage, compression=None, frames=6):
    rng = np.random.default_rng(7)
    expected = []
    with BagWriter(path, storage=storage, compression=compression, frame_id="cam") as bag:
        bag.write_instruction(1_000, "put the red cube in the bowl ✓")
        expected.append((KIND_INSTRUCTION, 1_000, "put the red cube in the bowl ✓"))
        for k in range(frames):
            t = 1_000_000_000 + k * 50_000_000
            base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            wrist = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            q = rng.normal(size=len(NAMES))
            chunk = rng.normal(size=(5, len(NAMES)))
            bag.write_image(BASE, t, base)
            bag.write_image(WRIST, t + 1, wrist, encoding="bgr8")
            bag.write_joint_state(t + 2, NAMES, q, velocity=q * 0.5)
            bag.write_action_chunk(t + 3, NAMES, chunk, dt=0.02)
            expected += [(KIND_IMAGE, t, base), (KIND_IMAGE, t + 1, wrist), (KIND_JOINT_STATE, t + 2, q), (KIND_ACTION_CHUNK, t + 3, chunk)]
        bag.write_image("/camera/other", 5, np.zeros((2, 2, 3), np.uint8))  # not in the map: skipped
    return expected


@pytest.mark.parametrize("storage,compression", [("sqlite3", None), ("mcap", None), ("mcap", "zstd")])
def test_write_read_round_trip(tmp_path, storage, compression):
    path = tmp_path / "bag"
    expected = _write_episode(path, storage, compression)
    tm = TopicMap(cameras={BASE: "base_0_rgb", WRIST: "left_wrist_0_rgb"})
    got = list(read_bag(path, tm))
    assert len(got) == len(expected)
    assert [g.log_time_ns for g in got] == sorted(g.log_time_ns for g in got)
    for g, (kind, t, value) in zip(got, expected):
        assert g.kind == kind and g.log_time_ns == t
        if kind == KIND_IMAGE:
            assert g.slot == ("base_0_rgb" if g.topic == BASE else "left_wrist_0_rgb")
            np.testing.assert_array_equal(g.value, value)  # bgr8 on disk, RGB back
            assert g.stamp_ns == t
        elif kind == KIND_JOINT_STATE:
            np.testing.assert_array_equal(g.value.position, value)
            np.testing.assert_array_equal(g.value.velocity, value * 0.5)
            np.testing.assert_array_equal(g.value.ordered(["gripper", "elbow_joint"]), value[[3, 2]])
        elif kind == KIND_ACTION_CHUNK:
            np.testing.assert_array_equal(g.value.actions, value)
            np.testing.assert_allclose(g.value.time_from_start, 0.02 * np.arange(1, 6), atol=1e-9)
            assert g.value.joint_names == tuple(NAMES)
        else:
            assert g.value == value
    assert bag_topics(path)["/camera/other"] == "sensor_msgs/msg/Image"


def test_time_window_and_missing_topics(tmp_path):
    path = tmp_path / "bag"
    _write_episode(path, "sqlite3")
    tm = TopicMap(cameras={BASE: "base_0_rgb"}, joint_states="", instruction="", action_chunk="/not_recorded")
    got = list(read_bag(path, tm, start_ns=1_000_000_000, stop_ns=1_100_000_000))
    assert [g.kind for g in got] == [KIND_IMAGE, KIND_IMAGE]


def test_type_mismatch_is_an_error(tmp_path):
    path = tmp_path / "bag"
    _write_episode(path, "sqlite3", frames=1)
    with pytest.raises(ValueError, match="'/joint_states' has type 'sensor_msgs/msg/JointState'.*as image"):
        list(read_bag(path, TopicMap(cameras={"/joint_states": "base_0_rgb"}, joint_states="")))


def test_bag_bytes_are_our_wire_bytes(tmp_path):
    """A raw CDR payload from a bag is what our DDS publisher would send (and vice versa)."""
    from rosbags.highlevel import AnyReader

    from actquant_ros import convert as V
    from actquant_ros.cdr_codec import encode_image

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path / "bag"
    with BagWriter(path, storage="mcap", frame_id="cam") as bag:
        bag.write_image(BASE, 123_456_789_012, rgb)
        ours = encode_image(V.numpy_to_image(rgb, stamp_ns=123_456_789_012, frame_id="cam"))
        bag.write_raw("/raw", "sensor_msgs/msg/Image", 5, ours)
    with AnyReader([path]) as reader:
        raw = {c.topic: bytes(r) for c, _, r in reader.messages()}
    assert raw[BASE] == ours == raw["/raw"]


def test_topic_map_validation():
    with pytest.raises(ValueError, match="more than once"):
        TopicMap(cameras={"/joint_states": "a"})
    with pytest.raises(ValueError, match="must be an absolute ROS name"):
        TopicMap(cameras={"camera": "a"})
    with pytest.raises(ValueError, match="unique and non-empty"):
        TopicMap(cameras={"/a": "s", "/b": "s"})
    with pytest.raises(FileExistsError):
        BagWriter(__file__)


def test_reads_simulated_demo_bags(tmp_path):
    """Bags written by the simulator's episode writer (actquant_core.sim.episodes) read back exactly here."""
    episodes = pytest.importorskip("actquant_core.sim.episodes")
    if not hasattr(episodes, "write_bag") or not hasattr(episodes, "Episode"):
        pytest.skip("actquant_core.sim.episodes has no write_bag/Episode")
    from actquant_core import constants as C

    rng = np.random.default_rng(11)
    T = 4
    ep = episodes.Episode(
        instruction="stack the cubes",
        images={cam: rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8) for cam in C.SIM_CAMERAS},
        state=rng.normal(size=(T, 7)).astype(np.float32),
        action=rng.normal(size=(T, 7)).astype(np.float32),
        fps=10.0,
    )
    path = episodes.write_bag(tmp_path / "ep", ep, storage="sqlite3", chunk=3)
    tm = TopicMap(cameras={topic: cam for cam, topic in C.SIM_CAMERA_TOPICS.items()})
    got = list(read_bag(path, tm))
    imgs = {cam: [g.value for g in got if g.kind == KIND_IMAGE and g.slot == cam] for cam in C.SIM_CAMERAS}
    for cam in C.SIM_CAMERAS:
        np.testing.assert_array_equal(np.stack(imgs[cam]), ep.images[cam])
    states = [g.value for g in got if g.kind == KIND_JOINT_STATE]
    names = list(C.SIM_ARM_JOINTS) + [C.SIM_GRIPPER_JOINT_NAME]
    np.testing.assert_array_equal(np.stack([s.ordered(names) for s in states]), ep.state.astype(np.float64))
    chunks = [g.value for g in got if g.kind == KIND_ACTION_CHUNK]
    np.testing.assert_array_equal(chunks[0].actions, ep.action[:3].astype(np.float64))
    np.testing.assert_allclose(chunks[0].time_from_start, [0.1, 0.2, 0.3], atol=1e-9)
    assert [g.value for g in got if g.kind == KIND_INSTRUCTION] == ["stack the cubes"]
