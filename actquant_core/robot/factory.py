"""Build the arm a deployment asks for: dry-run (default) or a real UR over RTDE.

``robot_ip`` has no default anywhere: asking for a real arm without it is an error that says so.
"""

from __future__ import annotations

from actquant_core import constants as C
from actquant_core.robot.arm import Arm
from actquant_core.robot.clock import Clock
from actquant_core.robot.dry_run import DryRunArm, DryRunConfig
from actquant_core.robot.rtde_arm import RtdeArm, RtdeArmConfig


def build_arm(ur_type: str, dry_run: bool = True, robot_ip: str | None = None, clock: Clock | None = None,
              **rtde_kwargs) -> Arm:
    """Return a ``DryRunArm`` (``dry_run=True``) or an ``RtdeArm`` for ``robot_ip``; not yet connected.

    Args:
        ur_type: "ur3" (125 Hz) or "ur3e" (500 Hz); sets the control rate of either arm.
        dry_run: never talk to hardware (commands are logged and recorded).
        robot_ip: controller address, required when ``dry_run`` is False.
        clock: clock for the arm (default: the monotonic clock).
        **rtde_kwargs: further ``RtdeArmConfig`` fields (lookahead_time_s, gain, gripper_output, ...).

    Raises:
        ValueError: unknown ``ur_type``, or a real arm without ``robot_ip``.
    """
    if ur_type not in C.UR_TYPES:
        raise ValueError(f"ur_type must be one of {C.UR_TYPES}, got {ur_type!r}")
    if dry_run:
        return DryRunArm(DryRunConfig(control_rate_hz=C.UR_CONTROL_RATE_HZ[ur_type]), clock=clock)
    if not robot_ip:
        raise ValueError("robot_ip is required when dry_run is False (it has no default on purpose)")
    return RtdeArm(RtdeArmConfig(robot_ip=robot_ip, ur_type=ur_type, **rtde_kwargs), clock=clock)
