"""The backend-neutral node facade: what node code may call.

Node code is written once against ``Node`` and runs on either backend (``rclpy`` or Cyclone DDS).
Messages passed to ``publish`` and to subscription callbacks are always our classes from
``actquant_ros.msgs``, whatever the backend.  Callbacks (subscriptions, timers) run in the thread that
calls ``spin`` / ``spin_once``; ``publish`` may be called from any thread.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from actquant_ros.convert import ns_to_time
from actquant_ros.msgs import Time
from actquant_ros.transport.qos import QOS_DEFAULT, QoSProfile

__all__ = ["Node", "Publisher", "Subscription", "Timer", "resolve_topic", "LoggerLike"]


class LoggerLike(Protocol):
    def debug(self, msg: str, *args: Any) -> None: ...
    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...
    def error(self, msg: str, *args: Any) -> None: ...


class Publisher(Protocol):
    """Returned by ``Node.create_publisher``."""

    topic: str  # fully qualified ROS name, e.g. "/joint_states"
    msg_type: type

    def publish(self, msg: Any) -> None: ...

    def subscription_count(self) -> int:
        """Number of matched subscriptions (useful to wait for discovery)."""
        ...


class Subscription(Protocol):
    """Returned by ``Node.create_subscription``."""

    topic: str
    msg_type: type

    def publisher_count(self) -> int:
        """Number of matched publishers."""
        ...


class Timer(Protocol):
    """Returned by ``Node.create_timer``."""

    period_s: float

    def cancel(self) -> None: ...

    @property
    def is_canceled(self) -> bool: ...


def resolve_topic(name: str, node_name: str, namespace: str = "", remaps: Mapping[str, str] | None = None) -> str:
    """Fully qualified ROS topic name (ROS 2 rules: relative names live in the namespace, ``~`` is the node).

    Remaps are matched against the name as written and against the resolved name.
    """
    remaps = remaps or {}
    if name in remaps:
        name = remaps[name]
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"invalid topic name {name!r}")
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("/"):
        fq = name
    elif name.startswith("~"):
        fq = f"{ns}/{node_name}{name[1:]}" if name != "~" else f"{ns}/{node_name}"
    else:
        fq = f"{ns}/{name}"
    fq = fq.rstrip("/") or "/"
    if "//" in fq:
        raise ValueError(f"invalid topic name {name!r} (resolves to {fq!r})")
    return remaps.get(fq, fq)


class Node(abc.ABC):
    """A ROS-2-like node.  Use ``actquant_ros.transport.make_node`` to get one.

    Attributes:
        name: node name.  namespace: "" or "/ns".  backend: "rclpy" or "dds".
    """

    name: str
    namespace: str
    backend: str

    # -- pub/sub/timers ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_publisher(self, msg_type: type, topic: str, qos: QoSProfile = QOS_DEFAULT) -> Publisher:
        """Publisher of ``msg_type`` (a class from ``actquant_ros.msgs``) on ``topic``."""

    @abc.abstractmethod
    def create_subscription(
        self, msg_type: type, topic: str, callback: Callable[[Any], None], qos: QoSProfile = QOS_DEFAULT
    ) -> Subscription:
        """Call ``callback(msg)`` (in the spinning thread) for each message on ``topic``."""

    @abc.abstractmethod
    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` every ``period_s`` seconds (in the spinning thread)."""

    # -- parameters --------------------------------------------------------------------------------
    @abc.abstractmethod
    def declare_parameter(
        self,
        name: str,
        default: Any = None,
        description: str = "",
        validator: Callable[[Any], Any] | None = None,
        type_: str | type | None = None,
    ) -> Any:
        """Declare a parameter and return its value (override from params file / CLI, else ``default``).

        The type comes from ``default`` (bool/int/float/str or a homogeneous list), or from ``type_``
        ("bool", "int", "float", "str", "<scalar>_array" or bool/int/float/str) when ``default`` is
        None; a parameter declared with ``default=None`` and not overridden has value None.
        ``validator(value)`` returning False or raising ValueError makes this raise ``ParameterError``.
        """

    @abc.abstractmethod
    def get_parameter(self, name: str) -> Any:
        """Current value of a declared parameter (lists come back as tuples)."""

    @abc.abstractmethod
    def set_parameter(self, name: str, value: Any) -> Any:
        """Validate and set a declared parameter; returns the stored value."""

    def declare_parameters(self, specs: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
        """Declare several ``name -> (default, description)`` at once; returns name -> value."""
        return {n: self.declare_parameter(n, d, desc) for n, (d, desc) in specs.items()}

    # -- misc --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_logger(self) -> LoggerLike:
        """A logger with debug/info/warning/error (%-style args)."""

    def now_ns(self) -> int:
        """Node clock (ROS time) in integer nanoseconds; system time on the DDS backend."""
        return time.time_ns()

    def now(self) -> Time:
        """Node clock as a ``builtin_interfaces/Time`` (for message headers)."""
        return ns_to_time(self.now_ns())

    # -- execution ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def spin_once(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` (None = forever) for work, run what is ready; True if a callback ran."""

    @abc.abstractmethod
    def spin(self) -> None:
        """Run callbacks until ``shutdown()`` (from a callback or another thread) or Ctrl-C."""

    def spin_in_thread(self) -> threading.Thread:
        """Run ``spin`` in a daemon thread (callbacks then run there); ``shutdown()`` ends it."""
        thread = threading.Thread(target=self.spin, name=f"{self.name}-spin", daemon=True)
        thread.start()
        return thread

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop spinning and release all entities.  Idempotent."""

    @property
    @abc.abstractmethod
    def is_shutdown(self) -> bool: ...

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_logger(node_name: str) -> logging.Logger:
    """The Python logger of a DDS-backend node: ``actquant_ros.<node_name>``."""
    return logging.getLogger(f"actquant_ros.{node_name}")
