"""ControlLoop with DryRunArm and failing arms: faults stop the arm within one period, no command after
a fault, every exit path stops the arm, recovery follows the documented rule."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from actquant_core import constants as C
from actquant_core.robot.arm import ArmState, JointCommand
from actquant_core.robot.clock import MonotonicClock, SimulatedClock
from actquant_core.robot.control_loop import ControlLoop, ControlLoopConfig
from actquant_core.robot.dry_run import DryRunArm, DryRunConfig
from actquant_core.robot.errors import ArmFaultError, RecoveryRefused
from actquant_core.robot.safety import Safety, SafetyConfig, SafetyViolation
from actquant_core.robot.scheduler import ChunkScheduler, SchedulerConfig
from actquant_core.runtime.types import ActionChunk

Q0 = np.array([0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0])


def make(rate_hz=125.0, safety_kw=None, sched_kw=None, loop_kw=None):
    clock = SimulatedClock(100.0)
    arm = DryRunArm(DryRunConfig(control_rate_hz=rate_hz, initial_q=tuple(Q0), tau_s=0.01), clock=clock)
    arm.connect()
    safety = Safety(SafetyConfig(**(safety_kw or {"camera_timeout_s": None})))
    sched = ChunkScheduler(SchedulerConfig(**(sched_kw or {})))
    loop = ControlLoop(arm, sched, safety, ControlLoopConfig(**(loop_kw or {})), clock=clock)
    return clock, arm, loop


def tick(loop: ControlLoop, clock: SimulatedClock, n: int) -> None:
    """n periodic ticks without leaving the loop (``run`` stops the arm on exit, by design)."""
    for _ in range(n):
        loop.step()
        clock.advance(loop.period)


def ramp_chunk(t_obs: float, h: int = 10, speed: float = 0.3) -> ActionChunk:
    """Joint 0 moves at ``speed`` rad/s from Q0; gripper opens."""
    k = np.arange(h)[:, None]
    q = np.repeat(Q0[None], h, axis=0)
    q[:, 0] += speed * 0.1 * k[:, 0]
    return ActionChunk(actions=np.concatenate([q, np.ones((h, 1))], axis=1), stamp=t_obs)


def test_streams_a_chunk_at_the_control_rate():
    clock, arm, loop = make()
    loop.step()  # observe once (idle: nothing to send yet)
    assert arm.n_sent == 0
    assert loop.submit_chunk(ramp_chunk(clock.now()))
    loop.run(max_ticks=100)
    rep = loop.report()
    assert arm.n_sent == 100 and rep.commands_sent == 100 and rep.idle_ticks == 1
    times = np.array([r.time for r in arm.commands])
    np.testing.assert_allclose(np.diff(times), 1 / 125, atol=1e-9)  # one command per period
    # joint 0 follows the 0.3 rad/s ramp (accel-limited start, then tracking)
    assert arm.commands[-1].cmd.q[0] == pytest.approx(0.3 * (times[-1] - 100.0), abs=0.02)
    assert rep.jitter_ms["max"] < 1e-6  # simulated clock: exact periods
    assert rep.faults == []
    assert arm.stop_times and arm.stop_times[-1] >= times[-1]  # run() exit stopped the arm


def test_nan_chunk_rejected_and_nothing_sent_after():
    clock, arm, loop = make()
    loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 10)
    sent_before = arm.n_sent
    bad = ramp_chunk(clock.now())
    bad.actions[4, 1] = np.nan
    with pytest.raises(SafetyViolation):
        loop.submit_chunk(bad)
    t_fault = clock.now()
    assert loop.fault is not None and loop.fault.reason == C.SAFETY_NONFINITE
    assert arm.stop_times[-1] == t_fault
    tick(loop, clock, 50)
    assert arm.n_sent == sent_before
    assert not loop.submit_chunk(ramp_chunk(clock.now()))  # latched: no new chunk either
    assert loop.report().faulted_ticks == 50
    assert not loop.needs_new_chunk()


@pytest.mark.parametrize("rate_hz", [125.0, 500.0])
def test_stale_joint_data_stops_within_one_period(rate_hz):
    clock, arm, loop = make(rate_hz, safety_kw=dict(camera_timeout_s=None, joint_timeout_s=0.02))
    loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 20)
    arm.freeze_joint_data()
    t_last_fresh = arm.observe().stamp  # last stamp the arm produced
    tick(loop, clock, int(0.1 * rate_hz))
    f = loop.fault
    assert f is not None and f.reason == C.SAFETY_JOINT_STALE
    assert f.time <= t_last_fresh + 0.02 + 1 / rate_hz + 1e-9  # detected within one period of the timeout
    assert max(r.time for r in arm.commands) < f.time  # nothing sent at or after the fault
    assert f.time in arm.stop_times


def test_stale_camera_stops_within_one_period():
    clock, arm, loop = make(safety_kw=dict(camera_timeout_s=0.1))
    loop.update_camera_stamp(clock.now())
    loop.submit_chunk(ramp_chunk(clock.now()))
    t_cam = clock.now()
    for _ in range(5):  # camera at 30 Hz for a while
        tick(loop, clock, 4)
        t_cam = clock.now()
        loop.update_camera_stamp(t_cam)
    n = arm.n_sent
    tick(loop, clock, 40)  # camera drops
    f = loop.fault
    assert f is not None and f.reason == C.SAFETY_CAMERA_STALE
    assert t_cam + 0.1 < f.time <= t_cam + 0.1 + 1 / 125 + 1e-9
    assert arm.n_sent > n and max(r.time for r in arm.commands) < f.time


def test_protective_stop_no_command_after_and_motion_stopped():
    clock, arm, loop = make()
    loop.submit_chunk(ramp_chunk(clock.now(), speed=1.0))
    tick(loop, clock, 30)
    assert arm.moving
    arm.inject_fault(C.FAULT_PROTECTIVE_STOP)
    t_inject = clock.now()
    tick(loop, clock, 30)
    f = loop.fault
    assert f.reason == C.SAFETY_ARM_FAULT and C.FAULT_PROTECTIVE_STOP in f.detail
    assert f.time - t_inject <= 1 / 125 + 1e-9
    assert max(r.time for r in arm.commands) < f.time
    assert not arm.moving  # held where it was
    q_hold = arm.q
    clock.advance(0.5)
    np.testing.assert_allclose(arm.observe().q, q_hold, atol=1e-12)


def test_watchdog_inference_overrun():
    clock, arm, loop = make(safety_kw=dict(camera_timeout_s=None, watchdog_timeout_s=0.3))
    loop.submit_chunk(ramp_chunk(clock.now()))
    t_chunk = clock.now()
    tick(loop, clock, 125)  # no further chunk arrives
    f = loop.fault
    assert f is not None and f.reason == C.SAFETY_WATCHDOG
    assert t_chunk + 0.3 < f.time <= t_chunk + 0.3 + 1 / 125 + 1e-9


class FailingSendArm(DryRunArm):
    def send(self, cmd: JointCommand) -> JointCommand:
        if self.n_sent >= 5:
            self.n_failed = getattr(self, "n_failed", 0) + 1
            raise ArmFaultError("controller refused servoJ")
        return super().send(cmd)


def test_send_exception_latches_fault_and_stops():
    clock = SimulatedClock(0.0)
    arm = FailingSendArm(DryRunConfig(), clock=clock)
    arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(), Safety(SafetyConfig(camera_timeout_s=None)), clock=clock)
    loop.submit_chunk(ramp_chunk(0.0))
    loop.run(max_ticks=50)
    assert arm.n_sent == 5 and arm.n_failed == 1  # one failed attempt, then nothing
    assert loop.fault.reason == C.SAFETY_EXCEPTION and "refused" in loop.fault.detail
    assert len(arm.stop_times) == 2  # at the fault and at the exit


def test_observe_exception_and_resume_rules():
    clock, arm, loop = make()
    loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 5)
    arm.fail_next("observe", TimeoutError("no data"))
    tick(loop, clock, 5)
    assert loop.fault.reason == C.SAFETY_EXCEPTION
    n = arm.n_sent
    # rule 1: refused while the arm reports a fault
    arm.inject_fault(C.FAULT_PROTECTIVE_STOP)
    with pytest.raises(RecoveryRefused, match="protective_stop"):
        loop.resume()
    arm.clear_faults()
    old = ramp_chunk(clock.now())  # observed before the resume
    clock.advance(0.01)
    loop.resume()
    assert loop.fault is None
    # rule 3: chunks observed before the resume are rejected
    assert not loop.submit_chunk(old)
    tick(loop, clock, 5)
    assert arm.n_sent == n
    assert loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 5)
    assert arm.n_sent == n + 5


def test_resume_refused_on_stale_joint_data():
    clock, arm, loop = make(safety_kw=dict(camera_timeout_s=None, joint_timeout_s=0.02))
    loop.submit_chunk(ramp_chunk(clock.now()))
    arm.freeze_joint_data()
    tick(loop, clock, 10)
    assert loop.fault.reason == C.SAFETY_JOINT_STALE
    with pytest.raises(RecoveryRefused, match="stale"):
        loop.resume()


class DyingArm(DryRunArm):
    """observe raises a BaseException (not Exception) after some ticks: the loop thread dies."""

    def observe(self, timeout_s: float = 0.1) -> ArmState:
        if self.n_sent >= 20:
            raise SystemExit("arm driver crashed")
        return super().observe(timeout_s)


def test_thread_exit_paths_stop_the_arm():
    clock = SimulatedClock(0.0)
    arm = DyingArm(DryRunConfig(), clock=clock)
    arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(), Safety(SafetyConfig(camera_timeout_s=None)), clock=clock)
    loop.submit_chunk(ramp_chunk(0.0))
    loop.start()
    deadline = time.monotonic() + 5
    while loop.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not loop.running and isinstance(loop.error, SystemExit)
    assert arm.stop_times and arm.stop_times[-1] >= arm.commands[-1].time


def test_stop_from_another_thread_stops_the_arm_real_time():
    arm = DryRunArm(DryRunConfig(control_rate_hz=125.0))
    arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(SchedulerConfig(max_latency_s=1.0)),
                       Safety(SafetyConfig(camera_timeout_s=None)), clock=MonotonicClock())
    with loop:
        loop.submit_chunk(ramp_chunk(time.monotonic()))
        time.sleep(0.4)
    rep = loop.report()
    assert not loop.running
    assert arm.stop_times[-1] >= arm.commands[-1].time
    expected = 0.4 * 125
    # the periodic timer keeps the rate (lower bound loose for a loaded CI machine)
    assert 0.5 * expected <= rep.ticks <= 1.2 * expected + 2
    assert rep.commands_sent == arm.n_sent > 0


def test_needs_new_chunk_protocol_with_worker_thread():
    """A worker thread that follows needs_new_chunk keeps the loop fed (simulated latency, real time)."""
    arm = DryRunArm(DryRunConfig(control_rate_hz=125.0))
    arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(SchedulerConfig(execution_horizon=3, initial_latency_s=0.06)),
                       Safety(SafetyConfig(camera_timeout_s=None)))
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            if loop.needs_new_chunk():
                loop.mark_chunk_requested()
                t_obs = time.monotonic()
                time.sleep(0.05)  # inference
                loop.submit_chunk(ramp_chunk(t_obs))
            else:
                time.sleep(0.002)

    th = threading.Thread(target=worker)
    with loop:
        th.start()
        time.sleep(0.8)
        stop.set()
        th.join()
    rep = loop.report()
    assert rep.faults == [] and rep.scheduler["chunks_received"] >= 3
    assert rep.stall_ticks == 0


def test_same_loop_drives_the_mujoco_sim_arm():
    """One loop, several arms: the MuJoCo SimArm follows a chunk through the same loop."""
    pytest.importorskip("mujoco")
    from actquant_core.sim.arm import SimArm

    TRACK_TOL = 2e-3  # rad: MuJoCo position actuators after holding the final target
    arm = SimArm(model="ur3")
    arm.connect()
    try:
        loop = ControlLoop(arm, ChunkScheduler(SchedulerConfig(execution_horizon=10, blend_window_s=0.0)),
                           Safety(SafetyConfig(camera_timeout_s=None, watchdog_timeout_s=None)))
        q0 = arm.observe().q
        delta = np.array([0.05, -0.03, 0.03, 0.0, 0.0, 0.05])
        acts = q0[None] + np.linspace(0, 1, 4)[:, None] * delta[None]  # 0.3 s of motion
        loop.step()
        assert loop.submit_chunk(ActionChunk(actions=acts, stamp=time.monotonic()))
        loop.run(duration_s=0.6)
        rep = loop.report()
        assert rep.faults == [] and rep.commands_sent > 0.5 * 0.6 * arm.control_rate_hz
        np.testing.assert_allclose(arm.observe().q, q0 + delta, atol=TRACK_TOL)
    finally:
        arm.disconnect()


def test_obs_to_command_latency_reported():
    clock, arm, loop = make()
    loop.step()
    clock.advance(loop.period)
    t_obs = clock.now()
    clock.advance(0.1)  # 100 ms inference
    assert loop.submit_chunk(ramp_chunk(t_obs))
    clock.advance(0.003)  # next tick 3 ms later
    tick(loop, clock, 5)
    rep = loop.report()
    assert rep.obs_to_command_ms["n"] == 1
    assert rep.obs_to_command_ms["p50"] == pytest.approx(103.0, abs=1e-6)


def test_robot_package_imports_no_torch_and_no_ur_rtde():
    """Online path: importing the robot side loads neither torch nor ur_rtde (lazy, on connect)."""
    import subprocess
    import sys

    code = ("import sys, actquant_core.robot as r; "
            "bad = [m for m in ('torch', 'rtde_control', 'rtde_receive', 'rclpy', 'cyclonedds') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_build_arm_and_flat_report():
    from actquant_core.robot import build_arm
    from actquant_core.robot.rtde_arm import RtdeArm

    arm = build_arm("ur3e")
    assert isinstance(arm, DryRunArm) and arm.control_rate_hz == 500.0
    with pytest.raises(ValueError, match="robot_ip is required"):
        build_arm("ur3", dry_run=False)
    real = build_arm("ur3", dry_run=False, robot_ip="192.168.1.20", gain=400.0)
    assert isinstance(real, RtdeArm) and real.config.gain == 400.0 and real.control_rate_hz == 125.0
    clock, arm, loop = make()
    loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 10)
    arm.inject_fault(C.FAULT_PROTECTIVE_STOP)
    tick(loop, clock, 2)
    flat = loop.report().flat()
    assert flat["commands_sent"] == "10" and flat["last_fault"] == C.SAFETY_ARM_FAULT
    assert flat["safety.arm_fault"] == "1" and all(isinstance(v, str) for v in flat.values())


def test_hold_stops_without_fault_and_restarts_on_new_chunk():
    clock, arm, loop = make(safety_kw=dict(camera_timeout_s=None, watchdog_timeout_s=0.2))
    loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 10)
    old = ramp_chunk(clock.now())
    clock.advance(0.001)
    loop.hold()
    n = arm.n_sent
    assert arm.stop_times[-1] == clock.now()
    tick(loop, clock, 100)  # 0.8 s > watchdog timeout: disarmed, no fault, nothing sent
    assert loop.fault is None and arm.n_sent == n
    assert not loop.submit_chunk(old)  # observed before the hold
    assert loop.submit_chunk(ramp_chunk(clock.now()))
    tick(loop, clock, 5)
    assert arm.n_sent == n + 5 and loop.fault is None
