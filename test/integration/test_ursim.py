"""The unmodified ur_rtde clients against actquant-ursim (simulator in a subprocess, real sockets).

Every ur_rtde construction / blocking call runs under ``client_deadline`` (a hung constructor holds the
GIL, so only faulthandler's C watchdog can end it).  Clients are disconnected before the simulator stops.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from actquant_core import constants as C
from actquant_core.sim.ursim.testing import client_deadline, ursim_fixture

rtde_receive = pytest.importorskip("rtde_receive")
rtde_control = pytest.importorskip("rtde_control")
rtde_io = pytest.importorskip("rtde_io")
dashboard_client = pytest.importorskip("dashboard_client")

CONNECT_DEADLINE_S = 15.0  # hard limit for one ur_rtde constructor / disconnect
Q_EXACT_TOL = 1e-6  # rad: kinematic backend, a finished moveJ lands exactly (float round-off only)
SERVO_FINAL_TOL = 1e-3  # rad: servoJ error after holding the final target for SERVO_HOLD_S
SERVO_HOLD_S = 0.6  # >= 6 servo time constants (lookahead 0.1 s, gain 300)
SERVO_LAG_TOL = 0.1  # rad: streaming lag; lookahead 0.1 s x peak speed 0.63 rad/s = 0.063 rad + transport
FAULT_REACTION_S = 0.2  # a fault must make commands fail within this time
STOP_SETTLE_S = 0.3  # the arm must be at rest this long after a stop (deceleration >= 10 rad/s^2)
TIMESTAMP_RATE_TOL = 0.25  # relative: controller time advances at wall-clock speed (loaded 2-core CI)

ursim_e = ursim_fixture(model=C.UR_TYPE_UR3E)  # e-series, 500 Hz
ursim_cb3 = ursim_fixture(model=C.UR_TYPE_UR3)  # CB3, 125 Hz


def _receive(host: str):
    with client_deadline(CONNECT_DEADLINE_S, "RTDEReceiveInterface"):
        return rtde_receive.RTDEReceiveInterface(host)


def _control(host: str):
    with client_deadline(CONNECT_DEADLINE_S, "RTDEControlInterface"):
        return rtde_control.RTDEControlInterface(host)


def _dashboard(host: str):
    d = dashboard_client.DashboardClient(host)
    with client_deadline(CONNECT_DEADLINE_S, "DashboardClient.connect"):
        d.connect()
    return d


def _disconnect(*clients) -> None:
    for cl in clients:
        with client_deadline(CONNECT_DEADLINE_S, f"{type(cl).__name__}.disconnect"):
            cl.disconnect()


def _wait_for(pred, timeout_s: float, what: str, poll_s: float = 0.005):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _assert_realtime(r, window_s: float = 0.5) -> None:
    """The controller clock (RTDE timestamp) advances at wall-clock speed."""
    t0, w0 = r.getTimestamp(), time.monotonic()
    time.sleep(window_s)
    t1, w1 = r.getTimestamp(), time.monotonic()
    assert abs((t1 - t0) / (w1 - w0) - 1.0) < TIMESTAMP_RATE_TOL, f"controller time {t1 - t0:.3f} s in {w1 - w0:.3f} s"


def _assert_at_rest(r, window_s: float = 0.1) -> None:
    q_a = np.array(r.getActualQ())
    time.sleep(window_s)
    q_b = np.array(r.getActualQ())
    assert np.max(np.abs(q_b - q_a)) < 1e-9, f"arm still moving: dq={q_b - q_a}"
    assert np.max(np.abs(r.getActualQd())) < 1e-9


@pytest.fixture(scope="module")
def recv_e(ursim_e):
    """One RTDEReceiveInterface on the e-series simulator shared by the tests (each disconnect costs 0.5 s)."""
    r = _receive(ursim_e.host)
    yield r
    _disconnect(r)


@pytest.fixture(autouse=True)
def _healthy(request):
    """Every test starts from a healthy, powered arm (earlier tests inject faults)."""
    for name in ("ursim_e", "ursim_cb3", "ursim_mj"):
        if name in request.fixturenames:
            request.getfixturevalue(name).recover()
    yield


def test_receive_interface_reads_state(ursim_e):
    assert ursim_e.reset([0.0] * 6)
    r = _receive(ursim_e.host)
    try:
        _wait_for(lambda: np.allclose(r.getActualQ(), 0.0, atol=1e-12), 1.0, "q after reset")
        assert r.getRobotMode() == C.URSIM_ROBOT_MODE_RUNNING
        assert r.getSafetyMode() == C.URSIM_SAFETY_MODE_NORMAL
        assert r.getSafetyStatusBits() == 1 << C.URSIM_SAFETY_BIT_NORMAL
        # UR3e flange at the zero pose from the DH parameters: (a2 + a3, -(d4 + d6), d1 - d5), R = Rx(pi/2)
        expected = [-0.24355 - 0.2132, -(0.13105 + 0.0921), 0.15185 - 0.08535, math.pi / 2, 0.0, 0.0]
        np.testing.assert_allclose(r.getActualTCPPose(), expected, atol=1e-9)
        _assert_realtime(r)
        assert r.getActualDigitalOutputBits() in (0, 1)
        assert r.getOutputIntRegister(12) == 0
    finally:
        _disconnect(r)
        assert ursim_e.reset()


def test_servoj_stream_is_tracked(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        assert c.isProgramRunning()
        dt = 1.0 / ursim_e.rate_hz
        q0 = np.array(r.getActualQ())
        amp = np.array([0.3, -0.2, 0.25, 0.0, 0.0, 0.4])  # rad, cosine ramp over T_S
        T_S = 1.0
        n_move, n_hold = int(T_S / dt), int(SERVO_HOLD_S / dt)
        lag = []
        for i in range(n_move + n_hold):
            t_start = c.initPeriod()
            s = min(i * dt / T_S, 1.0)
            target = q0 + amp * (1.0 - math.cos(math.pi * s)) / 2.0
            assert c.servoJ(target.tolist(), 0.5, 0.5, dt, 0.1, 300.0), f"servoJ refused at step {i}"
            if i % 10 == 0 and i < n_move:
                lag.append(float(np.max(np.abs(np.array(r.getActualQ()) - target))))
            c.waitPeriod(t_start)
        final_err = float(np.max(np.abs(np.array(r.getActualQ()) - (q0 + amp))))
        assert final_err < SERVO_FINAL_TOL, f"final servo error {final_err:.2e} rad"
        assert max(lag) < SERVO_LAG_TOL, f"max streaming lag {max(lag):.3f} rad"
        assert max(lag) > 1e-3, "the servo follower shows no lag at all: is the target applied directly?"
        with client_deadline(CONNECT_DEADLINE_S, "servoStop"):
            assert c.servoStop(10.0)
        _assert_at_rest(r)
        with client_deadline(CONNECT_DEADLINE_S, "moveJ back"):
            assert c.moveJ(q0.tolist(), 1.0, 4.0)
    finally:
        _disconnect(c)


def test_movej_reaches_target_cb3(ursim_cb3):
    r = _receive(ursim_cb3.host)
    c = _control(ursim_cb3.host)
    try:
        _assert_realtime(r)
        q0 = np.array(r.getActualQ())
        target = q0 + np.array([0.4, -0.3, 0.2, 0.1, -0.1, 0.5])
        v, a = 1.0, 2.0
        t_expected = 0.5 / v + v / a  # leading joint (0.5 rad) trapezoid: cruise + ramps
        t_start = time.monotonic()
        with client_deadline(CONNECT_DEADLINE_S, "moveJ"):
            assert c.moveJ(target.tolist(), v, a)
        elapsed = time.monotonic() - t_start
        np.testing.assert_allclose(r.getActualQ(), target, atol=Q_EXACT_TOL)
        assert t_expected - 0.05 < elapsed < t_expected + 0.5, f"moveJ took {elapsed:.3f} s, expected {t_expected}"
        with client_deadline(CONNECT_DEADLINE_S, "moveJ async"):
            assert c.moveJ(q0.tolist(), v, a, True)
        assert c.getAsyncOperationProgress() >= 0  # running
        _wait_for(lambda: c.getAsyncOperationProgress() < 0, 3.0, "async moveJ finished")
        np.testing.assert_allclose(r.getActualQ(), q0, atol=Q_EXACT_TOL)
    finally:
        _disconnect(c, r)


def test_protective_stop_fails_commands_and_stops_motion(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        dt = 1.0 / ursim_e.rate_hz
        q0 = np.array(r.getActualQ())
        ok, t_fault, i = True, None, 0
        while ok and i < 2000:
            t_start = c.initPeriod()
            target = q0.copy()
            target[0] += 0.5 * min(i * dt, 1.0)  # 0.5 rad/s ramp
            ok = c.servoJ(target.tolist(), 0.5, 0.5, dt, 0.1, 300.0)
            if i == 100:
                ursim_e.inject(C.URSIM_FAULT_PROTECTIVE_STOP)
                t_fault = time.monotonic()
            i += 1
            c.waitPeriod(t_start)
        assert not ok, "servoJ kept succeeding after a protective stop"
        assert time.monotonic() - t_fault < FAULT_REACTION_S + 0.05
        assert r.isProtectiveStopped()
        assert r.getSafetyStatusBits() & (1 << C.RTDE_SAFETY_BIT_PROTECTIVE_STOP)
        assert r.getRuntimeState() != C.RTDE_RUNTIME_STATE_PLAYING
        time.sleep(STOP_SETTLE_S)
        _assert_at_rest(r)
        assert not c.moveJ(q0.tolist(), 1.0, 2.0)
        # recovery as on the real robot: unlock from the dashboard, re-upload the control script
        d = _dashboard(ursim_e.host)
        assert "PROTECTIVE_STOP" in d.safetystatus()
        d.unlockProtectiveStop()
        d.closeSafetyPopup()
        assert "NORMAL" in d.safetystatus()
        assert c.reuploadScript()
        _wait_for(c.isProgramRunning, 5.0, "control script running again")
        with client_deadline(CONNECT_DEADLINE_S, "moveJ after recovery"):
            assert c.moveJ(q0.tolist(), 1.0, 4.0)
        _disconnect(d)
    finally:
        _disconnect(c)


def test_emergency_stop_and_recovery(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    d = _dashboard(ursim_e.host)
    try:
        q0 = np.array(r.getActualQ())
        assert c.speedJ([0.3, 0, 0, 0, 0, 0], 2.0, 0.0)
        time.sleep(0.2)
        assert abs(r.getActualQd()[0] - 0.3) < 1e-9
        ursim_e.inject(C.URSIM_FAULT_EMERGENCY_STOP)
        _wait_for(r.isEmergencyStopped, FAULT_REACTION_S, "emergency stop bit")
        assert r.getRobotMode() == C.URSIM_ROBOT_MODE_POWER_OFF
        assert r.getRuntimeState() == C.URSIM_RUNTIME_STOPPED
        assert not c.speedJ([0.3, 0, 0, 0, 0, 0], 2.0, 0.0)
        time.sleep(STOP_SETTLE_S)
        _assert_at_rest(r)
        assert "SYSTEM_EMERGENCY_STOP" in d.safetystatus()
        assert "POWER_OFF" in d.robotmode()
        # the program cannot start while the e-stop is active
        c.reuploadScript()
        time.sleep(0.1)
        assert not c.isProgramRunning()
        ursim_e.command(f"{C.URSIM_DASHBOARD_CONTROL_WORD} release {C.URSIM_FAULT_EMERGENCY_STOP}")
        d.powerOn()
        d.brakeRelease()
        _wait_for(lambda: r.getRobotMode() == C.URSIM_ROBOT_MODE_RUNNING, 1.0, "robot mode RUNNING")
        assert c.reuploadScript()
        _wait_for(c.isProgramRunning, 5.0, "control script running again")
        with client_deadline(CONNECT_DEADLINE_S, "moveJ after e-stop"):
            assert c.moveJ(q0.tolist(), 1.0, 4.0)
    finally:
        _disconnect(d, c)


def test_program_stop_fault(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        assert c.speedJ([0, 0, 0, 0, 0, -0.2], 2.0, 0.0)
        ursim_e.inject(C.URSIM_FAULT_PROGRAM_STOP)
        _wait_for(lambda: r.getRuntimeState() == C.URSIM_RUNTIME_STOPPED, FAULT_REACTION_S, "runtime STOPPED")
        # the control interface reads its own RTDE stream: it may see the stop a package later than `r`
        _wait_for(lambda: not c.isProgramRunning(), FAULT_REACTION_S, "control interface sees the stopped program")
        assert not c.speedJ([0, 0, 0, 0, 0, -0.2], 2.0, 0.0)
        time.sleep(STOP_SETTLE_S)
        _assert_at_rest(r)
        assert r.getSafetyMode() == C.URSIM_SAFETY_MODE_NORMAL  # not a safety event
    finally:
        _disconnect(c)


def test_connection_drop_is_seen_by_clients(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        assert r.isConnected() and c.isConnected()
        refuse_s = 1.0
        ursim_e.inject(C.URSIM_FAULT_CONNECTION_DROP, refuse_s)
        t_drop = time.monotonic()
        _wait_for(lambda: not r.isConnected(), 1.0, "receive interface to see the drop")
        _wait_for(lambda: not c.isConnected(), 1.0, "control interface to see the drop")
        time.sleep(max(0.0, refuse_s + 0.2 - (time.monotonic() - t_drop)))
        with client_deadline(CONNECT_DEADLINE_S, "RTDEReceiveInterface.reconnect"):
            assert r.reconnect()
        assert r.isConnected()
        assert len(r.getActualQ()) == 6
    finally:
        _disconnect(c)


def test_watchdog_stops_motion_when_kicks_stop(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        assert c.setWatchdog(10.0)  # expires after 0.1 s without input
        assert c.speedJ([0.2, 0, 0, 0, 0, 0], 2.0, 0.0)
        # let the controller read the speedJ command before the first kick overwrites the command register
        # (kickWatchdog writes command 0; a real controller has the same race)
        _wait_for(lambda: r.getTargetQd()[0] > 0.0, 0.05, "speedJ picked up")
        for _ in range(30):  # 0.3 s of kicks at ~100 Hz keep it running
            assert c.kickWatchdog()
            time.sleep(0.01)
        assert r.getRuntimeState() == C.RTDE_RUNTIME_STATE_PLAYING
        assert abs(r.getActualQd()[0] - 0.2) < 1e-9
        time.sleep(0.1 + STOP_SETTLE_S)  # no kicks
        assert r.getRuntimeState() == C.URSIM_RUNTIME_STOPPED
        _assert_at_rest(r)
        assert not c.speedJ([0.2, 0, 0, 0, 0, 0], 2.0, 0.0)
    finally:
        _disconnect(c)


def test_dashboard_basics(ursim_e):
    d = _dashboard(ursim_e.host)
    try:
        assert d.isConnected()
        assert d.polyscopeVersion() == "5.11.1.108318"
        assert d.getSerialNumber().isdigit()
        assert d.isInRemoteControl()
        assert d.robotmode() == "Robotmode: RUNNING"
        assert d.safetystatus() == "Safetystatus: NORMAL"
        d.stop()
        assert d.programState().startswith("STOPPED")
        assert not d.running()
        with pytest.raises(RuntimeError):
            d.play()  # nothing paused
        d.unlockProtectiveStop()  # no protective stop: accepted
        d.closeSafetyPopup()
        assert d.getRobotModel() == "UR3"
        c = _control(ursim_e.host)
        try:
            d.pause()
            assert d.programState().startswith("PAUSED")
            _wait_for(lambda: not c.isProgramRunning(), 0.5, "paused program seen by the control interface")
            d.play()
            assert d.running()
            _wait_for(c.isProgramRunning, 0.5, "resumed program seen by the control interface")
        finally:
            _disconnect(c)
        d.quit()
    finally:
        _disconnect(d)


def test_disconnect_cleans_up_and_new_client_works(ursim_e, recv_e):
    # Counted per kind: RTDE and script sockets exactly (the shared receive interface), dashboard ones
    # at most as many as before (this query's own socket; an earlier one-line query may still be open
    # on the server side for a moment after its client closed it, so an exact total is racy).
    before = ursim_e.state()["connections_by_kind"]
    r1 = _receive(ursim_e.host)
    c1 = _control(ursim_e.host)
    during = ursim_e.state()["connections_by_kind"]
    assert during["rtde"] >= before["rtde"] + 2, (before, during)  # r1 and c1 each hold an RTDE socket
    assert c1.servoJ(r1.getActualQ(), 0.5, 0.5, 0.002, 0.1, 300.0)
    _disconnect(c1, r1)

    def dropped() -> bool:
        now = ursim_e.state()["connections_by_kind"]
        return (now["rtde"] == before["rtde"] and now["script"] == before["script"]
                and now["dashboard"] <= max(before["dashboard"], 1))

    _wait_for(dropped, 3.0, "server to drop the closed connections")
    r2 = recv_e
    c2 = _control(ursim_e.host)
    try:
        q = np.array(r2.getActualQ())
        target = q + np.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0])
        with client_deadline(CONNECT_DEADLINE_S, "moveJ"):
            assert c2.moveJ(target.tolist(), 1.0, 4.0)
            assert c2.moveJ(q.tolist(), 1.0, 4.0)
        np.testing.assert_allclose(r2.getActualQ(), q, atol=Q_EXACT_TOL)
    finally:
        _disconnect(c2)


def test_io_standard_digital_out_drives_gripper(ursim_e, recv_e):
    r = recv_e
    with client_deadline(CONNECT_DEADLINE_S, "RTDEIOInterface"):
        io = rtde_io.RTDEIOInterface(ursim_e.host)
    try:
        assert io.setStandardDigitalOut(0, True)
        _wait_for(lambda: r.getActualDigitalOutputBits() & 1, 0.5, "digital out 0 high")
        _wait_for(lambda: ursim_e.state()["gripper"] == 0.0, 0.5, "gripper closed")
        assert io.setStandardDigitalOut(0, False)
        _wait_for(lambda: ursim_e.state()["gripper"] == 1.0, 0.5, "gripper open")
        _wait_for(lambda: not r.getActualDigitalOutputBits() & 1, 0.5, "digital out 0 low")
    finally:
        _disconnect(io)


def test_speedj_speedstop_and_stopscript(ursim_e, recv_e):
    r = recv_e
    c = _control(ursim_e.host)
    try:
        qd = [0.0, 0.0, 0.0, -0.3, 0.0, 0.2]
        assert c.speedJ(qd, 3.0, 0.0)
        _wait_for(lambda: np.allclose(r.getActualQd(), qd, atol=1e-9), 0.5, "speedJ velocity reached")
        with client_deadline(CONNECT_DEADLINE_S, "speedStop"):
            assert c.speedStop(10.0)
        _assert_at_rest(r)
        with client_deadline(CONNECT_DEADLINE_S, "stopScript"):
            c.stopScript()
        _wait_for(lambda: not c.isProgramRunning(), 0.5, "control script stopped")
        assert r.getRuntimeState() == C.URSIM_RUNTIME_STOPPED
        assert not c.speedJ(qd, 3.0, 0.0)
    finally:
        _disconnect(c)


def test_upper_range_registers(ursim_e):
    ctl = rtde_control.RTDEControlInterface
    flags = ctl.FLAG_UPLOAD_SCRIPT | ctl.FLAG_UPPER_RANGE_REGISTERS
    with client_deadline(CONNECT_DEADLINE_S, "RTDEControlInterface upper range"):
        c = rtde_control.RTDEControlInterface(ursim_e.host, -1.0, flags)
    with client_deadline(CONNECT_DEADLINE_S, "RTDEReceiveInterface upper range"):
        r = rtde_receive.RTDEReceiveInterface(ursim_e.host, -1.0, [], False, True)
    try:
        q = np.array(r.getActualQ())
        target = q + np.array([0.0, 0.1, 0.0, 0.0, 0.0, 0.0])
        with client_deadline(CONNECT_DEADLINE_S, "moveJ upper range"):
            assert c.moveJ(target.tolist(), 1.0, 4.0)
        np.testing.assert_allclose(r.getActualQ(), target, atol=Q_EXACT_TOL)
        state = ursim_e.state()
        assert state["program"] == "rtde_control"
        pose = c.getForwardKinematics()  # answered through output_double_register_24..29
        np.testing.assert_allclose(pose, r.getActualTCPPose(), atol=1e-9)
    finally:
        _disconnect(c, r)


def test_cli_ready_file_and_sigterm(tmp_path):
    """The command line writes its READY line to --ready-file and exits 0 on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    from actquant_core.sim.ursim.testing import pick_loopback_host

    ready = tmp_path / "ursim.ready"
    host = pick_loopback_host()
    proc = subprocess.Popen([sys.executable, "-m", "actquant_core.sim.ursim", "--host", host, "--model", "ur3",
                             "--ready-file", str(ready), "--log-level", "WARNING", "--exit-with-parent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        _wait_for(ready.exists, 20.0, "ready file", poll_s=0.05)
        line = ready.read_text().strip()
        assert line.startswith(C.URSIM_READY_LINE) and f"host={host}" in line and "rate_hz=125" in line
        from actquant_core.sim.ursim.testing import dashboard_command

        assert dashboard_command(host, "robotmode") == "Robotmode: RUNNING"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


ursim_mj = ursim_fixture(model=C.UR_TYPE_UR3, backend="mujoco")  # CB3 + MuJoCo UR3 world
MUJOCO_PLANT_TOL = 2e-3  # rad: the world's joint servo tracks the controller's command this closely


def test_mujoco_backend_tracks_servoj(ursim_mj):
    r = _receive(ursim_mj.host)
    c = _control(ursim_mj.host)
    try:
        dt = 1.0 / ursim_mj.rate_hz
        q0 = np.array(r.getActualQ())
        np.testing.assert_allclose(q0, ursim_mj.state()["target_q"], atol=MUJOCO_PLANT_TOL)
        amp = np.array([0.2, -0.15, 0.2, 0.0, 0.0, 0.3])
        n_move, n_hold = int(0.6 / dt), int(SERVO_HOLD_S / dt)
        plant_err = []
        for i in range(n_move + n_hold):
            t_start = c.initPeriod()
            s = min(i / n_move, 1.0)
            assert c.servoJ((q0 + amp * (1.0 - math.cos(math.pi * s)) / 2.0).tolist(), 0.5, 0.5, dt, 0.1, 300.0)
            if i % 5 == 0:  # one snapshot (two ur_rtde getters may read two different packages)
                st = ursim_mj.state()
                plant_err.append(float(np.max(np.abs(np.array(st["target_q"]) - np.array(st["q"])))))
            c.waitPeriod(t_start)
        final_err = float(np.max(np.abs(np.array(r.getActualQ()) - (q0 + amp))))
        assert final_err < SERVO_FINAL_TOL, f"final servo error {final_err:.2e} rad (MuJoCo)"
        assert max(plant_err) < MUJOCO_PLANT_TOL, f"MuJoCo plant lags the command by {max(plant_err):.2e} rad"
        with client_deadline(CONNECT_DEADLINE_S, "IO on MuJoCo"):
            io = rtde_io.RTDEIOInterface(ursim_mj.host)
        assert io.setStandardDigitalOut(0, True)
        _wait_for(lambda: ursim_mj.state()["gripper"] < 0.05, 1.0, "MuJoCo gripper closed")
        assert io.setStandardDigitalOut(0, False)
        _wait_for(lambda: ursim_mj.state()["gripper"] > 0.95, 1.0, "MuJoCo gripper open")
        _disconnect(io)
    finally:
        _disconnect(c, r)
