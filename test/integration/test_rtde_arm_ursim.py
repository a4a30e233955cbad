"""RtdeArm + ControlLoop against the UR controller simulator (subprocess, real sockets, real ur_rtde).

Streams a chunk through ChunkScheduler -> Safety -> RtdeArm.servoJ; injects a protective stop and a
dropped connection while streaming: no command after the fault, the loop stops within one control
period of the fault becoming visible, the arm is at rest; recovery follows ControlLoop's rule.
"""

from __future__ import annotations

import importlib.util
import time
from functools import partial

import numpy as np
import pytest

from test_policy_node_support import wait_for as support_wait_for

from actquant_core import constants as C

if importlib.util.find_spec("actquant_core.sim.ursim.testing") is None:  # pragma: no cover
    pytest.skip("actquant_core.sim.ursim.testing (UR controller simulator) is not available",
                allow_module_level=True)
pytest.importorskip("rtde_control")

from actquant_core.robot.arm import JointCommand  # noqa: E402
from actquant_core.robot.control_loop import ControlLoop, ControlLoopConfig  # noqa: E402
from actquant_core.robot.rtde_arm import RtdeArm, RtdeArmConfig  # noqa: E402
from actquant_core.robot.safety import Safety, SafetyConfig  # noqa: E402
from actquant_core.robot.scheduler import ChunkScheduler, SchedulerConfig  # noqa: E402
from actquant_core.runtime.types import ActionChunk  # noqa: E402
from actquant_core.sim.ursim.testing import client_deadline, ursim_fixture  # noqa: E402

CONNECT_DEADLINE_S = 20.0  # hard limit (faulthandler) for connect / disconnect through ur_rtde
TRACK_TOL = 0.01  # rad: kinematic backend, final target held for > 6 servo time constants
# fault visible to the client after <= 1 controller period (RTDE stream), detected at the next loop
# tick (<= 1 loop period), + scheduling slack on a shared 2-core machine
FAULT_DETECT_SLACK_S = 0.03
AT_REST_TOL = 1e-9  # rad/s: kinematic backend stops exactly

ursim = ursim_fixture(model=C.UR_TYPE_UR3)  # CB3, 125 Hz


@pytest.fixture(autouse=True)
def _healthy(ursim):
    ursim.recover()
    yield


def make_loop(host: str, rate_hz: float):
    arm = RtdeArm(RtdeArmConfig(robot_ip=host, ur_type=C.UR_TYPE_UR3, connect_timeout_s=10.0))
    with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.connect"):
        arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(SchedulerConfig(execution_horizon=10, blend_window_s=0.1)),
                       Safety(SafetyConfig(camera_timeout_s=None, watchdog_timeout_s=None)),
                       ControlLoopConfig())
    assert loop.rate_hz == rate_hz
    return arm, loop


def close(arm: RtdeArm, loop: ControlLoop) -> None:
    loop.stop()
    with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.disconnect"):
        arm.disconnect()


def ramp(q0: np.ndarray, t_obs: float, delta: np.ndarray, h: int = 10) -> ActionChunk:
    """h actions at 10 Hz from q0 to q0 + delta (linear)."""
    s = np.linspace(0.0, 1.0, h)[:, None]
    return ActionChunk(actions=q0[None, :] + s * delta[None, :], stamp=t_obs)


wait_for = partial(support_wait_for, poll_s=0.002)


def test_streams_a_chunk(ursim):
    assert ursim.reset()
    arm, loop = make_loop(ursim.host, ursim.rate_hz)
    try:
        q0 = arm.observe().q
        delta = np.array([0.2, -0.1, 0.15, 0.0, 0.0, 0.25])
        loop.start()
        wait_for(lambda: loop.latest_state() is not None, 1.0, "first tick")
        assert loop.submit_chunk(ramp(q0, time.monotonic(), delta))
        time.sleep(1.6)  # 0.9 s of chunk + hold
        loop.stop()
        rep = loop.report()
        assert rep.faults == [], rep.faults
        q_ctrl = np.array(ursim.state()["q"])
        np.testing.assert_allclose(q_ctrl, q0 + delta, atol=TRACK_TOL)
        assert rep.commands_sent == arm.n_sent and rep.commands_sent >= 0.8 * 1.6 * ursim.rate_hz
        assert np.max(np.abs(ursim.state()["qd"])) <= AT_REST_TOL  # loop exit stopped the arm
    finally:
        close(arm, loop)


def _stream_then(ursim, inject, expected_fault: str):
    assert ursim.reset()
    arm, loop = make_loop(ursim.host, ursim.rate_hz)
    try:
        q0 = arm.observe().q
        loop.start()
        wait_for(lambda: loop.latest_state() is not None, 1.0, "first tick")
        assert loop.submit_chunk(ramp(q0, time.monotonic(), np.array([0.6, 0, 0, 0, 0, 0])))
        time.sleep(0.4)  # moving at ~0.67 rad/s
        assert np.max(np.abs(ursim.state()["qd"])) > 0.1
        n_before = arm.n_sent
        t_inject = time.monotonic()
        inject()
        wait_for(lambda: loop.fault is not None, 1.0, "loop fault")
        f = loop.fault
        n_at_fault = arm.n_sent
        assert f.reason in (C.SAFETY_ARM_FAULT, C.SAFETY_EXCEPTION), f
        assert expected_fault in f.detail or f.reason == C.SAFETY_EXCEPTION, f
        # detection: within one control period of the fault reaching the client (+ slack)
        assert f.time - t_inject <= 2.0 / ursim.rate_hz + FAULT_DETECT_SLACK_S, f.time - t_inject
        time.sleep(0.3)
        assert arm.n_sent == n_at_fault, "command sent after the fault"
        assert n_at_fault >= n_before
        return arm, loop, f
    except BaseException:
        close(arm, loop)
        raise


def test_protective_stop_stops_and_recovers(ursim):
    arm, loop, f = _stream_then(ursim, lambda: ursim.inject(C.URSIM_FAULT_PROTECTIVE_STOP),
                                C.FAULT_PROTECTIVE_STOP)
    try:
        st = ursim.state()
        assert np.max(np.abs(st["qd"])) <= AT_REST_TOL, st["qd"]
        # recovery rule: refused while the fault is active, then explicit resume after it clears
        from actquant_core.robot.errors import RecoveryRefused

        with pytest.raises(RecoveryRefused):
            loop.resume()
        ursim.recover()  # operator unlocks the protective stop
        wait_for(lambda: C.FAULT_PROTECTIVE_STOP not in arm.observe().faults, 1.0, "unlock visible over RTDE")
        with client_deadline(CONNECT_DEADLINE_S, "resume (reupload script)"):
            loop.resume()
        assert loop.fault is None
        q = arm.observe().q
        assert loop.submit_chunk(ramp(q, time.monotonic(), np.array([-0.1, 0, 0, 0, 0, 0])))
        n = arm.n_sent
        time.sleep(0.5)
        assert loop.fault is None and arm.n_sent > n + 0.5 * 0.5 * ursim.rate_hz
    finally:
        close(arm, loop)


def test_dropped_connection_is_a_fault(ursim):
    arm, loop, f = _stream_then(ursim, lambda: ursim.inject(C.URSIM_FAULT_CONNECTION_DROP, 0.5), C.FAULT_DISCONNECTED)
    try:
        assert f.reason == C.SAFETY_ARM_FAULT and C.FAULT_DISCONNECTED in f.detail, f
        time.sleep(0.4)  # the simulator refuses connections for 0.5 s after the drop
        st = ursim.state()  # the controller side: the arm is at rest
        assert np.max(np.abs(st["qd"])) <= AT_REST_TOL, st["qd"]
    finally:
        close(arm, loop)  # must not hang on a dropped connection


def test_nan_chunk_while_streaming_stops_the_arm(ursim):
    """A NaN chunk from the policy: rejected, servoStop issued in the same call, nothing sent after,
    and the arm decelerates to rest at the configured stop deceleration."""
    from actquant_core.robot.safety import SafetyViolation

    assert ursim.reset()
    arm, loop = make_loop(ursim.host, ursim.rate_hz)
    try:
        q0 = arm.observe().q
        loop.start()
        wait_for(lambda: loop.latest_state() is not None, 1.0, "first tick")
        assert loop.submit_chunk(ramp(q0, time.monotonic(), np.array([0.6, 0, 0, 0, 0, 0])))
        time.sleep(0.4)
        v = float(np.max(np.abs(ursim.state()["qd"])))
        assert v > 0.1
        bad = ramp(q0, time.monotonic(), np.array([0.6, 0, 0, 0, 0, 0]))
        bad.actions[5, 0] = np.nan
        with pytest.raises(SafetyViolation):
            loop.submit_chunk(bad)
        n_at_fault = arm.n_sent  # servoStop already returned: the loop is latched
        assert loop.fault.reason == C.SAFETY_NONFINITE
        # stop deceleration 10 rad/s^2: at rest after v / a (+ two controller periods + slack)
        time.sleep(v / arm.config.stop_deceleration + 2.0 / ursim.rate_hz + FAULT_DETECT_SLACK_S)
        assert np.max(np.abs(ursim.state()["qd"])) <= AT_REST_TOL
        time.sleep(0.2)
        assert arm.n_sent == n_at_fault
    finally:
        close(arm, loop)


def test_controller_watchdog_kicked_while_ticking_and_trips_when_not(ursim):
    """Idle loop ticks keep the controller-side watchdog (10 Hz) fed; once this process stops ticking
    the controller stops the program by itself."""
    assert ursim.reset()
    arm, loop = make_loop(ursim.host, ursim.rate_hz)
    try:
        loop.start()
        time.sleep(0.5)  # idle: no chunk, only observe() -> kickWatchdog
        assert loop.fault is None and C.FAULT_PROGRAM_STOPPED not in arm.observe().faults
        loop.stop()  # no more ticks, no more kicks (connection stays open)
        time.sleep(0.3)  # > 1 / 10 Hz
        assert C.FAULT_PROGRAM_STOPPED in arm.observe().faults
    finally:
        close(arm, loop)


@pytest.mark.slow
def test_arm_pacing_with_init_wait_period(ursim):
    """ControlLoopConfig(use_arm_pacing=True) paces with ur_rtde initPeriod/waitPeriod and still tracks."""
    assert ursim.reset()
    arm = RtdeArm(RtdeArmConfig(robot_ip=ursim.host, ur_type=C.UR_TYPE_UR3, connect_timeout_s=10.0))
    with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.connect"):
        arm.connect()
    loop = ControlLoop(arm, ChunkScheduler(SchedulerConfig(execution_horizon=10, blend_window_s=0.0)),
                       Safety(SafetyConfig(camera_timeout_s=None, watchdog_timeout_s=None)),
                       ControlLoopConfig(use_arm_pacing=True))
    try:
        q0 = arm.observe().q
        delta = np.array([0.1, 0, 0, 0, 0, 0])
        loop.start()
        wait_for(lambda: loop.latest_state() is not None, 1.0, "first tick")
        assert loop.submit_chunk(ramp(q0, time.monotonic(), delta))
        time.sleep(1.4)
        loop.stop()
        rep = loop.report()
        assert rep.faults == [] and rep.commands_sent >= 0.5 * 1.4 * ursim.rate_hz
        np.testing.assert_allclose(np.array(ursim.state()["q"]), q0 + delta, atol=TRACK_TOL)
    finally:
        close(arm, loop)


def test_gripper_state_is_read_from_the_controller_outputs(ursim):
    """Before any gripper command the arm reports the gripper the controller's digital output says (the
    simulator starts open: output low = open), not 'unknown' (which the node used to feed the policy as 0 =
    closed); after a close command a fresh connection reads 'closed' back from the robot."""
    assert ursim.reset()
    cfg = RtdeArmConfig(robot_ip=ursim.host, ur_type=C.UR_TYPE_UR3, connect_timeout_s=10.0, gripper_output=0,
                        gripper_open_is_high=False)
    arm = RtdeArm(cfg)
    with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.connect"):
        arm.connect()
    try:
        assert ursim.state()["gripper"] == 1.0
        assert arm.observe().gripper == 1.0
        q = arm.observe().q
        arm.send(JointCommand(q=q, gripper=0.0))  # close
        wait_for(lambda: ursim.state()["gripper"] == 0.0, 1.0, "gripper closed in the simulator")
        assert arm.observe().gripper == 0.0
    finally:
        with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.disconnect"):
            arm.disconnect()
    arm2 = RtdeArm(cfg)
    with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.connect"):
        arm2.connect()
    try:
        wait_for(lambda: arm2.observe().gripper == 0.0, 1.0, "closed gripper read back on reconnect")
    finally:
        with client_deadline(CONNECT_DEADLINE_S, "RtdeArm.disconnect"):
            arm2.disconnect()
