"""Read and write rosbag2 files (sqlite3 and mcap) of the project's topics, as numpy.

Core module: uses ``rosbags`` (pure Python) only, never rclpy or cyclonedds, so replay evaluation and
calibration run on machines without ROS.  Messages are serialised with the ROS 2 Humble typestore; the
bytes are the ROS 2 wire format, so a recorded message can be republished over DDS as-is.

Topic mapping (``TopicMap``), documented per topic:

===================================  ==================================  =====================================
topic (default)                      ROS type                            what ``read_bag`` yields (``value``)
===================================  ==================================  =====================================
each key of ``cameras``              sensor_msgs/Image or                ``np.ndarray`` [H, W, 3] uint8 RGB,
(e.g. ``/camera/base/image_raw``)    sensor_msgs/CompressedImage         ``slot`` = the mapped camera slot
``joint_states`` (/joint_states)     sensor_msgs/JointState              ``JointSample``
``instruction`` (/instruction)       std_msgs/String                     ``str``
``action_chunk`` (/action_chunk)     trajectory_msgs/JointTrajectory     ``ChunkSample`` (actions [H, D])
===================================  ==================================  =====================================

Topics not in the map are skipped.  A mapped topic recorded with another type is an error.

Image encodings: ``rgb8``, ``bgr8``, ``mono8`` (replicated to 3 channels), ``rgba8``/``bgra8`` (alpha
dropped); rows may be padded (``step > width * channels``).  Compressed images (jpeg/png) are decoded
with OpenCV.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from actquant_core import constants as C

__all__ = [
    "TopicMap",
    "JointSample",
    "ChunkSample",
    "BagMessage",
    "BagWriter",
    "read_bag",
    "iter_bag_raw",
    "bag_topics",
    "image_to_rgb",
    "rgb_to_image_fields",
    "ImageFields",
    "KIND_IMAGE",
    "KIND_JOINT_STATE",
    "KIND_INSTRUCTION",
    "KIND_ACTION_CHUNK",
]

log = logging.getLogger(__name__)

KIND_IMAGE = "image"
KIND_JOINT_STATE = "joint_state"
KIND_INSTRUCTION = "instruction"
KIND_ACTION_CHUNK = "action_chunk"

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
_STORAGES = ("sqlite3", "mcap")


# ---------------------------------------------------------------------------------------------------
# Image fields <-> numpy (shared with actquant_ros.convert)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFields:
    """The payload fields of a sensor_msgs/Image: ``height`` rows of ``step`` bytes in ``data``."""

    height: int
    width: int
    encoding: str
    step: int
    data: bytes


def image_to_rgb(height: int, width: int, encoding: str, step: int, data: Any) -> np.ndarray:
    """Decode sensor_msgs/Image fields into an RGB image.

    Args:
        height, width: image size in pixels.
        encoding: one of rgb8, bgr8, mono8, rgba8, bgra8.
        step: bytes per row (>= width * channels; extra bytes are row padding and are dropped).
        data: bytes-like / uint8 array of at least height * step bytes.

    Returns:
        [height, width, 3] uint8 RGB array (a fresh, contiguous copy).
    """
    ch = _CHANNELS.get(encoding)
    if ch is None:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {sorted(_CHANNELS)}")
    if step < width * ch:
        raise ValueError(f"image step {step} < width {width} * {ch} channels for encoding {encoding!r}")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.size < height * step:
        raise ValueError(f"image data has {buf.size} bytes, need height {height} * step {step} = {height * step}")
    rows = buf[: height * step].reshape(height, step)  # [H, step]
    px = rows[:, : width * ch].reshape(height, width, ch)  # [H, W, ch]
    if encoding == "rgb8":
        return np.ascontiguousarray(px)
    if encoding == "bgr8":
        return np.ascontiguousarray(px[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(px[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(px[:, :, 2::-1])
    return np.ascontiguousarray(np.repeat(px, 3, axis=2))  # mono8


def rgb_to_image_fields(image: np.ndarray, encoding: str = C.IMAGE_ENCODING_RGB8, step: int | None = None) -> ImageFields:
    """Encode an image as sensor_msgs/Image fields.

    Args:
        image: [H, W, 3] uint8 RGB for rgb8 / bgr8 (converted to BGR for bgr8), or [H, W] / [H, W, 1]
            uint8 for mono8.
        encoding: rgb8, bgr8 or mono8.
        step: row length in bytes; ``None`` = packed (width * channels); larger values pad rows with zeros.

    Returns:
        ``ImageFields`` with ``data`` of height * step bytes.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {type(image).__name__} {getattr(image, 'dtype', '')}")
    if encoding in ("rgb8", "bgr8"):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"encoding {encoding!r} needs an [H, W, 3] image, got shape {image.shape}")
        px = image if encoding == "rgb8" else image[:, :, ::-1]
    elif encoding == "mono8":
        if image.ndim == 3 and image.shape[2] == 1:
            px = image[:, :, 0]
        elif image.ndim == 2:
            px = image
        else:
            raise ValueError(f"encoding 'mono8' needs an [H, W] or [H, W, 1] image, got shape {image.shape}")
    else:
        raise ValueError(f"unsupported image encoding for writing {encoding!r}; supported: rgb8, bgr8, mono8")
    height, width = px.shape[:2]
    packed = width * (3 if px.ndim == 3 else 1)
    row_step = packed if step is None else int(step)
    if row_step < packed:
        raise ValueError(f"step {row_step} < width {width} * channels = {packed}")
    flat = np.ascontiguousarray(px).reshape(height, packed)  # [H, W*ch]
    if row_step > packed:
        padded = np.zeros((height, row_step), dtype=np.uint8)
        padded[:, :packed] = flat
        flat = padded
    return ImageFields(height=int(height), width=int(width), encoding=encoding, step=row_step, data=flat.tobytes())


# ---------------------------------------------------------------------------------------------------
# Topic map and records
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicMap:
    """Which bag topics carry what.

    Attributes:
        cameras: image topic -> camera slot name of the policy (e.g. "/camera/base/image_raw" ->
            "base_0_rgb").  Topics may be sensor_msgs/Image or sensor_msgs/CompressedImage.
        joint_states: sensor_msgs/JointState topic ("" = not read).
        instruction: std_msgs/String topic with the language instruction ("" = not read).
        action_chunk: trajectory_msgs/JointTrajectory topic with recorded actions ("" = not read).
    """

    cameras: Mapping[str, str] = field(
        default_factory=lambda: {C.TOPIC_CAMERA_BASE: "base_0_rgb", C.TOPIC_CAMERA_WRIST: "left_wrist_0_rgb"}
    )
    joint_states: str = C.TOPIC_JOINT_STATES
    instruction: str = C.TOPIC_INSTRUCTION
    action_chunk: str = C.TOPIC_ACTION_CHUNK

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", MappingProxyType(dict(self.cameras)))
        named = [*self.cameras, self.joint_states, self.instruction, self.action_chunk]
        for topic in named:
            if topic and not topic.startswith("/"):
                raise ValueError(f"TopicMap topic {topic!r} must be an absolute ROS name starting with '/'")
        used = [t for t in named if t]
        dupes = sorted({t for t in used if used.count(t) > 1})
        if dupes:
            raise ValueError(f"TopicMap maps topics {dupes} more than once; each topic has one role")
        slots = list(self.cameras.values())
        if len(set(slots)) != len(slots) or any(not s for s in slots):
            raise ValueError(f"TopicMap camera slots must be unique and non-empty, got {slots}")

    def kind_of(self, topic: str) -> str | None:
        """The record kind of ``topic`` (KIND_*), or None for topics outside the map."""
        if topic in self.cameras:
            return KIND_IMAGE
        if topic == self.joint_states:
            return KIND_JOINT_STATE
        if topic == self.instruction:
            return KIND_INSTRUCTION
        if topic == self.action_chunk:
            return KIND_ACTION_CHUNK
        return None


@dataclass(frozen=True)
class JointSample:
    """A sensor_msgs/JointState as arrays.

    Attributes:
        names: joint names, in message order.
        position: [J] float64 rad.  velocity / effort: [J] or [0] when not reported.
    """

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray

    def ordered(self, joint_names: Sequence[str]) -> np.ndarray:
        """Positions [len(joint_names)] in the given joint order; raises if a joint is missing."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise KeyError(f"joint state lacks joints {missing}; it has {list(self.names)}")
        return self.position[[index[n] for n in joint_names]]


@dataclass(frozen=True)
class ChunkSample:
    """A trajectory_msgs/JointTrajectory as arrays.

    Attributes:
        joint_names: [D] names.
        actions: [H, D] float64 point positions.
        time_from_start: [H] float64 seconds.
    """

    joint_names: tuple[str, ...]
    actions: np.ndarray
    time_from_start: np.ndarray


@dataclass(frozen=True)
class BagMessage:
    """One message read from a bag.

    Attributes:
        kind: KIND_IMAGE | KIND_JOINT_STATE | KIND_INSTRUCTION | KIND_ACTION_CHUNK.
        topic: the bag topic.
        log_time_ns: bag (receive) timestamp in ns.
        stamp_ns: header stamp in ns when the message has a non-zero header stamp, else ``log_time_ns``.
        value: RGB [H, W, 3] uint8 array | JointSample | str | ChunkSample (see the module table).
        slot: camera slot for images, else None.
    """

    kind: str
    topic: str
    log_time_ns: int
    stamp_ns: int
    value: Any
    slot: str | None = None


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _stamp_ns(msg: Any, fallback: int) -> int:
    header = getattr(msg, "header", None)
    if header is None:
        return fallback
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns if ns != 0 else fallback


def _decode_compressed(fmt: str, data: np.ndarray) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not decode compressed image of format {fmt!r} ({len(data)} bytes)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


_EXPECTED_TYPES = {
    KIND_IMAGE: (C.ROS_TYPE_IMAGE, C.ROS_TYPE_COMPRESSED_IMAGE),
    KIND_JOINT_STATE: (C.ROS_TYPE_JOINT_STATE,),
    KIND_INSTRUCTION: (C.ROS_TYPE_STRING,),
    KIND_ACTION_CHUNK: (C.ROS_TYPE_JOINT_TRAJECTORY,),
}


def bag_topics(path: str | Path) -> dict[str, str]:
    """Topic -> ROS type name of every connection in the bag at ``path``."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=_typestore()) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def read_bag(
    path: str | Path,
    topic_map: TopicMap,
    start_ns: int | None = None,
    stop_ns: int | None = None,
) -> Iterator[BagMessage]:
    """Iterate the mapped topics of a rosbag2 (sqlite3 or mcap) in bag-time order, as numpy.

    Args:
        path: bag directory (with metadata.yaml) or a single .mcap / .db3 file.
        topic_map: which topics to read and what they mean (see the module docstring).
        start_ns, stop_ns: optional bag-time window [start, stop).

    Yields:
        ``BagMessage`` per message of a mapped topic.
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {str(path)!r} does not exist")
    with AnyReader([path], default_typestore=_typestore()) as reader:
        conns = []
        for conn in reader.connections:
            kind = topic_map.kind_of(conn.topic)
            if kind is None:
                continue
            if conn.msgtype not in _EXPECTED_TYPES[kind]:
                raise ValueError(
                    f"bag topic {conn.topic!r} has type {conn.msgtype!r}, but the topic map uses it as {kind} "
                    f"(expects {_EXPECTED_TYPES[kind]})"
                )
            conns.append(conn)
        mapped = [t for t in (*topic_map.cameras, topic_map.joint_states, topic_map.instruction, topic_map.action_chunk) if t]
        absent = sorted(set(mapped) - {c.topic for c in conns})
        if absent:
            log.info("bag %s has no messages on mapped topics %s", path, absent)
        if not conns:
            return
        for conn, t_ns, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            msg = reader.deserialize(raw, conn.msgtype)
            yield _to_record(topic_map, conn.topic, conn.msgtype, int(t_ns), msg)


def iter_bag_raw(
    path: str | Path,
    topics: Sequence[str] | None = None,
    start_ns: int | None = None,
    stop_ns: int | None = None,
) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield ``(topic, ROS type, bag time ns, CDR bytes)`` in bag-time order, without deserialising.

    The bytes are the ROS 2 wire format (encapsulation header included), so they can be republished
    unchanged (``DdsPublisher.publish_cdr``).  ``topics`` = None reads every topic.
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {str(path)!r} does not exist")
    with AnyReader([path], default_typestore=_typestore()) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        for conn, t_ns, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)


def _to_record(topic_map: TopicMap, topic: str, msgtype: str, t_ns: int, msg: Any) -> BagMessage:
    kind = topic_map.kind_of(topic)
    stamp = _stamp_ns(msg, t_ns)
    if kind == KIND_IMAGE:
        if msgtype == C.ROS_TYPE_COMPRESSED_IMAGE:
            rgb = _decode_compressed(msg.format, msg.data)
        else:
            rgb = image_to_rgb(int(msg.height), int(msg.width), msg.encoding, int(msg.step), msg.data)
        return BagMessage(KIND_IMAGE, topic, t_ns, stamp, rgb, slot=topic_map.cameras[topic])
    if kind == KIND_JOINT_STATE:
        value = JointSample(
            names=tuple(msg.name),
            position=np.asarray(msg.position, dtype=np.float64).copy(),
            velocity=np.asarray(msg.velocity, dtype=np.float64).copy(),
            effort=np.asarray(msg.effort, dtype=np.float64).copy(),
        )
        return BagMessage(KIND_JOINT_STATE, topic, t_ns, stamp, value)
    if kind == KIND_INSTRUCTION:
        return BagMessage(KIND_INSTRUCTION, topic, t_ns, stamp, str(msg.data))
    # action chunk
    dof = len(msg.joint_names)
    rows = [np.asarray(p.positions, dtype=np.float64) for p in msg.points]
    bad = [i for i, r in enumerate(rows) if r.shape != (dof,)]
    if bad:
        raise ValueError(f"action chunk on {topic!r} at t={t_ns}: points {bad} do not have {dof} positions")
    actions = np.stack(rows) if rows else np.zeros((0, dof))
    tfs = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points], dtype=np.float64)
    value = ChunkSample(joint_names=tuple(msg.joint_names), actions=actions, time_from_start=tfs)
    return BagMessage(KIND_ACTION_CHUNK, topic, t_ns, stamp, value)


# ---------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------
class BagWriter:
    """Write a rosbag2 of the project's topics from numpy (context manager).

    Example::

        with BagWriter("episode_000", storage="mcap") as bag:
            bag.write_instruction(t_ns, "pick up the red block")
            bag.write_image("/camera/base/image_raw", t_ns, rgb)          # rgb: [H, W, 3] uint8
            bag.write_joint_state(t_ns, names, q)                          # q: [J]
            bag.write_action_chunk(t_ns, names, actions, dt=0.02)          # actions: [H, D]

    Args:
        path: bag directory to create (must not exist).
        storage: "sqlite3" or "mcap".
        compression: None or "zstd" (per-message compression).
        frame_id: default header frame_id for images.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", compression: str | None = None, frame_id: str = "") -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {_STORAGES}, got {storage!r}")
        if compression not in (None, "zstd"):
            raise ValueError(f"compression must be None or 'zstd', got {compression!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"bag path {str(self.path)!r} already exists")
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
        self._ts = _typestore()
        self._conns: dict[str, Any] = {}
        self._frame_id = frame_id
        self._open = False
        self.count = 0

    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if not self._open:
            self._writer.open()
            self._open = True

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def _conn(self, topic: str, msgtype: str) -> Any:
        if not self._open:
            raise RuntimeError(f"BagWriter({str(self.path)!r}) is not open; use it as a context manager or call open()")
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._ts)
            self._conns[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic!r} already written with type {conn.msgtype!r}, not {msgtype!r}")
        return conn

    def write_raw(self, topic: str, msgtype: str, t_ns: int, cdr: bytes | memoryview) -> None:
        """Write already-serialised CDR bytes (e.g. received over DDS) of ROS type ``msgtype``."""
        self._writer.write(self._conn(topic, msgtype), int(t_ns), cdr)
        self.count += 1

    def _write(self, topic: str, msgtype: str, t_ns: int, msg: Any) -> None:
        self.write_raw(topic, msgtype, t_ns, self._ts.serialize_cdr(msg, msgtype))

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        T = self._ts.types
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)

    def write_image(
        self,
        topic: str,
        t_ns: int,
        image: np.ndarray,
        encoding: str = C.IMAGE_ENCODING_RGB8,
        stamp_ns: int | None = None,
        frame_id: str | None = None,
    ) -> None:
        """Write an [H, W, 3] uint8 RGB image (or [H, W] mono8) as sensor_msgs/Image."""
        f = rgb_to_image_fields(image, encoding)
        msg = self._ts.types[C.ROS_TYPE_IMAGE](
            header=self._header(t_ns if stamp_ns is None else stamp_ns, self._frame_id if frame_id is None else frame_id),
            height=f.height,
            width=f.width,
            encoding=f.encoding,
            is_bigendian=0,
            step=f.step,
            data=np.frombuffer(f.data, dtype=np.uint8),
        )
        self._write(topic, C.ROS_TYPE_IMAGE, t_ns, msg)

    def write_joint_state(
        self,
        t_ns: int,
        names: Sequence[str],
        position: np.ndarray,
        velocity: np.ndarray | None = None,
        effort: np.ndarray | None = None,
        topic: str = C.TOPIC_JOINT_STATES,
        stamp_ns: int | None = None,
    ) -> None:
        """Write a sensor_msgs/JointState; position [J] (velocity / effort [J] or None = empty)."""
        pos = np.asarray(position, dtype=np.float64).reshape(-1)
        if pos.shape[0] != len(names):
            raise ValueError(f"joint state has {len(names)} names but {pos.shape[0]} positions")
        arrays = []
        for label, arr in (("velocity", velocity), ("effort", effort)):
            a = np.zeros(0) if arr is None else np.asarray(arr, dtype=np.float64).reshape(-1)
            if a.size not in (0, len(names)):
                raise ValueError(f"joint state {label} has {a.size} values, need 0 or {len(names)}")
            arrays.append(a)
        msg = self._ts.types[C.ROS_TYPE_JOINT_STATE](
            header=self._header(t_ns if stamp_ns is None else stamp_ns, ""),
            name=list(names),
            position=pos,
            velocity=arrays[0],
            effort=arrays[1],
        )
        self._write(topic, C.ROS_TYPE_JOINT_STATE, t_ns, msg)

    def write_instruction(self, t_ns: int, text: str, topic: str = C.TOPIC_INSTRUCTION) -> None:
        """Write a std_msgs/String instruction."""
        self._write(topic, C.ROS_TYPE_STRING, t_ns, self._ts.types[C.ROS_TYPE_STRING](data=str(text)))

    def write_action_chunk(
        self,
        t_ns: int,
        joint_names: Sequence[str],
        actions: np.ndarray,
        dt: float,
        topic: str = C.TOPIC_ACTION_CHUNK,
        stamp_ns: int | None = None,
    ) -> None:
        """Write actions [H, D] as a trajectory_msgs/JointTrajectory; point k has time_from_start (k+1)*dt."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(joint_names):
            raise ValueError(f"actions must be [H, {len(joint_names)}] for joint names {list(joint_names)}, got shape {a.shape}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0 s, got {dt}")
        T = self._ts.types
        points = []
        for k in range(a.shape[0]):
            sec, nsec = divmod(int(round((k + 1) * dt * 1e9)), 1_000_000_000)
            points.append(
                T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=a[k].copy(),
                    velocities=np.zeros(0),
                    accelerations=np.zeros(0),
                    effort=np.zeros(0),
                    time_from_start=T["builtin_interfaces/msg/Duration"](sec=sec, nanosec=nsec),
                )
            )
        msg = T[C.ROS_TYPE_JOINT_TRAJECTORY](
            header=self._header(t_ns if stamp_ns is None else stamp_ns, ""), joint_names=list(joint_names), points=points
        )
        self._write(topic, C.ROS_TYPE_JOINT_TRAJECTORY, t_ns, msg)
