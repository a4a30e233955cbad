"""``RtdeArm``: a Universal Robots arm over RTDE through the ``ur_rtde`` client.

- Connect: ``RTDEReceiveInterface``, ``RTDEControlInterface`` (uploads ur_rtde's control script) and,
  when a gripper output is configured, ``RTDEIOInterface``.  ``robot_ip`` has no default.
  ur_rtde constructors can block for a long time (the receive interface waits for its first data
  package without a timeout) and they hold the Python GIL while waiting, so no Python-side timeout
  can interrupt them.  Therefore ``connect`` first runs ``rtde_probe``: the same RTDE handshake in
  pure Python with a deadline (protocol version, controller version -> checked against ``ur_type``,
  an output recipe, start, first data package) plus the dashboard greeting; an unreachable, silent
  or non-RTDE device fails there with an ``ArmConnectionError`` naming the address.  Each
  constructor then still runs in a worker thread with a timeout (effective for constructors that
  release the GIL; a late result is disconnected by the worker itself).
- ``send``: ``servoJ(q, velocity, acceleration, period, lookahead, gain)`` with the parameters validated
  against ur_rtde's limits (lookahead 0.03-0.2 s, gain 100-2000, speed <= 3.14 rad/s,
  acceleration <= 40 rad/s^2); the gripper is a digital output switched with hysteresis.  Returns the
  command actually sent.  A refused servoJ raises ``ArmFaultError``.
- ``observe``: q, qd, safety status bits, runtime state and connection state become ``ArmState``; its
  ``stamp`` is the local time at which the controller timestamp last advanced, so a frozen stream
  reads as stale data.
- Watchdog: ``setWatchdog(min_frequency)`` after connecting.  The controller's watchdog is fed by
  every package that writes the command register (each servoJ), so ``observe`` sends
  ``kickWatchdog`` only when no package went out for half a watchdog period (idle / hold).  If this
  process stops ticking, the controller stops the arm by itself.
- Stop: ``stop()`` = ``servoStop(deceleration)``; ``disconnect()`` = servoStop + stopScript +
  disconnect of every interface.  Both are idempotent and never raise.
- Pacing: ``start_period()`` / ``wait_period(token)`` wrap ``initPeriod`` / ``waitPeriod`` for
  ``ControlLoopConfig(use_arm_pacing=True)`` (an extension of the ``Arm`` protocol).  Not the default:
  waitPeriod holds the GIL while it waits, starving the inference / ROS threads (see
  ``ControlLoopConfig.use_arm_pacing``); the loop's own sleep-until timer is used instead.
- ``recover()``: after a cleared protective stop / stopped program, re-uploads the control script
  (``reuploadScript``) or reconnects; used by ``ControlLoop.resume``.

The ur_rtde modules are imported lazily (only ``connect`` needs them); the factories can be replaced
for tests.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from actquant_core import constants as C
from actquant_core.robot.arm import ArmState, JointCommand
from actquant_core.robot.clock import Clock, MonotonicClock
from actquant_core.robot.errors import ArmConnectionError, ArmFaultError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RtdeArmConfig:
    """Settings of ``RtdeArm``.

    Attributes:
        robot_ip: controller address (IPv4 / hostname).  Required, no default.
        ur_type: "ur3" (CB3, 125 Hz) or "ur3e" (e-series, 500 Hz).
        frequency_hz: RTDE / servo rate; None = the ur_type's controller rate.
        servo_velocity: servoJ speed argument (rad/s, (0, 3.14]; unused by current firmware).
        servo_acceleration: servoJ acceleration argument (rad/s^2, (0, 40]; unused by current firmware).
        lookahead_time_s: servoJ lookahead time, [0.03, 0.2] s (smooths the trajectory).
        gain: servoJ proportional gain, [100, 2000].
        stop_deceleration: servoStop deceleration (rad/s^2, (0, 40]).
        connect_timeout_s: timeout for the TCP probe and for each interface constructor.
        gripper_output: digital output index driving the gripper; None = no gripper.
        gripper_tool_output: the output is a tool digital output (else a standard one).
        gripper_open_is_high: output high = gripper open.
        gripper_threshold: command above this (+hysteresis) opens, below (-hysteresis) closes.
        gripper_hysteresis: half-width of the dead band around the threshold.
        use_watchdog: arm the controller-side watchdog.
        watchdog_min_frequency_hz: the watchdog stops the program when no command or kick arrives
            for 1 / this (s).
        upload_script: let ur_rtde upload its control script (FLAG_UPLOAD_SCRIPT); False expects the
            ExternalControl URCap (FLAG_USE_EXT_UR_CAP).
        verbose: ur_rtde verbose flag.
    """

    robot_ip: str
    ur_type: str = C.UR_TYPE_UR3
    frequency_hz: float | None = None
    servo_velocity: float = 0.5
    servo_acceleration: float = 0.5
    lookahead_time_s: float = 0.1
    gain: float = 300.0
    stop_deceleration: float = 10.0
    connect_timeout_s: float = 10.0
    gripper_output: int | None = None
    gripper_tool_output: bool = False
    gripper_open_is_high: bool = True
    gripper_threshold: float = 0.5
    gripper_hysteresis: float = 0.1
    use_watchdog: bool = True
    watchdog_min_frequency_hz: float = 10.0
    upload_script: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.robot_ip, str) or not self.robot_ip.strip():
            raise ValueError(f"robot_ip must be a non-empty address string, got {self.robot_ip!r}")
        try:
            ipaddress.ip_address(self.robot_ip)
        except ValueError:
            if any(ch.isspace() for ch in self.robot_ip) or len(self.robot_ip) > 253:
                raise ValueError(f"robot_ip {self.robot_ip!r} is neither an IP address nor a host name") from None
        if self.ur_type not in C.UR_TYPES:
            raise ValueError(f"ur_type={self.ur_type!r} must be one of {C.UR_TYPES}")
        if self.frequency_hz is not None and not (math.isfinite(self.frequency_hz) and 1 <= self.frequency_hz <= 500):
            raise ValueError(f"frequency_hz={self.frequency_hz!r} must be in [1, 500] Hz or None")
        if not 0 < self.servo_velocity <= C.RTDE_MAX_JOINT_SPEED:
            raise ValueError(f"servo_velocity={self.servo_velocity!r} must be in (0, {C.RTDE_MAX_JOINT_SPEED}] rad/s")
        if not 0 < self.servo_acceleration <= C.RTDE_MAX_JOINT_ACCEL:
            raise ValueError(
                f"servo_acceleration={self.servo_acceleration!r} must be in (0, {C.RTDE_MAX_JOINT_ACCEL}] rad/s^2")
        if not C.RTDE_LOOKAHEAD_MIN_S <= self.lookahead_time_s <= C.RTDE_LOOKAHEAD_MAX_S:
            raise ValueError(f"lookahead_time_s={self.lookahead_time_s!r} must be in "
                             f"[{C.RTDE_LOOKAHEAD_MIN_S}, {C.RTDE_LOOKAHEAD_MAX_S}] s (ur_rtde servoJ limit)")
        if not C.RTDE_GAIN_MIN <= self.gain <= C.RTDE_GAIN_MAX:
            raise ValueError(f"gain={self.gain!r} must be in [{C.RTDE_GAIN_MIN}, {C.RTDE_GAIN_MAX}] "
                             f"(ur_rtde servoJ limit)")
        if not 0 < self.stop_deceleration <= C.RTDE_MAX_JOINT_ACCEL:
            raise ValueError(
                f"stop_deceleration={self.stop_deceleration!r} must be in (0, {C.RTDE_MAX_JOINT_ACCEL}] rad/s^2")
        if not (math.isfinite(self.connect_timeout_s) and 0 < self.connect_timeout_s <= 120):
            raise ValueError(f"connect_timeout_s={self.connect_timeout_s!r} must be in (0, 120] s")
        out = self.gripper_output
        if out is not None and not (isinstance(out, int) and 0 <= out <= 7):
            raise ValueError(f"gripper_output={self.gripper_output!r} must be a digital output index 0..7 or None")
        if not 0 < self.gripper_threshold < 1:
            raise ValueError(f"gripper_threshold={self.gripper_threshold!r} must be in (0, 1)")
        if not (0 <= self.gripper_hysteresis < min(self.gripper_threshold, 1 - self.gripper_threshold)):
            raise ValueError(f"gripper_hysteresis={self.gripper_hysteresis!r} must be >= 0 and keep "
                             f"threshold +- hysteresis inside (0, 1)")
        if not (math.isfinite(self.watchdog_min_frequency_hz) and 1 <= self.watchdog_min_frequency_hz <= 500):
            raise ValueError(f"watchdog_min_frequency_hz={self.watchdog_min_frequency_hz!r} must be in [1, 500] Hz")

    @property
    def rate_hz(self) -> float:
        return self.frequency_hz if self.frequency_hz is not None else C.UR_CONTROL_RATE_HZ[self.ur_type]


@dataclass(frozen=True)
class RtdeFactories:
    """Constructors of the three ur_rtde interfaces (replaceable in tests).

    control(ip, frequency, flags) / receive(ip, frequency) / io(ip) return connected objects with the
    ur_rtde method names; ``flags_upload`` / ``flags_urcap`` are the control-interface flags.
    """

    control: Callable[[str, float, int], Any]
    receive: Callable[[str, float], Any]
    io: Callable[[str], Any]
    flags_upload: int
    flags_urcap: int


def ur_rtde_factories(verbose: bool = False) -> RtdeFactories:
    """The real ur_rtde constructors (imports ``rtde_control`` / ``rtde_receive`` / ``rtde_io``)."""
    try:
        import rtde_control
        import rtde_io
        import rtde_receive
    except ImportError as exc:  # pragma: no cover - ur_rtde is pinned in the venv
        raise ImportError("RtdeArm needs the ur_rtde package (pip install ur_rtde==1.6.5)") from exc
    ctl = rtde_control.RTDEControlInterface
    verbose_flag = int(ctl.Flags.FLAG_VERBOSE) if verbose else 0
    return RtdeFactories(
        control=lambda ip, f, flags: ctl(ip, f, flags),
        receive=lambda ip, f: rtde_receive.RTDEReceiveInterface(ip, f),
        io=lambda ip: rtde_io.RTDEIOInterface(ip),
        flags_upload=int(ctl.Flags.FLAG_UPLOAD_SCRIPT) | verbose_flag,
        flags_urcap=int(ctl.Flags.FLAG_USE_EXT_UR_CAP) | verbose_flag,
    )


# RTDE message types (RTDE protocol v2, big-endian, header = uint16 size incl. header + uint8 type)
_RTDE_PROTOCOL_VERSION = 86  # 'V'
_RTDE_URCONTROL_VERSION = 118  # 'v'
_RTDE_SETUP_OUTPUTS = 79  # 'O'
_RTDE_START = 83  # 'S'
_RTDE_PAUSE = 80  # 'P'
_RTDE_DATA = 85  # 'U'


def _rtde_send(sock: socket.socket, kind: int, payload: bytes = b"") -> None:
    sock.sendall(struct.pack(">HB", 3 + len(payload), kind) + payload)


def _rtde_recv(sock: socket.socket, want: int, deadline: float, host: str, what: str) -> bytes:
    """Read packets until one of type ``want`` arrives (others, e.g. text messages, are skipped)."""

    def read(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            sock.settimeout(left)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the controller")
            buf += chunk
        return buf

    try:
        while True:
            size, kind = struct.unpack(">HB", read(3))
            payload = read(size - 3) if size > 3 else b""
            if kind == want:
                return payload
    except (socket.timeout, TimeoutError) as exc:
        raise ArmConnectionError(f"UR controller at {host}: no RTDE answer to {what} "
                                 f"(the device on port {C.RTDE_PORT} does not speak RTDE or hangs)") from exc
    except (OSError, ConnectionError, struct.error) as exc:
        raise ArmConnectionError(f"UR controller at {host}: RTDE {what} failed ({exc})") from exc


def rtde_probe(host: str, timeout_s: float) -> tuple[int, int, int, int]:
    """Check, in pure Python with a deadline, that ``host`` speaks RTDE and streams data.

    ur_rtde's constructors hold the Python GIL while they wait, so a controller that accepts the
    TCP connection but never answers would freeze the whole process (a worker thread cannot time them
    out).  This probe runs the same handshake first: protocol version 2, controller version, one output
    recipe ("timestamp"), start, first data package, pause.

    Returns:
        The controller version (major, minor, bugfix, build).

    Raises:
        ArmConnectionError: naming ``host`` on any failure or when ``timeout_s`` is exceeded.
    """
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, C.RTDE_PORT), timeout=timeout_s)
    except OSError as exc:
        raise ArmConnectionError(
            f"UR controller at {host} is unreachable: TCP connect to {host}:{C.RTDE_PORT} failed within "
            f"{timeout_s:.1f} s ({exc})") from exc
    with sock:
        _rtde_send(sock, _RTDE_PROTOCOL_VERSION, struct.pack(">H", 2))
        if _rtde_recv(sock, _RTDE_PROTOCOL_VERSION, deadline, host, "protocol version request")[:1] != b"\x01":
            raise ArmConnectionError(f"UR controller at {host} refused RTDE protocol version 2")
        _rtde_send(sock, _RTDE_URCONTROL_VERSION)
        version = struct.unpack(">IIII", _rtde_recv(sock, _RTDE_URCONTROL_VERSION, deadline, host,
                                                     "controller version request")[:16])
        _rtde_send(sock, _RTDE_SETUP_OUTPUTS, struct.pack(">d", 10.0) + b"timestamp")
        answer = _rtde_recv(sock, _RTDE_SETUP_OUTPUTS, deadline, host, "output setup")
        if b"NOT_FOUND" in answer[1:]:
            raise ArmConnectionError(f"UR controller at {host} does not offer the RTDE output 'timestamp'")
        _rtde_send(sock, _RTDE_START)
        if _rtde_recv(sock, _RTDE_START, deadline, host, "start request")[:1] != b"\x01":
            raise ArmConnectionError(f"UR controller at {host} refused to start RTDE streaming")
        _rtde_recv(sock, _RTDE_DATA, deadline, host, "start (no data package streamed)")
        try:
            _rtde_send(sock, _RTDE_PAUSE)
        except OSError:
            pass
    return version


def probe_dashboard(host: str, timeout_s: float) -> str:
    """Read the dashboard server's greeting line (port 29999) within ``timeout_s``."""
    try:
        with socket.create_connection((host, C.RTDE_DASHBOARD_PORT), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            greeting = sock.recv(1024).decode(errors="replace").strip()
    except OSError as exc:
        raise ArmConnectionError(f"UR dashboard server at {host}:{C.RTDE_DASHBOARD_PORT} did not answer "
                                 f"within {timeout_s:.1f} s ({exc})") from exc
    if not greeting:
        raise ArmConnectionError(f"UR dashboard server at {host}:{C.RTDE_DASHBOARD_PORT} sent no greeting")
    return greeting


def construct_with_timeout(factory: Callable[[], Any], what: str, host: str, timeout_s: float) -> Any:
    """Run ``factory()`` in a worker thread; raise ``ArmConnectionError`` (naming ``host``) after
    ``timeout_s`` or when it raises.  A late result is disconnected by the worker itself."""
    box: dict[str, Any] = {}
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        try:
            obj = factory()
        except BaseException as exc:  # reported to the caller below
            with lock:
                box["exc"] = exc
            done.set()
            return
        with lock:
            if box.get("abandoned"):
                late = True
            else:
                box["obj"] = obj
                late = False
        done.set()
        if late:
            log.warning("%s to %s completed after the timeout; disconnecting it", what, host)
            try:
                obj.disconnect()
            except Exception:
                log.exception("disconnecting the late %s failed", what)

    th = threading.Thread(target=work, name=f"rtde-connect-{what}", daemon=True)
    th.start()
    finished = done.wait(timeout_s)
    with lock:
        if not finished and "obj" not in box and "exc" not in box:
            box["abandoned"] = True
            raise ArmConnectionError(
                f"{what} to the UR controller at {host} did not complete within {timeout_s:.1f} s "
                f"(is the controller running and in remote control?)")
        if "exc" in box:
            exc = box["exc"]
            raise ArmConnectionError(f"{what} to the UR controller at {host} failed: {exc}") from exc
        return box["obj"]


def faults_from_status(safety_bits: int, runtime_state: int, connected: bool) -> tuple[str, ...]:
    """Map RTDE safety_status_bits / runtime_state / connection to ``ArmState.faults`` names."""
    faults: list[str] = []
    if not connected:
        faults.append(C.FAULT_DISCONNECTED)
    bits = int(safety_bits)
    if bits >> C.RTDE_SAFETY_BIT_PROTECTIVE_STOP & 1:
        faults.append(C.FAULT_PROTECTIVE_STOP)
    if bits >> C.RTDE_SAFETY_BIT_SAFEGUARD_STOP & 1:
        faults.append(C.FAULT_SAFEGUARD_STOP)
    if any(bits >> b & 1 for b in C.RTDE_SAFETY_BITS_EMERGENCY_STOP):
        faults.append(C.FAULT_EMERGENCY_STOP)
    if any(bits >> b & 1 for b in C.RTDE_SAFETY_BITS_FAULT):
        faults.append(C.FAULT_SAFETY_FAULT)
    if connected and int(runtime_state) != C.RTDE_RUNTIME_STATE_PLAYING:
        faults.append(C.FAULT_PROGRAM_STOPPED)
    return tuple(faults)


class RtdeArm:
    """A UR arm over ur_rtde servoJ; see the module docstring.  Use as a context manager or call
    ``disconnect()`` on every exit path."""

    def __init__(self, config: RtdeArmConfig, clock: Clock | None = None,
                 factories: RtdeFactories | None = None) -> None:
        if not isinstance(config, RtdeArmConfig):
            raise TypeError(f"config must be an RtdeArmConfig (robot_ip has no default), got {type(config).__name__}")
        self.config = config
        self.control_rate_hz = config.rate_hz
        self.period = 1.0 / config.rate_hz
        self.clock = clock or MonotonicClock()
        self._factories = factories
        self._lock = threading.RLock()
        self._c: Any = None
        self._r: Any = None
        self._io: Any = None
        self._gripper_open: bool | None = None
        self._last_ctrl_ts: float | None = None
        self._fresh_stamp: float = -math.inf
        self._last_q = np.zeros(C.UR_NUM_JOINTS)
        self._last_package = -math.inf
        self.n_sent = 0

    # -- connection -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._r is not None and self._c is not None

    def connect(self) -> None:
        """Connect all interfaces; raises ``ArmConnectionError`` naming the IP, never hangs."""
        cfg = self.config
        ip = cfg.robot_ip
        with self._lock:
            if self.connected:
                return
            fac = self._factories or ur_rtde_factories(cfg.verbose)
            version = rtde_probe(ip, cfg.connect_timeout_s)
            eseries = version[0] >= 5
            if eseries != (cfg.ur_type == C.UR_TYPE_UR3E):
                raise ArmConnectionError(
                    f"ur_type={cfg.ur_type!r} but the controller at {ip} reports version "
                    f"{'.'.join(map(str, version))} ({'e-series' if eseries else 'CB3'})")
            probe_dashboard(ip, cfg.connect_timeout_s)
            rate = cfg.rate_hz
            try:
                self._r = construct_with_timeout(lambda: fac.receive(ip, rate), "RTDEReceiveInterface", ip,
                                                 cfg.connect_timeout_s)
                flags = fac.flags_upload if cfg.upload_script else fac.flags_urcap
                self._c = construct_with_timeout(lambda: fac.control(ip, rate, flags), "RTDEControlInterface",
                                                 ip, cfg.connect_timeout_s)
                if cfg.gripper_output is not None:
                    self._io = construct_with_timeout(lambda: fac.io(ip), "RTDEIOInterface", ip,
                                                      cfg.connect_timeout_s)
                if cfg.use_watchdog:
                    if not self._c.setWatchdog(cfg.watchdog_min_frequency_hz):
                        raise ArmFaultError(f"setWatchdog refused by the UR controller at {ip}")
                    self._last_package = self.clock.now()
            except BaseException:
                self._disconnect_all()
                raise
            self._last_ctrl_ts = None
            self._fresh_stamp = -math.inf
        log.info("connected to UR controller at %s (%s, %.0f Hz, lookahead %.3f s, gain %.0f)",
                 ip, cfg.ur_type, rate, cfg.lookahead_time_s, cfg.gain)

    def recover(self, timeout_s: float = 5.0) -> None:
        """Bring the control script back after a cleared fault (reconnects a lost connection).

        Raises:
            ArmFaultError: a protective / emergency / safeguard stop is still active (it must be
                cleared on the pendant or dashboard first), or the script does not start in time.
        """
        cfg = self.config
        with self._lock:
            if not self.connected:
                self.connect()
                return
            if not self._r.isConnected():
                log.info("RTDE receive connection to %s lost: reconnecting", cfg.robot_ip)
                self._r.reconnect()
            if not self._c.isConnected():
                log.info("RTDE control connection to %s lost: reconnecting", cfg.robot_ip)
                self._c.reconnect()
            blocking = [f for f in faults_from_status(self._r.getSafetyStatusBits(), C.RTDE_RUNTIME_STATE_PLAYING,
                                                      True)]
            if blocking:
                raise ArmFaultError(f"UR controller at {cfg.robot_ip} still reports {blocking}: clear it on the "
                                    f"teach pendant / dashboard before recovering")
            if not self._c.isProgramRunning():
                log.info("control script not running on %s: re-uploading", cfg.robot_ip)
                self._c.reuploadScript()
                deadline = time.monotonic() + timeout_s
                while not self._c.isProgramRunning():
                    if time.monotonic() > deadline:
                        raise ArmFaultError(f"control script did not start on {cfg.robot_ip} within {timeout_s} s")
                    time.sleep(0.01)
            if cfg.use_watchdog:
                if not self._c.setWatchdog(cfg.watchdog_min_frequency_hz):
                    raise ArmFaultError(f"setWatchdog refused by the UR controller at {cfg.robot_ip}")
                self._last_package = self.clock.now()

    # -- Arm protocol -----------------------------------------------------------------------------
    def observe(self, timeout_s: float = 0.1) -> ArmState:
        """Read the latest state from the receive interface (cached by ur_rtde; does not block)."""
        with self._lock:
            r, c = self._r, self._c
            if r is None or c is None:
                raise ArmConnectionError(f"RtdeArm for {self.config.robot_ip} is not connected")
            connected = bool(r.isConnected()) and bool(c.isConnected())
            now = self.clock.now()
            if connected:
                q = np.asarray(r.getActualQ(), dtype=np.float64)
                qd = np.asarray(r.getActualQd(), dtype=np.float64)
                bits = int(r.getSafetyStatusBits())
                runtime = int(r.getRuntimeState())
                ts = float(r.getTimestamp())
                if ts != self._last_ctrl_ts:
                    self._last_ctrl_ts = ts
                    self._fresh_stamp = now
                self._last_q = q
            else:
                q, qd, bits, runtime = self._last_q.copy(), np.zeros(C.UR_NUM_JOINTS), 0, 0
            faults = faults_from_status(bits, runtime, connected)
            gripper = math.nan
            if self.config.gripper_output is not None:
                if connected and self._gripper_open is None:
                    self._gripper_open = self._read_gripper_output(r)  # before the first command: ask the robot
                if self._gripper_open is not None:
                    gripper = 1.0 if self._gripper_open else 0.0
            if (connected and not faults and self.config.use_watchdog
                    and now - self._last_package > 0.5 / self.config.watchdog_min_frequency_hz):
                if c.kickWatchdog():
                    self._last_package = now
            return ArmState(q=q, qd=qd, stamp=self._fresh_stamp, gripper=gripper, faults=faults)

    def send(self, cmd: JointCommand) -> JointCommand:
        """servoJ to ``cmd.q`` over one period (+ gripper output on a threshold crossing)."""
        cfg = self.config
        q = np.asarray(cmd.q, dtype=np.float64).reshape(-1)
        if q.shape != (C.UR_NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"RtdeArm.send needs 6 finite joint targets, got {cmd.q!r}")
        with self._lock:
            c = self._c
            if c is None:
                raise ArmConnectionError(f"RtdeArm for {cfg.robot_ip} is not connected")
            try:
                ok = c.servoJ(q.tolist(), cfg.servo_velocity, cfg.servo_acceleration, self.period,
                              cfg.lookahead_time_s, cfg.gain)
            except RuntimeError as exc:  # ur_rtde's reconnect after a dropped link raises, e.g. a dashboard timeout
                raise ArmConnectionError(f"connection to the UR controller at {cfg.robot_ip} lost: {exc}") from exc
            if not ok:
                raise ArmFaultError(f"servoJ refused by the UR controller at {cfg.robot_ip} "
                                    f"(protective stop, e-stop or control script not running)")
            self._last_package = self.clock.now()
            self.n_sent += 1
            g = self._apply_gripper(float(cmd.gripper))
        return JointCommand(q=q.copy(), gripper=g)

    def _read_gripper_output(self, r) -> bool | None:
        """Gripper open/closed from the controller's actual digital output bits (RTDE
        ``actual_digital_output_bits``: standard outputs 0-7, tool outputs from bit 16), or None when the
        receive interface cannot tell."""
        cfg = self.config
        try:
            bits = int(r.getActualDigitalOutputBits())
        except (AttributeError, RuntimeError):
            return None
        level = bool((bits >> (cfg.gripper_output + (16 if cfg.gripper_tool_output else 0))) & 1)
        return level if cfg.gripper_open_is_high else not level

    def _apply_gripper(self, g: float) -> float:
        cfg = self.config
        if cfg.gripper_output is None or not math.isfinite(g):
            return math.nan
        want = self._gripper_open
        if g >= cfg.gripper_threshold + cfg.gripper_hysteresis:
            want = True
        elif g <= cfg.gripper_threshold - cfg.gripper_hysteresis:
            want = False
        if want is None:  # first command inside the dead band
            want = g >= cfg.gripper_threshold
        if want != self._gripper_open:
            level = want if cfg.gripper_open_is_high else not want
            setter = self._io.setToolDigitalOut if cfg.gripper_tool_output else self._io.setStandardDigitalOut
            if not setter(cfg.gripper_output, bool(level)):
                raise ArmFaultError(f"setting gripper output {cfg.gripper_output} on {cfg.robot_ip} failed")
            self._gripper_open = want
        return 1.0 if self._gripper_open else 0.0

    def stop(self) -> None:
        """servoStop; idempotent, never raises."""
        with self._lock:
            c = self._c
            if c is None:
                return
            try:
                if c.isConnected():
                    c.servoStop(self.config.stop_deceleration)
            except Exception:
                log.exception("servoStop on %s failed", self.config.robot_ip)

    def disconnect(self) -> None:
        """servoStop + stopScript + disconnect every interface; idempotent, never raises."""
        with self._lock:
            self._disconnect_all()
        log.info("disconnected from UR controller at %s after %d commands", self.config.robot_ip, self.n_sent)

    def _disconnect_all(self) -> None:
        c, r, io = self._c, self._r, self._io
        self._c = self._r = self._io = None
        if c is not None:
            for name, call in (("servoStop", lambda: c.servoStop(self.config.stop_deceleration)),
                               ("stopScript", c.stopScript), ("disconnect", c.disconnect)):
                try:
                    if name == "disconnect" or c.isConnected():
                        call()
                except Exception:
                    log.exception("%s on %s failed", name, self.config.robot_ip)
        for obj, what in ((io, "RTDEIOInterface"), (r, "RTDEReceiveInterface")):
            if obj is not None:
                try:
                    obj.disconnect()
                except Exception:
                    log.exception("disconnecting %s from %s failed", what, self.config.robot_ip)

    # -- pacing (protocol extension) ----------------------------------------------------------------
    def start_period(self) -> Any:
        """``initPeriod()`` of the control interface (token for ``wait_period``)."""
        c = self._c
        if c is None:
            return None
        return c.initPeriod()

    def wait_period(self, token: Any) -> None:
        """``waitPeriod(token)``: sleep until one control period after ``start_period``."""
        c = self._c
        if c is None or token is None:
            self.clock.sleep_until(self.clock.now() + self.period)
            return
        c.waitPeriod(token)

    def __enter__(self) -> "RtdeArm":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
