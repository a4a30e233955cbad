"""ROS 2 standard message types as Cyclone DDS ``IdlStruct`` dataclasses.

ROS 2 maps a message type ``pkg/msg/Name`` to the DDS type ``pkg::msg::dds_::Name_`` and serialises it
as XCDR1 little endian with the encapsulation header ``00 01 00 00``.  The classes below declare exactly
the fields (names, order, IDL types) of the ROS 2 Humble definitions, so ``msg.serialize()`` produces
the same bytes as ``rosbags``' ``serialize_cdr`` and as an rclpy node on rmw_cyclonedds (see
``test/unit/test_msgs_cdr.py``).

Python values of the fields:
  - ``string`` -> ``str`` (UTF-8 on the wire), integers -> ``int``, float64 -> ``float``;
  - ``sequence<float64>`` / ``sequence<string>`` -> ``list``;
  - ``Image.data`` / ``CompressedImage.data`` (``sequence<uint8>``) -> ``bytes`` when produced by our
    codecs (``actquant_ros.cdr_codec``); the stock cyclonedds path yields a ``list[int]``.  Both are
    accepted on publish.

The DDS transport uses the block-copy codecs of ``actquant_ros.cdr_codec`` for Image, CompressedImage,
JointState and JointTrajectory (the stock ``sequence[uint8]`` path costs 7-17 ms per 224x224x3 image,
the bytes path ~0.01 ms).
"""

# no "from __future__ import annotations": cyclonedds resolves field annotations at runtime.

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import byte, float64, int32, sequence, uint8, uint32

__all__ = [
    "Time",
    "Duration",
    "Header",
    "String",
    "Image",
    "CompressedImage",
    "JointState",
    "JointTrajectoryPoint",
    "JointTrajectory",
    "KeyValue",
    "DiagnosticStatus",
    "DiagnosticArray",
    "MESSAGE_TYPES",
    "ros_type_name",
    "dds_type_name",
    "message_class",
]


# builtin_interfaces ---------------------------------------------------------------------------------
@dataclass
class Time(IdlStruct, typename="builtin_interfaces.msg.dds_.Time_"):
    """builtin_interfaces/Time: seconds + nanoseconds since the epoch (or sim time origin)."""

    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Duration(IdlStruct, typename="builtin_interfaces.msg.dds_.Duration_"):
    """builtin_interfaces/Duration: a signed span (sec may be negative, nanosec in [0, 1e9))."""

    sec: int32 = 0
    nanosec: uint32 = 0


# std_msgs -------------------------------------------------------------------------------------------
@dataclass
class Header(IdlStruct, typename="std_msgs.msg.dds_.Header_"):
    """std_msgs/Header: acquisition time and coordinate frame."""

    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class String(IdlStruct, typename="std_msgs.msg.dds_.String_"):
    """std_msgs/String (used for the language instruction)."""

    data: str = ""


# sensor_msgs ----------------------------------------------------------------------------------------
@dataclass
class Image(IdlStruct, typename="sensor_msgs.msg.dds_.Image_"):
    """sensor_msgs/Image: ``height`` rows of ``step`` bytes each; ``data`` holds height*step bytes."""

    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ""
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = field(default_factory=bytes)


@dataclass
class CompressedImage(IdlStruct, typename="sensor_msgs.msg.dds_.CompressedImage_"):
    """sensor_msgs/CompressedImage: ``format`` ("jpeg" / "png"), ``data`` the encoded bytes."""

    header: Header = field(default_factory=Header)
    format: str = ""
    data: sequence[uint8] = field(default_factory=bytes)


@dataclass
class JointState(IdlStruct, typename="sensor_msgs.msg.dds_.JointState_"):
    """sensor_msgs/JointState: per-joint name, position (rad), velocity (rad/s), effort (Nm).

    ``velocity`` / ``effort`` may be empty (ROS convention for "not reported").
    """

    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


# trajectory_msgs ------------------------------------------------------------------------------------
@dataclass
class JointTrajectoryPoint(IdlStruct, typename="trajectory_msgs.msg.dds_.JointTrajectoryPoint_"):
    """trajectory_msgs/JointTrajectoryPoint: one waypoint, ``time_from_start`` relative to header.stamp."""

    positions: sequence[float64] = field(default_factory=list)
    velocities: sequence[float64] = field(default_factory=list)
    accelerations: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)
    time_from_start: Duration = field(default_factory=Duration)


@dataclass
class JointTrajectory(IdlStruct, typename="trajectory_msgs.msg.dds_.JointTrajectory_"):
    """trajectory_msgs/JointTrajectory (used for the action chunk)."""

    header: Header = field(default_factory=Header)
    joint_names: sequence[str] = field(default_factory=list)
    points: sequence[JointTrajectoryPoint] = field(default_factory=list)


# diagnostic_msgs ------------------------------------------------------------------------------------
@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs.msg.dds_.KeyValue_"):
    """diagnostic_msgs/KeyValue."""

    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs.msg.dds_.DiagnosticStatus_"):
    """diagnostic_msgs/DiagnosticStatus; ``level`` is one of OK=0, WARN=1, ERROR=2, STALE=3 (ROS ``byte``)."""

    level: byte = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs.msg.dds_.DiagnosticArray_"):
    """diagnostic_msgs/DiagnosticArray."""

    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


MESSAGE_TYPES: tuple[type[IdlStruct], ...] = (
    Time,
    Duration,
    Header,
    String,
    Image,
    CompressedImage,
    JointState,
    JointTrajectoryPoint,
    JointTrajectory,
    KeyValue,
    DiagnosticStatus,
    DiagnosticArray,
)


def dds_type_name(msg_type: type[IdlStruct]) -> str:
    """DDS type name of a message class, e.g. ``sensor_msgs::msg::dds_::Image_``."""
    return msg_type.__idl_typename__.replace(".", "::")


def ros_type_name(msg_type: type[IdlStruct]) -> str:
    """ROS 2 type name of a message class, e.g. ``sensor_msgs/msg/Image`` (rosbags / rclpy spelling)."""
    parts = dds_type_name(msg_type).split("::")
    if len(parts) != 4 or parts[1] != "msg" or parts[2] != "dds_" or not parts[3].endswith("_"):
        raise ValueError(f"{msg_type!r} has DDS type name {dds_type_name(msg_type)!r}, not 'pkg::msg::dds_::Name_'")
    return f"{parts[0]}/msg/{parts[3][:-1]}"


def message_class(ros_name: str) -> type[IdlStruct]:
    """Our message class for a ROS 2 type name (``sensor_msgs/msg/Image`` or ``sensor_msgs/Image``)."""
    pkg, _, name = ros_name.replace("/msg/", "/").partition("/")
    wanted = f"{pkg}/msg/{name}"
    for cls in MESSAGE_TYPES:
        if ros_type_name(cls) == wanted:
            return cls
    raise KeyError(f"no message class for ROS type {ros_name!r}; known: {[ros_type_name(c) for c in MESSAGE_TYPES]}")
