"""Plants behind the UR controller simulator.

The controller (``controller.py``) owns the trajectory generation — servoj / speedj / movej / stops with
the model's limits, see ``motion.py`` — exactly once, for every backend.  A backend is only the *plant*:
each cycle it receives the commanded joint state and advances by one controller period, and it reports
the measured joint state.  That keeps the real controller's split (trajectory generator -> joint servos)
and lets the kinematic and MuJoCo arms behave identically at the RTDE level except for tracking error.

- ``KinematicBackend``: pure numpy, perfect tracking (actual = commanded).
- ``MujocoBackend``: the MuJoCo UR3 world (``actquant_core.sim.world.UR3World``) tracks the command with
  its position actuators, physics stepped by one controller period per cycle.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from actquant_core.sim.ursim.config import N_JOINTS, UrSimConfig

log = logging.getLogger(__name__)


@runtime_checkable
class JointBackend(Protocol):
    """What the controller needs from an arm plant.

    Attributes (read each cycle):
        q: measured joint positions [6] (rad).
        qd: measured joint velocities [6] (rad/s).
        gripper: gripper opening in [0, 1] (1 = open), NaN when there is none.
    """

    @property
    def q(self) -> np.ndarray: ...

    @property
    def qd(self) -> np.ndarray: ...

    @property
    def gripper(self) -> float: ...

    def reset(self, q: np.ndarray) -> None:
        """Place the arm at q [6] at rest."""
        ...

    def apply(self, q_cmd: np.ndarray, qd_cmd: np.ndarray, dt: float) -> None:
        """Track the commanded joint state (q_cmd [6], qd_cmd [6]) and advance the plant by dt seconds."""
        ...

    def set_gripper(self, open_fraction: float) -> None:
        """Command the gripper: 0 closed .. 1 open."""
        ...

    def close(self) -> None: ...


class KinematicBackend:
    """Perfect tracking: the measured state is the commanded state; the gripper moves instantly."""

    def __init__(self, q0: np.ndarray) -> None:
        self._q = np.asarray(q0, dtype=float).copy()
        self._qd = np.zeros(N_JOINTS)
        self._gripper = 1.0

    @property
    def q(self) -> np.ndarray:
        return self._q

    @property
    def qd(self) -> np.ndarray:
        return self._qd

    @property
    def gripper(self) -> float:
        return self._gripper

    def reset(self, q: np.ndarray) -> None:
        self._q = np.asarray(q, dtype=float).copy()
        self._qd = np.zeros(N_JOINTS)

    def apply(self, q_cmd: np.ndarray, qd_cmd: np.ndarray, dt: float) -> None:
        del dt
        self._q = np.asarray(q_cmd, dtype=float).copy()
        self._qd = np.asarray(qd_cmd, dtype=float).copy()

    def set_gripper(self, open_fraction: float) -> None:
        self._gripper = float(np.clip(open_fraction, 0.0, 1.0))

    def close(self) -> None:
        pass


class MujocoBackend:
    """Adapter over ``actquant_core.sim.world.UR3World``.

    Used API of the world: ``UR3World(model=..., task=..., seed=...)`` (resets itself), ``q`` [6],
    ``qd`` [6], ``gripper``, ``set_arm_q(q)`` (teleport), ``set_joint_target(q, duration)``,
    ``set_gripper(open_fraction)``, ``step(dt)``, ``close()``.  Each cycle the commanded position is
    handed over as a ramp of one controller period (so the world's computed-torque servo also gets the
    commanded velocity as feed-forward) and physics advances by that period.  The world is imported lazily
    so the kinematic backend never loads MuJoCo.
    """

    def __init__(self, cfg: UrSimConfig) -> None:
        try:
            from actquant_core.sim.world import UR3World  # noqa: PLC0415 (lazy: MuJoCo only when asked)
        except ImportError as e:
            raise RuntimeError(
                "backend 'mujoco' needs actquant_core.sim.world.UR3World, which could not be imported: "
                f"{e}; use --backend kinematic"
            ) from e
        self._world = UR3World(model=cfg.model, task=cfg.task, seed=cfg.seed)
        self._gripper_cmd = 1.0
        if cfg.init_index >= 0 and self._world.task is not None:
            from actquant_core.sim.tasks import load_init_states  # noqa: PLC0415

            states = load_init_states(self._world.task)
            if not 0 <= cfg.init_index < len(states):
                raise ValueError(f"init_index {cfg.init_index} out of range: {len(states)} init states")
            self._world.reset(states[cfg.init_index], objects=self._world.task.objects)
            self.initial_q = np.asarray(self._world.home_q(), dtype=float)
        else:
            self.initial_q = np.asarray(cfg.initial_q, dtype=float)
        self.reset(self.initial_q)

    def task_success(self) -> bool | None:
        """Whether the world's task predicate holds now (None without a task)."""
        if self._world.task is None:
            return None
        from actquant_core.sim.tasks import task_success  # noqa: PLC0415

        return bool(task_success(self._world, self._world.task))

    @property
    def q(self) -> np.ndarray:
        return np.asarray(self._world.q, dtype=float)[:N_JOINTS]

    @property
    def qd(self) -> np.ndarray:
        return np.asarray(self._world.qd, dtype=float)[:N_JOINTS]

    @property
    def gripper(self) -> float:
        return float(self._world.gripper)

    @property
    def world(self):
        """The underlying ``UR3World`` (e.g. for rendering in the same process; it has its own lock)."""
        return self._world

    def reset(self, q: np.ndarray) -> None:
        self._world.set_arm_q(np.asarray(q, dtype=float))

    def apply(self, q_cmd: np.ndarray, qd_cmd: np.ndarray, dt: float) -> None:
        del qd_cmd  # implied by the ramp below
        self._world.set_joint_target(np.asarray(q_cmd, dtype=float), duration=dt)
        self._world.step(dt)

    def set_gripper(self, open_fraction: float) -> None:
        self._gripper_cmd = float(np.clip(open_fraction, 0.0, 1.0))
        self._world.set_gripper(self._gripper_cmd)

    def close(self) -> None:
        self._world.close()


def make_backend(cfg: UrSimConfig) -> JointBackend:
    """The backend named by ``cfg.backend``."""
    if cfg.backend == "kinematic":
        return KinematicBackend(np.asarray(cfg.initial_q, dtype=float))
    if cfg.backend == "mujoco":
        return MujocoBackend(cfg)
    raise ValueError(f"unknown backend {cfg.backend!r}")
