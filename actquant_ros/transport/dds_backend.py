"""Cyclone DDS backend of the node facade (no ROS install needed).

Speaks the ROS 2 wire protocol as rmw_cyclonedds does: topic ``/x`` is the DDS topic ``rt/x``, types
are ``pkg::msg::dds_::Name_`` (``actquant_ros.msgs``), payloads XCDR1 little endian, QoS mapped from
the ROS profiles.  Every sample goes through a per-type byte codec: the stock ``IdlStruct`` serializer
for small messages, ``actquant_ros.cdr_codec`` for images, joint states and trajectories (block
copies of primitive sequences instead of a per-element path).  Raw CDR bytes can also be published (``publish_cdr``), e.g. messages read from a rosbag.

Execution model: one WaitSet per node with a ReadCondition per subscription and a GuardCondition to wake
it; ``spin_once`` waits until data arrives or the next timer is due, then runs the callbacks in the
calling thread (like rclpy's single-threaded executor).

Uses two functions of ``cyclonedds._clayer`` (``ddspy_write`` / ``ddspy_take``), the same calls
``DataWriter.write`` / ``DataReader.take`` make after (de)serialising, to move bytes without the
per-element Python (de)serializer.  Checked with cyclonedds 11.0.1.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cyclonedds._clayer import ddspy_take, ddspy_write
from cyclonedds.core import DDSException, GuardCondition, InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from actquant_core import constants as C
from actquant_ros.cdr_codec import FAST_CODECS
from actquant_ros.transport.base import Node, make_logger, resolve_topic
from actquant_ros.transport.params import ParameterStore, StoreBackedParameters
from actquant_ros.transport.qos import QOS_DEFAULT, QoSProfile

__all__ = ["DdsNode", "DdsPublisher", "DdsSubscription", "DdsTimer", "dds_qos", "dds_topic_name", "codec_for"]

_DDS_INFINITY_NS = 0x7FFFFFFFFFFFFFFF
_ANY_STATE = SampleState.Any | ViewState.Any | InstanceState.Any
_TAKE_BATCH = 64
_RELIABLE_MAX_BLOCKING_NS = 100_000_000  # rmw_cyclonedds default for reliable writers

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


def codec_for(msg_type: type) -> tuple[Encoder, Decoder]:
    """(encode, decode) between a message object and CDR bytes (with encapsulation header)."""
    fast = FAST_CODECS.get(msg_type)
    if fast is not None:
        return fast
    if not hasattr(msg_type, "__idl__"):
        raise TypeError(f"{msg_type!r} is not a message class from actquant_ros.msgs (an IdlStruct)")
    return (lambda msg: msg.serialize()), msg_type.deserialize


def dds_qos(profile: QoSProfile) -> Qos:
    """Cyclone QoS for a facade profile (XCDR1 data representation, as ROS 2 uses)."""
    reliability = (
        Policy.Reliability.Reliable(max_blocking_time=_RELIABLE_MAX_BLOCKING_NS)
        if profile.reliability == "reliable"
        else Policy.Reliability.BestEffort
    )
    durability = Policy.Durability.Volatile if profile.durability == "volatile" else Policy.Durability.TransientLocal
    return Qos(
        reliability,
        durability,
        Policy.History.KeepLast(profile.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )


def dds_topic_name(fq_topic: str) -> str:
    """DDS topic of a fully qualified ROS topic: ``/a/b`` -> ``rt/a/b``."""
    if not fq_topic.startswith("/"):
        raise ValueError(f"ROS topic {fq_topic!r} is not fully qualified")
    return C.DDS_TOPIC_PREFIX + fq_topic


def _delete_entity(entity: Any) -> None:
    """Delete a cyclonedds entity now (the Python wrappers are kept alive by a registry until deleted)."""
    try:
        entity.__del__()
    except DDSException:  # already deleted together with its parent
        pass


class DdsPublisher:
    """Publisher on one topic.  ``publish`` is thread-safe."""

    def __init__(self, msg_type: type, topic: str, writer: DataWriter, encode: Encoder, is_closed: Callable[[], bool]) -> None:
        self.msg_type = msg_type
        self.topic = topic
        self._writer = writer
        self._encode = encode
        self._is_closed = is_closed

    def publish(self, msg: Any) -> None:
        """Serialise and send ``msg`` (must be an instance of ``msg_type``)."""
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"publisher on {self.topic!r} takes {self.msg_type.__name__}, got {type(msg).__name__}")
        self.publish_cdr(self._encode(msg))

    def publish_cdr(self, payload: bytes | memoryview) -> None:
        """Send already-serialised CDR bytes (with encapsulation header), e.g. from a rosbag."""
        if self._is_closed():
            raise RuntimeError(f"cannot publish on {self.topic!r}: its node is shut down")
        data = bytes(payload)
        if len(data) < 4:
            raise ValueError(f"CDR payload of {len(data)} bytes lacks the 4-byte encapsulation header")
        pad = -len(data) % 4
        if pad:
            data += b"\x00" * pad
        ret = ddspy_write(self._writer._ref, data)
        if ret < 0:
            raise DDSException(ret, f"writing a {self.msg_type.__name__} on {self.topic!r}")

    def subscription_count(self) -> int:
        return len(self._writer.get_matched_subscriptions())


class DdsSubscription:
    """Subscription on one topic; its callback runs in the spinning thread."""

    def __init__(
        self, msg_type: type, topic: str, reader: DataReader, condition: ReadCondition, callback: Callable[[Any], None],
        decode: Decoder, raw: bool,
    ) -> None:
        self.msg_type = msg_type
        self.topic = topic
        self._reader = reader
        self.condition = condition
        self._callback = callback
        self._decode = decode
        self._raw = raw

    def take_payloads(self) -> list[bytes]:
        """Take all pending samples as CDR bytes (non-blocking)."""
        out: list[bytes] = []
        while True:
            ret = ddspy_take(self._reader._ref, _ANY_STATE, _TAKE_BATCH)
            if isinstance(ret, int):
                raise DDSException(ret, f"taking samples on {self.topic!r}")
            out.extend(data for data, info in ret if info.valid_data)
            if len(ret) < _TAKE_BATCH:
                return out

    def dispatch(self) -> int:
        """Deliver pending samples to the callback; returns how many."""
        payloads = self.take_payloads()
        for p in payloads:
            self._callback(p if self._raw else self._decode(p))
        return len(payloads)

    def publisher_count(self) -> int:
        return len(self._reader.get_matched_publications())


class DdsTimer:
    """A periodic timer driven by ``DdsNode.spin_once`` (monotonic clock)."""

    def __init__(self, period_s: float, callback: Callable[[], None], now: float) -> None:
        self.period_s = period_s
        self._callback = callback
        self.next_due = now + period_s
        self._canceled = False

    def cancel(self) -> None:
        self._canceled = True

    @property
    def is_canceled(self) -> bool:
        return self._canceled

    def fire_if_due(self, now: float) -> bool:
        if self._canceled or now < self.next_due:
            return False
        self.next_due += self.period_s
        if self.next_due <= now:  # fell behind (long callback): skip missed periods, like rclpy
            self.next_due = now + self.period_s
        self._callback()
        return True


class DdsNode(StoreBackedParameters, Node):
    """A node on a Cyclone DDS participant (see the module docstring).

    Args:
        name: node name.
        namespace: "" or "/ns".
        parameter_overrides: name -> value from params files / CLI (see ``params.RosArgs``).
        remaps: topic remappings (from -> to).
        domain_id: DDS domain (ROS_DOMAIN_ID).
    """

    backend = "dds"

    def __init__(
        self,
        name: str,
        namespace: str = "",
        parameter_overrides: Mapping[str, Any] | None = None,
        remaps: Mapping[str, str] | None = None,
        domain_id: int = 0,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"node name must be non-empty without '/', got {name!r}")
        if not 0 <= int(domain_id) <= 232:
            raise ValueError(f"DDS domain id must be in [0, 232], got {domain_id!r}")
        self.name = name
        self.namespace = namespace
        self._remaps = dict(remaps or {})
        self._params = ParameterStore(parameter_overrides)
        self._logger = make_logger(name)
        self._lock = threading.RLock()
        self._dp = DomainParticipant(int(domain_id))
        self._waitset = WaitSet(self._dp)
        self._guard = GuardCondition(self._dp)
        self._waitset.attach(self._guard)
        self._topics: dict[str, Topic] = {}
        self._entities: list[Any] = []  # writers / readers / conditions, in creation order
        self._subs: list[DdsSubscription] = []
        self._timers: list[DdsTimer] = []
        self._shutdown = False
        self._idle = threading.Event()
        self._idle.set()
        self._spin_thread: int | None = None

    # -- pub/sub ------------------------------------------------------------------------------------
    def _topic(self, msg_type: type, fq: str) -> Topic:
        topic = self._topics.get(fq)
        if topic is None:
            topic = Topic(self._dp, dds_topic_name(fq), msg_type)
            self._topics[fq] = topic
        elif topic.data_type is not msg_type:
            raise TypeError(f"topic {fq!r} already used with {topic.data_type.__name__} in this node, not {msg_type.__name__}")
        return topic

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError(f"node {self.name!r} is shut down")

    def create_publisher(self, msg_type: type, topic: str, qos: QoSProfile = QOS_DEFAULT) -> DdsPublisher:
        encode, _ = codec_for(msg_type)
        fq = resolve_topic(topic, self.name, self.namespace, self._remaps)
        with self._lock:
            self._check_open()
            writer = DataWriter(self._dp, self._topic(msg_type, fq), qos=dds_qos(qos))
            self._entities.append(writer)
        self._logger.debug("publisher %s [%s] %s", fq, msg_type.__name__, qos)
        return DdsPublisher(msg_type, fq, writer, encode, lambda: self._shutdown)

    def create_subscription(
        self,
        msg_type: type,
        topic: str,
        callback: Callable[[Any], None],
        qos: QoSProfile = QOS_DEFAULT,
        raw: bool = False,
    ) -> DdsSubscription:
        """As ``Node.create_subscription``; ``raw=True`` (DDS only) hands the callback the CDR bytes."""
        _, decode = codec_for(msg_type)
        fq = resolve_topic(topic, self.name, self.namespace, self._remaps)
        with self._lock:
            self._check_open()
            reader = DataReader(self._dp, self._topic(msg_type, fq), qos=dds_qos(qos))
            cond = ReadCondition(reader, _ANY_STATE)
            self._entities += [reader, cond]
            sub = DdsSubscription(msg_type, fq, reader, cond, callback, decode, raw)
            self._waitset.attach(cond)
            self._subs.append(sub)
        self._guard.set(True)
        self._logger.debug("subscription %s [%s] %s", fq, msg_type.__name__, qos)
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> DdsTimer:
        if not (isinstance(period_s, (int, float)) and math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"timer period must be a finite number of seconds > 0, got {period_s!r}")
        timer = DdsTimer(float(period_s), callback, time.monotonic())
        with self._lock:
            self._check_open()
            self._timers.append(timer)
        self._guard.set(True)
        return timer

    # -- parameters ---------------------------------------------------------------------------------
    # declare_parameter / get_parameter / set_parameter / parameter_spec: StoreBackedParameters

    def undeclared_overrides(self) -> list[str]:
        """Overrides given (file / CLI) for names never declared — usually typos."""
        return self._params.undeclared_overrides()

    def get_logger(self) -> logging.Logger:
        return self._logger

    # -- execution ----------------------------------------------------------------------------------
    def spin_once(self, timeout_s: float | None = None) -> bool:
        with self._lock:  # ordered against shutdown(): either we see the flag or it waits for us
            if self._shutdown:
                return False
            self._idle.clear()
            self._spin_thread = threading.get_ident()
        try:
            with self._lock:
                timers = [t for t in self._timers if not t.is_canceled]
                subs = list(self._subs)
            now = time.monotonic()
            wait_s = math.inf if timeout_s is None else max(0.0, float(timeout_s))
            if timers:
                wait_s = min(wait_s, max(0.0, min(t.next_due for t in timers) - now))
            if wait_s > 0:
                self._waitset.wait(_DDS_INFINITY_NS if math.isinf(wait_s) else int(wait_s * 1e9))
            self._guard.take()
            ran = False
            for sub in subs:
                if self._shutdown:
                    return ran
                ran = sub.dispatch() > 0 or ran
            now = time.monotonic()
            for t in timers:
                if self._shutdown:
                    return ran
                ran = t.fire_if_due(now) or ran
            return ran
        finally:
            self._spin_thread = None
            self._idle.set()
            if self._shutdown:
                self._release()

    def spin(self) -> None:
        try:
            while not self._shutdown:
                self.spin_once(None)
        except KeyboardInterrupt:
            self._logger.info("interrupted")

    def shutdown(self) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        self._guard.set(True)
        if self._spin_thread == threading.get_ident():
            return  # called from a callback: spin_once releases on its way out
        if self._idle.wait(timeout=2.0):
            self._release()
        else:  # a spinning thread will release on its way out
            self._logger.warning("node %s: spin did not return within 2 s of shutdown", self.name)

    def _release(self) -> None:
        with self._lock:
            if self._dp is None:
                return
            for sub in self._subs:
                self._waitset.detach(sub.condition)
            self._waitset.detach(self._guard)
            for e in reversed(self._entities):
                _delete_entity(e)
            for t in self._topics.values():
                _delete_entity(t)
            _delete_entity(self._guard)
            _delete_entity(self._waitset)
            _delete_entity(self._dp)
            self._dp = None
            self._entities.clear()
            self._subs.clear()
            self._timers.clear()
            self._topics.clear()

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown
