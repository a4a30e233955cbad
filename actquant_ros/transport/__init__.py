"""The node facade: write a node once, run it on rclpy (ROS 2 installed) or on bare Cyclone DDS.

Usage::

    from actquant_ros.transport import QOS_SENSOR_DATA, make_node
    from actquant_ros.msgs import Image, JointState

    node = make_node("policy_node")                      # backend from ACTQUANT_ROS_BACKEND / auto
    rate = node.declare_parameter("control_rate_hz", 125.0, "servo rate", lambda v: v > 0)
    pub = node.create_publisher(JointState, "/joint_states")
    node.create_subscription(Image, "/camera/base/image_raw", on_image, QOS_SENSOR_DATA)
    node.create_timer(1.0 / rate, on_tick)
    node.spin()

See ``base.Node`` for the full API, ``params`` for the parameter-file / ``--ros-args`` rules.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from actquant_core import constants as C
from actquant_ros.transport.base import Node, Publisher, Subscription, Timer, resolve_topic
from actquant_ros.transport.params import (
    ParameterError,
    ParameterSpec,
    RosArgs,
    load_params_file,
    parse_ros_args,
)
from actquant_ros.transport.qos import QOS_DEFAULT, QOS_LATCHED, QOS_SENSOR_DATA, QoSProfile

__all__ = [
    "BACKENDS",
    "make_node",
    "resolve_backend",
    "Node",
    "Publisher",
    "Subscription",
    "Timer",
    "resolve_topic",
    "ParameterError",
    "ParameterSpec",
    "RosArgs",
    "load_params_file",
    "parse_ros_args",
    "QoSProfile",
    "QOS_DEFAULT",
    "QOS_SENSOR_DATA",
    "QOS_LATCHED",
]

BACKENDS = ("auto", "rclpy", "dds")


def resolve_backend(backend: str = "auto", env: Mapping[str, str] | None = None) -> str:
    """"rclpy" or "dds": ``backend`` unless "auto"; then ``$ACTQUANT_ROS_BACKEND``; then rclpy if importable."""
    env = os.environ if env is None else env
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = env.get(C.ENV_TRANSPORT_BACKEND, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"${C.ENV_TRANSPORT_BACKEND} must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "rclpy" if importlib.util.find_spec("rclpy") is not None else "dds"
    return backend


def make_node(
    name: str,
    backend: str = "auto",
    argv: Sequence[str] | None = None,
    params_file: str | Path | None = None,
    namespace: str = "",
    domain_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Node:
    """Create a node on the chosen backend.

    Args:
        name: node name (``-r __node:=x`` on the command line overrides it).
        backend: "auto" | "rclpy" | "dds" (see ``resolve_backend``).
        argv: command line without the program name (default ``sys.argv[1:]``); its ``--ros-args``
            sections give parameters (``-p n:=v``, ``--params-file f``) and remaps (``-r a:=b``).
        params_file: ROS 2 params YAML applied before the command line.
        namespace: node namespace ("" or "/ns").
        domain_id: DDS domain; default ``$ROS_DOMAIN_ID`` or 0 (DDS backend; rclpy reads it itself).
        env: environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    args = list(sys.argv[1:] if argv is None else argv)
    chosen = resolve_backend(backend, env)
    if chosen == "rclpy":
        from actquant_ros.transport.rclpy_backend import RclpyNode

        overrides = load_params_file(params_file, name, namespace) if params_file is not None else {}
        return RclpyNode(name, namespace, ["node", *args], overrides)

    from actquant_ros.transport.dds_backend import DdsNode

    ros = parse_ros_args(args)
    node_name = ros.node_name or name
    ns = ros.namespace if ros.namespace is not None else namespace
    overrides = load_params_file(params_file, node_name, ns) if params_file is not None else {}
    overrides.update(ros.overrides(node_name, ns))
    if domain_id is None:
        raw = env.get(C.ENV_ROS_DOMAIN_ID, "0") or "0"
        try:
            domain_id = int(raw)
        except ValueError:
            raise ValueError(f"${C.ENV_ROS_DOMAIN_ID} must be an integer, got {raw!r}") from None
    return DdsNode(node_name, ns, overrides, ros.remaps, domain_id)
