"""Socket side of the UR controller simulator: RTDE v2 (30004), dashboard (29999), script upload (30003).

One listener thread per port and one reader thread per client connection; RTDE data packages are sent
from the control-loop thread after every cycle (non-blocking sends with a per-connection backlog, so a
stalled client can never stall the controller; a client that falls more than ``MAX_BACKLOG_BYTES``
behind is disconnected, as the real controller drops a client that does not read).

Simulator control (fault injection and test helpers) rides on the dashboard port as extra commands
starting with ``actquant`` (the real dashboard answers unknown commands, so a real-robot client never
sends these):

    actquant inject protective_stop | estop | program_stop | drop [refuse_s]
    actquant release estop        # e-stop button released (arm stays powered off)
    actquant recover              # release e-stop, unlock protective stop, power on, brake release
    actquant reset [q0 .. q5]     # teleport the arm (refused while it moves)
    actquant state                # JSON: q, qd, modes, program, digital outputs, gripper
    actquant stats                # JSON: control-loop timing

``drop`` closes every client socket (RTDE, dashboard, script) and refuses new connections for ``refuse_s``
(default ``DEFAULT_DROP_REFUSE_S``), so clients that reconnect at once (RTDEControlInterface does) fail
cleanly; ``drop 0`` lets them reconnect immediately (see the note at ``DEFAULT_DROP_REFUSE_S``).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

import numpy as np

from actquant_core import constants as C
from actquant_core.sim.ursim.backends import JointBackend, make_backend
from actquant_core.sim.ursim.config import UrSimConfig
from actquant_core.sim.ursim.controller import Controller, Snapshot, output_getter
from actquant_core.sim.ursim.protocol import (
    HEADER,
    HEADER_SIZE,
    INPUT_TYPES,
    OUTPUT_TYPES,
    TYPE_COUNTS,
    ProtocolError,
    Recipe,
    frame,
    make_recipe,
    split_names,
    unpack_inputs,
)

log = logging.getLogger(__name__)

MAX_BACKLOG_BYTES = 4 * 1024 * 1024
ACCEPT_POLL_S = 0.1
DASHBOARD_GREETING = "Connected: Universal Robots Dashboard Server"
# A dropped RTDEControlInterface reconnects at once from its receive thread; when that succeeds,
# ur_rtde 1.6.5 keeps two receive threads on one socket and can crash.  Refusing connections for a
# while after a drop makes its reconnect fail cleanly (isConnected() -> False), as with a pulled cable.
DEFAULT_DROP_REFUSE_S = 1.0


class _Conn:
    """A client connection with a thread-safe, never-blocking send."""

    def __init__(self, sock: socket.socket, kind: str, peer: str) -> None:
        self.sock = sock
        self.kind = kind
        self.peer = peer
        self._wlock = threading.Lock()
        self._backlog = bytearray()
        self.closed = False

    def send(self, data: bytes) -> bool:
        with self._wlock:
            if self.closed:
                return False
            try:
                if self._backlog:
                    self._backlog += data
                    data = bytes(self._backlog)
                    self._backlog.clear()
                n = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            except OSError as e:
                log.info("%s %s: send failed (%s); closing", self.kind, self.peer, e)
                self._close_locked()
                return False
            if n < len(data):
                self._backlog += data[n:]
                if len(self._backlog) > MAX_BACKLOG_BYTES:
                    log.warning("%s %s: client does not read (%d bytes behind); closing", self.kind, self.peer,
                                len(self._backlog))
                    self._close_locked()
                    return False
            return True

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        with self._wlock:
            self._close_locked()


class _Listener:
    """Accept loop for one port; can be closed for a while (``refuse_until``) to refuse connections."""

    def __init__(self, host: str, port: int, name: str, handler: Callable[[socket.socket, str], None]) -> None:
        self.host, self.port, self.name = host, port, name
        self._handler = handler
        self._sock: socket.socket | None = None
        self.refuse_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError:
            s.close()
            raise
        s.listen(16)
        s.settimeout(ACCEPT_POLL_S)
        self._sock = s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ursim-{self.name}-accept", daemon=True)
        self._thread.start()

    def refuse(self, until: float) -> None:
        """Refuse connections until ``until`` (monotonic): the listening socket is shut down now (pending
        and new connection attempts are refused at once) and reopened by the accept loop afterwards."""
        self.refuse_until = until
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept() in the loop thread, which closes it
            except OSError:
                pass

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() < self.refuse_until:
                self._close_sock()
                self._stop.wait(0.02)
                continue
            if self._sock is None:
                try:
                    self.bind()
                    log.info("%s listener on %s:%d reopened", self.name, self.host, self.port)
                except OSError as e:
                    log.warning("%s listener: cannot rebind %s:%d (%s); retrying", self.name, self.host, self.port, e)
                    self._stop.wait(0.1)
                    continue
            try:
                client, addr = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                if e.errno not in (errno.EBADF, errno.EINVAL):
                    log.warning("%s accept failed: %s", self.name, e)
                continue
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
            threading.Thread(target=self._handler, args=(client, peer), name=f"ursim-{self.name}-{peer}",
                             daemon=True).start()
        self._close_sock()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


class _RtdeSession:
    """State of one RTDE connection: negotiated version, recipes, streaming."""

    def __init__(self, server: UrSimServer, conn: _Conn) -> None:
        self.server = server
        self.conn = conn
        self.protocol_version = 1
        self.outputs: dict[int, tuple[Recipe, list[Callable[[Snapshot], tuple]], int]] = {}
        self.inputs: dict[int, Recipe] = {}
        self.started = False
        self._next_out = 1
        self._next_in = 1

    # -- streaming (control-loop thread) --
    def on_cycle(self, snap: Snapshot, cycle: int) -> None:
        if not self.started:
            return
        for recipe, getters, decim in self.outputs.values():
            if cycle % decim:
                continue
            flat: list = [recipe.recipe_id]
            for g in getters:
                flat.extend(g(snap))
            self.conn.send(frame(C.URSIM_MSG_DATA_PACKAGE, recipe.codec.pack(*flat)))  # type: ignore[union-attr]

    # -- requests (reader thread) --
    def handle(self, msg_type: int, payload: bytes) -> None:
        ctrl = self.server.controller
        if msg_type == C.URSIM_MSG_REQUEST_PROTOCOL_VERSION:
            (version,) = struct.unpack(">H", payload[:2])
            ok = version in (1, C.URSIM_RTDE_PROTOCOL_VERSION)
            if ok:
                self.protocol_version = version
            self.conn.send(frame(msg_type, struct.pack(">B", int(ok))))
        elif msg_type == C.URSIM_MSG_GET_URCONTROL_VERSION:
            self.conn.send(frame(msg_type, struct.pack(">IIII", *ctrl.cfg.ur.version)))
        elif msg_type == C.URSIM_MSG_SETUP_OUTPUTS:
            if self.protocol_version >= 2:
                (freq,) = struct.unpack(">d", payload[:8])
                names = split_names(payload[8:])
            else:
                freq, names = ctrl.cfg.ur.rate_hz, split_names(payload)
            rid = self._next_out
            self._next_out += 1
            recipe = make_recipe(rid, names, OUTPUT_TYPES)
            if recipe.usable:
                rate = ctrl.cfg.ur.rate_hz
                decim = max(1, int(round(rate / freq))) if freq > 0 else 1
                getters = [output_getter(n, TYPE_COUNTS[t]) for n, t in zip(recipe.names, recipe.types)]
                self.outputs[rid] = (recipe, getters, decim)
                log.info("rtde %s: output recipe %d at %.0f Hz: %d variables", self.conn.peer, rid, rate / decim,
                         len(names))
            else:
                missing = [n for n, t in zip(recipe.names, recipe.types) if t == "NOT_FOUND"]
                log.warning("rtde %s: output recipe with unknown variables %s", self.conn.peer, missing)
            self.conn.send(frame(msg_type, struct.pack(">B", rid) + recipe.types_answer()))
        elif msg_type == C.URSIM_MSG_SETUP_INPUTS:
            rid = self._next_in
            self._next_in += 1
            recipe = make_recipe(rid, split_names(payload), INPUT_TYPES)
            if recipe.usable:
                self.inputs[rid] = recipe
            else:
                log.warning("rtde %s: input recipe %d has unknown variables: %s", self.conn.peer, rid, recipe.names)
            log.debug("rtde %s: input recipe %d: %s", self.conn.peer, rid, ",".join(recipe.names))
            self.conn.send(frame(msg_type, struct.pack(">B", rid) + recipe.types_answer()))
        elif msg_type == C.URSIM_MSG_START:
            ok = bool(self.outputs)
            self.conn.send(frame(msg_type, struct.pack(">B", int(ok))))
            self.started = ok
            log.info("rtde %s: start -> %s", self.conn.peer, ok)
        elif msg_type == C.URSIM_MSG_PAUSE:
            self.started = False
            self.conn.send(frame(msg_type, struct.pack(">B", 1)))
            log.info("rtde %s: pause", self.conn.peer)
        elif msg_type == C.URSIM_MSG_DATA_PACKAGE:
            if not payload:
                raise ProtocolError("empty data package")
            recipe = self.inputs.get(payload[0])
            if recipe is None:
                log.warning("rtde %s: data package for unknown input recipe %d", self.conn.peer, payload[0])
                return
            try:
                values = unpack_inputs(recipe, payload)
            except ProtocolError as e:
                log.warning("rtde %s: %s", self.conn.peer, e)
                return
            ctrl.write_inputs(values)
        else:
            log.warning("rtde %s: unknown message type %d (%d bytes) ignored", self.conn.peer, msg_type, len(payload))


class UrSimServer:
    """The simulator: controller + its three TCP services on ``cfg.host``.

    Args:
        cfg: configuration.
        backend: the arm plant; built from ``cfg.backend`` when None.
    """

    def __init__(self, cfg: UrSimConfig, backend: JointBackend | None = None) -> None:
        self.cfg = cfg
        self.backend = backend if backend is not None else make_backend(cfg)
        self.controller = Controller(cfg, self.backend)
        self._conns: set[_Conn] = set()
        self._sessions: list[_RtdeSession] = []
        self._lock = threading.Lock()
        self._cycle = 0
        self._listeners = [
            _Listener(cfg.host, cfg.rtde_port, "rtde", self._serve_rtde),
            _Listener(cfg.host, cfg.dashboard_port, "dashboard", self._serve_dashboard),
            _Listener(cfg.host, cfg.script_port, "script", self._serve_script),
        ]
        self.controller.add_listener(self._on_cycle)

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind all ports (raises OSError if one is taken), then start the loop and the accept threads."""
        bound: list[_Listener] = []
        try:
            for lst in self._listeners:
                lst.bind()
                bound.append(lst)
        except OSError:
            for lst in bound:
                lst._close_sock()
            raise
        self.controller.start()
        for lst in self._listeners:
            lst.start()
        log.info("serving %s on %s: rtde %d, dashboard %d, script %d (%.0f Hz, %s backend)", self.cfg.model,
                 self.cfg.host, self.cfg.rtde_port, self.cfg.dashboard_port, self.cfg.script_port,
                 self.cfg.ur.rate_hz, self.cfg.backend)

    def shutdown(self) -> None:
        for lst in self._listeners:
            lst.stop()
        self.drop_connections(0.0)
        self.controller.stop()
        self.backend.close()
        log.info("simulator stopped")

    def drop_connections(self, refuse_s: float) -> int:
        """Close every client socket; with refuse_s > 0 also refuse new connections for that long."""
        if refuse_s > 0:
            until = time.monotonic() + refuse_s
            for lst in self._listeners:
                lst.refuse(until)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        log.warning("dropped %d client connections%s", len(conns),
                    f" (refusing new ones for {refuse_s:g} s)" if refuse_s > 0 else "")
        return len(conns)

    def _register(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.add(conn)

    def _unregister(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _on_cycle(self, snap: Snapshot) -> None:
        self._cycle += 1
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.on_cycle(snap, self._cycle)

    # ---- RTDE ------------------------------------------------------------------------------------------
    def _serve_rtde(self, sock: socket.socket, peer: str) -> None:
        conn = _Conn(sock, "rtde", peer)
        session = _RtdeSession(self, conn)
        self._register(conn)
        with self._lock:
            self._sessions.append(session)
        log.info("rtde client %s connected", peer)
        buf = bytearray()
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= HEADER_SIZE:
                    size, msg_type = HEADER.unpack_from(buf)
                    if size < HEADER_SIZE:
                        raise ProtocolError(f"message size {size} smaller than the header")
                    if len(buf) < size:
                        break
                    payload = bytes(buf[HEADER_SIZE:size])
                    del buf[:size]
                    session.handle(msg_type, payload)
        except (OSError, ProtocolError, struct.error) as e:
            if not conn.closed:
                log.info("rtde client %s: %s", peer, e)
        finally:
            with self._lock:
                if session in self._sessions:
                    self._sessions.remove(session)
            self._unregister(conn)
            log.info("rtde client %s disconnected", peer)

    # ---- script port -----------------------------------------------------------------------------------
    def _serve_script(self, sock: socket.socket, peer: str) -> None:
        conn = _Conn(sock, "script", peer)
        self._register(conn)
        log.info("script client %s connected", peer)
        pending = ""
        program: list[str] | None = None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                pending += data.decode("utf-8", errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    if program is None:
                        if line.startswith(("def ", "sec ")):
                            program = [line]
                        elif line.strip():
                            log.info("script %s: single statement %r not simulated", peer, line.strip()[:80])
                        continue
                    program.append(line)
                    if line.rstrip() == "end":
                        text = "\n".join(program) + "\n"
                        program = None
                        log.info("script %s: program received (%d bytes)", peer, len(text))
                        self.controller.load_program(text)
        except OSError as e:
            if not conn.closed:
                log.info("script client %s: %s", peer, e)
        finally:
            self._unregister(conn)
            log.info("script client %s disconnected", peer)

    # ---- dashboard -------------------------------------------------------------------------------------
    def _serve_dashboard(self, sock: socket.socket, peer: str) -> None:
        conn = _Conn(sock, "dashboard", peer)
        self._register(conn)
        log.info("dashboard client %s connected", peer)
        conn.send((DASHBOARD_GREETING + "\n").encode())
        pending = b""
        try:
            while not conn.closed:
                data = sock.recv(4096)
                if not data:
                    break
                pending += data
                while b"\n" in pending and not conn.closed:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line:
                        continue
                    reply, after = self._dashboard_command(line)
                    conn.send((reply + "\n").encode())
                    if after is not None:
                        after(conn)
        except OSError as e:
            if not conn.closed:
                log.info("dashboard client %s: %s", peer, e)
        finally:
            self._unregister(conn)
            log.info("dashboard client %s disconnected", peer)

    def _dashboard_command(self, line: str) -> tuple[str, Callable[[_Conn], None] | None]:
        """Answer one dashboard line; the optional callable runs after the answer was sent."""
        ctrl = self.controller
        cmd = line.lower()
        log.debug("dashboard: %s", line)
        if cmd.startswith(C.URSIM_DASHBOARD_CONTROL_WORD + " ") or cmd == C.URSIM_DASHBOARD_CONTROL_WORD:
            return self._control_command(line.split()[1:])
        if cmd == "polyscopeversion":
            return ctrl.cfg.ur.polyscope, None
        if cmd == "get serial number":
            return ctrl.cfg.ur.serial, None
        if cmd == "get robot model":
            return ctrl.cfg.model.rstrip("e").upper(), None
        if cmd == "is in remote control":
            return "true", None
        if cmd == "robotmode":
            return f"Robotmode: {C.URSIM_ROBOT_MODE_NAMES.get(ctrl.robot_mode, 'UNKNOWN')}", None
        if cmd == "safetymode":
            return f"Safetymode: {C.URSIM_SAFETY_MODE_NAMES.get(ctrl.safety_mode, 'UNKNOWN')}", None
        if cmd == "safetystatus":
            return f"Safetystatus: {C.URSIM_SAFETY_MODE_NAMES.get(ctrl.safety_mode, 'UNKNOWN')}", None
        if cmd == "programstate":
            names = {C.URSIM_RUNTIME_PLAYING: "PLAYING", C.URSIM_RUNTIME_PAUSED: "PAUSED"}
            return f"{names.get(ctrl.runtime_state, 'STOPPED')} {ctrl.loaded_program}", None
        if cmd == "running":
            return f"Program running: {str(ctrl.runtime_state == C.URSIM_RUNTIME_PLAYING).lower()}", None
        if cmd == "play":
            return ("Starting program" if ctrl.play() else "Failed to execute: play"), None
        if cmd == "stop":
            ctrl.stop_program("dashboard stop")
            return "Stopped", None
        if cmd == "pause":
            return ("Pausing program" if ctrl.pause_program() else "Failed to execute: pause"), None
        if cmd == "unlock protective stop":
            return ctrl.unlock_protective_stop(), None
        if cmd == "close safety popup":
            return "closing safety popup", None
        if cmd == "close popup":
            return "closing popup", None
        if cmd.startswith("popup"):
            return "showing popup", None
        if cmd == "power on":
            ctrl.power(True)
            return "Powering on", None
        if cmd == "power off":
            ctrl.power(False)
            return "Powering off", None
        if cmd == "brake release":
            ctrl.brake_release()
            return "Brake releasing", None
        if cmd == "restart safety":
            return "Restarting safety", None
        if cmd.startswith("load "):
            return f"Loading program: {line[5:].strip()}", None
        if cmd == "get loaded program":
            return f"Loaded program: {ctrl.loaded_program}", None
        if cmd == "isprogramsaved":
            return f"True {ctrl.loaded_program}", None
        if cmd.startswith("addtolog"):
            return "Added log message", None
        if cmd.startswith("setuserrole"):
            return f"Setting user role: {line[len('setUserRole'):].strip()}", None
        if cmd == "shutdown":
            return "Shutting down", None
        if cmd == "quit":
            return "Disconnected", lambda conn: conn.close()
        return f"could not understand: '{line}'", None

    def _control_command(self, words: list[str]) -> tuple[str, Callable[[_Conn], None] | None]:
        ctrl = self.controller
        if not words:
            return "actquant: expected inject|release|recover|reset|state|stats", None
        verb = words[0].lower()
        if verb == "inject" and len(words) >= 2:
            fault = words[1].lower()
            if fault == C.URSIM_FAULT_PROTECTIVE_STOP:
                ctrl.protective_stop("injected")
            elif fault == C.URSIM_FAULT_EMERGENCY_STOP:
                ctrl.emergency_stop("injected")
            elif fault == C.URSIM_FAULT_PROGRAM_STOP:
                ctrl.stop_program("injected")
            elif fault == C.URSIM_FAULT_CONNECTION_DROP:
                try:
                    refuse_s = float(words[2]) if len(words) > 2 else DEFAULT_DROP_REFUSE_S
                except ValueError:
                    return f"actquant: bad refuse time {words[2]!r}", None
                # answer first, then close everything (this connection included)
                return f"actquant: injected {fault}", lambda conn: self.drop_connections(refuse_s)
            else:
                return f"actquant: unknown fault {fault!r}; one of {', '.join(C.URSIM_FAULTS)}", None
            return f"actquant: injected {fault}", None
        if verb == "release" and len(words) >= 2 and words[1].lower() == C.URSIM_FAULT_EMERGENCY_STOP:
            ok = ctrl.release_emergency_stop()
            return ("actquant: estop released" if ok else "actquant: no estop active"), None
        if verb == "recover":
            ctrl.release_emergency_stop()
            ctrl.unlock_protective_stop(force=True)
            ctrl.power(True)
            ctrl.brake_release()
            return "actquant: recovered", None
        if verb == "reset":
            try:
                q = np.array([float(w) for w in words[1:]], dtype=float) if len(words) > 1 else None
                ok = ctrl.reset_arm(q)
            except ValueError as e:
                return f"actquant: bad reset: {e}", None
            return ("actquant: reset" if ok else "actquant: refused (arm moving)"), None
        if verb == "state":
            return json.dumps(self.state()), None
        if verb == "task_success":
            fn = getattr(self.backend, "task_success", None)
            ok = fn() if fn is not None else None
            return f"actquant: task_success {'none' if ok is None else str(ok).lower()}", None
        if verb == "stats":
            return json.dumps(ctrl.stats()), None
        return f"actquant: unknown command {' '.join(words)!r}", None

    def state(self) -> dict:
        """A JSON-able summary of the controller state (for tests and humans)."""
        ctrl = self.controller
        snap = ctrl.latest
        with self._lock:
            kinds = [c.kind for c in self._conns]
        by_kind = {k: kinds.count(k) for k in ("rtde", "script", "dashboard")}
        return {
            "timestamp": snap.timestamp,
            "q": list(snap.actual_q),
            "qd": list(snap.actual_qd),
            "target_q": list(snap.target_q),
            "robot_mode": snap.robot_mode,
            "safety_mode": snap.safety_mode,
            "runtime_state": snap.runtime_state,
            "program": ctrl.program.name if ctrl.program is not None else None,
            "motion_mode": ctrl.motion.mode,
            "digital_out": snap.digital_out_bits,
            "gripper": snap.gripper,
            "connections": len(kinds),
            # per kind: dashboard includes the socket answering this query, and may still include an
            # earlier one-line query whose close the server has not read yet
            "connections_by_kind": by_kind,
        }
