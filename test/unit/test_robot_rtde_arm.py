"""RtdeArm without a controller: config limits, unreachable / hanging controller -> clear error naming
the IP (never a hang), servoJ arguments, gripper IO, fault bits, watchdog kicks, exit paths.

Fakes stand in for the ur_rtde interfaces; the unreachable / silent-controller tests use real sockets
and the real ur_rtde client.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from actquant_core import constants as C
from actquant_core.robot.arm import JointCommand
from actquant_core.robot.clock import SimulatedClock
from actquant_core.robot.errors import ArmConnectionError, ArmFaultError
from actquant_core.robot.rtde_arm import (RtdeArm, RtdeArmConfig, RtdeFactories, construct_with_timeout,
                                          faults_from_status, rtde_probe)

Q0 = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]


class FakeReceive:
    def __init__(self):
        self.q = list(Q0)
        self.bits = 1  # normal mode
        self.runtime = C.RTDE_RUNTIME_STATE_PLAYING
        self.ts = 0.0
        self.connected = True
        self.calls = []

    def isConnected(self):
        return self.connected

    def getActualQ(self):
        return list(self.q)

    def getActualQd(self):
        return [0.0] * 6

    def getSafetyStatusBits(self):
        return self.bits

    def getRuntimeState(self):
        return self.runtime

    def getTimestamp(self):
        return self.ts

    def disconnect(self):
        self.calls.append("disconnect")
        self.connected = False


class FakeControl:
    def __init__(self):
        self.calls = []
        self.servo_ok = True
        self.connected = True

    def isConnected(self):
        return self.connected

    def servoJ(self, q, v, a, t, lookahead, gain):
        self.calls.append(("servoJ", tuple(q), v, a, t, lookahead, gain))
        return self.servo_ok

    def servoStop(self, a=10.0):
        self.calls.append(("servoStop", a))
        return True

    def stopScript(self):
        self.calls.append(("stopScript",))

    def disconnect(self):
        self.calls.append(("disconnect",))
        self.connected = False

    def setWatchdog(self, f):
        self.calls.append(("setWatchdog", f))
        return True

    def kickWatchdog(self):
        self.calls.append(("kickWatchdog",))
        return True

    def names(self):
        return [c[0] for c in self.calls]


class FakeIO:
    def __init__(self):
        self.calls = []

    def setStandardDigitalOut(self, i, v):
        self.calls.append(("std", i, v))
        return True

    def setToolDigitalOut(self, i, v):
        self.calls.append(("tool", i, v))
        return True

    def disconnect(self):
        self.calls.append(("disconnect",))


@pytest.fixture
def listener():
    """A real TCP listener on 127.0.0.x:30004 that accepts and never speaks (in a subprocess, so no
    Python thread of ours competes with the ur_rtde client for the GIL)."""
    host = "127.0.0.61"
    code = (
        "import socket,time\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{host}', {C.RTDE_PORT}))\n"
        "s.listen(8); print('ready', flush=True)\n"
        "conns=[]\n"
        "while True:\n    c,_=s.accept(); conns.append(c)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield host
    finally:
        p.kill()
        p.wait(5)


def fake_arm(cfg_kw=None, clock=None):
    rcv, ctl, io = FakeReceive(), FakeControl(), FakeIO()
    fac = RtdeFactories(control=lambda ip, f, flags: ctl, receive=lambda ip, f: rcv, io=lambda ip: io,
                        flags_upload=1, flags_urcap=2)
    cfg = RtdeArmConfig(**{"robot_ip": "127.0.0.62", **(cfg_kw or {})})
    arm = RtdeArm(cfg, clock=clock or SimulatedClock(10.0), factories=fac)
    return arm, rcv, ctl, io


@pytest.fixture
def probe_ok(monkeypatch):
    """Skip the network probes for fake interfaces (controller reports CB3 / e-series per ur_type)."""
    monkeypatch.setattr("actquant_core.robot.rtde_arm.rtde_probe", lambda host, timeout_s: (3, 15, 0, 0))
    monkeypatch.setattr("actquant_core.robot.rtde_arm.probe_dashboard", lambda host, timeout_s: "Connected")


@pytest.fixture
def probe_eseries(monkeypatch):
    monkeypatch.setattr("actquant_core.robot.rtde_arm.rtde_probe", lambda host, timeout_s: (5, 11, 1, 0))
    monkeypatch.setattr("actquant_core.robot.rtde_arm.probe_dashboard", lambda host, timeout_s: "Connected")


# -- configuration -------------------------------------------------------------------------------------
def test_robot_ip_has_no_default():
    with pytest.raises(TypeError):
        RtdeArmConfig()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="robot_ip"):
        RtdeArmConfig(robot_ip="  ")


@pytest.mark.parametrize("kw, match", [
    (dict(lookahead_time_s=0.02), "lookahead_time_s=0.02.*0.03, 0.2"),
    (dict(lookahead_time_s=0.25), "lookahead_time_s"),
    (dict(gain=99.0), "gain=99.0.*100.0, 2000.0"),
    (dict(gain=2500.0), "gain"),
    (dict(servo_velocity=4.0), "servo_velocity=4.0"),
    (dict(servo_acceleration=41.0), "servo_acceleration"),
    (dict(ur_type="ur5"), "ur_type"),
    (dict(gripper_output=9), "gripper_output"),
    (dict(frequency_hz=1000.0), "frequency_hz"),
])
def test_config_limits(kw, match):
    with pytest.raises(ValueError, match=match):
        RtdeArmConfig(robot_ip="192.168.1.10", **kw)


def test_rates_per_model():
    assert RtdeArmConfig(robot_ip="10.0.0.2").rate_hz == 125.0
    assert RtdeArmConfig(robot_ip="10.0.0.2", ur_type="ur3e").rate_hz == 500.0


# -- unreachable / hanging controller: clear error naming the IP, never a hang -----------------------
def test_unreachable_robot_names_the_ip():
    arm = RtdeArm(RtdeArmConfig(robot_ip="127.0.0.63", connect_timeout_s=2.0))
    t0 = time.monotonic()
    with pytest.raises(ArmConnectionError, match=r"127\.0\.0\.63"):
        arm.connect()
    assert time.monotonic() - t0 < 2.5
    assert not arm.connected


def test_silent_controller_fails_the_probe_instead_of_hanging(listener):
    """A device that accepts on 30004 but never answers would block the real ur_rtde constructor
    (holding the GIL); connect must fail within its timeout, naming the IP."""
    arm = RtdeArm(RtdeArmConfig(robot_ip=listener, connect_timeout_s=1.0))
    t0 = time.monotonic()
    with pytest.raises(ArmConnectionError, match=rf"{listener}.*no RTDE answer"):
        arm.connect()
    assert time.monotonic() - t0 < 2.0
    assert not arm.connected


class _FakeRtdeServer(threading.Thread):
    """Speaks just enough RTDE for ``rtde_probe``: V, v, O, S -> one U package, P."""

    def __init__(self, host: str, version=(5, 11, 1, 0), stream=True):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, C.RTDE_PORT))
        self.sock.listen(1)
        self.version, self.stream = version, stream
        self.seen = []

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            while True:
                head = conn.recv(3)
                if len(head) < 3:
                    return
                size, kind = struct.unpack(">HB", head)
                if size > 3:
                    conn.recv(size - 3)
                self.seen.append(chr(kind))
                if kind == ord("V"):
                    conn.sendall(struct.pack(">HBB", 4, kind, 1))
                elif kind == ord("v"):
                    conn.sendall(struct.pack(">HBIIII", 19, kind, *self.version))
                elif kind == ord("O"):
                    conn.sendall(struct.pack(">HBB", 4 + 6, kind, 1) + b"DOUBLE")
                elif kind == ord("S"):
                    conn.sendall(struct.pack(">HBB", 4, kind, 1))
                    if self.stream:
                        conn.sendall(struct.pack(">HB", 5, ord("M")) + b"hi")  # text message: skipped
                        conn.sendall(struct.pack(">HBBd", 12, ord("U"), 1, 12.5))
                elif kind == ord("P"):
                    conn.sendall(struct.pack(">HBB", 4, kind, 1))
                    return


def test_rtde_probe_handshake_and_model_check():
    srv = _FakeRtdeServer("127.0.0.64")
    srv.start()
    try:
        assert rtde_probe("127.0.0.64", 2.0) == (5, 11, 1, 0)
        srv.join(2)
        assert srv.seen == ["V", "v", "O", "S", "P"]
    finally:
        srv.sock.close()
    srv = _FakeRtdeServer("127.0.0.64", stream=False)  # starts but never streams data
    srv.start()
    try:
        with pytest.raises(ArmConnectionError, match="127.0.0.64.*no data package"):
            rtde_probe("127.0.0.64", 0.5)
    finally:
        srv.sock.close()
    srv = _FakeRtdeServer("127.0.0.64", version=(5, 11, 1, 0))
    srv.start()
    try:
        arm = RtdeArm(RtdeArmConfig(robot_ip="127.0.0.64", ur_type="ur3", connect_timeout_s=1.0))
        with pytest.raises(ArmConnectionError, match="ur_type='ur3'.*5.11.1.0.*e-series"):
            arm.connect()
    finally:
        srv.sock.close()


def test_construct_with_timeout_disconnects_late_result():
    class Late:
        disconnected = False

        def disconnect(self):
            Late.disconnected = True

    def slow():
        time.sleep(0.3)
        return Late()

    with pytest.raises(ArmConnectionError, match="10.1.2.3"):
        construct_with_timeout(slow, "Thing", "10.1.2.3", 0.05)
    deadline = time.monotonic() + 3
    while not Late.disconnected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Late.disconnected
    with pytest.raises(ArmConnectionError, match="boom"):
        construct_with_timeout(lambda: (_ for _ in ()).throw(RuntimeError("boom")), "Thing", "10.1.2.3", 1.0)


def test_control_failure_disconnects_receive(probe_ok):
    rcv = FakeReceive()

    def bad_control(ip, f, flags):
        raise RuntimeError("ur_rtde: Please enable remote control on the robot!")

    fac = RtdeFactories(control=bad_control, receive=lambda ip, f: rcv, io=lambda ip: FakeIO(),
                        flags_upload=1, flags_urcap=2)
    arm = RtdeArm(RtdeArmConfig(robot_ip="10.9.9.9"), factories=fac)
    with pytest.raises(ArmConnectionError, match="10.9.9.9.*remote control"):
        arm.connect()
    assert rcv.calls == ["disconnect"] and not arm.connected


# -- streaming -------------------------------------------------------------------------------------------
def test_send_uses_servoj_parameters_and_returns_sent(probe_eseries):
    arm, rcv, ctl, io = fake_arm(dict(ur_type="ur3e", lookahead_time_s=0.05, gain=500.0, gripper_output=2))
    arm.connect()
    assert ("setWatchdog", 10.0) in ctl.calls
    q = np.array(Q0) + 0.01
    sent = arm.send(JointCommand(q, gripper=0.9))
    np.testing.assert_array_equal(sent.q, q)
    name, q_sent, v, a, t, look, gain = [c for c in ctl.calls if c[0] == "servoJ"][0]
    assert q_sent == tuple(q) and t == pytest.approx(1 / 500) and look == 0.05 and gain == 500.0
    assert v == arm.config.servo_velocity and a == arm.config.servo_acceleration
    assert sent.gripper == 1.0 and io.calls == [("std", 2, True)]
    # hysteresis: 0.45 is inside the dead band (0.4, 0.6): no switch; 0.3 closes
    assert arm.send(JointCommand(q, gripper=0.45)).gripper == 1.0
    assert arm.send(JointCommand(q, gripper=0.3)).gripper == 0.0
    assert io.calls == [("std", 2, True), ("std", 2, False)]
    with pytest.raises(ValueError, match="finite"):
        arm.send(JointCommand(np.array([0, 0, np.nan, 0, 0, 0.0])))
    ctl.servo_ok = False
    with pytest.raises(ArmFaultError, match="127.0.0.62"):
        arm.send(JointCommand(q))


def test_observe_faults_and_staleness(probe_ok):
    clock = SimulatedClock(5.0)
    arm, rcv, ctl, _ = fake_arm(clock=clock)
    arm.connect()
    rcv.ts = 1.0
    s = arm.observe()
    assert s.faults == () and s.stamp == 5.0
    clock.advance(0.1)  # controller timestamp frozen: the stamp does not move
    assert arm.observe().stamp == 5.0
    rcv.ts = 1.1
    assert arm.observe().stamp == pytest.approx(5.1)
    rcv.bits = 1 | (1 << C.RTDE_SAFETY_BIT_PROTECTIVE_STOP)
    assert arm.observe().faults == (C.FAULT_PROTECTIVE_STOP,)
    rcv.bits = 1
    rcv.runtime = 1
    assert arm.observe().faults == (C.FAULT_PROGRAM_STOPPED,)
    rcv.connected = False
    assert arm.observe().faults == (C.FAULT_DISCONNECTED,)


def test_faults_from_status_bits():
    assert faults_from_status(1, 2, True) == ()
    assert faults_from_status(1 << 7, 2, True) == (C.FAULT_EMERGENCY_STOP,)
    assert faults_from_status(1 << 4, 2, True) == (C.FAULT_SAFEGUARD_STOP,)
    assert faults_from_status(1 << 9, 2, True) == (C.FAULT_SAFETY_FAULT,)
    assert set(faults_from_status((1 << 2) | (1 << 5), 4, True)) == {
        C.FAULT_PROTECTIVE_STOP, C.FAULT_EMERGENCY_STOP, C.FAULT_PROGRAM_STOPPED}


def test_watchdog_kicked_only_when_idle(probe_ok):
    clock = SimulatedClock(0.0)
    arm, rcv, ctl, _ = fake_arm(dict(watchdog_min_frequency_hz=10.0), clock=clock)
    arm.connect()
    kicks = lambda: ctl.names().count("kickWatchdog")  # noqa: E731
    for _ in range(50):  # streaming at 125 Hz: servoJ feeds the watchdog, no kicks
        clock.advance(0.008)
        arm.observe()
        arm.send(JointCommand(np.array(Q0)))
    assert kicks() == 0
    for _ in range(50):  # idle for 0.4 s: kicks at >= 2x the watchdog frequency
        clock.advance(0.008)
        arm.observe()
    assert 6 <= kicks() <= 9


def test_exit_paths(probe_ok):
    arm, rcv, ctl, io = fake_arm(dict(gripper_output=0))
    with arm:
        arm.send(JointCommand(np.array(Q0)))
        arm.stop()
        assert ctl.calls[-1] == ("servoStop", 10.0)
    assert ctl.names()[-3:] == ["servoStop", "stopScript", "disconnect"]
    assert rcv.calls == ["disconnect"] and io.calls[-1] == ("disconnect",)
    arm.disconnect()  # idempotent
    arm.stop()  # no connection: no-op, never raises
    with pytest.raises(ArmConnectionError, match="not connected"):
        arm.send(JointCommand(np.array(Q0)))


def test_stop_never_raises(probe_ok):
    arm, rcv, ctl, _ = fake_arm()
    arm.connect()

    def boom(a=10.0):
        raise RuntimeError("socket closed")

    ctl.servoStop = boom
    arm.stop()  # logs, does not raise
    arm.disconnect()  # servoStop fails, stopScript and disconnect still happen
    assert ctl.names()[-2:] == ["stopScript", "disconnect"] and rcv.calls == ["disconnect"]
