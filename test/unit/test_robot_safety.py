"""Safety: NaN rejection, exact clamping of position / velocity / acceleration / step, staleness, watchdog."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actquant_core import constants as C
from actquant_core.robot.arm import ArmState, JointCommand
from actquant_core.robot.safety import Safety, SafetyConfig, SafetyViolation

EXACT = 1e-12  # float64 round-off allowed on clamped values


def state(q, t=0.0):
    return ArmState(q=np.asarray(q, dtype=np.float64), qd=np.zeros(6), stamp=t)


Q0 = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_chunk_rejects_nonfinite_with_events(bad):
    s = Safety()
    a = np.tile(np.r_[Q0, 1.0], (10, 1))
    a[3, 2] = bad
    a[7, 6] = bad
    with pytest.raises(SafetyViolation) as ei:
        s.check_chunk(a, now=1.5)
    kinds = {e.kind for e in ei.value.events}
    assert kinds == {C.SAFETY_NONFINITE}
    assert sorted(e.joint for e in ei.value.events) == [2, 6]
    assert all(e.time == 1.5 for e in ei.value.events)
    assert s.counts[C.SAFETY_NONFINITE] == 2
    s.check_chunk(np.tile(np.r_[Q0, 1.0], (10, 1)))  # a finite chunk passes


def test_check_chunk_rejects_bad_shape():
    s = Safety()
    with pytest.raises(SafetyViolation, match="shape"):
        s.check_chunk(np.zeros((10, 5)))
    with pytest.raises(SafetyViolation, match="shape"):
        s.check_chunk(np.zeros(7))


def test_velocity_and_acceleration_clamping_exact():
    cfg = SafetyConfig(qdd_max=40.0, max_step_rad=0.5)
    s = Safety(cfg)
    dt = 1 / 125
    target = Q0 + np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])  # far away: clamps bind every tick
    q_prev = Q0.copy()
    v_expected = 0.0
    saw_velocity_event = False
    for k in range(1, 20):
        out, events = s.filter(JointCommand(target), state(Q0), dt, now=k * dt)
        v_expected = min(v_expected + cfg.qdd_max * dt, cfg.qd_max[0])  # accel ramp, then speed cap
        step = out.q - q_prev
        assert step[0] == pytest.approx(v_expected * dt, abs=EXACT)
        assert step[1] == pytest.approx(-v_expected * dt, abs=EXACT)
        assert np.all(step[2:] == 0.0)
        kinds = {e.kind for e in events}
        assert C.SAFETY_VELOCITY_LIMIT in kinds  # the raw request (braking speed ~9 rad/s) exceeds 3.14
        if v_expected < cfg.qd_max[0]:
            assert C.SAFETY_ACCELERATION_LIMIT in kinds
        saw_velocity_event = True
        q_prev = out.q
    assert v_expected == cfg.qd_max[0]  # the cap was reached within the loop
    assert saw_velocity_event


def test_per_joint_velocity_limits_and_deceleration():
    cfg = SafetyConfig(qd_max=(1.0, 2.0, 3.0, 3.14, 0.5, 0.1), qdd_max=40.0)
    s = Safety(cfg)
    dt = 0.002
    s.reset(Q0)
    # bring every joint to its cap with a huge, constant request
    for _ in range(200):
        out, _ = s.filter(JointCommand(Q0 + 10.0), state(Q0), dt)
    q1 = out.q
    out2, _ = s.filter(JointCommand(Q0 + 10.0), state(Q0), dt)
    np.testing.assert_allclose((out2.q - q1) / dt, cfg.qd_max, rtol=0, atol=1e-9)
    # a request to stop where we are: speed may only drop by qdd_max*dt per tick
    out3, events = s.filter(JointCommand(out2.q), state(Q0), dt)
    v3 = (out3.q - out2.q) / dt
    np.testing.assert_allclose(v3, np.maximum(np.asarray(cfg.qd_max) - cfg.qdd_max * dt, 0.0), atol=1e-9)
    assert any(e.kind == C.SAFETY_ACCELERATION_LIMIT for e in events)


def test_position_limits_win():
    s = Safety()
    s.reset(np.array([0, 0, math.pi - 1e-4, 0, 0, 0.0]))
    out, events = s.filter(JointCommand(np.array([0, 0, 4.0, 0, 0, 0.0])), state(Q0), 1 / 125)
    assert out.q[2] <= math.pi + EXACT
    ev = [e for e in events if e.kind == C.SAFETY_POSITION_LIMIT]
    assert ev and ev[0].joint == 2 and ev[0].value == 4.0 and ev[0].limit == pytest.approx(math.pi)


def test_step_cap_for_long_dt():
    cfg = SafetyConfig(qdd_max=40.0, max_step_rad=0.01)
    s = Safety(cfg)
    s.reset(Q0)
    out, events = s.filter(JointCommand(Q0 + 1.0), state(Q0), dt=0.5)  # allowed by speed/accel, not by step
    np.testing.assert_allclose(out.q - Q0, 0.01, atol=EXACT)
    assert {e.kind for e in events} >= {C.SAFETY_STEP_LIMIT}


def test_first_command_starts_from_measured_state_and_gripper_clamped():
    s = Safety(SafetyConfig(qdd_max=40.0))
    out, events = s.filter(JointCommand(Q0 + 1.0, gripper=1.7), state(Q0 + 0.2), 1 / 500)
    # starts at the measured q (Q0 + 0.2), moves at most qdd*dt*dt
    np.testing.assert_allclose(out.q, Q0 + 0.2 + 40.0 / 500 / 500, atol=EXACT)
    assert out.gripper == 1.0
    assert any(e.kind == C.SAFETY_GRIPPER_LIMIT and e.joint == 6 for e in events)


def test_filter_rejects_nonfinite_command():
    s = Safety()
    with pytest.raises(SafetyViolation):
        s.filter(JointCommand(np.array([0, np.nan, 0, 0, 0, 0.0])), state(Q0), 0.008)
    with pytest.raises(ValueError, match="dt"):
        s.filter(JointCommand(Q0), state(Q0), 0.0)


def test_stale_inputs():
    cfg = SafetyConfig(joint_timeout_s=0.05, camera_timeout_s=0.5)
    s = Safety(cfg)
    assert not s.check_inputs(10.0, joint_stamp=9.96, camera_stamp=9.6).stop
    d = s.check_inputs(10.0, joint_stamp=9.94, camera_stamp=9.6)
    assert d.stop and d.events[0].kind == C.SAFETY_JOINT_STALE and d.events[0].value == pytest.approx(0.06)
    d = s.check_inputs(10.0, joint_stamp=9.99, camera_stamp=9.4)
    assert d.stop and [e.kind for e in d.events] == [C.SAFETY_CAMERA_STALE]
    assert not s.check_inputs(10.0, joint_stamp=9.99, camera_stamp=None, check_camera=False).stop
    d = s.check_inputs(10.0, joint_stamp=None, camera_stamp=None)
    assert d.stop and {e.kind for e in d.events} == {C.SAFETY_JOINT_STALE, C.SAFETY_CAMERA_STALE}


def test_watchdog():
    s = Safety(SafetyConfig(watchdog_timeout_s=0.3))
    assert not s.check_watchdog(100.0).stop  # never armed
    s.kick_watchdog(1.0)
    assert not s.check_watchdog(1.29).stop
    d = s.check_watchdog(1.31)
    assert d.stop and d.events[0].kind == C.SAFETY_WATCHDOG and d.events[0].limit == 0.3
    s.kick_watchdog(1.31)
    assert not s.check_watchdog(1.5).stop
    s.disarm_watchdog()
    assert not s.check_watchdog(5.0).stop


@pytest.mark.parametrize("kwargs, match", [
    (dict(qd_max=(3.14, 3.14, 3.14, 6.28, 6.28, 6.28)), "qd_max\\[3\\]=6.28"),
    (dict(qdd_max=50.0), "qdd_max=50.0"),
    (dict(q_min=(0,) * 5), "6 entries"),
    (dict(q_min=(1.0,) * 6, q_max=(0.5,) * 6), "q_min"),
    (dict(joint_timeout_s=0.0), "joint_timeout_s"),
    (dict(camera_timeout_s=-1.0), "camera_timeout_s"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyConfig(**kwargs)


def test_ur3_defaults():
    cfg = SafetyConfig.for_ur_type("ur3")
    assert cfg.q_max[2] == pytest.approx(math.pi) and cfg.q_max[0] == pytest.approx(2 * math.pi)
    assert max(cfg.qd_max) <= C.RTDE_MAX_JOINT_SPEED
    with pytest.raises(ValueError, match="ur5"):
        SafetyConfig.for_ur_type("ur5")


@pytest.mark.parametrize("rate_hz", [125.0, 500.0])
def test_lag_recovery_converges_without_limit_cycle(rate_hz):
    """Start 0.3 rad behind a target moving at 0.5 rad/s: the output catches up, never overshoots by
    more than OVERSHOOT_TOL, and then passes the feasible target through exactly."""
    OVERSHOOT_TOL = 1e-9  # rad: the discrete braking law does not overshoot (float round-off only)
    s = Safety(SafetyConfig(qdd_max=10.0))
    dt = 1.0 / rate_hz
    s.reset(Q0 - np.array([0.3, 0, 0, 0, 0, 0]))
    worst_over = 0.0
    err = []
    for k in range(int(3.0 * rate_hz)):
        target = Q0 + np.array([0.5 * k * dt, 0, 0, 0, 0, 0])
        out, _ = s.filter(JointCommand(target), state(Q0), dt)
        worst_over = max(worst_over, out.q[0] - target[0])
        err.append(abs(out.q[0] - target[0]))
    assert worst_over < OVERSHOOT_TOL
    assert max(err[int(1.5 * rate_hz):]) < 1e-9  # converged: exact pass-through
    assert err[0] > 0.29  # it did start far behind (the clamp was active)
