"""Configuration of the UR controller simulator: robot model table and the frozen server config.

A *model* fixes what the real controller would report: the controller rate (CB3 125 Hz, e-series 500 Hz),
the controller / PolyScope version (3.x for CB3, 5.x for e-series; ``ur_rtde`` picks its frequency and its
feature set from the major version), the DH parameters (for ``actual_TCP_pose``) and the joint limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_JOINTS = 6


@dataclass(frozen=True)
class UrModel:
    """What one UR model reports and how fast it may move.

    Attributes:
        name: "ur3" (CB3) or "ur3e" (e-series).
        rate_hz: controller (RTDE / servo) rate in Hz.
        version: controller version (major, minor, bugfix, build) as answered to RTDE ``v``.
        polyscope: the dashboard ``PolyscopeVersion`` answer.
        serial: the dashboard ``get serial number`` answer (digits only, as ur_rtde checks).
        dh_d: DH offsets d1..d6 (m).
        dh_a: DH lengths a1..a6 (m).
        dh_alpha: DH twists alpha1..alpha6 (rad).
        v_max: joint speed limits [6] (rad/s).
        a_max: joint acceleration limits [6] (rad/s^2) used by servo / speed / stop.
        q_min / q_max: joint position limits [6] (rad).
    """

    name: str
    rate_hz: float
    version: tuple[int, int, int, int]
    polyscope: str
    serial: str
    dh_d: tuple[float, ...]
    dh_a: tuple[float, ...]
    dh_alpha: tuple[float, ...]
    v_max: tuple[float, ...]
    a_max: tuple[float, ...]
    q_min: tuple[float, ...] = (-2 * math.pi,) * N_JOINTS
    q_max: tuple[float, ...] = (2 * math.pi,) * N_JOINTS

    @property
    def is_eseries(self) -> bool:
        return self.version[0] >= 5


_UR_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
_UR3_VMAX = (math.pi, math.pi, math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi)
_UR3_AMAX = (15.0,) * N_JOINTS

MODELS: dict[str, UrModel] = {
    "ur3": UrModel(
        name="ur3",
        rate_hz=125.0,
        version=(3, 15, 8, 106339),
        polyscope="URSoftware 3.15.8.106339 (Nov 24 2022)",
        serial="2017300001",
        dh_d=(0.1519, 0.0, 0.0, 0.11235, 0.08535, 0.0819),
        dh_a=(0.0, -0.24365, -0.21325, 0.0, 0.0, 0.0),
        dh_alpha=_UR_ALPHA,
        v_max=_UR3_VMAX,
        a_max=_UR3_AMAX,
    ),
    "ur3e": UrModel(
        name="ur3e",
        rate_hz=500.0,
        version=(5, 11, 1, 108318),
        polyscope="URSoftware 5.11.1.108318 (Mar 22 2021)",
        serial="20215300001",
        dh_d=(0.15185, 0.0, 0.0, 0.13105, 0.08535, 0.0921),
        dh_a=(0.0, -0.24355, -0.2132, 0.0, 0.0, 0.0),
        dh_alpha=_UR_ALPHA,
        v_max=_UR3_VMAX,
        a_max=_UR3_AMAX,
    ),
}

BACKENDS = ("kinematic", "mujoco")

# A common "ready" pose: elbow up, tool pointing down.
DEFAULT_INITIAL_Q = (0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0)


@dataclass(frozen=True)
class UrSimConfig:
    """Everything the simulator process needs.

    Attributes:
        host: loopback address to serve on (127.0.0.0/8); ports are the fixed UR ports.
        model: key of ``MODELS`` ("ur3" = CB3 at 125 Hz, "ur3e" = e-series at 500 Hz).
        backend: "kinematic" (pure numpy, perfect tracking of the controller's own trajectory) or
            "mujoco" (the MuJoCo UR3 world tracks it with its actuators).
        initial_q: joint positions [6] (rad) at start and after ``actquant reset``.
        rtde_port / dashboard_port / script_port: TCP ports (the UR defaults unless a test must move them).
        gripper_pin: standard digital output that drives the gripper.
        gripper_closed_when_high: True if setting the pin high closes the gripper.
        pstop_unlock_delay_s: a protective stop can only be unlocked this long after it happened
            (the real controller enforces 5 s).
        pstop_decel: deceleration (rad/s^2) of the category-2 stop on a protective stop.
        estop_decel: deceleration (rad/s^2) of the category-1 stop on an emergency stop.
        program_stop_decel: deceleration (rad/s^2) when the program stops (dashboard stop, watchdog,
            stopScript).
        task: task name handed to the MuJoCo world (None = empty table); ignored by "kinematic".
        seed: seed handed to the MuJoCo world.
        init_index: saved evaluation init state of ``task`` to start from (-1: the world's seeded layout);
            the arm then starts at the world's home pose instead of ``initial_q``.
    """

    host: str = "127.0.0.1"
    model: str = "ur3"
    backend: str = "kinematic"
    initial_q: tuple[float, ...] = DEFAULT_INITIAL_Q
    rtde_port: int = 30004
    dashboard_port: int = 29999
    script_port: int = 30003
    gripper_pin: int = 0
    gripper_closed_when_high: bool = True
    pstop_unlock_delay_s: float = 5.0
    pstop_decel: float = 10.0
    estop_decel: float = 30.0
    program_stop_decel: float = 10.0
    task: str | None = None
    seed: int = 0
    init_index: int = -1

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"UrSimConfig.model={self.model!r} is not one of {sorted(MODELS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"UrSimConfig.backend={self.backend!r} is not one of {BACKENDS}")
        if not self.host.startswith("127."):
            raise ValueError(
                f"UrSimConfig.host={self.host!r} is not a loopback address (127.0.0.0/8); the simulator "
                "only serves on loopback"
            )
        q = np.asarray(self.initial_q, dtype=float)
        if q.shape != (N_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"UrSimConfig.initial_q={self.initial_q!r} must be {N_JOINTS} finite floats")
        for name in ("rtde_port", "dashboard_port", "script_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ValueError(f"UrSimConfig.{name}={port} is not a TCP port (1..65535)")
        if not 0 <= self.gripper_pin <= 7:
            raise ValueError(f"UrSimConfig.gripper_pin={self.gripper_pin} is not a standard digital output 0..7")
        if self.pstop_unlock_delay_s < 0:
            raise ValueError(f"UrSimConfig.pstop_unlock_delay_s={self.pstop_unlock_delay_s} must be >= 0")
        for name in ("pstop_decel", "estop_decel", "program_stop_decel"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UrSimConfig.{name}={getattr(self, name)} must be > 0")

    @property
    def ur(self) -> UrModel:
        return MODELS[self.model]
