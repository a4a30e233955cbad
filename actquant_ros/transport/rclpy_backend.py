"""rclpy backend of the node facade (used when ROS 2 is installed).

Node code still sees our message classes (``actquant_ros.msgs``): each publish converts to the rclpy
message type of the same ROS name, each received message converts back.  The conversion is driven by
rclpy's own ``get_fields_and_field_types()``; ``uint8[]`` goes through ``array.array('B')`` (one block
copy), ROS ``byte`` (``octet``) fields are ``bytes`` of length 1 in rclpy and ``int`` in ours.

Parameters are declared with ``dynamic_typing`` and checked by our ``ParameterSpec`` (same coercion and
validation as the DDS backend); an on-set callback rejects invalid runtime changes (``ros2 param set``).

NOT TESTED HERE (no ROS 2 on the development machines): needs a one-time check on a ROS 2 Humble+ host.
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from actquant_ros.cdr_codec import as_bytes
from actquant_ros.msgs import message_class, ros_type_name
from actquant_ros.transport.base import Node
from actquant_ros.transport.params import ParameterError, ParameterSpec
from actquant_ros.transport.qos import QOS_DEFAULT, QoSProfile

__all__ = ["RclpyNode", "to_rclpy", "from_rclpy"]

_SEQ = "sequence<"


def _rclpy_class(our_cls: type) -> type:
    pkg, _, name = ros_type_name(our_cls).split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _to_value(value: Any, ftype: str) -> Any:
    if ftype.startswith(_SEQ):
        inner = ftype[len(_SEQ) : ftype.index(">")].split(",")[0]
        if inner == "uint8":
            out = array.array("B")
            out.frombytes(as_bytes(value))
            return out
        if inner in ("double", "float"):
            return array.array("d" if inner == "double" else "f", [float(v) for v in value])
        if "/" in inner:
            return [to_rclpy(v) for v in value]
        return list(value)
    if ftype == "octet":
        return bytes([value]) if isinstance(value, int) else bytes(value)
    if "/" in ftype:
        return to_rclpy(value)
    return value


def to_rclpy(msg: Any) -> Any:
    """Our message object -> the rclpy message of the same ROS type."""
    out = _rclpy_class(type(msg))()
    for fname, ftype in out.get_fields_and_field_types().items():
        setattr(out, fname, _to_value(getattr(msg, fname), ftype))
    return out


def _from_value(value: Any, ftype: str) -> Any:
    if ftype.startswith(_SEQ):
        inner = ftype[len(_SEQ) : ftype.index(">")].split(",")[0]
        if inner == "uint8":
            return bytes(value)
        if "/" in inner:
            cls = message_class(inner)
            return [from_rclpy(v, cls) for v in value]
        return list(value)
    if ftype == "octet":
        return value[0] if isinstance(value, (bytes, bytearray)) else int(value)
    if "/" in ftype:
        return from_rclpy(value, message_class(ftype))
    return value


def from_rclpy(msg: Any, our_cls: type) -> Any:
    """An rclpy message -> our message class ``our_cls``."""
    fields = msg.get_fields_and_field_types()
    return our_cls(**{f: _from_value(getattr(msg, f), t) for f, t in fields.items()})


def _rclpy_qos(profile: QoSProfile) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile as RQoS, ReliabilityPolicy

    return RQoS(
        history=HistoryPolicy.KEEP_LAST,
        depth=profile.depth,
        reliability=ReliabilityPolicy.RELIABLE if profile.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE if profile.durability == "volatile" else DurabilityPolicy.TRANSIENT_LOCAL,
    )


class _LoggerAdapter:
    """%-style logging API over an rclpy (rcutils) logger."""

    def __init__(self, logger: Any) -> None:
        self._l = logger

    def _emit(self, method: str, msg: str, args: tuple) -> None:
        text = msg % args if args else msg
        fn = getattr(self._l, method, None) or getattr(self._l, "warn")
        fn(text)

    def debug(self, msg: str, *args: Any) -> None:
        self._emit("debug", msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self._emit("info", msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self._emit("warning", msg, args)

    def error(self, msg: str, *args: Any) -> None:
        self._emit("error", msg, args)

    def exception(self, msg: str, *args: Any) -> None:
        self._emit("error", msg, args)


class _Publisher:
    def __init__(self, msg_type: type, topic: str, pub: Any) -> None:
        self.msg_type, self.topic, self._pub = msg_type, topic, pub

    def publish(self, msg: Any) -> None:
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"publisher on {self.topic!r} takes {self.msg_type.__name__}, got {type(msg).__name__}")
        self._pub.publish(to_rclpy(msg))

    def subscription_count(self) -> int:
        return int(self._pub.get_subscription_count())


class _Subscription:
    def __init__(self, msg_type: type, topic: str, node: Any) -> None:
        self.msg_type, self.topic, self._node = msg_type, topic, node
        self.handle: Any = None

    def publisher_count(self) -> int:
        return int(self._node.count_publishers(self.topic))


class _Timer:
    def __init__(self, period_s: float, timer: Any) -> None:
        self.period_s, self._t = period_s, timer

    def cancel(self) -> None:
        self._t.cancel()

    @property
    def is_canceled(self) -> bool:
        return bool(self._t.is_canceled())


class RclpyNode(Node):
    """A node over rclpy, with its own context and single-threaded executor.

    Args:
        name, namespace: node name and namespace.
        argv: command line (``--ros-args`` handled by rcl).
        parameter_overrides: extra overrides (e.g. from a params file given in code).
    """

    backend = "rclpy"

    def __init__(
        self,
        name: str,
        namespace: str = "",
        argv: list[str] | None = None,
        parameter_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node as RNode
        from rclpy.parameter import Parameter

        self._rclpy = rclpy
        self._context = rclpy.Context()
        rclpy.init(args=argv, context=self._context)
        overrides = [Parameter(n, value=list(v) if isinstance(v, tuple) else v) for n, v in (parameter_overrides or {}).items()]
        self._node = RNode(name, namespace=namespace or None, context=self._context, parameter_overrides=overrides)
        self.name = self._node.get_name()
        self.namespace = self._node.get_namespace()
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._specs: dict[str, ParameterSpec] = {}
        self._node.add_on_set_parameters_callback(self._on_set)
        self._logger = _LoggerAdapter(self._node.get_logger())
        self._ran = 0
        self._shutdown = False

    # -- pub/sub ------------------------------------------------------------------------------------
    def _fq(self, topic: str) -> str:
        return self._node.resolve_topic_name(topic)

    def create_publisher(self, msg_type: type, topic: str, qos: QoSProfile = QOS_DEFAULT) -> _Publisher:
        pub = self._node.create_publisher(_rclpy_class(msg_type), topic, _rclpy_qos(qos))
        return _Publisher(msg_type, self._fq(topic), pub)

    def create_subscription(
        self, msg_type: type, topic: str, callback: Callable[[Any], None], qos: QoSProfile = QOS_DEFAULT
    ) -> _Subscription:
        sub = _Subscription(msg_type, self._fq(topic), self._node)

        def on_msg(rmsg: Any) -> None:
            self._ran += 1
            callback(from_rclpy(rmsg, msg_type))

        sub.handle = self._node.create_subscription(_rclpy_class(msg_type), topic, on_msg, _rclpy_qos(qos))
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> _Timer:
        if not period_s > 0:
            raise ValueError(f"timer period must be > 0 s, got {period_s!r}")

        def on_timer() -> None:
            self._ran += 1
            callback()

        return _Timer(float(period_s), self._node.create_timer(float(period_s), on_timer))

    # -- parameters ---------------------------------------------------------------------------------
    def declare_parameter(
        self,
        name: str,
        default: Any = None,
        description: str = "",
        validator: Callable[[Any], Any] | None = None,
        type_: str | type | None = None,
    ) -> Any:
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.parameter import Parameter

        spec = ParameterSpec.make(name, default, description, validator, type_)
        descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True)
        initial = None if spec.default is None else (list(spec.default) if isinstance(spec.default, tuple) else spec.default)
        raw = self._node.declare_parameter(name, initial, descriptor).value
        value = spec.check(self._plain(raw))
        self._specs[name] = spec
        if value is not None and self._plain(raw) != (list(value) if isinstance(value, tuple) else value):
            # widened (int -> float): store the checked form so every reader sees one type
            self._node.set_parameters([Parameter(name, value=list(value) if isinstance(value, tuple) else value)])
        return value

    @staticmethod
    def _plain(value: Any) -> Any:
        if isinstance(value, array.array) or hasattr(value, "tolist"):
            return list(value)
        return value

    def get_parameter(self, name: str) -> Any:
        spec = self._specs.get(name)
        if spec is None:
            raise ParameterError(f"parameter {name!r} was not declared; declared: {sorted(self._specs)}")
        try:
            raw = self._node.get_parameter(name).value
        except Exception as exc:  # rclpy ParameterUninitializedException: declared without a value
            if type(exc).__name__ == "ParameterUninitializedException":
                return None
            raise
        return spec.check(self._plain(raw))

    def set_parameter(self, name: str, value: Any) -> Any:
        from rclpy.parameter import Parameter

        spec = self._specs.get(name)
        if spec is None:
            raise ParameterError(f"parameter {name!r} was not declared; declared: {sorted(self._specs)}")
        checked = spec.check(value)
        result = self._node.set_parameters([Parameter(name, value=list(checked) if isinstance(checked, tuple) else checked)])[0]
        if not result.successful:
            raise ParameterError(result.reason)
        return checked

    def _on_set(self, params: list) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:
                continue
            try:
                spec.check(self._plain(p.value))
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def get_logger(self) -> _LoggerAdapter:
        return self._logger

    def now_ns(self) -> int:
        return int(self._node.get_clock().now().nanoseconds)

    # -- execution ----------------------------------------------------------------------------------
    def spin_once(self, timeout_s: float | None = None) -> bool:
        if self._shutdown:
            return False
        before = self._ran
        self._executor.spin_once(timeout_sec=timeout_s)
        return self._ran > before

    def spin(self) -> None:
        try:
            while not self._shutdown and self._context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except KeyboardInterrupt:
            self._logger.info("interrupted")

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        self._rclpy.try_shutdown(context=self._context)

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown
