"""numpy <-> ROS message converters (our ``actquant_ros.msgs`` classes).

Image pixel handling is shared with the rosbag reader (``actquant_core.data.rosbag_io``), so a frame
decodes identically live and from a bag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core.data.rosbag_io import image_to_rgb, rgb_to_image_fields
from actquant_ros.cdr_codec import as_bytes
from actquant_ros.msgs import (
    CompressedImage,
    DiagnosticArray,
    DiagnosticStatus,
    Duration,
    Header,
    Image,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    KeyValue,
    Time,
)

__all__ = [
    "time_to_ns",
    "ns_to_time",
    "duration_to_s",
    "s_to_duration",
    "image_to_numpy",
    "numpy_to_image",
    "compressed_to_numpy",
    "numpy_to_compressed",
    "joint_state_to_numpy",
    "numpy_to_joint_state",
    "chunk_to_trajectory",
    "trajectory_to_chunk",
    "diagnostics_from_dict",
    "diagnostics_to_dict",
    "DIAG_LEVELS",
]

DIAG_LEVELS = {"ok": 0, "warn": 1, "error": 2, "stale": 3}


def time_to_ns(t: Time) -> int:
    """builtin_interfaces/Time -> integer ns."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def ns_to_time(ns: int) -> Time:
    """integer ns -> builtin_interfaces/Time."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def duration_to_s(d: Duration) -> float:
    return float(d.sec) + float(d.nanosec) * 1e-9


def s_to_duration(seconds: float) -> Duration:
    """Seconds -> Duration (rounded to ns; nanosec in [0, 1e9) also for negative spans)."""
    sec, nanosec = divmod(int(round(float(seconds) * 1e9)), 1_000_000_000)
    return Duration(sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_time(stamp_ns), frame_id=frame_id)


# -- images -------------------------------------------------------------------------------------------
def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 / bgr8 / mono8 / rgba8 / bgra8, padded rows ok) -> [H, W, 3] uint8 RGB."""
    if msg.is_bigendian not in (0, 1):
        raise ValueError(f"Image.is_bigendian must be 0 or 1, got {msg.is_bigendian}")
    return image_to_rgb(msg.height, msg.width, msg.encoding, msg.step, as_bytes(msg.data))


def numpy_to_image(
    image: np.ndarray, stamp_ns: int = 0, frame_id: str = "", encoding: str = C.IMAGE_ENCODING_RGB8, step: int | None = None
) -> Image:
    """[H, W, 3] uint8 RGB (or [H, W] for mono8) -> sensor_msgs/Image; ``step`` > packed pads rows."""
    f = rgb_to_image_fields(image, encoding, step)
    return Image(
        header=_header(stamp_ns, frame_id), height=f.height, width=f.width, encoding=f.encoding, is_bigendian=0, step=f.step, data=f.data
    )


def compressed_to_numpy(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> [H, W, 3] uint8 RGB."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(as_bytes(msg.data), dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not decode CompressedImage of format {msg.format!r} ({len(msg.data)} bytes)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def numpy_to_compressed(image: np.ndarray, stamp_ns: int = 0, frame_id: str = "", fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    """[H, W, 3] uint8 RGB -> sensor_msgs/CompressedImage ("jpeg" or "png")."""
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"CompressedImage format must be 'jpeg' or 'png', got {fmt!r}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8 RGB, got {image.dtype} {image.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(image[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return CompressedImage(header=_header(stamp_ns, frame_id), format=fmt, data=buf.tobytes())


# -- joint states -------------------------------------------------------------------------------------
def joint_state_to_numpy(msg: JointState, joint_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions [J] and velocities [J] (None if not reported) in the order of ``joint_names``.

    Joints in the message but not in ``joint_names`` are ignored; a missing joint raises KeyError.
    """
    if len(msg.position) != len(msg.name):
        raise ValueError(f"JointState has {len(msg.name)} names but {len(msg.position)} positions")
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise KeyError(f"JointState lacks joints {missing}; it has {list(msg.name)}")
    order = [index[n] for n in joint_names]
    pos = np.asarray(msg.position, dtype=np.float64)[order]
    vel = None
    if len(msg.velocity) == len(msg.name) and len(msg.name) > 0:
        vel = np.asarray(msg.velocity, dtype=np.float64)[order]
    return pos, vel


def numpy_to_joint_state(
    joint_names: Sequence[str],
    position: np.ndarray,
    velocity: np.ndarray | None = None,
    effort: np.ndarray | None = None,
    stamp_ns: int = 0,
    frame_id: str = "",
) -> JointState:
    """Arrays [J] -> sensor_msgs/JointState (velocity / effort None -> empty, the ROS "not reported")."""
    j = len(joint_names)
    fields: dict[str, list[float]] = {}
    for label, arr in (("position", position), ("velocity", velocity), ("effort", effort)):
        if arr is None:
            fields[label] = []
            continue
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.shape[0] != j:
            raise ValueError(f"JointState {label} has {a.shape[0]} values for {j} joints {list(joint_names)}")
        fields[label] = a.tolist()
    return JointState(header=_header(stamp_ns, frame_id), name=list(joint_names), **fields)


# -- action chunks ------------------------------------------------------------------------------------
def chunk_to_trajectory(actions: np.ndarray, joint_names: Sequence[str], dt: float, stamp_ns: int = 0, frame_id: str = "") -> JointTrajectory:
    """Action chunk [H, D] -> trajectory_msgs/JointTrajectory; point k has ``time_from_start = (k+1) * dt``.

    The same convention as ``actquant_core.data.BagWriter.write_action_chunk``.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(joint_names):
        raise ValueError(f"actions must be [H, {len(joint_names)}] for joint names {list(joint_names)}, got shape {a.shape}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0 s, got {dt}")
    if not np.all(np.isfinite(a)):
        raise ValueError("action chunk contains NaN or inf")
    points = [JointTrajectoryPoint(positions=a[k].tolist(), time_from_start=s_to_duration((k + 1) * dt)) for k in range(a.shape[0])]
    return JointTrajectory(header=_header(stamp_ns, frame_id), joint_names=list(joint_names), points=points)


def trajectory_to_chunk(msg: JointTrajectory) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """JointTrajectory -> (actions [H, D], time_from_start [H] in s, joint names [D])."""
    d = len(msg.joint_names)
    bad = [k for k, p in enumerate(msg.points) if len(p.positions) != d]
    if bad:
        raise ValueError(f"JointTrajectory points {bad} do not have {d} positions")
    actions = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), d)
    tfs = np.array([duration_to_s(p.time_from_start) for p in msg.points], dtype=np.float64)
    return actions, tfs, list(msg.joint_names)


# -- diagnostics --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, np.generic):
        return _fmt(value.item())
    return str(value)


def diagnostics_from_dict(statuses: Mapping[str, Mapping[str, Any]], stamp_ns: int = 0, hardware_id: str = "") -> DiagnosticArray:
    """Build a DiagnosticArray from ``{status_name: {"level", "message", "hardware_id", "values"}}``.

    ``level`` is 0..3 or "ok"/"warn"/"error"/"stale" (default ok); ``values`` maps key -> any value,
    formatted with ``str`` (floats ``%.6g``).  Example::

        diagnostics_from_dict({"policy": {"level": "ok", "values": {"latency_p50_ms": 41.2}}})
    """
    out = []
    for name, st in statuses.items():
        unknown = set(st) - {"level", "message", "hardware_id", "values"}
        if unknown:
            raise ValueError(f"diagnostic status {name!r}: unknown keys {sorted(unknown)}")
        level = st.get("level", 0)
        if isinstance(level, str):
            if level.lower() not in DIAG_LEVELS:
                raise ValueError(f"diagnostic status {name!r}: level {level!r} not in {sorted(DIAG_LEVELS)}")
            level = DIAG_LEVELS[level.lower()]
        if level not in DIAG_LEVELS.values():
            raise ValueError(f"diagnostic status {name!r}: level {level!r} not in 0..3")
        values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in (st.get("values") or {}).items()]
        out.append(
            DiagnosticStatus(
                level=int(level), name=str(name), message=str(st.get("message", "")),
                hardware_id=str(st.get("hardware_id", hardware_id)), values=values,
            )
        )
    return DiagnosticArray(header=_header(stamp_ns, ""), status=out)


def diagnostics_to_dict(msg: DiagnosticArray) -> dict[str, dict[str, Any]]:
    """Inverse of ``diagnostics_from_dict`` (values stay strings)."""
    return {
        s.name: {"level": int(s.level), "message": s.message, "hardware_id": s.hardware_id, "values": {kv.key: kv.value for kv in s.values}}
        for s in msg.status
    }
