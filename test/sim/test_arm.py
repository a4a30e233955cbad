"""SimArm: Arm protocol, clipping, tracking."""

from __future__ import annotations

import time

import numpy as np
import pytest

from actquant_core.robot.arm import Arm, JointCommand
from actquant_core.sim.arm import SimArm
from actquant_core.sim.mjcf import UR_SPECS

TRACK_TOL = 5e-3  # rad


@pytest.fixture(scope="module")
def arm():
    a = SimArm(model="ur3")
    a.connect()
    yield a
    a.disconnect()
    a.world.close()


def test_is_an_arm(arm):
    assert isinstance(arm, Arm)
    assert arm.control_rate_hz == 125.0


def test_send_clips_to_limits_and_speed(arm):
    spec = UR_SPECS["ur3"]
    q = arm.observe().q
    far = q.copy()
    far[0] = 100.0  # beyond the joint limit and the per-period speed limit
    sent = arm.send(JointCommand(q=far, gripper=3.0))
    assert sent.q[0] == pytest.approx(q[0] + spec.velocity_limits[0] / arm.control_rate_hz)
    np.testing.assert_allclose(sent.q[1:], q[1:])
    assert sent.gripper == 1.0
    # repeated sends saturate at the position limit
    for _ in range(int(3 * arm.control_rate_hz)):
        sent = arm.send(JointCommand(q=far))
    assert sent.q[0] == pytest.approx(spec.upper[0])
    assert np.isnan(sent.gripper)
    with pytest.raises(ValueError, match="finite"):
        arm.send(JointCommand(q=np.full(6, np.nan)))


def test_servo_stream_is_tracked(arm):
    arm.stop()
    q0 = arm.observe().q
    errs = []
    for k in range(200):
        target = q0 + 0.2 * np.sin(2 * np.pi * k / 200) * np.ones(6)
        sent = arm.send(JointCommand(q=target))
        errs.append(np.abs(arm.observe().q - sent.q).max())
    assert max(errs) < TRACK_TOL
    state = arm.observe()
    assert state.faults == () and 0.0 <= state.gripper <= 1.0


def test_send_before_connect_raises():
    a = SimArm(model="ur3e")
    assert a.control_rate_hz == 500.0
    assert a.observe().faults == ("disconnected",)
    with pytest.raises(RuntimeError, match="connect"):
        a.send(JointCommand(q=np.zeros(6)))
    a.stop()  # idempotent, never raises
    a.stop()
    a.world.close()


def test_realtime_mode_steps_in_background():
    a = SimArm(model="ur3", realtime=True)
    a.connect()
    try:
        q0 = a.observe().q
        target = q0 + 0.05
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            a.send(JointCommand(q=target))
            time.sleep(a.period)
        assert a.world.time > 0.1  # physics advanced without send() stepping it
        assert np.abs(a.observe().q - q0).max() > 0.02  # and moved towards the target
    finally:
        a.disconnect()
        a.world.close()
