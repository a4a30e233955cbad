"""The ``Arm`` protocol: one control loop drives RTDE, simulation and dry-run arms alike.

Every implementation's ``send`` returns the command that was actually sent (after its own clipping),
``stop`` is idempotent and safe to call from every exit path, and ``observe`` never blocks longer than
its timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ArmState:
    """One observation of the arm.

    Attributes:
        q: joint positions [6] in rad, UR joint order (base, shoulder, elbow, wrist1, wrist2, wrist3).
        qd: joint velocities [6] in rad/s.
        stamp: monotonic time (s) at which the state was read.
        gripper: gripper opening in [0, 1] (0 closed, 1 open), NaN when there is no gripper.
        faults: names of active faults ("protective_stop", "emergency_stop", "program_stopped",
            "disconnected"); empty when healthy.
    """

    q: np.ndarray
    qd: np.ndarray
    stamp: float
    gripper: float = float("nan")
    faults: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class JointCommand:
    """A servo command: joint target [6] (rad) and gripper target in [0, 1] (NaN = leave as is)."""

    q: np.ndarray
    gripper: float = float("nan")


@runtime_checkable
class Arm(Protocol):
    """What the control loop needs from an arm."""

    control_rate_hz: float

    def connect(self) -> None: ...

    def observe(self, timeout_s: float = 0.1) -> ArmState: ...

    def send(self, cmd: JointCommand) -> JointCommand:
        """Send one servo command; returns what was actually sent after clipping."""
        ...

    def stop(self) -> None:
        """Stop motion now (servoStop / hold). Idempotent; never raises for a lost connection."""
        ...

    def disconnect(self) -> None: ...
