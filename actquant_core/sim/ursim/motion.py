"""The controller's joint trajectory generator: servoj / speedj / movej / stopj as one state machine.

Each controller cycle ``step(dt)`` advances the *commanded* joint state (position q [6], velocity qd [6],
acceleration qdd [6]); the backend (the plant) then tracks that command.  Modes:

- ``servo``: ``servoj(q, t, lookahead_time, gain)``.  A first-order follower of the latest target with
  time constant ``tau = lookahead_time * 300 / gain`` (so the ur_rtde defaults 0.1 s / 300 give 0.1 s, a
  stiffer gain a shorter lag; never below two cycles), with the speed capped so that the joint can still
  brake within the remaining distance (no overshoot), and the joint speed / acceleration limits of the
  model.  Like the real servoj it lags a streamed trajectory by roughly the lookahead time and settles
  on a held target.
- ``speed``: ``speedj(qd, a)``: ramps the joint velocity towards qd with acceleration a and keeps it
  (the control script re-issues speedj in a loop until speedStop).
- ``move``: ``movej(q, v, a)``: a synchronised trapezoidal profile — the joint with the longest way runs
  at v / a, the others are scaled so all arrive together.  Starts from the current commanded position.
- ``stop``: decelerate every joint to rest with the given deceleration (stopj / servoStop / speedStop and
  the safety stops), then ``idle``.
- ``idle``: hold position.

Joint positions are clamped to the model's limits (the joint's velocity is zeroed there).
"""

from __future__ import annotations

import math

import numpy as np

from actquant_core.sim.ursim.config import N_JOINTS, UrModel

MODE_IDLE = "idle"
MODE_SERVO = "servo"
MODE_SPEED = "speed"
MODE_MOVE = "move"
MODE_STOP = "stop"

SERVO_REFERENCE_GAIN = 300.0  # gain at which tau equals the lookahead time
MIN_TAU_CYCLES = 2.0


def _vec6(x: object, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=float).reshape(-1)
    if v.shape != (N_JOINTS,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{what} must be {N_JOINTS} finite floats, got {x!r}")
    return v


class JointMotion:
    """Commanded joint trajectory of one arm.

    Args:
        model: limits (v_max, a_max, q_min, q_max).
        q0: initial joint positions [6] (rad).
    """

    def __init__(self, model: UrModel, q0: np.ndarray) -> None:
        self._v_max = np.asarray(model.v_max, dtype=float)
        self._a_max = np.asarray(model.a_max, dtype=float)
        self._q_min = np.asarray(model.q_min, dtype=float)
        self._q_max = np.asarray(model.q_max, dtype=float)
        self.q = _vec6(q0, "q0").copy()
        self.qd = np.zeros(N_JOINTS)
        self.qdd = np.zeros(N_JOINTS)
        self.mode = MODE_IDLE
        # servo
        self._servo_target = self.q.copy()
        self._servo_tau = 0.1
        # speed
        self._speed_target = np.zeros(N_JOINTS)
        self._speed_acc = 1.0
        # move
        self._move_q0 = self.q.copy()
        self._move_dq = np.zeros(N_JOINTS)
        self._move_dist = 0.0
        self._move_v = 1.0
        self._move_a = 1.0
        self._move_t = 0.0
        self._move_T = 0.0
        self._move_t_acc = 0.0
        # stop
        self._stop_decel = 1.0

    # ---- commands ------------------------------------------------------------------------------------
    def reset(self, q: np.ndarray) -> None:
        """Teleport: hold at q [6] with zero velocity."""
        self.q = _vec6(q, "reset q").copy()
        self.qd[:] = 0.0
        self.qdd[:] = 0.0
        self.mode = MODE_IDLE

    def servo(self, q_target: np.ndarray, time_s: float, lookahead_s: float, gain: float, dt: float) -> None:
        """Set / update the servo target (servoj).  ``time_s`` is accepted for completeness (the follower
        runs every cycle regardless)."""
        del time_s
        self._servo_target = np.clip(_vec6(q_target, "servoj q"), self._q_min, self._q_max)
        tau = float(lookahead_s) * SERVO_REFERENCE_GAIN / max(float(gain), 1e-6)
        self._servo_tau = max(tau, MIN_TAU_CYCLES * dt)
        self.mode = MODE_SERVO

    def speed(self, qd_target: np.ndarray, acc: float) -> None:
        """Ramp to joint velocity qd_target [6] with acceleration acc (speedj)."""
        self._speed_target = np.clip(_vec6(qd_target, "speedj qd"), -self._v_max, self._v_max)
        self._speed_acc = max(float(acc), 1e-6)
        self.mode = MODE_SPEED

    def move(self, q_goal: np.ndarray, v: float, a: float) -> None:
        """Start a synchronised trapezoidal joint move to q_goal [6] (movej); non-blocking."""
        q_goal = np.clip(_vec6(q_goal, "movej q"), self._q_min, self._q_max)
        dq = q_goal - self.q
        dist = float(np.max(np.abs(dq)))
        v = float(min(max(v, 1e-6), float(np.min(self._v_max))))
        a = float(max(a, 1e-6))
        self._move_q0 = self.q.copy()
        self._move_dq = dq
        self._move_dist = dist
        self._move_t = 0.0
        if dist < 1e-12:
            self._move_T = 0.0
            self._move_t_acc = 0.0
        elif dist >= v * v / a:
            self._move_t_acc = v / a
            self._move_T = dist / v + v / a
        else:
            self._move_t_acc = math.sqrt(dist / a)
            v = a * self._move_t_acc
            self._move_T = 2.0 * self._move_t_acc
        self._move_v = v
        self._move_a = a
        self.qd[:] = 0.0
        self.mode = MODE_MOVE

    def stop(self, decel: float) -> None:
        """Decelerate to rest with decel (rad/s^2) (stopj); a no-op when already idle."""
        if self.mode == MODE_IDLE:
            return
        self._stop_decel = max(float(decel), 1e-6)
        self.mode = MODE_STOP

    @property
    def is_idle(self) -> bool:
        return self.mode == MODE_IDLE

    # ---- integration ---------------------------------------------------------------------------------
    def _move_profile(self, t: float) -> tuple[float, float, float]:
        """Leading-axis distance s, speed, acceleration at time t of the current move."""
        a, v, T, ta = self._move_a, self._move_v, self._move_T, self._move_t_acc
        if t <= 0.0:
            return 0.0, 0.0, 0.0
        if t >= T:
            return self._move_dist, 0.0, 0.0
        if t < ta:
            return 0.5 * a * t * t, a * t, a
        if t <= T - ta:
            return 0.5 * a * ta * ta + v * (t - ta), v, 0.0
        tr = T - t
        return self._move_dist - 0.5 * a * tr * tr, a * tr, -a

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance one controller cycle of dt seconds; returns copies of (q, qd, qdd), each [6]."""
        qd_prev = self.qd.copy()
        if self.mode == MODE_SERVO:
            e = self._servo_target - self.q
            # speed from which the joint can still stop within |e| at a_max, in discrete time
            # (v dt + v^2 / (2 a) <= |e|), so the follower never overshoots a held target
            a_dt = self._a_max * dt
            v_brake = -a_dt + np.sqrt(a_dt * a_dt + 2.0 * self._a_max * np.abs(e))
            mag = np.minimum(np.abs(e) / self._servo_tau, v_brake)
            qd_des = np.sign(e) * np.minimum(mag, self._v_max)
            dv = np.clip(qd_des - self.qd, -self._a_max * dt, self._a_max * dt)
            self.qd = self.qd + dv
            step = self.qd * dt
            # never step past the target
            over = np.abs(step) > np.abs(e)
            step = np.where(over, e, step)
            self.qd = np.where(over, e / dt, self.qd)
            self.q = self.q + step
        elif self.mode == MODE_SPEED:
            acc = np.minimum(self._speed_acc, self._a_max)
            dv = np.clip(self._speed_target - self.qd, -acc * dt, acc * dt)
            self.qd = np.clip(self.qd + dv, -self._v_max, self._v_max)
            self.q = self.q + self.qd * dt
        elif self.mode == MODE_MOVE:
            self._move_t += dt
            s, sd, _ = self._move_profile(self._move_t)
            unit = self._move_dq / self._move_dist if self._move_dist > 0 else np.zeros(N_JOINTS)
            self.q = self._move_q0 + unit * s
            self.qd = unit * sd
            if self._move_t >= self._move_T:
                self.q = self._move_q0 + self._move_dq
                self.qd[:] = 0.0
                self.mode = MODE_IDLE
        elif self.mode == MODE_STOP:
            dv = np.clip(-self.qd, -self._stop_decel * dt, self._stop_decel * dt)
            qd_new = self.qd + dv
            self.q = self.q + 0.5 * (self.qd + qd_new) * dt
            self.qd = qd_new
            if not np.any(self.qd):
                self.mode = MODE_IDLE
        else:
            self.qd[:] = 0.0
        clipped = (self.q < self._q_min) | (self.q > self._q_max)
        if np.any(clipped):
            self.q = np.clip(self.q, self._q_min, self._q_max)
            self.qd = np.where(clipped, 0.0, self.qd)
        self.qdd = (self.qd - qd_prev) / dt
        return self.q.copy(), self.qd.copy(), self.qdd.copy()
