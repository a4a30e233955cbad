"""Scripted experts: privileged object poses + damped-least-squares IK -> joint-space actions.

An expert walks through its task's subgoals with a small script per skill (pick, place, open drawer).
Every ``act()`` returns one 7-dim action for one policy period (default 0.1 s): the absolute joint target
q [6] (rad) and the gripper target in [0, 1] (1 open).  The Cartesian set point moves towards the current
waypoint at a bounded speed and is turned into joints by IK seeded with the previous target, so the
joint targets are smooth.  With ``qd_max`` set no joint target moves faster than that (the set point
slows down where the IK would need more), so a UR3 running the node's default limits (``QD_MAX_UR3``) can
follow the demonstrations, and the policies trained on them, without lagging; unset (the default, the
data the bundled small policies were trained on) joints move as fast as the Cartesian speeds need (wrists
up to ~5 rad/s).  Object poses are re-read at the start of every phase, and a failed grasp
(object not lifted) is retried.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from actquant_core.sim.ik import solve_ik, top_down_rotation
from actquant_core.sim.mjcf import BOWL_HEIGHT, CUBE_HALF, GRIPPER_HALF_OPEN, MUG_HALF_HEIGHT
from actquant_core.sim.tasks import FOOTPRINT, REST_Z, OpenDrawer, Place, Task, goal_satisfied

SAFE_Z = 0.17  # travel height of the TCP (m)
FAST = 0.30  # m/s
SLOW = 0.12  # m/s
YAW_RATE = 2.0  # rad/s
QD_MAX_UR3 = 0.9  # rad/s per joint: just under the node's default UR3 limit (config/ur3.yaml qd_max 1.0)
POS_TOL = 0.006  # m: a waypoint counts as reached by the measured TCP
MAX_GRASP_TRIES = 3
GRIP_OPEN = 1.0
GRIP_CLOSED = 0.0
CUBE_GRIP_OPEN = 0.8  # 7.2 cm between the pads for a 4 cm cube: keeps the fingers off neighbours
FINGER_REACH = GRIPPER_HALF_OPEN + 0.012  # finger tip distance from the TCP axis when fully open (m)
DRAWER_GRIP_OPEN = 0.42  # opening that fits between the handle bar and the drawer front
DRAWER_PULL = 0.12


def _yaw_of(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _nearest_equiv(angle: float, ref: float, period: float) -> float:
    """The angle equivalent to ``angle`` modulo ``period`` that is closest to ``ref``."""
    return angle + period * round((ref - angle) / period)


class ScriptedExpert:
    """Expert for one episode of ``task`` in ``world`` (call after ``world.reset``).

    Args:
        world: the ``UR3World``.
        task: the task to solve.
        policy_hz: action rate (Hz).
        qd_max: joint speed cap (rad/s per joint) of the commanded targets; None = uncapped.
    """

    def __init__(self, world, task: Task, policy_hz: float = 10.0, qd_max: float | None = None) -> None:
        if policy_hz <= 0:
            raise ValueError(f"policy_hz must be > 0, got {policy_hz}")
        if qd_max is not None and not qd_max > 0:
            raise ValueError(f"qd_max must be > 0 rad/s or None, got {qd_max}")
        self.qd_max = qd_max
        self.world = world
        self.task = task
        self.dt = 1.0 / policy_hz
        self.q_cmd = world.q
        T = world.tcp_transform()
        self.p_cmd = T[:3, 3].copy()
        self.yaw_cmd = math.atan2(T[1, 1], T[0, 1])  # tool y axis in the xy plane
        self.grip = GRIP_OPEN
        self.done = False
        self.in_motion = False  # the last action moved the set point (not a settle / gripper / hold step)
        self._script = self._run()

    # ------------------------------------------------------------------ public
    def act(self) -> np.ndarray:
        """Next action [7] = joint target q [6] (rad) + gripper target in [0, 1]."""
        try:
            next(self._script)
        except StopIteration:
            self.done = True
            self._hold()
        return np.concatenate([self.q_cmd, [self.grip]]).astype(np.float64)

    # ------------------------------------------------------------------ motion primitives
    def _hold(self) -> None:
        pass  # keep the last command

    def _command(self, p: np.ndarray, yaw: float) -> float:
        """Set the joint target for the set point (``p``, ``yaw``), moving at most ``qd_max`` per joint.

        Returns the fraction (0, 1] of the step from the current set point to (``p``, ``yaw``) taken:
        where the IK solution would move a joint faster than ``qd_max`` the step is shortened (twice,
        then the joint step itself is clipped).
        """
        p = np.asarray(p, dtype=np.float64)
        p0, y0 = self.p_cmd, self.yaw_cmd
        lim = math.inf if self.qd_max is None else self.qd_max * self.dt
        frac = 1.0
        for _ in range(3):
            pf, yf = p0 + frac * (p - p0), y0 + frac * (yaw - y0)
            q, _ = solve_ik(self.world, pf, top_down_rotation(yf), self.q_cmd, iters=15)
            dq = float(np.max(np.abs(q - self.q_cmd)))
            if dq <= lim:
                break
            frac *= 0.97 * lim / dq
        else:
            q = self.q_cmd + np.clip(q - self.q_cmd, -lim, lim)
        self.p_cmd = pf
        self.yaw_cmd = yf
        self.q_cmd = q
        return frac

    def _move(self, target: np.ndarray, yaw: float, speed: float = FAST, settle_steps: int = 15) -> Iterator[None]:
        """Move the set point in a straight line to ``target`` [3] with tool yaw ``yaw``."""
        target = np.asarray(target, dtype=np.float64)
        self.in_motion = True
        while True:
            d = target - self.p_cmd
            dist = float(np.linalg.norm(d))
            dyaw = yaw - self.yaw_cmd
            step = speed * self.dt
            ystep = YAW_RATE * self.dt
            p = target.copy() if dist <= step else self.p_cmd + d * (step / dist)
            y = yaw if abs(dyaw) <= ystep else self.yaw_cmd + math.copysign(ystep, dyaw)
            frac = self._command(p, y)
            yield
            if frac >= 1.0 and dist <= step and abs(dyaw) <= ystep:
                break
        self.in_motion = False
        for _ in range(settle_steps):
            if np.linalg.norm(self.world.tcp_transform()[:3, 3] - target) < POS_TOL:
                break
            yield

    def _gripper(self, value: float, steps: int) -> Iterator[None]:
        self.grip = value
        for _ in range(steps):
            yield

    def _lift(self) -> Iterator[None]:
        above = self.p_cmd.copy()
        above[2] = SAFE_Z
        yield from self._move(above, self.yaw_cmd, speed=FAST, settle_steps=0)

    # ------------------------------------------------------------------ skills
    def _clearance(self, obj: str, p: np.ndarray, yaw: float) -> float:
        """Smallest gap (m) between the open finger tips at ``p`` and any other object's footprint."""
        u = np.array([math.cos(yaw), math.sin(yaw)])
        tips = (p[:2] + FINGER_REACH * u, p[:2] - FINGER_REACH * u)
        gap = float("inf")
        for other in self.task.objects:
            if other == obj:
                continue
            c, _ = self.world.object_pose(other)
            for t in tips:
                gap = min(gap, float(np.linalg.norm(t - c[:2])) - FOOTPRINT[other])
        return gap

    def _grasp_yaw(self, obj: str) -> float:
        """Finger-axis yaw for grasping ``obj``: aligned with a cube face / across the mug body, away
        from neighbouring objects, then as close as possible to the current yaw."""
        p, quat = self.world.object_pose(obj)
        yaw = _yaw_of(quat)
        if obj.endswith("_cube"):
            candidates = [yaw, yaw + math.pi / 2]
        else:  # mug: fingers across the body, roughly along the mug's x axis (handle is along its y axis)
            candidates = [yaw + k * math.pi / 6 for k in (-1, 0, 1)]
        candidates = [_nearest_equiv(c, self.yaw_cmd, math.pi) for c in candidates]
        scored = [(min(self._clearance(obj, p, c), 0.03), -abs(c - self.yaw_cmd), c) for c in candidates]
        return max(scored)[2]

    def _grip_open(self, obj: str) -> float:
        return CUBE_GRIP_OPEN if obj.endswith("_cube") else GRIP_OPEN

    def _grasp_z(self, obj: str, p: np.ndarray) -> float:
        if obj == "mug":
            return p[2] + MUG_HALF_HEIGHT - 0.022
        return p[2]

    def _pick(self, obj: str) -> Iterator[bool]:
        for _ in range(MAX_GRASP_TRIES):
            p, _ = self.world.object_pose(obj)
            yaw = self._grasp_yaw(obj)
            yield from self._lift()
            yield from self._move(np.array([p[0], p[1], SAFE_Z]), yaw)
            p, _ = self.world.object_pose(obj)  # re-read once above it
            yield from self._gripper(self._grip_open(obj), 0)
            yield from self._move(np.array([p[0], p[1], self._grasp_z(obj, p) + 0.05]), yaw, speed=FAST,
                                  settle_steps=0)
            yield from self._move(np.array([p[0], p[1], self._grasp_z(obj, p)]), yaw, speed=SLOW, settle_steps=5)
            yield from self._gripper(GRIP_CLOSED, 6)
            yield from self._lift()
            lifted, _ = self.world.object_pose(obj)
            tcp = self.world.tcp_transform()[:3, 3]
            if lifted[2] > REST_Z[obj] + 0.06 and np.linalg.norm(lifted[:2] - tcp[:2]) < 0.04:
                return True
            yield from self._gripper(GRIP_OPEN, 4)
        return False

    def _release_point(self, goal: Place) -> np.ndarray:
        if goal.target == "drawer":
            p = self.world.site_pos("drawer_inside_site")
            return np.array([p[0], p[1], 0.125])
        t, _ = self.world.object_pose(goal.target)
        x, y = t[0] + goal.offset[0], t[1] + goal.offset[1]
        if goal.target.startswith("bowl"):
            return np.array([x, y, t[2] + BOWL_HEIGHT + CUBE_HALF + 0.012])
        # plate: just above its surface, the object's rest height
        lift = REST_Z[goal.obj] + (0.022 if goal.obj == "mug" else 0.0)
        return np.array([x, y, t[2] + 0.005 + lift + 0.012])

    def _place(self, goal: Place) -> Iterator[None]:
        while True:
            ok = yield from self._pick(goal.obj)
            if not ok:
                return
            target = self._release_point(goal)
            yield from self._move(np.array([target[0], target[1], SAFE_Z]), self.yaw_cmd)
            target = self._release_point(goal)
            yield from self._move(target, self.yaw_cmd, speed=SLOW, settle_steps=5)
            yield from self._gripper(GRIP_OPEN, 4)
            yield from self._lift()
            for _ in range(3):
                yield
            if goal_satisfied(self.world, goal):
                return

    def _open_drawer(self) -> Iterator[None]:
        for _ in range(MAX_GRASP_TRIES):
            h = self.world.site_pos("drawer_handle_site")
            yaw = _nearest_equiv(math.pi / 2, self.yaw_cmd, math.pi)
            yield from self._lift()
            yield from self._move(np.array([h[0], h[1], SAFE_Z]), yaw)
            yield from self._gripper(DRAWER_GRIP_OPEN, 0)
            yield from self._move(np.array([h[0], h[1], h[2] + 0.04]), yaw, settle_steps=0)
            yield from self._move(np.array([h[0], h[1], h[2] - 0.002]), yaw, speed=SLOW, settle_steps=5)
            yield from self._gripper(GRIP_CLOSED, 5)
            pull = np.array([h[0], h[1] - DRAWER_PULL, h[2] - 0.002])
            yield from self._move(pull, yaw, speed=0.08, settle_steps=5)
            yield from self._gripper(DRAWER_GRIP_OPEN, 4)
            up = self.p_cmd.copy()
            up[2] += 0.06
            yield from self._move(up, yaw, settle_steps=0)
            if self.world.drawer > 0.1:
                return

    def _run(self) -> Iterator[None]:
        for goal in self.task.goals:
            if isinstance(goal, OpenDrawer):
                yield from self._open_drawer()
            elif isinstance(goal, Place):
                yield from self._place(goal)
            else:
                raise TypeError(f"no expert skill for goal {goal!r}")
        yield from self._lift()
