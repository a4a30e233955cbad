"""numpy <-> message converters: images (encodings, padding), joint states, trajectories, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

from actquant_ros import convert as V
from actquant_ros import msgs as M
from actquant_ros.cdr_codec import decode_image, encode_image

JPEG_MAX_ABS_ERR = 40  # jpeg q=95 on a smooth gradient: per-pixel error bound


def _rgb(h=4, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
@pytest.mark.parametrize("step", [None, 17, 32])
def test_image_round_trip_with_padding(encoding, step):
    rgb = _rgb()
    msg = V.numpy_to_image(rgb, stamp_ns=1_500_000_000, frame_id="cam", encoding=encoding, step=step)
    assert msg.step == (15 if step is None else step) and len(msg.data) == 4 * msg.step
    if encoding == "bgr8":
        np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(4, msg.step)[:, :15].reshape(4, 5, 3), rgb[:, :, ::-1])
    out = V.image_to_numpy(decode_image(encode_image(msg)))
    np.testing.assert_array_equal(out, rgb)
    assert V.time_to_ns(msg.header.stamp) == 1_500_000_000


def test_image_mono8_and_errors():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = V.numpy_to_image(gray, encoding="mono8", step=6)
    out = V.image_to_numpy(msg)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[:, :, 1], gray)
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        V.image_to_numpy(M.Image(height=1, width=1, encoding="yuv422", step=2, data=b"\x00\x00"))
    with pytest.raises(ValueError, match="need height 2 \\* step 3"):
        V.image_to_numpy(M.Image(height=2, width=1, encoding="rgb8", step=3, data=b"\x00" * 5))
    with pytest.raises(ValueError, match="step 2 < width"):
        V.numpy_to_image(_rgb(), step=2)


def test_compressed_round_trip():
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([yy * 7, xx * 5, (xx + yy) * 3], axis=-1).astype(np.uint8)
    png = V.numpy_to_compressed(rgb, fmt="png")
    np.testing.assert_array_equal(V.compressed_to_numpy(png), rgb)
    jpg = V.numpy_to_compressed(rgb, fmt="jpeg", quality=95)
    err = np.abs(V.compressed_to_numpy(jpg).astype(int) - rgb.astype(int)).max()
    assert err <= JPEG_MAX_ABS_ERR


def test_joint_state_by_name_order():
    msg = V.numpy_to_joint_state(["b", "a", "c"], np.array([2.0, 1.0, 3.0]), velocity=np.array([0.2, 0.1, 0.3]))
    pos, vel = V.joint_state_to_numpy(msg, ["a", "b"])
    np.testing.assert_array_equal(pos, [1.0, 2.0])
    np.testing.assert_array_equal(vel, [0.1, 0.2])
    pos, vel = V.joint_state_to_numpy(V.numpy_to_joint_state(["a"], [5.0]), ["a"])
    assert vel is None and pos[0] == 5.0
    with pytest.raises(KeyError, match="lacks joints \\['z'\\]"):
        V.joint_state_to_numpy(msg, ["a", "z"])
    with pytest.raises(ValueError, match="velocity has 1 values for 3 joints"):
        V.numpy_to_joint_state(["b", "a", "c"], [1, 2, 3], velocity=[1.0])


def test_chunk_trajectory_round_trip():
    actions = np.random.default_rng(3).normal(size=(10, 7))
    names = [f"j{i}" for i in range(7)]
    msg = V.chunk_to_trajectory(actions, names, dt=0.008, stamp_ns=42)
    assert len(msg.points) == 10
    back, tfs, back_names = V.trajectory_to_chunk(M.JointTrajectory.deserialize(msg.serialize()))
    np.testing.assert_array_equal(back, actions)
    np.testing.assert_allclose(tfs, 0.008 * np.arange(1, 11), atol=1e-9)
    assert back_names == names
    with pytest.raises(ValueError, match="actions must be \\[H, 7\\]"):
        V.chunk_to_trajectory(actions[:, :3], names, dt=0.1)
    with pytest.raises(ValueError, match="NaN"):
        V.chunk_to_trajectory(np.full((2, 7), np.nan), names, dt=0.1)


def test_negative_duration_normalised():
    d = V.s_to_duration(-0.25)
    assert (d.sec, d.nanosec) == (-1, 750_000_000)
    assert V.duration_to_s(d) == pytest.approx(-0.25)


def test_diagnostics_from_dict():
    arr = V.diagnostics_from_dict(
        {"policy": {"level": "warn", "message": "slow", "values": {"p50_ms": 41.23456789, "queue": 2}}, "arm": {}},
        stamp_ns=3_000_000_001,
        hardware_id="ur3",
    )
    assert [s.level for s in arr.status] == [1, 0]
    d = V.diagnostics_to_dict(M.DiagnosticArray.deserialize(arr.serialize()))
    assert d["policy"] == {"level": 1, "message": "slow", "hardware_id": "ur3", "values": {"p50_ms": "41.2346", "queue": "2"}}
    assert arr.header.stamp == M.Time(sec=3, nanosec=1)
    with pytest.raises(ValueError, match="level 'fatal'"):
        V.diagnostics_from_dict({"x": {"level": "fatal"}})
    with pytest.raises(ValueError, match="unknown keys \\['lvl'\\]"):
        V.diagnostics_from_dict({"x": {"lvl": 1}})
