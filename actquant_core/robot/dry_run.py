"""``DryRunArm``: an ``Arm`` that never talks to hardware.

It records every command and every stop, and integrates a simple model of a position-servoed arm
(first-order lag towards the last target with time constant ``tau_s``, joint speed capped at
``qd_max``), so that closed-loop code sees plausible joint states.  Faults can be injected for tests
(``inject_fault``, ``freeze_joint_data``, ``fail_next``), which makes it the standard test double for
the control loop.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

from actquant_core import constants as C
from actquant_core.robot.arm import ArmState, JointCommand
from actquant_core.robot.clock import Clock, MonotonicClock
from actquant_core.robot.errors import ArmConnectionError, ArmFaultError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DryRunConfig:
    """Settings of ``DryRunArm``.

    Attributes:
        control_rate_hz: the rate the control loop should run at (125 = UR3 CB3, 500 = UR3e).
        initial_q: joint positions [6] at start (rad).
        tau_s: time constant of the first-order servo model (s); 0 = the arm jumps to the target.
        qd_max: joint speed cap of the model (rad/s).
        max_records: commands kept in ``commands`` (oldest dropped).
        log_every: log one command out of this many at DEBUG level (0 = never).
    """

    control_rate_hz: float = C.UR_CONTROL_RATE_HZ[C.UR_TYPE_UR3]
    initial_q: tuple[float, ...] = (0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0)
    tau_s: float = 0.02
    qd_max: float = C.RTDE_MAX_JOINT_SPEED
    max_records: int = 200_000
    log_every: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_rate_hz) and 1 <= self.control_rate_hz <= 2000):
            raise ValueError(f"control_rate_hz={self.control_rate_hz!r} must be in [1, 2000]")
        if len(self.initial_q) != C.UR_NUM_JOINTS or not all(math.isfinite(v) for v in self.initial_q):
            raise ValueError(f"initial_q must be {C.UR_NUM_JOINTS} finite values, got {self.initial_q!r}")
        object.__setattr__(self, "initial_q", tuple(float(v) for v in self.initial_q))
        if not (math.isfinite(self.tau_s) and self.tau_s >= 0):
            raise ValueError(f"tau_s={self.tau_s!r} must be >= 0")
        if not self.qd_max > 0:
            raise ValueError(f"qd_max={self.qd_max!r} must be > 0")
        if not self.max_records >= 1:
            raise ValueError(f"max_records={self.max_records!r} must be >= 1")
        if not self.log_every >= 0:
            raise ValueError(f"log_every={self.log_every!r} must be >= 0")


@dataclass(frozen=True)
class SentRecord:
    """One command as the dry-run arm received it: clock time and the command sent."""

    time: float
    cmd: JointCommand


class DryRunArm:
    """Records commands, integrates a first-order arm model; never touches hardware.  Thread-safe."""

    def __init__(self, config: DryRunConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or DryRunConfig()
        self.control_rate_hz = self.config.control_rate_hz
        self.clock = clock or MonotonicClock()
        self._lock = threading.Lock()
        self._q = np.asarray(self.config.initial_q, dtype=np.float64)
        self._qd = np.zeros(C.UR_NUM_JOINTS)
        self._target = self._q.copy()
        self._gripper = math.nan
        self._t = self.clock.now()
        self._connected = False
        self._faults: set[str] = set()
        self._frozen_stamp: float | None = None
        self._fail_next: dict[str, BaseException] = {}
        self.commands: collections.deque[SentRecord] = collections.deque(maxlen=self.config.max_records)
        self.stop_times: list[float] = []
        self.n_sent = 0

    # -- test hooks -------------------------------------------------------------------------------
    def inject_fault(self, name: str) -> None:
        """Add an active fault (e.g. ``protective_stop``); the arm stops and refuses commands."""
        with self._lock:
            self._integrate(self.clock.now())
            self._faults.add(name)
            self._target = self._q.copy()
            self._qd[:] = 0.0

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def freeze_joint_data(self, frozen: bool = True) -> None:
        """Make ``observe`` keep returning the last state and stamp (a stalled data stream)."""
        with self._lock:
            self._frozen_stamp = self._t if frozen else None

    def fail_next(self, method: str, exc: BaseException) -> None:
        """Make the next call of ``method`` ("observe", "send", "stop") raise ``exc``."""
        if method not in ("observe", "send", "stop"):
            raise ValueError(f"method must be observe|send|stop, got {method!r}")
        with self._lock:
            self._fail_next[method] = exc

    def _maybe_fail(self, method: str) -> None:
        exc = self._fail_next.pop(method, None)
        if exc is not None:
            raise exc

    # -- model ------------------------------------------------------------------------------------
    def _integrate(self, now: float) -> None:
        dt = now - self._t
        if dt <= 0:
            return
        cfg = self.config
        if cfg.tau_s > 0:
            dq = (self._target - self._q) * (1.0 - math.exp(-dt / cfg.tau_s))
        else:
            dq = self._target - self._q
        dq = np.clip(dq, -cfg.qd_max * dt, cfg.qd_max * dt)
        self._q = self._q + dq
        self._qd = dq / dt
        self._t = now

    # -- Arm protocol -----------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            self._connected = True
            self._t = self.clock.now()
        log.info("dry-run arm connected (no hardware) at %.0f Hz", self.control_rate_hz)

    def observe(self, timeout_s: float = 0.1) -> ArmState:
        with self._lock:
            self._maybe_fail("observe")
            if self._frozen_stamp is not None:
                return ArmState(q=self._q.copy(), qd=self._qd.copy(), stamp=self._frozen_stamp,
                                gripper=self._gripper, faults=tuple(sorted(self._faults)))
            self._integrate(self.clock.now())
            faults = set(self._faults)
            if not self._connected:
                faults.add(C.FAULT_DISCONNECTED)
            return ArmState(q=self._q.copy(), qd=self._qd.copy(), stamp=self._t,
                            gripper=self._gripper, faults=tuple(sorted(faults)))

    def send(self, cmd: JointCommand) -> JointCommand:
        q = np.asarray(cmd.q, dtype=np.float64).reshape(-1)
        if q.shape != (C.UR_NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"DryRunArm.send needs 6 finite joint targets, got {cmd.q!r}")
        with self._lock:
            self._maybe_fail("send")
            if not self._connected:
                raise ArmConnectionError("dry-run arm is not connected")
            if self._faults:
                raise ArmFaultError(f"dry-run arm refuses commands: faults {sorted(self._faults)}")
            now = self.clock.now()
            self._integrate(now)
            g = float(cmd.gripper)
            if math.isfinite(g):
                g = min(max(g, 0.0), 1.0)
                self._gripper = g
            sent = JointCommand(q=q.copy(), gripper=g)
            self._target = q.copy()
            self.commands.append(SentRecord(now, sent))
            self.n_sent += 1
            if self.config.log_every and self.n_sent % self.config.log_every == 0:
                log.debug("dry-run command %d at %.4f: q=%s gripper=%.3f", self.n_sent, now, np.round(q, 4), g)
        return sent

    def stop(self) -> None:
        with self._lock:
            try:
                self._maybe_fail("stop")
            except BaseException as exc:  # the protocol: stop never raises
                log.error("dry-run stop hook raised %r (ignored, arm held anyway)", exc)
            now = self.clock.now()
            self._integrate(now)
            self._target = self._q.copy()
            self._qd[:] = 0.0
            self.stop_times.append(now)

    def disconnect(self) -> None:
        self.stop()
        with self._lock:
            self._connected = False
        log.info("dry-run arm disconnected after %d commands", self.n_sent)

    # -- inspection -------------------------------------------------------------------------------
    @property
    def q(self) -> np.ndarray:
        with self._lock:
            return self._q.copy()

    @property
    def moving(self) -> bool:
        """True while the model is still heading to a target different from where it is."""
        with self._lock:
            return bool(np.any(np.abs(self._target - self._q) > 1e-12))

    def __enter__(self) -> "DryRunArm":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
