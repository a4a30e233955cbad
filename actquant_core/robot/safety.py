"""Safety layer between the chunk scheduler and the arm.

``Safety`` is the last software check before a servo command leaves the process:

- ``check_chunk(actions)`` rejects a whole action chunk with NaN/inf (or a bad shape) by raising
  ``SafetyViolation``; nothing of such a chunk may ever be executed.
- ``filter(cmd, state, dt)`` clamps one servo command: joint position limits, then the command's
  velocity relative to the previous *command* (servo targets lead the measured position, so the
  previous target, not the measurement, is the reference), then its acceleration, then a hard cap
  on the step per tick; position limits are re-applied last and always win.  A target stream that
  respects the limits passes through unchanged.  When a clamp made the output lag, the desired
  velocity is the target's own (capped) velocity plus a recovery term limited to what can still be
  braked (~sqrt(2 a |lag|)), so the output converges without the limit cycle of a plain second-order
  rate limiter; a target that stops abruptly while the output moves at v overshoots by at most
  v^2 / (2 a_max).  The scheduler's blending keeps plans smooth; this is a last line, not a planner.
- ``check_inputs(now, joint_stamp, camera_stamp)`` and ``check_watchdog(now)`` return a
  ``StopDecision``: stale joint data, stale camera data or an expired watchdog (no new chunk for
  ``watchdog_timeout_s`` while executing) mean "stop now".

Every intervention is recorded as a ``SafetyEvent`` (kind, joint, value, limit, time) in a bounded
history with per-kind counters, for diagnostics.  Kinds are the ``SAFETY_*`` names in
``actquant_core.constants``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from actquant_core import constants as C
from actquant_core.robot.arm import ArmState, JointCommand

log = logging.getLogger(__name__)

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class SafetyEvent:
    """One safety intervention.

    Attributes:
        kind: one of the ``SAFETY_*`` names in ``actquant_core.constants``.
        joint: joint index 0..5, 6 for the gripper, -1 when the event concerns no single joint.
        value: the offending value (rad, rad/s, rad/s^2, s of staleness, ...).
        limit: the limit it was held to (same unit).
        time: clock time (s) of the event.
        detail: free text (e.g. the fault names), may be empty.
    """

    kind: str
    joint: int
    value: float
    limit: float
    time: float
    detail: str = ""

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "joint": self.joint,
            "value": self.value,
            "limit": self.limit,
            "time": self.time,
            "detail": self.detail,
        }


class SafetyViolation(RuntimeError):
    """A command or chunk that must not be executed at all; carries the events that caused it."""

    def __init__(self, message: str, events: tuple[SafetyEvent, ...]) -> None:
        super().__init__(message)
        self.events = events


@dataclass(frozen=True)
class StopDecision:
    """Result of an input / watchdog check.

    Attributes:
        stop: True when motion must stop now.
        events: the events behind the decision (empty when ``stop`` is False).
    """

    stop: bool
    events: tuple[SafetyEvent, ...] = ()

    @property
    def reason(self) -> str:
        return ",".join(e.kind for e in self.events)


def _clip(x: np.ndarray, limit: np.ndarray | float) -> np.ndarray:
    """Symmetric clip to [-limit, limit] (cheaper than np.clip on 6-vectors)."""
    return np.minimum(np.maximum(x, -limit), limit)


def _six(name: str, values: tuple[float, ...]) -> tuple[float, ...]:
    if len(values) != C.UR_NUM_JOINTS:
        raise ValueError(f"{name} must have {C.UR_NUM_JOINTS} entries, got {len(values)}: {values!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class SafetyConfig:
    """Limits enforced by ``Safety``.  Defaults are a UR3 (CB3) with ur_rtde's speed cap.

    Attributes:
        q_min: lower joint position limits [6] in rad (UR3: -2pi, elbow -pi).
        q_max: upper joint position limits [6] in rad (UR3: +2pi, elbow +pi).
        qd_max: joint velocity limits [6] in rad/s.  UR3 joints allow 3.14 (base/shoulder/elbow) and
            6.28 (wrists) rad/s, but ur_rtde caps joint speed at 3.14, so every default is 3.14;
            values above ``RTDE_MAX_JOINT_SPEED`` are rejected.
        qdd_max: joint acceleration limit in rad/s^2 (all joints), at most ur_rtde's 40.
        max_step_rad: hard cap on any joint's command change per servo tick (rad), independent of
            ``dt`` (protects against a long ``dt`` after a loop hiccup).
        gripper_min: lowest gripper command (0 = closed).
        gripper_max: highest gripper command (1 = open).
        joint_timeout_s: joint data older than this (s) means stop.
        camera_timeout_s: camera data older than this (s) means stop while executing; None
            disables the camera check (an arm run without cameras, e.g. replay).
        watchdog_timeout_s: no new chunk for this long (s) while executing means stop (inference
            overrun); None disables it.
        history: how many recent events to keep for diagnostics.
    """

    q_min: tuple[float, ...] = (-_TWO_PI, -_TWO_PI, -math.pi, -_TWO_PI, -_TWO_PI, -_TWO_PI)
    q_max: tuple[float, ...] = (_TWO_PI, _TWO_PI, math.pi, _TWO_PI, _TWO_PI, _TWO_PI)
    qd_max: tuple[float, ...] = (3.14, 3.14, 3.14, 3.14, 3.14, 3.14)
    qdd_max: float = 10.0
    max_step_rad: float = 0.05
    gripper_min: float = 0.0
    gripper_max: float = 1.0
    joint_timeout_s: float = 0.05
    camera_timeout_s: float | None = 0.5
    watchdog_timeout_s: float | None = 1.0
    history: int = 1000

    def __post_init__(self) -> None:
        q_min = _six("q_min", tuple(self.q_min))
        q_max = _six("q_max", tuple(self.q_max))
        qd_max = _six("qd_max", tuple(self.qd_max))
        object.__setattr__(self, "q_min", q_min)
        object.__setattr__(self, "q_max", q_max)
        object.__setattr__(self, "qd_max", qd_max)
        for j, (lo, hi) in enumerate(zip(q_min, q_max)):
            if not lo < hi:
                raise ValueError(f"joint {j}: q_min ({lo}) must be < q_max ({hi})")
        for j, v in enumerate(qd_max):
            if not 0.0 < v <= C.RTDE_MAX_JOINT_SPEED:
                raise ValueError(
                    f"qd_max[{j}]={v} must be in (0, {C.RTDE_MAX_JOINT_SPEED}] rad/s (ur_rtde speed cap)"
                )
        if not 0.0 < self.qdd_max <= C.RTDE_MAX_JOINT_ACCEL:
            raise ValueError(f"qdd_max={self.qdd_max!r} must be in (0, {C.RTDE_MAX_JOINT_ACCEL}] rad/s^2")
        if not 0.0 < self.max_step_rad <= 0.5:
            raise ValueError(f"max_step_rad={self.max_step_rad!r} must be in (0, 0.5] rad")
        if not self.gripper_min < self.gripper_max:
            raise ValueError(f"gripper_min ({self.gripper_min}) must be < gripper_max ({self.gripper_max})")
        if not self.joint_timeout_s > 0:
            raise ValueError(f"joint_timeout_s={self.joint_timeout_s!r} must be > 0")
        if self.camera_timeout_s is not None and not self.camera_timeout_s > 0:
            raise ValueError(f"camera_timeout_s={self.camera_timeout_s!r} must be > 0 or None")
        if self.watchdog_timeout_s is not None and not self.watchdog_timeout_s > 0:
            raise ValueError(f"watchdog_timeout_s={self.watchdog_timeout_s!r} must be > 0 or None")
        if not self.history >= 1:
            raise ValueError(f"history={self.history!r} must be >= 1")

    @classmethod
    def for_ur_type(cls, ur_type: str, **overrides) -> "SafetyConfig":
        """Defaults for ``ur3`` or ``ur3e`` (same joint limits; ur_rtde caps speed for both)."""
        if ur_type not in C.UR_TYPES:
            raise ValueError(f"ur_type must be one of {C.UR_TYPES}, got {ur_type!r}")
        return cls(**overrides)


@dataclass
class _FilterState:
    q: np.ndarray | None = None  # previous output command [6]
    qd: np.ndarray = field(default_factory=lambda: np.zeros(C.UR_NUM_JOINTS))  # its velocity [6]
    q_in: np.ndarray | None = None  # previous (position-clamped) input target [6]


class Safety:
    """Stateful safety filter; see the module docstring.  Thread-safe (one internal lock)."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        self._q_min = np.asarray(self.config.q_min, dtype=np.float64)
        self._q_max = np.asarray(self.config.q_max, dtype=np.float64)
        self._qd_max = np.asarray(self.config.qd_max, dtype=np.float64)
        self._state = _FilterState()
        self._events: collections.deque[SafetyEvent] = collections.deque(maxlen=self.config.history)
        self._counts: collections.Counter[str] = collections.Counter()
        self._watchdog_kick: float | None = None
        self._lock = threading.Lock()

    # -- diagnostics -------------------------------------------------------------------------------
    @property
    def events(self) -> list[SafetyEvent]:
        """The most recent events, oldest first."""
        with self._lock:
            return list(self._events)

    @property
    def counts(self) -> dict[str, int]:
        """Number of events per kind since construction."""
        with self._lock:
            return dict(self._counts)

    def _record(self, events: list[SafetyEvent]) -> None:
        for e in events:
            self._events.append(e)
            self._counts[e.kind] += 1

    def record(self, event: SafetyEvent) -> None:
        """Record an event raised elsewhere (e.g. an arm fault seen by the control loop)."""
        with self._lock:
            self._record([event])

    # -- chunks ------------------------------------------------------------------------------------
    def check_chunk(self, actions: np.ndarray, now: float = 0.0) -> None:
        """Reject a chunk that must not be executed.

        Args:
            actions: [H, A] joint position targets (A = 6 joints, or 7 with the gripper last).
            now: clock time for the event record.

        Raises:
            SafetyViolation: non-finite values (kind ``nonfinite_action``; one event per bad joint
                column) or a shape that is not [H >= 1, 6 | 7] (kind ``bad_shape``).
        """
        a = np.asarray(actions)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] not in (C.UR_NUM_JOINTS, C.UR_NUM_JOINTS + 1):
            ev = SafetyEvent(C.SAFETY_BAD_SHAPE, -1, float(a.size), float(C.UR_NUM_JOINTS), now,
                             f"shape {a.shape}, expected [H, 6] or [H, 7]")
            with self._lock:
                self._record([ev])
            raise SafetyViolation(f"action chunk has shape {a.shape}; expected [H, 6] or [H, 7]", (ev,))
        bad = ~np.isfinite(a.astype(np.float64, copy=False))
        if bad.any():
            events = []
            for j in np.flatnonzero(bad.any(axis=0)):
                rows = np.flatnonzero(bad[:, j])
                events.append(SafetyEvent(C.SAFETY_NONFINITE, int(j), float(a[rows[0], j]), math.inf, now,
                                          f"{rows.size} non-finite values, first at step {int(rows[0])}"))
            with self._lock:
                self._record(events)
            log.error("rejected action chunk with non-finite values in joints %s", [e.joint for e in events])
            raise SafetyViolation(
                f"action chunk contains {int(bad.sum())} non-finite values (joints {[e.joint for e in events]})",
                tuple(events),
            )

    # -- per-tick filter ---------------------------------------------------------------------------
    def reset(self, q: np.ndarray | None = None) -> None:
        """Forget the previous command (after a stop); the next filter starts from ``q`` at rest."""
        with self._lock:
            self._state = _FilterState(None if q is None else np.asarray(q, dtype=np.float64).copy())

    def filter(self, cmd: JointCommand, current_state: ArmState, dt: float,
               now: float | None = None) -> tuple[JointCommand, list[SafetyEvent]]:
        """Clamp one servo command.

        Args:
            cmd: the scheduler's command (q [6] rad, gripper in [0, 1] or NaN).
            current_state: the latest arm state; its ``q`` is the reference for the first command
                after construction / ``reset``.
            dt: servo period (s) the command will be executed over.
            now: clock time for event records (defaults to ``current_state.stamp``).

        Returns:
            (safe_cmd, events): the clamped command and the events it caused (also recorded).

        Raises:
            SafetyViolation: the command itself is non-finite or not 6 joints (never clamped into
                something "valid").
            ValueError: ``dt`` is not a positive finite number.
        """
        t = current_state.stamp if now is None else now
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite period in s, got {dt!r}")
        q_cmd = np.array(cmd.q, dtype=np.float64).reshape(-1)  # a copy: kept as the next q_in
        if q_cmd.shape != (C.UR_NUM_JOINTS,) or not np.all(np.isfinite(q_cmd)):
            ev = SafetyEvent(C.SAFETY_NONFINITE if q_cmd.shape == (C.UR_NUM_JOINTS,) else C.SAFETY_BAD_SHAPE,
                             -1, math.nan, math.inf, t, f"command q={q_cmd!r}")
            with self._lock:
                self._record([ev])
            raise SafetyViolation(f"servo command is not 6 finite joint positions: {q_cmd!r}", (ev,))
        cfg = self.config
        events: list[SafetyEvent] = []
        with self._lock:
            st = self._state
            if st.q is None:
                q_ref = np.asarray(current_state.q, dtype=np.float64).reshape(-1).copy()
                if q_ref.shape != (C.UR_NUM_JOINTS,) or not np.all(np.isfinite(q_ref)):
                    raise SafetyViolation(f"arm state q is not 6 finite values: {q_ref!r}", ())
                st.q = q_ref
                st.qd = np.zeros(C.UR_NUM_JOINTS)

            # 1. position limits on the target
            q = self._clamp_position(q_cmd, t, events)
            # 2. desired velocity = the target's own velocity (feed-forward, capped) + a lag-recovery
            #    term that can always brake in time: sign(r) * min(|r| / dt, v_b(|r|)) with the discrete
            #    braking speed v_b = sqrt((a dt)^2 + 2 a |r|) - a dt (no overshoot at any rate).  A smooth,
            #    feasible target passes through unchanged; after a clamp the lag is recovered without
            #    overshoot instead of the limit cycle a plain second-order rate limiter falls into.
            if st.q_in is None:
                v_ff = np.zeros(C.UR_NUM_JOINTS)
            else:
                v_ff = _clip((q - st.q_in) / dt, self._qd_max)
            st.q_in = q
            r = q - st.q - v_ff * dt  # residual lag [6]
            a_dt = cfg.qdd_max * dt
            v_brake = np.sqrt(a_dt * a_dt + 2.0 * cfg.qdd_max * np.abs(r)) - a_dt
            v_fb = np.sign(r) * np.minimum(np.abs(r) / dt, v_brake)
            v = v_ff + v_fb
            over = np.abs(v) > self._qd_max
            for j in (np.flatnonzero(over) if over.any() else ()):
                events.append(SafetyEvent(C.SAFETY_VELOCITY_LIMIT, int(j), float(v[j]), float(self._qd_max[j]), t))
            v = _clip(v, self._qd_max)
            # 3. acceleration relative to the previous command's velocity
            a = (v - st.qd) / dt
            over = np.abs(a) > cfg.qdd_max
            for j in (np.flatnonzero(over) if over.any() else ()):
                events.append(SafetyEvent(C.SAFETY_ACCELERATION_LIMIT, int(j), float(a[j]), cfg.qdd_max, t))
            v = st.qd + _clip(a, cfg.qdd_max) * dt
            v = _clip(v, self._qd_max)
            # 4. hard step cap
            step = v * dt
            over = np.abs(step) > cfg.max_step_rad
            for j in (np.flatnonzero(over) if over.any() else ()):
                events.append(SafetyEvent(C.SAFETY_STEP_LIMIT, int(j), float(step[j]), cfg.max_step_rad, t))
            step = _clip(step, cfg.max_step_rad)
            # 5. position limits again (they win over acceleration feasibility)
            q_out = self._clamp_position(st.q + step, t, events)
            st.qd = (q_out - st.q) / dt
            st.q = q_out

            g = float(cmd.gripper)
            if math.isfinite(g) and not cfg.gripper_min <= g <= cfg.gripper_max:
                lim = cfg.gripper_min if g < cfg.gripper_min else cfg.gripper_max
                events.append(SafetyEvent(C.SAFETY_GRIPPER_LIMIT, C.UR_NUM_JOINTS, g, lim, t))
                g = lim
            self._record(events)
        return JointCommand(q=q_out.copy(), gripper=g), events

    def _clamp_position(self, q: np.ndarray, t: float, events: list[SafetyEvent]) -> np.ndarray:
        low = q < self._q_min
        high = q > self._q_max
        if not (low.any() or high.any()):
            return q
        for j in np.flatnonzero(low):
            events.append(SafetyEvent(C.SAFETY_POSITION_LIMIT, int(j), float(q[j]), float(self._q_min[j]), t))
        for j in np.flatnonzero(high):
            events.append(SafetyEvent(C.SAFETY_POSITION_LIMIT, int(j), float(q[j]), float(self._q_max[j]), t))
        return np.minimum(np.maximum(q, self._q_min), self._q_max)

    # -- stop decisions ----------------------------------------------------------------------------
    def check_inputs(self, now: float, joint_stamp: float | None,
                     camera_stamp: float | None = None, check_camera: bool = True) -> StopDecision:
        """Stop when joint data (always) or camera data (when ``check_camera`` and enabled) is stale.

        A stamp of None means "never received" and counts as infinitely old.
        """
        cfg = self.config
        events: list[SafetyEvent] = []
        age = math.inf if joint_stamp is None else now - joint_stamp
        if not age <= cfg.joint_timeout_s:
            events.append(SafetyEvent(C.SAFETY_JOINT_STALE, -1, age, cfg.joint_timeout_s, now))
        if check_camera and cfg.camera_timeout_s is not None:
            age = math.inf if camera_stamp is None else now - camera_stamp
            if not age <= cfg.camera_timeout_s:
                events.append(SafetyEvent(C.SAFETY_CAMERA_STALE, -1, age, cfg.camera_timeout_s, now))
        if events:
            with self._lock:
                self._record(events)
        return StopDecision(bool(events), tuple(events))

    def kick_watchdog(self, now: float) -> None:
        """Mark fresh policy output (a new chunk) at ``now``."""
        with self._lock:
            self._watchdog_kick = now

    def disarm_watchdog(self) -> None:
        """Stop watching (nothing is executing)."""
        with self._lock:
            self._watchdog_kick = None

    def check_watchdog(self, now: float) -> StopDecision:
        """Stop when armed (kicked at least once since the last disarm) and not kicked for the timeout."""
        timeout = self.config.watchdog_timeout_s
        with self._lock:
            kick = self._watchdog_kick
            if timeout is None or kick is None or now - kick <= timeout:
                return StopDecision(False)
            ev = SafetyEvent(C.SAFETY_WATCHDOG, -1, now - kick, timeout, now)
            self._record([ev])
        return StopDecision(True, (ev,))
