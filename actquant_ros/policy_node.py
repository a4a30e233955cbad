"""The policy node: cameras + joint states + instruction -> policy runtime -> chunk scheduler -> safety -> arm.

Threads (none of them blocks another)::

    spin thread      subscriptions (images, joint states, instruction, ~/control), diagnostics timer;
                     every input is stamped with ``time.monotonic()`` at receipt
    inference worker waits for ``ControlLoop.needs_new_chunk()`` (the scheduler asks early, so the arm
                     never stalls), builds an ``Observation`` from the latest synchronised inputs, calls
                     ``runtime.infer``, submits the chunk to the loop and publishes it
                     (trajectory_msgs/JointTrajectory on ``chunk_topic``)
    control loop     ``ControlLoop`` at the arm's rate (UR3 125 Hz, UR3e 500 Hz): scheduler -> Safety -> arm

Instruction.  With ``require_instruction`` (default) the worker makes no policy call while the instruction
is empty or blank (no ``instruction`` parameter, no message on ``instruction_topic`` yet, or an empty
message): no chunk is published and the arm gets no command, as for any other missing input; the
diagnostics say so (level warn, ``waiting_for_instruction`` 1) and the first non-empty instruction is logged.

Faults.  A non-finite chunk is rejected by ``ControlLoop.submit_chunk`` (latched fault, arm stopped in the
same call, nothing published).  A runtime exception holds the loop (chunks dropped, arm stopped) and is
counted; inference resumes on the next fresh observation.  Stale cameras / joints, the chunk watchdog
(inference overrun), protective stop, disconnects latch a fault inside ``ControlLoop`` (arm stopped in
that tick).  Recovery is explicit: ``std_msgs/String "resume"`` on ``~/control`` (or ``resume()``) follows
``ControlLoop.resume``'s rule; ``"hold"`` stops without a fault.  Every exit path (``deactivate``,
``shutdown``, an exception in ``main``) stops the arm.

Lifecycle (ROS 2 managed-node phases, driven by ``main`` or by tests): ``configure`` (load the policy,
build arm / safety / scheduler / loop, create publishers and subscriptions) -> ``activate`` (connect
the arm, start loop and worker) -> ``deactivate`` (stop worker and loop, arm stopped) -> ``cleanup``
(disconnect the arm, release the runtime).

Run::

    python -m actquant_ros.policy_node --ros-args --params-file config/policy_pi05_small.yaml \
        -p policy_gguf:=policy.gguf -p dry_run:=true
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core.robot import (
    Arm,
    ChunkScheduler,
    ControlLoop,
    ControlLoopConfig,
    DryRunArm,
    DryRunConfig,
    RtdeArm,
    RtdeArmConfig,
    Safety,
    SafetyConfig,
    SafetyViolation,
    SchedulerConfig,
)
from actquant_core.runtime.types import ActionChunk, Observation
from actquant_ros.convert import chunk_to_trajectory, diagnostics_from_dict, image_to_numpy, joint_state_to_numpy
from actquant_ros.msgs import DiagnosticArray, Image, JointState, JointTrajectory, String
from actquant_ros.transport import QOS_DEFAULT, QOS_SENSOR_DATA, Node, make_node

__all__ = ["PolicyNodeConfig", "PolicyNode", "PolicyStats", "main"]

log = logging.getLogger(__name__)

_ARM_JOINTS = tuple(C.UR_JOINT_NAMES)


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
def _p(description: str, check: Callable[[Any], bool] | None = None, rule: str = "") -> dict:
    """Field metadata: the ROS parameter description and a validity check (with its rule in words)."""
    return {"description": description, "check": check, "rule": rule}


def _abs_topic(v: str) -> bool:
    return isinstance(v, str) and v.startswith("/") and not any(c.isspace() for c in v)


def _nonneg(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def _pos(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@dataclass(frozen=True)
class PolicyNodeConfig:
    """Parameters of ``policy_node`` (every field is a ROS parameter with this description).

    Attributes (see each field's ``description``): policy / topics / control timing / chunking /
    safety / arm / runtime settings.  ``robot_ip`` has no default: it is required when the effective
    arm is RTDE (``dry_run`` false and ``arm`` = "rtde").
    """

    # -- policy -----------------------------------------------------------------------------------
    policy_gguf: str = field(default="", metadata=_p("policy GGUF file (required)", lambda v: isinstance(v, str) and v != "", "non-empty path"))
    threads: int = field(default=0, metadata=_p("CPU threads of the native runtime (0 = all CPUs of the process)", lambda v: isinstance(v, int) and v >= 0, ">= 0"))
    cpu_repack: bool = field(default=True, metadata=_p("CPU runtime: convert the weights GGML has interleaved GEMM kernels for (Q4_K/Q4_0/IQ4_NL on AVX2) at load: faster batched matmuls for a copy of those weights in RAM (false: run from the mapped file)", lambda v: isinstance(v, bool), "a bool"))
    device: str = field(default="cpu", metadata=_p("runtime device: cpu | cuda | cuda:N", lambda v: v == "cpu" or v == "cuda" or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()), "cpu, cuda or cuda:N"))
    seed: int = field(default=0, metadata=_p("seed of the policy's flow-matching noise", lambda v: isinstance(v, int) and v >= 0, ">= 0"))
    # -- topics -----------------------------------------------------------------------------------
    camera_topics: tuple[str, ...] = field(default=(C.TOPIC_CAMERA_BASE, C.TOPIC_CAMERA_WRIST), metadata=_p(
        "sensor_msgs/Image topics, one per camera slot (same order as camera_slots)",
        lambda v: len(v) >= 1 and all(_abs_topic(t) for t in v) and len(set(v)) == len(v), "non-empty list of distinct absolute topics"))
    camera_slots: tuple[str, ...] = field(default=(C.SIM_CAMERA_BASE, C.SIM_CAMERA_WRIST), metadata=_p(
        "policy camera slot of each camera topic (e.g. base_0_rgb, left_wrist_0_rgb)",
        lambda v: len(v) >= 1 and all(isinstance(s, str) and s for s in v) and len(set(v)) == len(v), "non-empty list of distinct names"))
    joint_topic: str = field(default=C.TOPIC_JOINT_STATES, metadata=_p("sensor_msgs/JointState topic (robot state input)", _abs_topic, "absolute topic"))
    joint_names: tuple[str, ...] = field(default=_ARM_JOINTS, metadata=_p(
        "the 6 arm joint names in UR order, as in JointState / the published trajectory",
        lambda v: len(v) == C.UR_NUM_JOINTS and len(set(v)) == len(v), f"{C.UR_NUM_JOINTS} distinct names"))
    gripper_joint: str = field(default=C.SIM_GRIPPER_JOINT_NAME, metadata=_p(
        "JointState / trajectory name of the gripper opening in [0, 1] ('' = no gripper)", lambda v: isinstance(v, str), "a string"))
    joint_state_source: str = field(default=C.JOINT_SOURCE_AUTO, metadata=_p(
        "robot state for the policy: topic | arm | auto (arm for rtde/sim, topic for dry_run)", lambda v: v in C.JOINT_SOURCES, f"one of {C.JOINT_SOURCES}"))
    instruction: str = field(default="", metadata=_p("language instruction (a message on instruction_topic replaces it)", lambda v: isinstance(v, str), "a string"))
    instruction_topic: str = field(default=C.TOPIC_INSTRUCTION, metadata=_p("std_msgs/String instruction topic", _abs_topic, "absolute topic"))
    require_instruction: bool = field(default=True, metadata=_p(
        "wait for a non-empty instruction (parameter or instruction_topic) before the first policy call: no chunk, no arm "
        "command while it is empty or blank (false: run the policy with an empty prompt)", lambda v: isinstance(v, bool), "a bool"))
    chunk_topic: str = field(default=C.TOPIC_ACTION_CHUNK, metadata=_p("trajectory_msgs/JointTrajectory topic of each action chunk", _abs_topic, "absolute topic"))
    diagnostics_topic: str = field(default=C.TOPIC_DIAGNOSTICS, metadata=_p("diagnostic_msgs/DiagnosticArray topic", _abs_topic, "absolute topic"))
    diagnostics_period_s: float = field(default=1.0, metadata=_p("diagnostics period, s", _pos, "> 0"))
    sync_tolerance_s: float = field(default=0.15, metadata=_p(
        "largest spread of the camera / joint stamps (receipt time) accepted as one synchronised observation, s", _pos, "> 0"))
    # -- control timing and chunking --------------------------------------------------------------
    ur_type: str = field(default=C.UR_TYPE_UR3, metadata=_p("ur3 (CB3, 125 Hz) | ur3e (e-series, 500 Hz)", lambda v: v in C.UR_TYPES, f"one of {C.UR_TYPES}"))
    control_rate_hz: float = field(default=0.0, metadata=_p("servo rate, Hz (0 = from ur_type: ur3 125, ur3e 500)", lambda v: v == 0 or (_pos(v) and 1 <= v <= 2000), "0 or in [1, 2000]"))
    policy_rate_hz: float = field(default=10.0, metadata=_p("spacing of the actions inside a chunk, Hz (the training data rate)", lambda v: _pos(v) and v <= 1000, "in (0, 1000]"))
    execution_horizon: int = field(default=5, metadata=_p("actions of each chunk executed before the next chunk takes over", lambda v: isinstance(v, int) and v >= 1, ">= 1"))
    chunk_mode: str = field(default=C.SCHED_MODE_RTC, metadata=_p(
        "chunk switching: rtc (aligned to the observation time, latency prefix skipped) | blend (starts at arrival)",
        lambda v: v in (C.SCHED_MODE_RTC, C.SCHED_MODE_BLEND), "rtc or blend"))
    interpolation: str = field(default=C.SCHED_INTERP_CUBIC, metadata=_p("interpolation between action knots: cubic | linear",
                                                                          lambda v: v in (C.SCHED_INTERP_CUBIC, C.SCHED_INTERP_LINEAR), "cubic or linear"))
    blend_window_s: float = field(default=0.1, metadata=_p("cross-fade at chunk switches, s (0 = hard switch)", lambda v: _nonneg(v) and v <= 2, "in [0, 2]"))
    initial_latency_s: float = field(default=0.15, metadata=_p("inference latency assumed before the first measurement, s", lambda v: _nonneg(v) and v <= 10, "in [0, 10]"))
    request_margin_s: float = field(default=0.05, metadata=_p("extra lead when requesting the next chunk, s", lambda v: _nonneg(v) and v <= 5, "in [0, 5]"))
    max_chunk_latency_s: float = field(default=2.0, metadata=_p("a chunk whose observation is older than this on arrival is rejected, s", _pos, "> 0"))
    # -- safety -----------------------------------------------------------------------------------
    qd_max: float = field(default=C.RTDE_MAX_JOINT_SPEED, metadata=_p("joint speed limit, rad/s (all joints)", lambda v: _pos(v) and v <= C.RTDE_MAX_JOINT_SPEED, f"in (0, {C.RTDE_MAX_JOINT_SPEED}]"))
    qdd_max: float = field(default=10.0, metadata=_p("joint acceleration limit, rad/s^2", lambda v: _pos(v) and v <= C.RTDE_MAX_JOINT_ACCEL, f"in (0, {C.RTDE_MAX_JOINT_ACCEL}]"))
    max_step_rad: float = field(default=0.05, metadata=_p("largest joint change per servo tick, rad", lambda v: _pos(v) and v <= 0.5, "in (0, 0.5]"))
    joint_timeout_s: float = field(default=0.05, metadata=_p("joint data older than this stops the arm, s", _pos, "> 0"))
    camera_timeout_s: float = field(default=0.5, metadata=_p("camera data older than this stops the arm while executing, s (0 = no camera check)", _nonneg, ">= 0"))
    watchdog_timeout_s: float = field(default=1.0, metadata=_p("no new chunk for this long while executing stops the arm (inference overrun), s (0 = off)", _nonneg, ">= 0"))
    # -- arm --------------------------------------------------------------------------------------
    dry_run: bool = field(default=True, metadata=_p("never command hardware: a DryRunArm records the commands (overrides arm)", lambda v: isinstance(v, bool), "a bool"))
    arm: str = field(default=C.ARM_KIND_RTDE, metadata=_p("arm when dry_run is false: rtde (ur_rtde servoJ on robot_ip) | sim (in-process MuJoCo) | dry_run",
                                                         lambda v: v in C.ARM_KINDS, f"one of {C.ARM_KINDS}"))
    robot_ip: str = field(default="", metadata=_p("UR controller address; no default on purpose: required for the rtde arm", lambda v: isinstance(v, str) and not any(c.isspace() for c in v), "an address without spaces"))
    lookahead_time_s: float = field(default=0.1, metadata=_p("servoJ lookahead, s", lambda v: _pos(v) and C.RTDE_LOOKAHEAD_MIN_S <= v <= C.RTDE_LOOKAHEAD_MAX_S,
                                                             f"in [{C.RTDE_LOOKAHEAD_MIN_S}, {C.RTDE_LOOKAHEAD_MAX_S}]"))
    gain: float = field(default=300.0, metadata=_p("servoJ gain", lambda v: _pos(v) and C.RTDE_GAIN_MIN <= v <= C.RTDE_GAIN_MAX, f"in [{C.RTDE_GAIN_MIN}, {C.RTDE_GAIN_MAX}]"))
    rtde_watchdog_hz: float = field(default=10.0, metadata=_p(
        "RTDE watchdog: the controller stops the program when the node's packages come slower than this, Hz (0 = off)",
        lambda v: v == 0 or (_pos(v) and 1 <= v <= 500), "0 or in [1, 500]"))
    gripper_output: int = field(default=-1, metadata=_p("standard digital output driving the gripper (-1 = no gripper IO)", lambda v: isinstance(v, int) and -1 <= v <= 7, "in [-1, 7]"))
    gripper_open_is_high: bool = field(default=False, metadata=_p("gripper output polarity: true if a high output opens the gripper (the simulator and most UR tool grippers close on high)", lambda v: isinstance(v, bool), "a bool"))
    # -- run control ------------------------------------------------------------------------------
    record_path: str = field(default="", metadata=_p(
        "record every policy call (inputs, actions, latency) with RecordingRuntime and save it here (.npz) at cleanup ('' = off)",
        lambda v: isinstance(v, str), "a path or ''"))
    record_images: bool = field(default=False, metadata=_p("with record_path: also store the input images (large)", lambda v: isinstance(v, bool), "a bool"))
    autostart: bool = field(default=True, metadata=_p("configure and activate at start (false: stay unconfigured)", lambda v: isinstance(v, bool), "a bool"))
    run_duration_s: float = field(default=0.0, metadata=_p("shut down after this long, s (0 = run until stopped; for demos and tests)", _nonneg, ">= 0"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            check = f.metadata.get("check")
            if check is not None:
                try:
                    ok = bool(check(value))
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise ValueError(f"PolicyNodeConfig.{f.name}={value!r} is invalid: must be {f.metadata['rule']}")
        if len(self.camera_topics) != len(self.camera_slots):
            raise ValueError(f"PolicyNodeConfig: {len(self.camera_topics)} camera_topics {list(self.camera_topics)} but "
                             f"{len(self.camera_slots)} camera_slots {list(self.camera_slots)}; they pair up one to one")
        if self.effective_arm == C.ARM_KIND_RTDE and not self.robot_ip:
            raise ValueError("PolicyNodeConfig.robot_ip is required when dry_run is false and arm is 'rtde' "
                             "(it has no default on purpose); got ''")
        if self.gripper_joint in self.joint_names:
            raise ValueError(f"PolicyNodeConfig.gripper_joint={self.gripper_joint!r} is also an arm joint name")

    # -- derived ----------------------------------------------------------------------------------
    @property
    def effective_arm(self) -> str:
        """The arm actually driven: "dry_run" whenever ``dry_run`` is true, else ``arm``."""
        return C.ARM_KIND_DRY_RUN if self.dry_run else self.arm

    @property
    def rate_hz(self) -> float:
        """The servo rate: ``control_rate_hz`` or the controller's rate of ``ur_type``."""
        return float(self.control_rate_hz) if self.control_rate_hz > 0 else C.UR_CONTROL_RATE_HZ[self.ur_type]

    @property
    def state_from_arm(self) -> bool:
        if self.joint_state_source == C.JOINT_SOURCE_AUTO:
            return self.effective_arm != C.ARM_KIND_DRY_RUN
        return self.joint_state_source == C.JOINT_SOURCE_ARM

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(policy_rate_hz=self.policy_rate_hz, execution_horizon=self.execution_horizon,
                               interpolation=self.interpolation, mode=self.chunk_mode, blend_window_s=self.blend_window_s,
                               initial_latency_s=self.initial_latency_s, request_margin_s=self.request_margin_s,
                               max_latency_s=self.max_chunk_latency_s)

    def safety_config(self) -> SafetyConfig:
        return SafetyConfig.for_ur_type(
            self.ur_type, qd_max=(self.qd_max,) * C.UR_NUM_JOINTS, qdd_max=self.qdd_max, max_step_rad=self.max_step_rad,
            joint_timeout_s=self.joint_timeout_s, camera_timeout_s=self.camera_timeout_s or None,
            watchdog_timeout_s=self.watchdog_timeout_s or None)

    @classmethod
    def from_node(cls, node: Node) -> PolicyNodeConfig:
        """Declare every field as a parameter of ``node`` (description + validation) and read them."""
        values = {}
        for f in dataclasses.fields(cls):
            default = f.default
            check = f.metadata.get("check")
            # the policy path and robot_ip are validated in __post_init__ (their rules depend on other fields)
            validator = None if f.name in ("policy_gguf",) else check
            type_ = "str_array" if isinstance(default, tuple) else None
            values[f.name] = node.declare_parameter(f.name, list(default) if isinstance(default, tuple) else default,
                                                    f.metadata["description"], validator, type_)
        return cls(**values)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Parameter name -> description (for docs, launch files and tests)."""
        return {f.name: f.metadata["description"] for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------------------------------
@dataclass
class PolicyStats:
    """Counters of the inference worker (diagnostics)."""

    inferences: int = 0
    chunks_published: int = 0
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    nonfinite_chunks: int = 0
    runtime_errors: int = 0
    skipped_unsynced: int = 0
    skipped_no_instruction: int = 0  # synchronised inputs were there, the instruction was empty
    last_error: str = ""
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=500))

    def latency(self) -> dict[str, float]:
        x = np.asarray(self.latency_ms, dtype=np.float64)
        if x.size == 0:
            return {"p50": math.nan, "p95": math.nan, "max": math.nan, "n": 0}
        return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)), "max": float(x.max()), "n": int(x.size)}


class _Latest:
    """Latest input of each kind with its receipt time (``time.monotonic``); thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.images: dict[str, tuple[np.ndarray, float]] = {}
        self.joints: tuple[np.ndarray, float] | None = None  # state [6 or 7], stamp
        self.instruction: str = ""
        self.new_data = threading.Event()


class PolicyNode:
    """Wires runtime + control loop + arm onto a facade node (see the module docstring).

    Args:
        node: the transport node (``make_node``).
        config: the validated parameters.
        runtime: a ready policy runtime (``infer(Observation) -> ActionChunk`` and ``config.camera_slots``);
            loaded from ``config.policy_gguf`` in ``configure`` when None.
        arm: an ``Arm`` to drive instead of the one ``config`` asks for (tests).
        clock_now: the monotonic clock used for input stamps (must be the control loop's clock).
    """

    def __init__(self, node: Node, config: PolicyNodeConfig, runtime: Any | None = None, arm: Arm | None = None) -> None:
        self.node = node
        self.cfg = config
        self.runtime = runtime
        self.arm: Arm | None = arm
        self.loop: ControlLoop | None = None
        self.stats = PolicyStats()
        self.state = "unconfigured"
        self._latest = _Latest()
        self._latest.instruction = config.instruction
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._in_flight = False
        self._chunk_pub = None
        self._diag_pub = None
        self._logger = node.get_logger()
        self._lock = threading.RLock()

    # -- lifecycle --------------------------------------------------------------------------------
    def configure(self) -> None:
        """Load the policy, build arm / safety / scheduler / loop, create publishers and subscriptions."""
        with self._lock:
            if self.state != "unconfigured":
                raise RuntimeError(f"configure() in state {self.state!r}; expected 'unconfigured'")
            cfg = self.cfg
            if self.runtime is None:
                from actquant_core.runtime import load_runtime

                kw: dict[str, Any] = {"seed": cfg.seed, "device": cfg.device, "repack": cfg.cpu_repack}
                if cfg.threads:
                    kw["n_threads"] = cfg.threads
                self.runtime = load_runtime(cfg.policy_gguf, **kw)
            if cfg.record_path:
                from actquant_core.runtime.recording import RecordingRuntime

                self.runtime = RecordingRuntime(self.runtime, keep_images=cfg.record_images)
            slots = tuple(getattr(getattr(self.runtime, "config", None), "camera_slots", cfg.camera_slots))
            unknown = [s for s in cfg.camera_slots if s not in slots]
            if unknown:
                raise ValueError(f"camera_slots {unknown} are not slots of the policy; it has {list(slots)}")
            if self.arm is None:
                self.arm = self._build_arm()
            scheduler = ChunkScheduler(cfg.scheduler_config())
            safety = Safety(cfg.safety_config())
            self.loop = ControlLoop(self.arm, scheduler, safety, ControlLoopConfig(rate_hz=cfg.rate_hz, check_camera=cfg.camera_timeout_s > 0))
            n = self.node
            self._chunk_pub = n.create_publisher(JointTrajectory, cfg.chunk_topic, QOS_DEFAULT)
            self._diag_pub = n.create_publisher(DiagnosticArray, cfg.diagnostics_topic, QOS_DEFAULT)
            for topic, slot in zip(cfg.camera_topics, cfg.camera_slots):
                n.create_subscription(Image, topic, self._on_image(slot), QOS_SENSOR_DATA)
            n.create_subscription(JointState, cfg.joint_topic, self._on_joints, QOS_DEFAULT)
            n.create_subscription(String, cfg.instruction_topic, self._on_instruction, QOS_DEFAULT)
            n.create_subscription(String, C.TOPIC_POLICY_CONTROL, self._on_control, QOS_DEFAULT)
            n.create_timer(cfg.diagnostics_period_s, self.publish_diagnostics)
            self.state = "inactive"
            self._logger.info("configured: arm %s at %.0f Hz, cameras %s, state from %s", cfg.effective_arm,
                              self.loop.rate_hz, dict(zip(cfg.camera_topics, cfg.camera_slots)),
                              "arm" if cfg.state_from_arm else cfg.joint_topic)

    def _build_arm(self) -> Arm:
        cfg = self.cfg
        kind = cfg.effective_arm
        if kind == C.ARM_KIND_DRY_RUN:
            return DryRunArm(DryRunConfig(control_rate_hz=cfg.rate_hz))
        if kind == C.ARM_KIND_SIM:
            from actquant_core.sim.arm import SimArm

            return SimArm(model=cfg.ur_type, control_rate_hz=cfg.rate_hz, realtime=True)
        return RtdeArm(RtdeArmConfig(robot_ip=cfg.robot_ip, ur_type=cfg.ur_type, frequency_hz=cfg.rate_hz,
                                     lookahead_time_s=cfg.lookahead_time_s, gain=cfg.gain,
                                     use_watchdog=cfg.rtde_watchdog_hz > 0,
                                     watchdog_min_frequency_hz=cfg.rtde_watchdog_hz or 10.0,
                                     gripper_output=None if cfg.gripper_output < 0 else cfg.gripper_output,
                                     gripper_open_is_high=cfg.gripper_open_is_high))

    def activate(self) -> None:
        """Connect the arm, start the control loop and the inference worker."""
        with self._lock:
            if self.state != "inactive":
                raise RuntimeError(f"activate() in state {self.state!r}; expected 'inactive'")
            assert self.arm is not None and self.loop is not None
            self.arm.connect()
            try:
                self.loop.start()
                self._stop.clear()
                self._worker = threading.Thread(target=self._work, name="policy-inference", daemon=True)
                self._worker.start()
            except BaseException:
                self.loop.stop()
                raise
            self.state = "active"
            self._logger.info("active")
            if self.waiting_for_instruction:
                self._logger.info("waiting for an instruction on %s (or the instruction parameter) before the first "
                                  "policy call; the arm gets no command until then", self.cfg.instruction_topic)

    def deactivate(self) -> None:
        """Stop the inference worker and the control loop; the arm is stopped.  Idempotent."""
        with self._lock:
            self._stop.set()
            self._latest.new_data.set()
            w = self._worker
            if w is not None and w is not threading.current_thread():
                w.join(timeout=5.0)
                if w.is_alive():
                    self._logger.error("inference worker still busy after 5 s (a policy call in flight)")
            self._worker = None
            if self.loop is not None:
                self.loop.stop()  # stops the arm on every path
            elif self.arm is not None:
                self.arm.stop()
            if self.state == "active":
                self.state = "inactive"

    def cleanup(self) -> None:
        """Disconnect the arm and release the runtime.  Idempotent."""
        with self._lock:
            self.deactivate()
            if self.arm is not None:
                try:
                    self.arm.stop()
                    self.arm.disconnect()
                except Exception:  # noqa: BLE001 (cleanup must finish)
                    self._logger.exception("arm disconnect failed")
            if self.cfg.record_path and self.runtime is not None and hasattr(self.runtime, "save"):
                try:
                    path = self.runtime.save(self.cfg.record_path)
                    self._logger.info("recorded %d policy calls to %s", len(self.runtime.calls), path)
                except OSError as exc:
                    self._logger.error("could not save the recording to %s: %s", self.cfg.record_path, exc)
            self.runtime = None
            self.state = "unconfigured" if self.state != "finalized" else self.state

    def shutdown(self) -> None:
        """deactivate + cleanup + the node itself."""
        try:
            self.cleanup()
        finally:
            self.state = "finalized"
            self.node.shutdown()

    # -- operator commands --------------------------------------------------------------------------
    def resume(self) -> None:
        """Leave a latched fault (``ControlLoop.resume`` rule); raises ``RecoveryRefused`` if not safe."""
        if self.loop is not None:
            self.loop.resume()

    def hold(self) -> None:
        """Stop executing without a fault (drops chunks, stops the arm)."""
        if self.loop is not None:
            self.loop.hold()

    # -- subscriptions (spin thread) ----------------------------------------------------------------
    def _on_image(self, slot: str) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            t = time.monotonic()
            try:
                img = image_to_numpy(msg)
            except ValueError as exc:
                self._logger.warning("camera %s: bad image dropped: %s", slot, exc)
                return
            with self._latest.lock:
                self._latest.images[slot] = (img, t)
            if self.loop is not None:
                self.loop.update_camera_stamp(self._camera_stamp())
            self._latest.new_data.set()

        return callback

    def _camera_stamp(self) -> float:
        """Stamp of the oldest camera's latest frame (all configured cameras must be fresh); -inf if one is missing."""
        with self._latest.lock:
            stamps = [self._latest.images[s][1] for s in self.cfg.camera_slots if s in self._latest.images]
        return min(stamps) if len(stamps) == len(self.cfg.camera_slots) else -math.inf

    def _on_joints(self, msg: JointState) -> None:
        t = time.monotonic()
        try:
            q, _ = joint_state_to_numpy(msg, self.cfg.joint_names)
        except (KeyError, ValueError) as exc:
            self._logger.warning("joint state dropped: %s", exc)
            return
        state = q
        if self.cfg.gripper_joint:
            names = list(msg.name)
            g = float(msg.position[names.index(self.cfg.gripper_joint)]) if self.cfg.gripper_joint in names else math.nan
            state = np.concatenate([q, [g]])
        with self._latest.lock:
            self._latest.joints = (state, t)
        self._latest.new_data.set()

    def _on_instruction(self, msg: String) -> None:
        text = str(msg.data)
        with self._latest.lock:
            previous = self._latest.instruction
            self._latest.instruction = text
        was_missing, missing = self._instruction_missing(previous), self._instruction_missing(text)
        if was_missing and not missing:  # the transition out of the wait (once per wait)
            self._logger.info("instruction received on %s: %r; policy calls start", self.cfg.instruction_topic, text)
        elif missing and not was_missing:
            self._logger.warning("empty instruction %r on %s: no policy call until a non-empty one "
                                 "(the arm holds when its current chunk ends)", text, self.cfg.instruction_topic)
        elif text != previous:
            self._logger.info("instruction: %r", text)
        self._latest.new_data.set()

    def _instruction_missing(self, instruction: str) -> bool:
        """True when ``require_instruction`` is set and ``instruction`` is empty or blank."""
        return self.cfg.require_instruction and not instruction.strip()

    @property
    def waiting_for_instruction(self) -> bool:
        """True while no policy call is made because the instruction is empty (``require_instruction``)."""
        with self._latest.lock:
            instruction = self._latest.instruction
        return self._instruction_missing(instruction)

    def _on_control(self, msg: String) -> None:
        word = str(msg.data).strip()
        try:
            if word == C.POLICY_CONTROL_RESUME:
                self.resume()
            elif word == C.POLICY_CONTROL_HOLD:
                self.hold()
            else:
                self._logger.warning("unknown control word %r (use %r or %r)", word, C.POLICY_CONTROL_RESUME, C.POLICY_CONTROL_HOLD)
        except Exception as exc:  # noqa: BLE001 (report, keep serving)
            self._logger.error("control %r refused: %s", word, exc)

    # -- observation --------------------------------------------------------------------------------
    def build_observation(self, now: float) -> Observation | None:
        """The latest synchronised observation, or None when an input is missing, stale or out of sync, or
        when ``require_instruction`` is set and the instruction is empty or blank.

        Images: slot -> [H, W, 3] uint8; state: [6] joints (+ gripper when configured) in rad; stamp: the
        oldest camera frame's receipt time (``time.monotonic``), i.e. what RTC alignment must assume.
        """
        obs = self._synchronised_inputs(now)
        return None if obs is None or self._instruction_missing(obs.instruction) else obs

    def _gripper_state(self, st, joints: tuple[np.ndarray, float] | None, now: float) -> float:
        """Gripper entry of the state when the arm is the state source: the measured opening from the joint topic
        (``gripper_joint``) while a fresh message carries it, else the arm's gripper output (0/1).  The policies
        learn from the measured opening: it falls gradually while the fingers close and stops above 0 on an
        object; the output jumps to 0 at the command, which reads as "grasped" before the fingers got there."""
        if joints is not None:
            g, stamp = float(joints[0][-1]), joints[1]
            if math.isfinite(g) and now - stamp <= self.cfg.joint_timeout_s + self.cfg.sync_tolerance_s:
                return g
        return float(st.gripper) if math.isfinite(st.gripper) else 0.0

    def _synchronised_inputs(self, now: float) -> Observation | None:
        """``build_observation`` without the instruction check (None: an input is missing, stale or unsynced)."""
        cfg = self.cfg
        with self._latest.lock:
            if any(s not in self._latest.images for s in cfg.camera_slots):
                return None
            images = {s: self._latest.images[s][0] for s in cfg.camera_slots}
            stamps = [self._latest.images[s][1] for s in cfg.camera_slots]
            instruction = self._latest.instruction
            joints = self._latest.joints
        if cfg.state_from_arm:
            st = self.loop.latest_state() if self.loop is not None else None
            if st is None:
                return None
            state = st.q if not cfg.gripper_joint else np.concatenate([st.q, [self._gripper_state(st, joints, now)]])
            joint_stamp = st.stamp
        else:
            if joints is None:
                return None
            state, joint_stamp = joints
            if cfg.gripper_joint and not math.isfinite(state[-1]):
                state = np.concatenate([state[:-1], [0.0]])
        timeout = cfg.camera_timeout_s or math.inf
        if now - min(stamps) > timeout:
            return None
        if max(stamps + [joint_stamp]) - min(stamps + [joint_stamp]) > cfg.sync_tolerance_s and not cfg.state_from_arm:
            return None
        if cfg.state_from_arm and max(stamps) - min(stamps) > cfg.sync_tolerance_s:
            return None
        return Observation(images=images, state=np.asarray(state, dtype=np.float32), instruction=instruction, stamp=min(stamps))

    # -- inference worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        loop = self.loop
        assert loop is not None
        while not self._stop.is_set():
            if not loop.needs_new_chunk():
                self._latest.new_data.wait(0.002)
                self._latest.new_data.clear()
                continue
            obs = self._synchronised_inputs(time.monotonic())  # = build_observation, counting why it is None
            if obs is None:
                self.stats.skipped_unsynced += 1
            elif self._instruction_missing(obs.instruction):
                self.stats.skipped_no_instruction += 1
            else:
                loop.mark_chunk_requested()
                self._infer_and_submit(obs)
                continue
            self._latest.new_data.wait(0.005)
            self._latest.new_data.clear()

    def _infer_and_submit(self, obs: Observation) -> None:
        loop = self.loop
        assert loop is not None and self.runtime is not None
        self._in_flight = True
        t0 = time.perf_counter()
        try:
            chunk: ActionChunk = self.runtime.infer(obs)
        except Exception as exc:  # noqa: BLE001 (any policy failure: stop, report, keep the node alive)
            self.stats.runtime_errors += 1
            self.stats.last_error = repr(exc)
            self._logger.error("policy call failed: %r; arm held (no command until a new chunk)", exc)
            loop.hold()
            return
        finally:
            self._in_flight = False
        self.stats.inferences += 1
        self.stats.latency_ms.append(float(chunk.timing_ms.get("total", (time.perf_counter() - t0) * 1e3)))
        actions = np.asarray(chunk.actions)
        width = C.UR_NUM_JOINTS + (1 if self.cfg.gripper_joint else 0)
        if actions.ndim != 2 or actions.shape[1] < width:
            self.stats.runtime_errors += 1
            self.stats.last_error = f"chunk shape {actions.shape}, need [H, >= {width}]"
            self._logger.error("policy returned actions of shape %s; need [H, >= %d]; arm held", actions.shape, width)
            loop.hold()
            return
        actions = actions[:, :width].astype(np.float64)
        if self.cfg.gripper_joint:
            actions[:, -1] = np.clip(actions[:, -1], 0.0, 1.0) if np.all(np.isfinite(actions[:, -1])) else actions[:, -1]
        try:
            ok = loop.submit_chunk(ActionChunk(actions=actions, stamp=obs.stamp, timing_ms=chunk.timing_ms))
        except SafetyViolation as exc:
            self.stats.nonfinite_chunks += 1
            self.stats.last_error = str(exc)
            self._logger.error("chunk rejected by safety (%s): arm stopped, fault latched; send 'resume' to recover", exc)
            return
        if ok:
            self.stats.chunks_accepted += 1
        else:
            self.stats.chunks_rejected += 1
        names = list(self.cfg.joint_names) + ([self.cfg.gripper_joint] if self.cfg.gripper_joint else [])
        if self._stop.is_set() or self.node.is_shutdown:
            return
        self._chunk_pub.publish(chunk_to_trajectory(actions, names, 1.0 / self.cfg.policy_rate_hz, stamp_ns=self.node.now_ns()))
        self.stats.chunks_published += 1

    # -- diagnostics --------------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, dict]:
        """``{status name: {level, message, values}}`` for ``diagnostics_from_dict``."""
        lat = self.stats.latency()
        waiting = self.waiting_for_instruction
        policy_values = {
            "latency_p50_ms": lat["p50"], "latency_p95_ms": lat["p95"], "latency_max_ms": lat["max"],
            "inferences": self.stats.inferences, "chunks_published": self.stats.chunks_published,
            "chunks_accepted": self.stats.chunks_accepted, "chunks_rejected": self.stats.chunks_rejected,
            "nonfinite_chunks": self.stats.nonfinite_chunks, "runtime_errors": self.stats.runtime_errors,
            "skipped_unsynced": self.stats.skipped_unsynced, "inference_in_flight": int(self._in_flight),
            "skipped_no_instruction": self.stats.skipped_no_instruction,
            "waiting_for_instruction": int(waiting), "last_error": self.stats.last_error, "state": self.state,
        }
        level = "error" if self.stats.runtime_errors or self.stats.nonfinite_chunks else "warn" if waiting else "ok"
        message = self.state
        if waiting:
            message += f": waiting for an instruction on {self.cfg.instruction_topic} (no policy call until one arrives)"
        out = {C.DIAG_POLICY: {"level": level, "message": message, "values": policy_values}}
        if self.loop is not None:
            rep = self.loop.report()
            values: dict[str, Any] = dict(rep.flat())
            sched = rep.scheduler
            values["queue_depth"] = int(self._in_flight)  # policy calls waiting / running (one worker: 0 or 1)
            values["scheduler.chunks_received"] = sched.get("chunks_received", 0)
            values["scheduler.latency_estimate_s"] = sched.get("latency_estimate_s", math.nan)
            values["arm"] = self.cfg.effective_arm
            fault = self.loop.fault
            out[C.DIAG_CONTROL_LOOP] = {"level": "error" if fault is not None else "ok",
                                        "message": "" if fault is None else f"fault: {fault.reason}: {fault.detail}", "values": values}
        return out

    def publish_diagnostics(self) -> None:
        """Publish ``diagnostics()`` as a DiagnosticArray (no-op once the node is shut down)."""
        if self._diag_pub is None or self.node.is_shutdown:
            return
        msg = diagnostics_from_dict(self.diagnostics(), stamp_ns=self.node.now_ns())
        try:
            self._diag_pub.publish(msg)
        except RuntimeError as exc:  # the node shut down between the check and the publish
            self._logger.debug("diagnostics not published: %s", exc)


# ---------------------------------------------------------------------------------------------------
# console entry point
# ---------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``policy_node`` console entry (``--ros-args -p name:=value --params-file f.yaml`` on both backends).

    Exit status: 0 after a clean stop (signal, ``run_duration_s``), 2 for bad parameters, 1 on errors.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = make_node(C.POLICY_NODE_NAME, argv=list(sys.argv[1:] if argv is None else argv))
    pn: PolicyNode | None = None
    try:
        try:
            cfg = PolicyNodeConfig.from_node(node)
        except ValueError as exc:
            node.get_logger().error("bad parameters: %s", exc)
            return 2
        pn = PolicyNode(node, cfg)
        if cfg.autostart:
            pn.configure()
            pn.activate()
        stop = threading.Event()

        def _stop_all() -> None:
            stop.set()
            pn.deactivate()  # worker and loop first (arm stopped), then the node
            if not node.is_shutdown:
                pn.publish_diagnostics()  # the final report
            node.shutdown()

        def _on_signal(signum: int, _frame: object) -> None:
            node.get_logger().info("signal %d: shutting down", signum)
            _stop_all()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
        if cfg.run_duration_s > 0:
            timer = threading.Timer(cfg.run_duration_s, _stop_all)
            timer.daemon = True
            timer.start()
        node.spin()
        return 0
    except Exception:  # noqa: BLE001 (log, then the finally stops the arm)
        node.get_logger().exception("policy node failed")
        return 1
    finally:
        if pn is not None:
            if not node.is_shutdown:
                pn.publish_diagnostics()
            pn.shutdown()
            if pn.loop is not None:
                node.get_logger().info("final loop report: %s", pn.loop.report().flat())
        else:
            node.shutdown()


if __name__ == "__main__":
    sys.exit(main())
