"""A small example node on the transport facade: echoes images and joint states, publishes diagnostics.

It proves the facade end to end (parameters from params file / ``--ros-args``, sensor and default QoS,
subscriptions, publishers, a timer, clean shutdown) and serves the loopback integration test::

    python -m actquant_ros.echo_node --ros-args -p output_prefix:=/echo -p max_messages:=10

Topics: subscribes ``input_image_topic`` (sensor_msgs/Image) and ``input_joint_topic``
(sensor_msgs/JointState); republishes each message unchanged on ``<output_prefix>/image`` and
``<output_prefix>/joint_states``; publishes a diagnostic_msgs/DiagnosticArray on /diagnostics every
``diagnostics_period_s``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from actquant_core import constants as C
from actquant_ros.convert import diagnostics_from_dict
from actquant_ros.msgs import DiagnosticArray, Image, JointState
from actquant_ros.transport import QOS_DEFAULT, Node, make_node

__all__ = ["EchoConfig", "EchoNode", "main"]


@dataclass(frozen=True)
class EchoConfig:
    """Parameters of the echo node (declared as ROS parameters with these descriptions).

    Attributes:
        input_image_topic: image topic to echo.
        input_joint_topic: joint state topic to echo.
        output_prefix: namespace of the echo topics (absolute, e.g. "/echo").
        max_messages: stop after echoing this many messages (0 = run until shut down).
        diagnostics_period_s: period of the /diagnostics message, s (> 0).
    """

    input_image_topic: str = C.TOPIC_CAMERA_BASE
    input_joint_topic: str = C.TOPIC_JOINT_STATES
    output_prefix: str = "/echo"
    max_messages: int = 0
    diagnostics_period_s: float = 1.0

    def __post_init__(self) -> None:
        for f in ("input_image_topic", "input_joint_topic", "output_prefix"):
            v = getattr(self, f)
            if not v.startswith("/"):
                raise ValueError(f"EchoConfig.{f} must be an absolute topic starting with '/', got {v!r}")
        if self.max_messages < 0:
            raise ValueError(f"EchoConfig.max_messages must be >= 0, got {self.max_messages}")
        if not self.diagnostics_period_s > 0:
            raise ValueError(f"EchoConfig.diagnostics_period_s must be > 0, got {self.diagnostics_period_s}")

    @classmethod
    def from_node(cls, node: Node) -> EchoConfig:
        """Declare every field as a parameter of ``node`` (with description and validation), read them."""
        d = cls()
        absolute = lambda v: v.startswith("/")  # noqa: E731
        return cls(
            input_image_topic=node.declare_parameter("input_image_topic", d.input_image_topic, "image topic to echo", absolute),
            input_joint_topic=node.declare_parameter("input_joint_topic", d.input_joint_topic, "joint state topic to echo", absolute),
            output_prefix=node.declare_parameter("output_prefix", d.output_prefix, "namespace of the echo topics", absolute),
            max_messages=node.declare_parameter("max_messages", d.max_messages, "stop after this many echoes (0 = never)", lambda v: v >= 0),
            diagnostics_period_s=node.declare_parameter("diagnostics_period_s", d.diagnostics_period_s, "diagnostics period, s", lambda v: v > 0),
        )


class EchoNode:
    """Wires the echo behaviour onto a facade node."""

    def __init__(self, node: Node, cfg: EchoConfig) -> None:
        self.node, self.cfg = node, cfg
        self.count = 0
        self._img_pub = node.create_publisher(Image, f"{cfg.output_prefix}/image", QOS_DEFAULT)
        self._js_pub = node.create_publisher(JointState, f"{cfg.output_prefix}/joint_states", QOS_DEFAULT)
        self._diag_pub = node.create_publisher(DiagnosticArray, C.TOPIC_DIAGNOSTICS, QOS_DEFAULT)
        node.create_subscription(Image, cfg.input_image_topic, self._on_msg(self._img_pub), QOS_DEFAULT)
        node.create_subscription(JointState, cfg.input_joint_topic, self._on_msg(self._js_pub), QOS_DEFAULT)
        node.create_timer(cfg.diagnostics_period_s, self._on_timer)

    def _on_msg(self, pub):
        def callback(msg) -> None:
            pub.publish(msg)
            self.count += 1
            if self.cfg.max_messages and self.count >= self.cfg.max_messages:
                self.node.get_logger().info("echoed %d messages, stopping", self.count)
                self.node.shutdown()

        return callback

    def _on_timer(self) -> None:
        self._diag_pub.publish(
            diagnostics_from_dict({self.node.name: {"level": "ok", "values": {"echoed": self.count}}}, stamp_ns=self.node.now_ns())
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``--ros-args`` accepted on both backends)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = make_node("echo_node", argv=list(sys.argv[1:] if argv is None else argv))
    try:
        EchoNode(node, EchoConfig.from_node(node))
        node.get_logger().info("echo node up (backend %s)", node.backend)
        node.spin()
    finally:
        node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
