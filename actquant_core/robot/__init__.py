"""Robot side: the ``Arm`` protocol, safety, chunk scheduling, the control loop, RTDE and dry-run arms.

Online path: numpy only (``RtdeArm`` imports ur_rtde lazily on connect); never torch.
"""

from actquant_core.robot.arm import Arm, ArmState, JointCommand
from actquant_core.robot.clock import Clock, MonotonicClock, SimulatedClock
from actquant_core.robot.control_loop import ControlLoop, ControlLoopConfig, LoopFault, LoopReport, TickResult
from actquant_core.robot.dry_run import DryRunArm, DryRunConfig
from actquant_core.robot.errors import ArmConnectionError, ArmError, ArmFaultError, RecoveryRefused
from actquant_core.robot.factory import build_arm
from actquant_core.robot.rtde_arm import RtdeArm, RtdeArmConfig, RtdeFactories
from actquant_core.robot.safety import Safety, SafetyConfig, SafetyEvent, SafetyViolation, StopDecision
from actquant_core.robot.scheduler import ChunkScheduler, ScheduledCommand, SchedulerConfig, interpolate_chunk

__all__ = [
    "Arm", "ArmState", "JointCommand",
    "Clock", "MonotonicClock", "SimulatedClock",
    "ControlLoop", "ControlLoopConfig", "LoopFault", "LoopReport", "TickResult",
    "DryRunArm", "DryRunConfig",
    "ArmConnectionError", "ArmError", "ArmFaultError", "RecoveryRefused",
    "build_arm",
    "RtdeArm", "RtdeArmConfig", "RtdeFactories",
    "Safety", "SafetyConfig", "SafetyEvent", "SafetyViolation", "StopDecision",
    "ChunkScheduler", "ScheduledCommand", "SchedulerConfig", "interpolate_chunk",
]
