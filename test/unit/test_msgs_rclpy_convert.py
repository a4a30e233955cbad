"""Our messages <-> rclpy messages, against stand-in rosidl message classes (no ROS 2 here).

The stand-ins are generated from the ROS 2 Humble definitions in rosbags' typestore and follow the
rosidl_generator_py conventions that matter for the conversion: ``get_fields_and_field_types()`` type
strings, ``uint8[]`` / ``float64[]`` as ``array.array``, ROS ``byte`` (``octet``) as ``bytes`` of
length 1, and setters that reject wrongly typed values.
"""

from __future__ import annotations

import array
import sys
import types

import numpy as np
import pytest

from actquant_ros import msgs as M
from actquant_ros.transport.rclpy_backend import from_rclpy, to_rclpy

rosbags_typesys = pytest.importorskip("rosbags.typesys")
TS = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)
_BASE = {"float64": "double", "uint8": "uint8", "byte": "octet", "int32": "int32", "uint32": "uint32", "string": "string"}


def _type_string(node_type, spec) -> str:
    if node_type == 2:
        pkg, _, name = spec.split("/")
        return f"{pkg}/{name}"
    if node_type == 4:
        (inner_type, inner_spec), _ = spec
        return f"sequence<{_type_string(inner_type, inner_spec)}>"
    return _BASE[spec[0]]


def _make_stub(ros_name: str, registry: dict):
    _, fields = TS.fielddefs[ros_name]
    ftypes = {f: _type_string(nt, sp) for f, (nt, sp) in fields}

    class Stub:
        _ftypes = ftypes

        @classmethod
        def get_fields_and_field_types(cls):
            return dict(cls._ftypes)

        def __init__(self):
            for f, t in ftypes.items():
                object.__setattr__(self, f, _default(t, registry))

        def __setattr__(self, name, value):
            t = ftypes[name]  # KeyError for unknown fields, like __slots__
            _check(name, t, value, registry)
            object.__setattr__(self, name, value)

    Stub.__name__ = ros_name.split("/")[-1]
    return Stub


def _default(t, registry):
    if t == "sequence<uint8>":
        return array.array("B")
    if t == "sequence<double>":
        return array.array("d")
    if t.startswith("sequence<"):
        return []
    if t == "octet":
        return b"\x00"
    if t == "string":
        return ""
    if "/" in t:
        return registry[t]()
    return 0


def _check(name, t, value, registry):
    if t == "sequence<uint8>":
        ok = isinstance(value, array.array) and value.typecode == "B"
    elif t == "sequence<double>":
        ok = isinstance(value, array.array) and value.typecode == "d" or (
            isinstance(value, list) and all(isinstance(v, float) for v in value))
    elif t.startswith("sequence<"):
        inner = t[9:-1]
        ok = isinstance(value, list) and all(
            isinstance(v, registry[inner]) if "/" in inner else isinstance(v, str) for v in value)
    elif t == "octet":
        ok = isinstance(value, bytes) and len(value) == 1
    elif t == "string":
        ok = isinstance(value, str)
    elif "/" in t:
        ok = isinstance(value, registry[t])
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise AssertionError(f"rosidl setter would reject {name}: {t} = {value!r}")


@pytest.fixture
def fake_ros(monkeypatch):
    registry: dict = {}
    names = [M.ros_type_name(c) for c in M.MESSAGE_TYPES]
    for n in names:  # build in dependency-free order: lazily referenced through the registry
        pkg, _, name = n.split("/")
        registry[f"{pkg}/{name}"] = _make_stub(n, registry)
    for pkg in {n.split("/")[0] for n in names}:
        mod = types.ModuleType(f"{pkg}.msg")
        for key, cls in registry.items():
            if key.startswith(pkg + "/"):
                setattr(mod, key.split("/")[1], cls)
        monkeypatch.setitem(sys.modules, pkg, types.ModuleType(pkg))
        monkeypatch.setitem(sys.modules, f"{pkg}.msg", mod)
    return registry


def _cases():
    rng = np.random.default_rng(0)
    hdr = M.Header(stamp=M.Time(sec=12, nanosec=34), frame_id="cam_ü")
    pt = M.JointTrajectoryPoint(positions=[0.5, -1.25], velocities=[], accelerations=[], effort=[0.1, 0.2],
                                time_from_start=M.Duration(sec=1, nanosec=5))
    return [
        M.String(data="pick ✓"),
        M.Image(header=hdr, height=2, width=3, encoding="rgb8", is_bigendian=0, step=9,
                data=rng.integers(0, 256, 18, dtype=np.uint8).tobytes()),
        M.Image(),
        M.CompressedImage(header=hdr, format="jpeg", data=b"\xff\xd8\x00"),
        M.JointState(header=hdr, name=["a", "b"], position=[1.0, 2.0], velocity=[], effort=[]),
        M.JointTrajectory(header=hdr, joint_names=["a", "b"], points=[pt, M.JointTrajectoryPoint()]),
        M.DiagnosticArray(header=hdr, status=[M.DiagnosticStatus(level=2, name="n", message="m", hardware_id="h",
                                                                 values=[M.KeyValue("k", "v")])]),
    ]


@pytest.mark.parametrize("msg", _cases(), ids=lambda m: type(m).__name__)
def test_round_trip_through_rclpy_types(fake_ros, msg):
    r = to_rclpy(msg)
    assert type(r).__name__ == type(msg).__name__
    back = from_rclpy(r, type(msg))
    assert back == msg


def test_rclpy_side_representations(fake_ros):
    img = to_rclpy(_cases()[1])
    assert isinstance(img.data, array.array) and img.data.typecode == "B" and img.data.tobytes() == _cases()[1].data
    diag = to_rclpy(_cases()[-1])
    assert diag.status[0].level == b"\x02"
    js = to_rclpy(_cases()[4])
    assert list(js.position) == [1.0, 2.0] and js.velocity.typecode == "d"
