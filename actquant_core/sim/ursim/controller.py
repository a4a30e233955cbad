"""The simulated UR controller: registers, robot / safety / runtime state, the control-script emulation
and the fixed-rate control loop.

What a real controller does that ``ur_rtde`` relies on, and how it is reproduced here:

- **Registers.** RTDE input packages (from any connection) write the shared input registers and I/O;
  output registers are written by the running program and streamed to every RTDE client.
- **The control script.** ``RTDEControlInterface`` uploads a URScript program to port 30003 that reads a
  command id from ``input_int_register_0`` (+24 with the upper range, announced by the line
  ``global reg_offset_int = # int register offset\\n<offset>`` in the uploaded text) and answers in
  ``output_int_register_0``: 1 = ready, 2 = done.  ``RtdeControlProgram`` re-implements its main loop
  cycle by cycle (``rtde_cmd`` / ``process_cmd``): real-time commands (servoJ, speedJ, ...) are processed
  and answered with "ready" in the same cycle; other commands are processed once (blocking ones, like a
  synchronous moveJ or a stop, keep the loop busy until the motion finishes) and answered with "done",
  after which the client writes 0 and the loop answers "ready" again.  Any other uploaded program is run
  by ``RegisterProgram``, which executes its ``write_output_*_register`` calls one per cycle (that is
  what ``sendCustomScriptFunction`` relies on) and then ends.
- **Safety.** A protective stop sets ``safety_mode`` 3 (bits 2 and 10 of ``safety_status_bits``), stops
  the arm with a category-2 deceleration and pauses the program (``runtime_state`` 4); it can be unlocked
  from the dashboard ``pstop_unlock_delay_s`` after it happened.  An emergency stop sets ``safety_mode``
  6 (bits 5, 7, 10), stops the program and powers the arm off; after ``release`` the dashboard's
  ``power on`` + ``brake release`` bring it back to RUNNING.  ``ur_rtde`` refuses commands on exactly
  these signals (runtime_state != PLAYING, protective / emergency stop bits).
- **Watchdog.** ``setWatchdog(f)`` makes the program stop (and the arm stop) when the command register
  has not been written by any RTDE input package for 1/f seconds.

All state is guarded by one lock; the backend is only touched from the control-loop thread.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from actquant_core import constants as C
from actquant_core.sim.ursim.backends import JointBackend
from actquant_core.sim.ursim.config import N_JOINTS, UrSimConfig
from actquant_core.sim.ursim.kinematics import tcp_pose, tcp_speed
from actquant_core.sim.ursim.motion import JointMotion
from actquant_core.sim.ursim.protocol import N_REGISTERS

log = logging.getLogger(__name__)

_OFFSET_RE = re.compile(r"reg_offset_int\s*=\s*(?:#[^\n]*\n)?\s*(\d+)")
_WRITE_RE = re.compile(r"write_output_(integer|float)_register\(\s*([0-9+\s]+?)\s*,\s*([^)]+?)\s*\)")
_DEF_RE = re.compile(r"^(?:def|sec)\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")

STATS_WINDOW = 5000  # cycles kept for the loop timing statistics
# Behind schedule by less than this, the loop runs the missed cycles back to back (controller time stays
# locked to wall time); further behind (the machine stalled), it drops them and restarts the schedule.
RESYNC_AFTER_S = 0.1


# ---------------------------------------------------------------------------------------------------
# State snapshot streamed to the RTDE clients
# ---------------------------------------------------------------------------------------------------
class Snapshot:
    """The controller state at the end of one cycle, in RTDE units.  Vectors are tuples of floats.

    TCP poses / speeds (forward kinematics) are computed on first use and cached.
    """

    __slots__ = (
        "timestamp", "target_q", "target_qd", "target_qdd", "actual_q", "actual_qd", "robot_mode",
        "safety_mode", "safety_status_bits", "robot_status_bits", "runtime_state", "joint_mode",
        "digital_out_bits", "speed_fraction", "analog_out", "int_out", "dbl_out", "int_in", "dbl_in",
        "gripper", "_model", "_tcp", "_target_tcp", "_tcp_speed", "_target_tcp_speed",
    )

    def tcp(self) -> tuple[float, ...]:
        if self._tcp is None:
            self._tcp = tuple(tcp_pose(self._model, np.asarray(self.actual_q)).tolist())
        return self._tcp

    def target_tcp(self) -> tuple[float, ...]:
        if self._target_tcp is None:
            if self.target_q == self.actual_q:
                self._target_tcp = self.tcp()
            else:
                self._target_tcp = tuple(tcp_pose(self._model, np.asarray(self.target_q)).tolist())
        return self._target_tcp

    def tcp_speed(self) -> tuple[float, ...]:
        if self._tcp_speed is None:
            self._tcp_speed = tuple(
                tcp_speed(self._model, np.asarray(self.actual_q), np.asarray(self.actual_qd)).tolist()
            )
        return self._tcp_speed

    def target_tcp_speed(self) -> tuple[float, ...]:
        if self._target_tcp_speed is None:
            self._target_tcp_speed = tuple(
                tcp_speed(self._model, np.asarray(self.target_q), np.asarray(self.target_qd)).tolist()
            )
        return self._target_tcp_speed


def _zeros(n: int) -> Callable[[Snapshot], tuple]:
    z = (0,) * n
    return lambda s: z


def _const(*v: float) -> Callable[[Snapshot], tuple]:
    return lambda s: v


_OUTPUT_GETTERS: dict[str, Callable[[Snapshot], tuple]] = {
    "timestamp": lambda s: (s.timestamp,),
    "target_q": lambda s: s.target_q,
    "target_qd": lambda s: s.target_qd,
    "target_qdd": lambda s: s.target_qdd,
    "actual_q": lambda s: s.actual_q,
    "actual_qd": lambda s: s.actual_qd,
    "actual_qdd": lambda s: s.target_qdd,
    "actual_TCP_pose": lambda s: s.tcp(),
    "target_TCP_pose": lambda s: s.target_tcp(),
    "actual_TCP_speed": lambda s: s.tcp_speed(),
    "target_TCP_speed": lambda s: s.target_tcp_speed(),
    "robot_mode": lambda s: (s.robot_mode,),
    "safety_mode": lambda s: (s.safety_mode,),
    "safety_status": lambda s: (s.safety_mode,),
    "runtime_state": lambda s: (s.runtime_state,),
    "robot_status_bits": lambda s: (s.robot_status_bits,),
    "safety_status_bits": lambda s: (s.safety_status_bits,),
    "joint_mode": lambda s: s.joint_mode,
    "actual_digital_output_bits": lambda s: (s.digital_out_bits,),
    "speed_scaling": lambda s: (s.speed_fraction,),
    "target_speed_fraction": lambda s: (s.speed_fraction,),
    "standard_analog_output0": lambda s: (s.analog_out[0],),
    "standard_analog_output1": lambda s: (s.analog_out[1],),
    "joint_temperatures": _const(*([30.0] * N_JOINTS)),
    "actual_main_voltage": _const(48.0),
    "actual_robot_voltage": _const(48.0),
    "actual_robot_current": _const(0.5),
    "actual_joint_voltage": _const(*([48.0] * N_JOINTS)),
    "actual_execution_time": _const(0.1),
    "actual_tool_accelerometer": _const(0.0, 0.0, -9.81),
}
for _i in range(N_REGISTERS):
    _OUTPUT_GETTERS[f"output_int_register_{_i}"] = (lambda i: lambda s: (s.int_out[i],))(_i)
    _OUTPUT_GETTERS[f"output_double_register_{_i}"] = (lambda i: lambda s: (s.dbl_out[i],))(_i)
    _OUTPUT_GETTERS[f"input_int_register_{_i}"] = (lambda i: lambda s: (s.int_in[i],))(_i)
    _OUTPUT_GETTERS[f"input_double_register_{_i}"] = (lambda i: lambda s: (s.dbl_in[i],))(_i)


def output_getter(name: str, count: int) -> Callable[[Snapshot], tuple]:
    """Function snapshot -> flat tuple of ``count`` values for RTDE output ``name`` (zeros if not modelled)."""
    return _OUTPUT_GETTERS.get(name) or _zeros(count)


def _masked(old: int, values: dict, key: str, width_mask: int) -> int:
    """Apply an RTDE ``<key>_mask`` / ``<key>`` pair to the bit field ``old``."""
    mask = int(values[f"{key}_mask"])
    return ((old & ~mask) | (int(values.get(key, 0)) & mask)) & width_mask


# ---------------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------------
class ProgramError(RuntimeError):
    """The emulated program hit something it cannot run (like a URScript runtime error)."""


class RegisterProgram:
    """A non-ur_rtde program: executes its ``write_output_{integer,float}_register(i, v)`` calls one per
    cycle, then ends.  Everything else in the text is ignored (logged once)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self._ops: list[tuple[str, int, float]] = []
        for kind, idx_expr, val_expr in _WRITE_RE.findall(text):
            try:
                idx = sum(int(p) for p in idx_expr.split("+") if p.strip())
                val = float(val_expr)
            except ValueError:
                log.warning("program %s: cannot evaluate write_output_%s_register(%s, %s); skipped",
                            name, kind, idx_expr, val_expr)
                continue
            self._ops.append((kind, idx, val))
        self._pc = 0
        log.info("program %s: %d register writes, other statements are not simulated", name, len(self._ops))

    def step(self, ctrl: Controller) -> bool:
        """One cycle; returns False when the program has ended."""
        if self._pc >= len(self._ops):
            return False
        kind, idx, val = self._ops[self._pc]
        self._pc += 1
        if not 0 <= idx < N_REGISTERS:
            raise ProgramError(f"register index {idx} out of range")
        if kind == "integer":
            ctrl.int_out[idx] = int(val)
        else:
            ctrl.dbl_out[idx] = val
        return True


class RtdeControlProgram:
    """Cycle-by-cycle emulation of the main loop of ur_rtde's ``rtde_control.script``."""

    # Commands accepted and answered "done" without any effect in the simulation.
    NOOP_CMDS = frozenset({8, 17, 18, 19, 20, 21, 29, 59, 65})

    def __init__(self, name: str, offset: int) -> None:
        self.name = name
        self.off = offset
        self._executing = False
        self._busy: Callable[[], bool] | None = None  # blocking command in progress: returns True when done
        self._async_move = False
        self._async_wr_count = 0
        self._async_op_id = 0
        self._started = False

    # register helpers (relative to the offset, like read_input_*_reg in the script)
    def _ri(self, ctrl: Controller, i: int) -> int:
        return ctrl.int_in[self.off + i]

    def _rd(self, ctrl: Controller, i: int) -> float:
        return ctrl.dbl_in[self.off + i]

    def _q(self, ctrl: Controller, i: int) -> np.ndarray:
        return np.array(ctrl.dbl_in[self.off + i : self.off + i + N_JOINTS], dtype=float)

    def _write_async_progress(self, ctrl: Controller, value: int) -> None:
        self._async_wr_count = 0 if self._async_wr_count >= 127 else self._async_wr_count + 1
        if value == 0:
            self._async_op_id = 0 if self._async_op_id >= 127 else self._async_op_id + 1
        reg = self._async_wr_count * 65536 + self._async_op_id * 16777216
        if value >= 0:
            reg += min(value, 32767) + 32768
        ctrl.int_out[self.off + 2] = reg

    def _stop_async_move(self, ctrl: Controller) -> None:
        if self._async_move:
            self._async_move = False
            self._write_async_progress(ctrl, -1)

    def step(self, ctrl: Controller) -> bool:
        """One controller cycle of the script's main loop; returns False when the program ends."""
        if not self._started:
            self._started = True
            self._write_async_progress(ctrl, -1)  # reset_async_progress()
            ctrl.int_out[self.off] = C.URSIM_CONTROLLER_READY  # signal_ready()
            return True
        if self._async_move and ctrl.motion.is_idle:
            self._async_move = False
            self._write_async_progress(ctrl, -1)
        if self._busy is not None:
            if not self._busy():
                return True
            self._busy = None
            ctrl.int_out[self.off] = C.URSIM_CONTROLLER_DONE
            return True
        cmd = self._ri(ctrl, 0)
        if cmd in C.URSIM_REALTIME_CMDS:
            keep = self._process(ctrl, cmd)
            ctrl.int_out[self.off] = C.URSIM_CONTROLLER_READY
            return keep
        if cmd == C.URSIM_CMD_NO_CMD:
            self._executing = False
            ctrl.int_out[self.off] = C.URSIM_CONTROLLER_READY
            return True
        keep = True
        if not self._executing:
            keep = self._process(ctrl, cmd)
        self._executing = True
        return keep

    def _done(self, ctrl: Controller) -> None:
        ctrl.int_out[self.off] = C.URSIM_CONTROLLER_DONE

    def _process(self, ctrl: Controller, cmd: int) -> bool:
        m = ctrl.motion
        if cmd == C.URSIM_CMD_MOVEJ:
            q, v, a, is_async = self._q(ctrl, 0), self._rd(ctrl, 6), self._rd(ctrl, 7), self._ri(ctrl, 1)
            self._stop_async_move(ctrl)
            m.move(q, v, a)
            if is_async == 1:
                self._async_move = True
                self._write_async_progress(ctrl, 0)
                self._done(ctrl)
            else:
                self._busy = lambda: m.is_idle
        elif cmd == C.URSIM_CMD_SPEEDJ:
            m.speed(self._q(ctrl, 0), self._rd(ctrl, 6))
        elif cmd == C.URSIM_CMD_SERVOJ:
            m.servo(self._q(ctrl, 0), self._rd(ctrl, 8), self._rd(ctrl, 9), self._rd(ctrl, 10), ctrl.dt)
        elif cmd in (C.URSIM_CMD_SPEED_STOP, C.URSIM_CMD_SERVO_STOP):
            m.stop(self._rd(ctrl, 0))
            self._busy = lambda: m.is_idle
        elif cmd in (C.URSIM_CMD_STOPJ, C.URSIM_CMD_STOPL):
            self._stop_async_move(ctrl)
            m.stop(self._rd(ctrl, 0))
            if self._ri(ctrl, 1) == 1:
                self._done(ctrl)
            else:
                self._busy = lambda: m.is_idle
        elif cmd == C.URSIM_CMD_PROTECTIVE_STOP:
            ctrl.protective_stop("triggerProtectiveStop()")
        elif cmd == C.URSIM_CMD_SET_WATCHDOG:
            ctrl.set_watchdog(self._rd(ctrl, 0), self.off)
            self._done(ctrl)
        elif cmd == C.URSIM_CMD_GET_STEPTIME:
            ctrl.dbl_out[self.off] = ctrl.dt
            self._done(ctrl)
        elif cmd == C.URSIM_CMD_GET_TCP_OFFSET:
            for i in range(N_JOINTS):
                ctrl.dbl_out[self.off + i] = 0.0
            self._done(ctrl)
        elif cmd in (C.URSIM_CMD_GET_FK_DEFAULT, C.URSIM_CMD_GET_FK_ARGS):
            q = self._q(ctrl, 0) if cmd == C.URSIM_CMD_GET_FK_ARGS else ctrl.backend.q
            for i, v in enumerate(tcp_pose(ctrl.cfg.ur, q)):
                ctrl.dbl_out[self.off + i] = float(v)
            self._done(ctrl)
        elif cmd == C.URSIM_CMD_IS_STEADY:
            steady = m.is_idle and float(np.max(np.abs(ctrl.backend.qd))) < 1e-3
            ctrl.int_out[self.off + 1] = 1 if steady else 0
            self._done(ctrl)
        elif cmd in self.NOOP_CMDS:
            log.info("control script command %d accepted without effect in the simulation", cmd)
            self._done(ctrl)
        elif cmd == C.URSIM_CMD_STOP_SCRIPT:
            log.info("control script: stop script received")
            return False
        else:
            raise ProgramError(f"control script command {cmd} is not simulated")
        return True


def parse_program(text: str) -> RtdeControlProgram | RegisterProgram:
    """The program object for an uploaded URScript program text (one ``def``/``sec`` ... ``end``)."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    m = _DEF_RE.match(first)
    name = m.group(1) if m else "<unnamed>"
    if "def rtde_cmd(" in text:
        mo = _OFFSET_RE.search(text)
        offset = int(mo.group(1)) if mo else 0
        if offset not in (0, C.URSIM_UPPER_REGISTER_OFFSET):
            raise ProgramError(f"unsupported register offset {offset} in the uploaded control script")
        return RtdeControlProgram(name, offset)
    return RegisterProgram(name, text)


# ---------------------------------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------------------------------
class Controller:
    """The simulated controller.  Thread-safe entry points take ``self.lock``.

    Args:
        cfg: simulator configuration.
        backend: the arm plant (only touched from the control-loop thread after construction).
    """

    def __init__(self, cfg: UrSimConfig, backend: JointBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.dt = 1.0 / cfg.ur.rate_hz
        self.lock = threading.RLock()
        # the plant may choose its start (a task init state starts at the world's home pose)
        q0 = np.asarray(getattr(backend, "initial_q", cfg.initial_q), dtype=float)
        self.motion = JointMotion(cfg.ur, q0)
        self.int_in = [0] * N_REGISTERS
        self.dbl_in = [0.0] * N_REGISTERS
        self.int_out = [0] * N_REGISTERS
        self.dbl_out = [0.0] * N_REGISTERS
        self.std_do = 0
        self.conf_do = 0
        self.tool_do = 0
        self.analog_out = [0.0, 0.0]
        self.speed_fraction = 1.0
        self.robot_mode = C.URSIM_ROBOT_MODE_RUNNING
        self.safety_mode = C.URSIM_SAFETY_MODE_NORMAL
        self.runtime_state = C.URSIM_RUNTIME_STOPPED
        self.program: RtdeControlProgram | RegisterProgram | None = None
        self.loaded_program = "<unnamed>"
        self._pending_gripper: float | None = None
        self._pending_reset: np.ndarray | None = None
        self._pstop_time = -math.inf
        self._watchdog_period: float | None = None
        self._watchdog_key = -1
        self._watchdog_stamp = 0.0
        self._timestamp = 0.0
        self._cycles = 0
        self._periods: deque[float] = deque(maxlen=STATS_WINDOW)
        self._compute: deque[float] = deque(maxlen=STATS_WINDOW)
        self._overruns = 0
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.latest: Snapshot = self._snapshot()

    # ---- lifecycle -------------------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[Snapshot], None]) -> None:
        """Call ``fn(snapshot)`` from the loop thread after every cycle (must not block)."""
        self._listeners.append(fn)

    def start(self) -> None:
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._run, name="ursim-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _run(self) -> None:
        dt = self.dt
        next_t = time.perf_counter()
        last_start: float | None = None
        log.info("controller loop running at %.0f Hz (%s, %s backend)", 1 / dt, self.cfg.model, self.cfg.backend)
        while not self._stop_evt.is_set():
            start = time.perf_counter()
            if last_start is not None:
                self._periods.append(start - last_start)
            last_start = start
            try:
                with self.lock:
                    self._cycle()
                    snap = self._snapshot()
                    self.latest = snap
                for fn in self._listeners:
                    fn(snap)
            except Exception:  # keep serving; a broken cycle must not kill the controller silently
                log.exception("controller cycle failed")
            end = time.perf_counter()
            self._compute.append(end - start)
            next_t += dt
            delay = next_t - end
            if delay < 0:
                self._overruns += 1
                if delay < -RESYNC_AFTER_S:  # far behind (machine stalled): resynchronise instead of bursting
                    next_t = end
                continue
            self._stop_evt.wait(delay) if delay > 0.002 else time.sleep(delay)

    # ---- one cycle -------------------------------------------------------------------------------------
    def _cycle(self) -> None:
        dt = self.dt
        self._timestamp = self._cycles * dt
        self._cycles += 1
        if self._pending_gripper is not None:
            self.backend.set_gripper(self._pending_gripper)
            self._pending_gripper = None
        if self._pending_reset is not None:
            self.backend.reset(self._pending_reset)
            self._pending_reset = None
        if self.runtime_state == C.URSIM_RUNTIME_PLAYING and self.program is not None:
            if self._watchdog_period is not None and self._timestamp - self._watchdog_stamp > self._watchdog_period:
                log.warning("RTDE watchdog expired (no input for %.3f s): stopping the program",
                            self._timestamp - self._watchdog_stamp)
                self._end_program(C.URSIM_RUNTIME_STOPPED)
            else:
                try:
                    if not self.program.step(self):
                        log.info("program %s finished", self.program.name)
                        self._end_program(C.URSIM_RUNTIME_STOPPED)
                except ProgramError as e:
                    log.error("program %s stopped with an error: %s", self.program.name, e)
                    self._end_program(C.URSIM_RUNTIME_STOPPED)
        q_cmd, qd_cmd, _ = self.motion.step(dt)
        self.backend.apply(q_cmd, qd_cmd, dt)

    def _snapshot(self) -> Snapshot:
        s = Snapshot()
        s._model = self.cfg.ur
        s._tcp = s._target_tcp = s._tcp_speed = s._target_tcp_speed = None
        m = self.motion
        s.timestamp = self._timestamp
        s.target_q = tuple(m.q.tolist())
        s.target_qd = tuple(m.qd.tolist())
        s.target_qdd = tuple(m.qdd.tolist())
        s.actual_q = tuple(np.asarray(self.backend.q, dtype=float).tolist())
        s.actual_qd = tuple(np.asarray(self.backend.qd, dtype=float).tolist())
        s.robot_mode = self.robot_mode
        s.safety_mode = self.safety_mode
        s.safety_status_bits = self._safety_bits()
        running = self.runtime_state == C.URSIM_RUNTIME_PLAYING
        powered = self.robot_mode in (4, 5, 6, 7)
        s.robot_status_bits = (int(powered) << C.URSIM_ROBOT_STATUS_BIT_POWER_ON) | (
            int(running) << C.URSIM_ROBOT_STATUS_BIT_PROGRAM_RUNNING
        )
        s.runtime_state = self.runtime_state
        jm = {C.URSIM_ROBOT_MODE_RUNNING: C.URSIM_JOINT_MODE_RUNNING, C.URSIM_ROBOT_MODE_IDLE: C.URSIM_JOINT_MODE_IDLE}
        s.joint_mode = (jm.get(self.robot_mode, C.URSIM_JOINT_MODE_POWER_OFF),) * N_JOINTS
        s.digital_out_bits = self.std_do | (self.conf_do << 8) | (self.tool_do << 16)
        s.speed_fraction = self.speed_fraction
        s.analog_out = tuple(self.analog_out)
        s.int_out = tuple(self.int_out)
        s.dbl_out = tuple(self.dbl_out)
        s.int_in = tuple(self.int_in)
        s.dbl_in = tuple(self.dbl_in)
        s.gripper = float(self.backend.gripper)
        return s

    def _safety_bits(self) -> int:
        mode = self.safety_mode
        if mode == C.URSIM_SAFETY_MODE_NORMAL:
            return 1 << C.URSIM_SAFETY_BIT_NORMAL
        bits = 1 << C.URSIM_SAFETY_BIT_STOPPED_DUE_TO_SAFETY
        if mode == C.URSIM_SAFETY_MODE_PROTECTIVE_STOP:
            bits |= 1 << C.RTDE_SAFETY_BIT_PROTECTIVE_STOP
        elif mode in (6, 7):
            bits |= (1 << (5 if mode == 6 else 6)) | (1 << 7)
        elif 1 <= mode <= 9:
            bits |= 1 << (mode - 1)
        return bits

    # ---- program control (call with the lock held or through the public wrappers) -------------------
    def _end_program(self, runtime_state: int) -> None:
        self.runtime_state = runtime_state
        self._watchdog_period = None
        self.motion.stop(self.cfg.program_stop_decel)
        if runtime_state == C.URSIM_RUNTIME_STOPPED:
            self.program = None

    def _can_run(self) -> str | None:
        if self.safety_mode != C.URSIM_SAFETY_MODE_NORMAL:
            return f"safety mode is {C.URSIM_SAFETY_MODE_NAMES.get(self.safety_mode, self.safety_mode)}"
        if self.robot_mode != C.URSIM_ROBOT_MODE_RUNNING:
            return f"robot mode is {C.URSIM_ROBOT_MODE_NAMES.get(self.robot_mode, self.robot_mode)}"
        return None

    def load_program(self, text: str) -> bool:
        """A program arrived on the script port: replace the running one and start it (if allowed)."""
        with self.lock:
            why = self._can_run()
            if why is not None:
                log.warning("script port: program not started because the %s", why)
                return False
            try:
                program = parse_program(text)
            except ProgramError as e:
                log.error("script port: %s", e)
                return False
            if self.program is not None:
                log.info("script port: new program replaces %s", self.program.name)
            self.program = program
            self.loaded_program = program.name
            self._watchdog_period = None
            self.runtime_state = C.URSIM_RUNTIME_PLAYING
            log.info("program %s started (%s)", program.name, type(program).__name__)
            return True

    def set_watchdog(self, min_frequency: float, offset: int) -> None:
        if not min_frequency > 0:
            self._watchdog_period = None
            return
        self._watchdog_period = 1.0 / min_frequency
        self._watchdog_key = offset
        self._watchdog_stamp = self._timestamp
        log.info("RTDE watchdog set: input_int_register_%d at >= %.1f Hz", offset, min_frequency)

    # ---- RTDE inputs (network threads) -----------------------------------------------------------------
    def write_inputs(self, values: dict) -> None:
        """Apply one decoded RTDE input package (name -> value)."""
        with self.lock:
            for name, value in values.items():
                if name.startswith("input_int_register_"):
                    idx = int(name.rsplit("_", 1)[1])
                    self.int_in[idx] = int(value)
                    if idx == self._watchdog_key:
                        self._watchdog_stamp = self._timestamp
                elif name.startswith("input_double_register_"):
                    self.dbl_in[int(name.rsplit("_", 1)[1])] = float(value)
            if "standard_digital_output_mask" in values:
                new = _masked(self.std_do, values, "standard_digital_output", 0xFF)
                changed = new ^ self.std_do
                self.std_do = new
                if changed & (1 << self.cfg.gripper_pin):
                    high = bool(self.std_do & (1 << self.cfg.gripper_pin))
                    closed = high == self.cfg.gripper_closed_when_high
                    self._pending_gripper = 0.0 if closed else 1.0
                    log.info("gripper %s (standard digital out %d = %d)", "close" if closed else "open",
                             self.cfg.gripper_pin, int(high))
            if "configurable_digital_output_mask" in values:
                self.conf_do = _masked(self.conf_do, values, "configurable_digital_output", 0xFF)
            if "tool_digital_output_mask" in values:
                self.tool_do = _masked(self.tool_do, values, "tool_digital_output", 0x3)
            if int(values.get("speed_slider_mask", 0)) & 1:
                self.speed_fraction = min(max(float(values.get("speed_slider_fraction", 1.0)), 0.0), 1.0)
            if "standard_analog_output_mask" in values:
                mask = int(values["standard_analog_output_mask"])
                for i in (0, 1):
                    if mask & (1 << i):
                        self.analog_out[i] = float(values.get(f"standard_analog_output_{i}", 0.0))

    # ---- dashboard / fault operations (network threads) -------------------------------------------------
    def protective_stop(self, reason: str) -> None:
        with self.lock:
            if self.safety_mode == C.URSIM_SAFETY_MODE_PROTECTIVE_STOP:
                return
            log.warning("PROTECTIVE STOP (%s)", reason)
            self.safety_mode = C.URSIM_SAFETY_MODE_PROTECTIVE_STOP
            self._pstop_time = time.monotonic()
            self.motion.stop(self.cfg.pstop_decel)
            if self.runtime_state == C.URSIM_RUNTIME_PLAYING:
                self.runtime_state = C.URSIM_RUNTIME_PAUSED

    def emergency_stop(self, reason: str) -> None:
        with self.lock:
            log.warning("EMERGENCY STOP (%s)", reason)
            self.safety_mode = C.URSIM_SAFETY_MODE_SYSTEM_EMERGENCY_STOP
            self.motion.stop(self.cfg.estop_decel)
            if self.runtime_state != C.URSIM_RUNTIME_STOPPED:
                self.runtime_state = C.URSIM_RUNTIME_STOPPED
                self.program = None
                self._watchdog_period = None
            self.robot_mode = C.URSIM_ROBOT_MODE_POWER_OFF

    def release_emergency_stop(self) -> bool:
        with self.lock:
            if self.safety_mode not in (6, 7):
                return False
            self.safety_mode = C.URSIM_SAFETY_MODE_NORMAL
            log.info("emergency stop released (arm still powered off)")
            return True

    def unlock_protective_stop(self, force: bool = False) -> str:
        """Dashboard ``unlock protective stop``; ``force`` skips the unlock delay (simulator control only).
        Returns the dashboard answer."""
        with self.lock:
            if self.safety_mode != C.URSIM_SAFETY_MODE_PROTECTIVE_STOP:
                return "Protective stop releasing"
            if not force and time.monotonic() - self._pstop_time < self.cfg.pstop_unlock_delay_s:
                return (f"Cannot unlock protective stop until {self.cfg.pstop_unlock_delay_s:g}s after occurrence. "
                        "Always inspect cause of protective stop before unlocking")
            self.safety_mode = C.URSIM_SAFETY_MODE_NORMAL
            log.info("protective stop unlocked")
            return "Protective stop releasing"

    def stop_program(self, reason: str) -> bool:
        with self.lock:
            if self.runtime_state == C.URSIM_RUNTIME_STOPPED:
                return False
            log.info("program stopped (%s)", reason)
            self._end_program(C.URSIM_RUNTIME_STOPPED)
            return True

    def pause_program(self) -> bool:
        with self.lock:
            if self.runtime_state != C.URSIM_RUNTIME_PLAYING:
                return False
            self._end_program(C.URSIM_RUNTIME_PAUSED)
            return True

    def play(self) -> bool:
        with self.lock:
            if self._can_run() is not None:
                return False
            if self.runtime_state == C.URSIM_RUNTIME_PAUSED and self.program is not None:
                self.runtime_state = C.URSIM_RUNTIME_PLAYING
                return True
            return False

    def power(self, on: bool) -> None:
        with self.lock:
            if on:
                if self.robot_mode == C.URSIM_ROBOT_MODE_POWER_OFF and self.safety_mode == C.URSIM_SAFETY_MODE_NORMAL:
                    self.robot_mode = C.URSIM_ROBOT_MODE_IDLE
            else:
                if self.runtime_state != C.URSIM_RUNTIME_STOPPED:
                    self._end_program(C.URSIM_RUNTIME_STOPPED)
                self.robot_mode = C.URSIM_ROBOT_MODE_POWER_OFF

    def brake_release(self) -> None:
        with self.lock:
            if self.robot_mode == C.URSIM_ROBOT_MODE_IDLE and self.safety_mode == C.URSIM_SAFETY_MODE_NORMAL:
                self.robot_mode = C.URSIM_ROBOT_MODE_RUNNING

    def reset_arm(self, q: np.ndarray | None) -> bool:
        """Teleport the arm to q [6] (initial_q if None); refused while it moves or a program runs."""
        with self.lock:
            if not self.motion.is_idle:
                return False
            q = np.asarray(self.cfg.initial_q if q is None else q, dtype=float)
            self.motion.reset(q)  # validates q
            self._pending_reset = q  # the backend is touched from the loop thread only
        return True

    def stats(self) -> dict[str, float]:
        """Control-loop timing over the last ``STATS_WINDOW`` cycles (seconds)."""
        periods = np.asarray(self._periods, dtype=float)
        compute = np.asarray(self._compute, dtype=float)
        if periods.size == 0:
            return {"cycles": float(self._cycles), "rate_hz": 1.0 / self.dt}
        jitter = periods - self.dt
        return {
            "cycles": float(self._cycles),
            "rate_hz": 1.0 / self.dt,
            "period_mean_s": float(periods.mean()),
            "period_std_s": float(periods.std()),
            "jitter_abs_p50_s": float(np.percentile(np.abs(jitter), 50)),
            "jitter_abs_p99_s": float(np.percentile(np.abs(jitter), 99)),
            "jitter_abs_max_s": float(np.abs(jitter).max()),
            "compute_mean_s": float(compute.mean()),
            "compute_max_s": float(compute.max()),
            "overruns": float(self._overruns),
        }
