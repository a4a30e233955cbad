"""Policy-side client of the LIBERO environment server: starts it in the LIBERO venv and talks ``wire``.

numpy + stdlib only.  The server is started as a standalone script (``env_server.py`` by file path) with
the LIBERO venv's interpreter and listens on a Unix domain socket in a private temporary folder; its
stdout/stderr go to a log file whose tail is quoted when it fails.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actquant_core.libero import wire

log = logging.getLogger(__name__)

ENV_SERVER_SCRIPT = Path(__file__).with_name("env_server.py")
SETUP_COMMAND = "actquant_core/libero/setup_venv.sh"


class EnvServerError(RuntimeError):
    """The env server answered with an error, died, or could not be started."""


def default_libero_python() -> str:
    """``$ACTQUANT_LIBERO_PYTHON``, else ``<checkout>/.venv-libero/bin/python``."""
    env = os.environ.get("ACTQUANT_LIBERO_PYTHON")
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / ".venv-libero" / "bin" / "python")


@dataclass(frozen=True)
class EnvServerConfig:
    """How to start and reach the env server.

    Attributes:
        python: interpreter of the LIBERO venv.
        argv: full command overriding ``[python, env_server.py]`` (tests start a fake server this way);
            ``--socket PATH`` is appended.
        start_timeout_s: time for the server to create its socket.
        request_timeout_s: time for one reply (a reset builds the scene: ~10 s; a step of k actions ~k x 0.2-0.7 s).
        log_path: server stdout/stderr file (None: a file in the private temporary folder).
        env: extra environment variables for the server (MUJOCO_GL defaults to egl).
    """

    python: str = field(default_factory=default_libero_python)
    argv: tuple[str, ...] = ()
    start_timeout_s: float = 60.0
    request_timeout_s: float = 900.0
    log_path: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.start_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ValueError(f"EnvServerConfig timeouts must be > 0, got start {self.start_timeout_s}, "
                             f"request {self.request_timeout_s}")
        if not self.argv and not self.python:
            raise ValueError("EnvServerConfig needs python (the LIBERO venv's interpreter) or argv")

    def command(self) -> list[str]:
        if self.argv:
            return list(self.argv)
        if not Path(self.python).exists():
            raise FileNotFoundError(
                f"LIBERO interpreter {self.python!r} not found; create the LIBERO venv with {SETUP_COMMAND} "
                "or pass --libero-python / set ACTQUANT_LIBERO_PYTHON")
        return [self.python, str(ENV_SERVER_SCRIPT)]


@dataclass(frozen=True)
class EnvObs:
    """One environment observation (the arrays of ``wire.OBS_ARRAYS``) with the episode flags."""

    arrays: dict[str, np.ndarray]
    done: bool
    reward: float
    steps: int
    language: str


class EnvClient:
    """Starts the env server and sends it requests.  Use as a context manager (``close`` stops the server).

    Methods mirror the wire messages: ``hello() -> dict``, ``tasks(suite) -> list[dict]``,
    ``reset(...) -> EnvObs``, ``step(actions [k, 7]) -> EnvObs``.
    """

    def __init__(self, config: EnvServerConfig | None = None) -> None:
        self.config = config or EnvServerConfig()
        self._tmp = tempfile.TemporaryDirectory(prefix="actquant-libero-")
        self.socket_path = os.path.join(self._tmp.name, "env.sock")
        self.log_path = self.config.log_path or os.path.join(self._tmp.name, "env_server.log")
        cmd = self.config.command() + ["--socket", self.socket_path]
        env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
        env.pop("PYTHONPATH", None)  # never leak this venv's packages into the LIBERO venv
        env.update(dict(self.config.env))
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        log.info("starting LIBERO env server: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                      stdin=subprocess.DEVNULL)
        self._sock: socket.socket | None = None
        try:
            self._sock = self._connect()
            self.info = self.hello()
        except BaseException:
            self.close()
            raise

    # -- process / connection -------------------------------------------------------------------------

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return Path(self.log_path).read_bytes()[-n_chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _dead(self, what: str) -> EnvServerError:
        rc = self._proc.poll()
        state = f"exited with code {rc}" if rc is not None else "is still running"
        return EnvServerError(f"LIBERO env server {what}; it {state}. Log {self.log_path}:\n{self.log_tail()}")

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise self._dead("did not start")
            if os.path.exists(self.socket_path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.socket_path)
                    s.settimeout(self.config.request_timeout_s)
                    return s
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise self._dead(f"created no socket within {self.config.start_timeout_s:.0f} s")
            time.sleep(0.05)

    def request(self, msg: wire.Message, expect: str) -> wire.Message:
        """Sends one request, returns the reply of type ``expect``; EnvServerError for ``error`` replies."""
        if self._sock is None:
            raise EnvServerError("the env client is closed")
        try:
            wire.send_message(self._sock, msg)
            reply = wire.recv_message(self._sock)
        except socket.timeout:
            raise self._dead(f"gave no reply to {msg.type!r} within {self.config.request_timeout_s:.0f} s") from None
        except (wire.PeerClosedError, BrokenPipeError, ConnectionResetError) as e:
            raise self._dead(f"closed the connection during {msg.type!r} ({e})") from None
        if reply.type == wire.MSG_ERROR:
            kind, text = reply.fields.get("kind", "Error"), reply.fields.get("message", "")
            raise EnvServerError(f"LIBERO env server: {msg.type!r} failed: {kind}: {text}")
        if reply.type != expect:
            raise wire.ProtocolError(f"expected a {expect!r} reply to {msg.type!r}, got {reply.type!r}")
        return reply

    def close(self) -> None:
        """Asks the server to exit, then waits for (or kills) it."""
        if self._sock is not None:
            try:
                self._sock.settimeout(10.0)
                wire.send_message(self._sock, wire.Message(wire.MSG_CLOSE))
                wire.recv_message(self._sock)
            except (OSError, wire.ProtocolError, wire.PeerClosedError):
                pass
            self._sock.close()
            self._sock = None
        if self._proc.poll() is None:
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("env server did not exit; killing pid %d", self._proc.pid)
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._log_file.close()
        self._tmp.cleanup()

    def __enter__(self) -> EnvClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        r = self.request(wire.Message(wire.MSG_HELLO, {"version": wire.PROTOCOL_VERSION}), wire.MSG_HELLO)
        if r.fields.get("version") != wire.PROTOCOL_VERSION:
            raise wire.ProtocolError(f"env server speaks protocol {r.fields.get('version')!r}, "
                                     f"this side {wire.PROTOCOL_VERSION}")
        return dict(r.fields)

    def tasks(self, suite: str) -> list[dict[str, Any]]:
        return list(self.request(wire.Message(wire.MSG_TASKS, {"suite": suite}), wire.MSG_TASKS).fields["tasks"])

    @staticmethod
    def _obs(r: wire.Message) -> EnvObs:
        for name in wire.OBS_ARRAYS:
            r.array(name)
        f = r.fields
        return EnvObs(arrays=dict(r.arrays), done=bool(f["done"]), reward=float(f["reward"]), steps=int(f["steps"]),
                      language=str(f.get("language", "")))

    def reset(self, suite: str, task: int, init_index: int, seed: int, resolution: int) -> EnvObs:
        return self._obs(self.request(wire.Message(wire.MSG_RESET, {
            "suite": suite, "task": int(task), "init_index": int(init_index), "seed": int(seed),
            "resolution": int(resolution)}), wire.MSG_OBS))

    def step(self, actions: np.ndarray, stop_on_done: bool = True) -> EnvObs:
        """Executes actions [k, 7] in order (stopping at done unless ``stop_on_done`` is False)."""
        a = np.asarray(actions, np.float64)
        if a.ndim != 2 or a.shape[1] != 7:
            raise ValueError(f"actions must be [k, 7], got shape {a.shape}")
        return self._obs(self.request(wire.Message(wire.MSG_STEP, {"stop_on_done": bool(stop_on_done)},
                                                   {wire.STEP_ACTIONS: a}), wire.MSG_OBS))
