"""``SimArm``: the ``Arm`` protocol on a ``UR3World`` (no RTDE in between).

Two clocks:
  * ``realtime=False`` (default, deterministic): every ``send`` ramps the target over one controller
    period and advances physics by that period, so the control loop *is* the simulation clock.
  * ``realtime=True``: a background thread advances physics at wall-clock pace at ``control_rate_hz``;
    ``send`` only sets the target (as servoJ does on the real robot).

``send`` clips the joint target to the joint limits and the per-period step to the joint speed limits
(rad/s * period), clips the gripper to [0, 1], and returns exactly what it commanded.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from actquant_core.robot.arm import ArmState, JointCommand
from actquant_core.sim.world import UR3World

log = logging.getLogger(__name__)


class SimArm:
    """Simulated UR arm implementing ``actquant_core.robot.arm.Arm``.

    Args:
        world: the world to drive (a new ``UR3World(model)`` when None).
        model: "ur3" (125 Hz) or "ur3e" (500 Hz); ignored when ``world`` is given.
        control_rate_hz: servo rate; default the model's controller rate.
        realtime: step physics in a background thread at wall-clock pace (see module docstring).
    """

    def __init__(self, world: UR3World | None = None, model: str = "ur3", control_rate_hz: float | None = None,
                 realtime: bool = False) -> None:
        self.world = world if world is not None else UR3World(model)
        self.control_rate_hz = float(control_rate_hz or self.world.control_rate_hz)
        if not 1.0 <= self.control_rate_hz <= 1000.0:
            raise ValueError(f"control_rate_hz must be in [1, 1000], got {self.control_rate_hz}")
        self.period = 1.0 / self.control_rate_hz
        self.realtime = realtime
        self._lower = np.array(self.world.spec.lower)
        self._upper = np.array(self.world.spec.upper)
        self._max_step = np.array(self.world.spec.velocity_limits) * self.period
        self._connected = False
        self._last_q: np.ndarray | None = None
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()

    # ------------------------------------------------------------------ Arm protocol
    def connect(self) -> None:
        if self._connected:
            return
        self._last_q = self.world.q
        self.world.hold()
        self._connected = True
        if self.realtime:
            self._stop_evt.clear()
            self._thread = threading.Thread(target=self._run, name="simarm-physics", daemon=True)
            self._thread.start()

    def observe(self, timeout_s: float = 0.1) -> ArmState:
        w = self.world
        with w.lock:
            q, qd, g = w.q, w.qd, w.gripper
        faults = () if self._connected else ("disconnected",)
        return ArmState(q=q, qd=qd, stamp=time.monotonic(), gripper=g, faults=faults)

    def send(self, cmd: JointCommand) -> JointCommand:
        """Clip and send one servo command; returns the command actually sent."""
        if not self._connected:
            raise RuntimeError("SimArm.send called before connect()")
        q = np.asarray(cmd.q, dtype=np.float64)
        if q.shape != (6,):
            raise ValueError(f"JointCommand.q must have shape (6,), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"JointCommand.q must be finite, got {q}")
        q = np.clip(q, self._lower, self._upper)
        assert self._last_q is not None
        q = self._last_q + np.clip(q - self._last_q, -self._max_step, self._max_step)
        g = cmd.gripper
        if not math.isnan(g):
            g = self.world.set_gripper(g)
        self.world.set_joint_target(q, duration=self.period)
        self._last_q = q
        if not self.realtime:
            self.world.step(self.period)
        return JointCommand(q=q.copy(), gripper=g)

    def stop(self) -> None:
        """Hold the current position. Idempotent."""
        try:
            self.world.hold()
            self._last_q = self.world.q
        except Exception:  # never raise from stop()
            log.exception("SimArm.stop failed")

    def disconnect(self) -> None:
        self.stop()
        self._connected = False
        if self._thread is not None:
            self._stop_evt.set()
            self._thread.join(timeout=2.0)
            self._thread = None

    # ------------------------------------------------------------------ realtime stepping
    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop_evt.is_set():
            self.world.step(self.period)
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop_evt.wait(delay)
            else:
                next_t = time.monotonic()  # fell behind: do not try to catch up
