"""Our IdlStruct messages and the fast image codec produce exactly rosbags' (ROS 2 Humble) CDR bytes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from actquant_ros import msgs as M
from actquant_ros.cdr_codec import FAST_CODECS, decode_image, decode_joint_trajectory, encode_image, encode_joint_trajectory

rosbags_typesys = pytest.importorskip("rosbags.typesys")

TS = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)
UNICODE = "grüße/ζ-камера-相机-🙂"  # multi-byte UTF-8 (2, 3 and 4-byte sequences)
# Budget for the fast image path, per 224x224x3 image (the stock per-element path takes 7-17 ms).
FAST_IMAGE_BUDGET_MS = 1.0


def _rb(ros_name: str, obj):
    """Build the rosbags message equivalent to our ``obj`` (recursively, by field name)."""
    cls = TS.types[ros_name]
    _, fields = TS.fielddefs[ros_name]
    kwargs = {}
    for fname, (node_type, spec) in fields:
        v = getattr(obj, fname)
        if node_type == 2:  # NAME: nested message
            kwargs[fname] = _rb(spec, v)
        elif node_type == 4:  # SEQUENCE
            (inner_type, inner_spec), _ = spec
            if inner_type == 2:
                kwargs[fname] = [_rb(inner_spec, x) for x in v]
            elif inner_spec[0] == "string":
                kwargs[fname] = list(v)
            else:
                dtype = {"uint8": np.uint8, "float64": np.float64}[inner_spec[0]]
                kwargs[fname] = np.frombuffer(bytes(v), dtype=np.uint8) if dtype is np.uint8 else np.asarray(v, dtype=dtype)
        else:
            kwargs[fname] = v
    return cls(**kwargs)


def _header(frame="cam"):
    return M.Header(stamp=M.Time(sec=1_700_000_123, nanosec=456_789_012), frame_id=frame)


def _cases():
    rng = np.random.default_rng(0)
    pt = M.JointTrajectoryPoint(
        positions=[0.1, -2.5, 3.25], velocities=[], accelerations=[1e-9], effort=[], time_from_start=M.Duration(sec=-1, nanosec=5)
    )
    return [
        M.Time(sec=-5, nanosec=999_999_999),
        M.Duration(sec=7, nanosec=1),
        _header(),
        M.Header(),  # empty frame_id
        M.String(data=""),
        M.String(data=UNICODE),
        M.String(data="abc"),  # 4-byte string + NUL: alignment edge
        M.Image(header=_header(UNICODE), height=3, width=5, encoding="rgb8", is_bigendian=0, step=16,
                data=rng.integers(0, 256, 48, dtype=np.uint8).tobytes()),
        M.Image(),  # all empty
        M.Image(header=_header(""), height=1, width=1, encoding="mono8", is_bigendian=1, step=1, data=b"\x07"),
        M.CompressedImage(header=_header("x"), format="jpeg", data=bytes(range(17))),
        M.CompressedImage(),
        M.JointState(header=_header("base"), name=["shoulder_pan_joint", UNICODE], position=[0.5, -1.0], velocity=[], effort=[]),
        M.JointState(),
        M.JointTrajectoryPoint(),
        pt,
        M.JointTrajectory(header=_header(), joint_names=["a", "b", "c"], points=[pt, M.JointTrajectoryPoint()]),
        M.JointTrajectory(),
        M.KeyValue(key="latency_ms", value=UNICODE),
        M.DiagnosticStatus(level=2, name="policy", message="", hardware_id="ur3", values=[M.KeyValue("a", "1"), M.KeyValue()]),
        M.DiagnosticArray(header=_header(), status=[M.DiagnosticStatus(level=1, name="x"), M.DiagnosticStatus()]),
        M.DiagnosticArray(),
    ]


@pytest.mark.parametrize("msg", _cases(), ids=lambda m: type(m).__name__)
def test_cdr_equals_rosbags(msg):
    ros_name = M.ros_type_name(type(msg))
    ours = msg.serialize()
    theirs = bytes(TS.serialize_cdr(_rb(ros_name, msg), ros_name))
    assert ours[:4] == b"\x00\x01\x00\x00", "XCDR1 little-endian encapsulation"
    assert ours == theirs, f"{ros_name}: ours {ours.hex()} != rosbags {theirs.hex()}"
    # and back: rosbags bytes parse into the same message
    back = type(msg).deserialize(theirs)
    if isinstance(msg, (M.Image, M.CompressedImage)):
        assert bytes(back.data) == bytes(msg.data)
    else:
        assert back == msg


def test_every_type_covered():
    covered = {type(m) for m in _cases()}
    assert covered == set(M.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", [m for m in _cases() if type(m) in FAST_CODECS], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("little_endian", [True, False], ids=["le", "be"])
def test_fast_codecs_equal_rosbags(msg, little_endian):
    ros_name = M.ros_type_name(type(msg))
    enc, dec = FAST_CODECS[type(msg)]
    theirs = bytes(TS.serialize_cdr(_rb(ros_name, msg), ros_name, little_endian=little_endian))
    if little_endian:
        assert enc(msg) == theirs
    assert dec(theirs) == msg  # byte data comes back as bytes, equal to the bytes we put in


def test_fast_codecs_cover_the_high_rate_types():
    assert set(FAST_CODECS) == {M.Image, M.CompressedImage, M.JointState, M.JointTrajectory}


def test_fast_trajectory_codec_with_numpy_rows_and_odd_alignment():
    """float64 sequences after odd-length strings need 8-byte padding; numpy rows serialise like lists."""
    rng = np.random.default_rng(2)
    pts = [M.JointTrajectoryPoint(positions=rng.normal(size=7), velocities=[], accelerations=rng.normal(size=1),
                                  effort=[], time_from_start=M.Duration(sec=k, nanosec=3)) for k in range(50)]
    msg = M.JointTrajectory(header=_header("a"), joint_names=[f"j{i}" * (i + 1) for i in range(7)], points=pts)
    as_lists = M.JointTrajectory(header=msg.header, joint_names=msg.joint_names, points=[
        M.JointTrajectoryPoint(positions=p.positions.tolist(), velocities=[], accelerations=p.accelerations.tolist(), effort=[],
                               time_from_start=p.time_from_start) for p in pts])
    ros_name = M.ros_type_name(M.JointTrajectory)
    theirs = bytes(TS.serialize_cdr(_rb(ros_name, as_lists), ros_name))
    assert encode_joint_trajectory(msg) == theirs == as_lists.serialize()
    assert decode_joint_trajectory(theirs) == as_lists


def test_fast_image_codec_accepts_arrays_and_big_endian():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = M.Image(header=_header(), height=2, width=3, encoding="rgb8", step=9, data=rgb)
    assert encode_image(msg) == encode_image(M.Image(header=_header(), height=2, width=3, encoding="rgb8", step=9, data=rgb.tobytes()))
    # big-endian payload from rosbags decodes to the same message
    ros_name = M.ros_type_name(M.Image)
    be = bytes(TS.serialize_cdr(_rb(ros_name, msg), ros_name, little_endian=False))
    assert be[:2] == b"\x00\x00"
    out = decode_image(be)
    assert out.height == 2 and out.step == 9 and out.data == rgb.tobytes() and out.header == _header()


def test_fast_image_codec_rejects_bad_input():
    with pytest.raises(ValueError, match="truncated"):
        decode_image(encode_image(M.Image(height=1, width=1, encoding="mono8", step=1, data=b"\x01"))[:-1])
    with pytest.raises(ValueError, match="encapsulation"):
        decode_image(b"\x00\x07\x00\x00" + b"\x00" * 40)
    with pytest.raises(TypeError, match="uint8"):
        encode_image(M.Image(data=np.zeros(3, dtype=np.float32)))


def test_fast_image_codec_speed():
    """224x224x3 encode + decode stays far below the stock path (measured, not asserted tightly)."""
    data = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    msg = M.Image(header=_header(), height=224, width=224, encoding="rgb8", step=672, data=data.tobytes())
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        payload = encode_image(msg)
    t1 = time.perf_counter()
    for _ in range(n):
        decode_image(payload)
    t2 = time.perf_counter()
    enc_ms, dec_ms = (t1 - t0) / n * 1e3, (t2 - t1) / n * 1e3
    assert payload == msg.serialize()
    assert enc_ms < FAST_IMAGE_BUDGET_MS and dec_ms < FAST_IMAGE_BUDGET_MS, (enc_ms, dec_ms)


def test_type_names():
    assert M.dds_type_name(M.Image) == "sensor_msgs::msg::dds_::Image_"
    assert M.dds_type_name(M.Time) == "builtin_interfaces::msg::dds_::Time_"
    assert M.ros_type_name(M.JointTrajectoryPoint) == "trajectory_msgs/msg/JointTrajectoryPoint"
    assert M.message_class("diagnostic_msgs/DiagnosticArray") is M.DiagnosticArray
    assert M.message_class("std_msgs/msg/Header") is M.Header
    with pytest.raises(KeyError, match="geometry_msgs/msg/Pose"):
        M.message_class("geometry_msgs/msg/Pose")
