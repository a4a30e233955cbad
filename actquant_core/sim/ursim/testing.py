"""Run the UR controller simulator in a subprocess for tests and tools.

    from actquant_core.sim.ursim.testing import ursim_process, client_deadline

    with ursim_process(model="ur3e") as sim:          # own 127.0.0.x address, waits for READY
        with client_deadline(10.0, "RTDEReceiveInterface"):
            r = rtde_receive.RTDEReceiveInterface(sim.host)
        ...
        sim.inject("protective_stop")                 # fault injection over the dashboard port
        r.disconnect()                                # disconnect ur_rtde clients BEFORE leaving the block

Pytest: ``ursim = ursim_fixture(model="ur3e")`` at module level of a test file gives a fixture ``ursim``
yielding a ``UrSimHandle`` (module scope by default).

Why a subprocess: the ``ur_rtde`` constructors hold the GIL while they spin-wait for the first data
package, so a simulator thread in the same interpreter would deadlock.  For the same reason a Python-level
timeout cannot interrupt a hung constructor; ``client_deadline`` arms ``faulthandler``'s C-level watchdog,
which dumps every thread's traceback and exits the process if the block does not finish in time (a
loud failure instead of a CI hang).  The simulator is started with ``--exit-with-parent`` so it never
outlives the test process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from actquant_core import constants as C

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_READY_TIMEOUT_S = 20.0
DEFAULT_STOP_TIMEOUT_S = 5.0
DASHBOARD_TIMEOUT_S = 3.0


def _ports_free(host: str, ports: Sequence[int]) -> bool:
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_loopback_host(ports: Sequence[int] = (C.RTDE_PORT, C.RTDE_DASHBOARD_PORT, C.RTDE_SCRIPT_PORT),
                       rng: random.Random | None = None) -> str:
    """A 127.0.0.N address (N in 2..254) on which all ``ports`` can be bound right now."""
    rng = rng or random.Random()
    candidates = list(range(2, 255))
    rng.shuffle(candidates)
    for n in candidates:
        host = f"127.0.0.{n}"
        if _ports_free(host, ports):
            return host
    raise RuntimeError(f"no 127.0.0.N address has the ports {list(ports)} free")


def dashboard_command(host: str, line: str, port: int = C.RTDE_DASHBOARD_PORT,
                      timeout_s: float = DASHBOARD_TIMEOUT_S) -> str:
    """Send one line to the dashboard server (plain socket, no ur_rtde) and return the answer line."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        f = s.makefile("rwb")
        greeting = f.readline()
        if not greeting:
            raise ConnectionError(f"dashboard {host}:{port} closed before its greeting")
        f.write((line.rstrip("\n") + "\n").encode())
        f.flush()
        answer = f.readline()
        if not answer:
            raise ConnectionError(f"dashboard {host}:{port} closed without answering {line!r}")
        return answer.decode().rstrip("\r\n")


@contextlib.contextmanager
def client_deadline(timeout_s: float, what: str = "ur_rtde call") -> Iterator[None]:
    """Hard deadline for a block that may hang holding the GIL (ur_rtde constructors, calls).

    On expiry ``faulthandler`` (a C thread, independent of the GIL) writes all tracebacks to stderr and
    exits the process with status 1.  Only one deadline can be armed at a time (faulthandler has one).
    """
    if not timeout_s > 0:
        raise ValueError(f"client_deadline: timeout_s={timeout_s} must be > 0")
    log.debug("deadline %.1f s armed for %s", timeout_s, what)
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass(frozen=True)
class UrSimHandle:
    """A running simulator process.

    Attributes:
        host: its loopback address (ports: the UR defaults).
        model: "ur3" | "ur3e".
        backend: "kinematic" | "mujoco".
        rate_hz: controller rate.
        process: the ``subprocess.Popen``.
    """

    host: str
    model: str
    backend: str
    rate_hz: float
    process: subprocess.Popen

    def command(self, line: str) -> str:
        """One dashboard line -> answer line."""
        return dashboard_command(self.host, line)

    def inject(self, fault: str, *args: object) -> str:
        """Inject a fault: "protective_stop", "estop", "program_stop" or "drop" [refuse_s]."""
        if fault not in C.URSIM_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {C.URSIM_FAULTS}")
        answer = self.command(" ".join([C.URSIM_DASHBOARD_CONTROL_WORD, "inject", fault, *map(str, args)]))
        if not answer.startswith(f"{C.URSIM_DASHBOARD_CONTROL_WORD}: injected"):
            raise RuntimeError(f"inject {fault}: simulator answered {answer!r}")
        return answer

    def recover(self) -> None:
        """Release e-stop, unlock protective stop, power on, release brakes (program stays stopped)."""
        self.command(f"{C.URSIM_DASHBOARD_CONTROL_WORD} recover")

    def reset(self, q: Sequence[float] | None = None) -> bool:
        """Teleport the arm to q [6] (initial pose if None); False if refused because it moves."""
        words = [C.URSIM_DASHBOARD_CONTROL_WORD, "reset", *(f"{v:.17g}" for v in (q or []))]
        return self.command(" ".join(words)) == f"{C.URSIM_DASHBOARD_CONTROL_WORD}: reset"

    def state(self) -> dict:
        """Controller state as JSON (q, qd, target_q, modes, program, digital_out, gripper, connections)."""
        return json.loads(self.command(f"{C.URSIM_DASHBOARD_CONTROL_WORD} state"))

    def stats(self) -> dict:
        """Control-loop timing statistics (seconds)."""
        return json.loads(self.command(f"{C.URSIM_DASHBOARD_CONTROL_WORD} stats"))


def _drain(stream, sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(raw.decode(errors="replace").rstrip("\n"))
    stream.close()


@contextlib.contextmanager
def ursim_process(
    host: str | None = None,
    model: str = C.UR_TYPE_UR3,
    backend: str = "kinematic",
    *,
    pstop_unlock_delay_s: float = 0.0,
    initial_q: Sequence[float] | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    log_level: str = "INFO",
    log_file: Path | None = None,
) -> Iterator[UrSimHandle]:
    """Start ``python -m actquant_core.sim.ursim`` and yield a handle once it serves; SIGTERM on exit.

    Args:
        host: loopback address; a free 127.0.0.N is picked when None.
        model: "ur3" (CB3, 125 Hz) or "ur3e" (e-series, 500 Hz).
        backend: "kinematic" or "mujoco".
        pstop_unlock_delay_s: protective-stop unlock delay (tests use 0; the real robot has 5 s).
        initial_q: initial joint positions [6] (rad); the simulator default when None.
        extra_args: more command-line arguments.
        ready_timeout_s: how long to wait for the READY line.
        log_level: the simulator's log level.
        log_file: append the simulator's log here; otherwise its lines go to this process's logging.
    """
    host = host or pick_loopback_host()
    cmd = [sys.executable, "-m", "actquant_core.sim.ursim", "--host", host, "--model", model, "--backend", backend,
           "--pstop-unlock-delay", str(pstop_unlock_delay_s), "--log-level", log_level, "--exit-with-parent"]
    if initial_q is not None:
        cmd += ["--initial-q", *(f"{v:.17g}" for v in initial_q)]
    cmd += list(extra_args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(_REPO_ROOT))
    lines: queue.Queue[str] = queue.Queue()
    sim_log = logging.getLogger("ursim.process")
    log_fh = open(log_file, "a") if log_file is not None else None  # noqa: SIM115 (closed below)

    def _to_log(line: str) -> None:
        if log_fh is not None:
            log_fh.write(line + "\n")
            log_fh.flush()
        else:
            sim_log.info("%s", line)

    threading.Thread(target=_drain, args=(proc.stdout, lines.put), daemon=True).start()
    threading.Thread(target=_drain, args=(proc.stderr, _to_log), daemon=True).start()
    try:
        deadline = time.monotonic() + ready_timeout_s
        ready = None
        while ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"ursim on {host} not READY within {ready_timeout_s:g} s: {' '.join(cmd)}")
            if proc.poll() is not None:
                raise RuntimeError(f"ursim on {host} exited with {proc.returncode} before READY: {' '.join(cmd)}")
            try:
                line = lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if line.startswith(C.URSIM_READY_LINE):
                ready = line
        fields = dict(w.split("=", 1) for w in ready.split()[2:] if "=" in w)
        handle = UrSimHandle(host=host, model=model, backend=backend, rate_hz=float(fields["rate_hz"]), process=proc)
        log.info("ursim ready: %s", ready)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DEFAULT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("ursim on %s ignored SIGTERM; killing pid %d", host, proc.pid)
                proc.kill()
                proc.wait(timeout=DEFAULT_STOP_TIMEOUT_S)
        if log_fh is not None:
            log_fh.close()


def ursim_fixture(model: str = C.UR_TYPE_UR3, backend: str = "kinematic", scope: str = "module", **kwargs):
    """A pytest fixture (assign it to a module-level name) that yields a ``UrSimHandle``."""
    import pytest  # noqa: PLC0415 (test-only dependency)

    @pytest.fixture(scope=scope)
    def _ursim() -> Iterator[UrSimHandle]:
        with ursim_process(model=model, backend=backend, **kwargs) as handle:
            yield handle

    return _ursim
