"""``SimEnv``: a task episode on ``UR3World`` at the policy rate (gym-like, no gym dependency).

Observation (dict):
    ``images``: {camera name: uint8 [H, W, 3] RGB} for ``SIM_CAMERAS`` (empty when ``render=False``)
    ``state``: float32 [7] = arm q [6] (rad) + gripper opening in [0, 1]
    ``instruction``: the task's language instruction
Action: float [7] = absolute joint target q [6] (rad) + gripper target in [0, 1] (1 open); the world
ramps the joint target linearly over one policy period (servo-style interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from actquant_core.constants import SIM_CAMERAS
from actquant_core.sim.tasks import Task, apply_layout, load_init_states, sample_layout, task_success
from actquant_core.sim.world import UR3World


@dataclass(frozen=True)
class SimEnvConfig:
    """Episode settings.

    Attributes:
        model: "ur3" or "ur3e".
        image_size: square camera image size (pixels).
        render: render camera images into observations.
        policy_hz: action rate (Hz); each ``step`` advances 1/policy_hz seconds.
        success_hold_steps: the episode ends once success held for this many consecutive steps.
    """

    model: str = "ur3"
    image_size: int = 224
    render: bool = True
    policy_hz: float = 10.0
    success_hold_steps: int = 1

    def __post_init__(self) -> None:
        if self.model not in ("ur3", "ur3e"):
            raise ValueError(f"SimEnvConfig.model must be 'ur3' or 'ur3e', got {self.model!r}")
        if not 16 <= self.image_size <= 640:
            raise ValueError(f"SimEnvConfig.image_size must be in [16, 640], got {self.image_size}")
        if not 0 < self.policy_hz <= 100:
            raise ValueError(f"SimEnvConfig.policy_hz must be in (0, 100], got {self.policy_hz}")
        if self.success_hold_steps < 1:
            raise ValueError(f"SimEnvConfig.success_hold_steps must be >= 1, got {self.success_hold_steps}")


class SimEnv:
    """One task in one world; ``reset`` then ``step`` until ``done``."""

    def __init__(self, task: Task, config: SimEnvConfig = SimEnvConfig(), world: UR3World | None = None) -> None:
        self.task = task
        self.config = config
        self.world = world if world is not None else UR3World(config.model, task=task, image_size=config.image_size)
        self.world.task = task
        self._init_states: np.ndarray | None = None
        self.steps = 0
        self._success_run = 0

    @property
    def init_states(self) -> np.ndarray:
        """The task's saved init states [N, nq - 6]."""
        if self._init_states is None:
            self._init_states = load_init_states(self.task)
        return self._init_states

    def reset(self, init_index: int | None = 0, init_state: np.ndarray | None = None,
              layout_seed: Sequence[int] | None = None) -> dict:
        """Reset to saved init state ``init_index``, an explicit ``init_state`` [nq - 6], or a fresh layout
        drawn with ``np.random.default_rng(layout_seed)`` (demonstrations use seeds disjoint from the saved
        evaluation init states)."""
        self.steps = 0
        self._success_run = 0
        if layout_seed is not None:
            apply_layout(self.world, self.task, sample_layout(self.task, np.random.default_rng(list(layout_seed))))
            return self.observe()
        if init_state is None and init_index is not None:
            n = len(self.init_states)
            if not 0 <= init_index < n:
                raise IndexError(f"init_index {init_index} out of range: task {self.task.key} has {n} init states")
            init_state = self.init_states[init_index]
        self.world.reset(init_state, objects=self.task.objects)
        self.steps = 0
        self._success_run = 0
        return self.observe()

    def observe(self) -> dict:
        """Current observation (see module docstring)."""
        w = self.world
        images = {cam: w.render(cam, self.config.image_size) for cam in SIM_CAMERAS} if self.config.render else {}
        state = np.concatenate([w.q, [w.gripper]]).astype(np.float32)
        return {"images": images, "state": state, "instruction": self.task.instruction}

    def apply(self, action: np.ndarray) -> np.ndarray:
        """Send an action [7] and advance one policy period; returns the clipped action actually applied."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,) = q[6] + gripper, got {a.shape}")
        period = 1.0 / self.config.policy_hz
        q = self.world.set_joint_target(a[:6], duration=period)
        g = self.world.set_gripper(a[6])
        self.world.step(period)
        self.steps += 1
        return np.concatenate([q, [g]])

    def success(self) -> bool:
        return task_success(self.world, self.task)

    def step(self, action: np.ndarray, observe: bool = True) -> tuple[dict | None, bool, bool]:
        """Apply ``action`` [7]; returns (observation or None, success, done)."""
        self.apply(action)
        ok = self.success()
        self._success_run = self._success_run + 1 if ok else 0
        done = self._success_run >= self.config.success_hold_steps or self.steps >= self.task.max_steps
        return (self.observe() if observe else None), ok, done

    def close(self) -> None:
        self.world.close()
