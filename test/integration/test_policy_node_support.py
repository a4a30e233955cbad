"""Shared helpers of the policy node / closed-loop / replay tests (no tests here).

``export_tiny_policy``: pi05-tiny with seeded random weights, exported to GGUF with norm stats that map
the network's outputs to joint targets within ``spread`` rad of ``center_q`` (so a random policy makes
small, safe motions around the simulator's start pose).  ``StubRuntime``: a numpy runtime with the same
interface (``infer``, ``config.camera_slots``) for fast fault tests.  ``subprocess_env``: the environment
of a node subprocess (loopback DDS, own domain, repository on PYTHONPATH).  ``Feeder``: publishes both
cameras and the joint states of the dry-run tests; ``wait_for``: poll a predicate with a deadline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from actquant_core import constants as C
from actquant_core.runtime.types import ActionChunk, Observation
from actquant_ros import convert as V
from actquant_ros import msgs as M
from actquant_ros.transport import QOS_DEFAULT, QOS_SENSOR_DATA
from actquant_ros.transport.loopback import use_loopback_config

ROOT = Path(__file__).resolve().parents[2]
START_Q = (0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0)  # the simulator's default initial pose
JOINTS7 = list(C.UR_JOINT_NAMES) + [C.SIM_GRIPPER_JOINT_NAME]
WAIT_S = 10.0


def export_tiny_policy(path: Path, center_q=START_Q, spread: float = 0.15, seed: int = 0) -> Path:
    """pi05-tiny (random weights) -> GGUF at ``path``; actions: 6 joints near ``center_q`` + gripper [0, 1]."""
    from actquant_core.export import export_pi05
    from actquant_core.policies.common.normalize import FeatureStats, NormStats
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.model import Pi05Model

    cfg = get_preset("pi05-tiny")
    model = Pi05Model(cfg).init_random(seed).eval()
    center = np.concatenate([np.asarray(center_q, np.float64), [0.5]])
    lo = np.concatenate([center[:6] - spread, [0.0]]).astype(np.float32)
    hi = np.concatenate([center[:6] + spread, [1.0]]).astype(np.float32)
    stats = FeatureStats(mean=center.astype(np.float32), std=np.full(7, spread, np.float32), q01=lo, q99=hi)
    ns = NormStats(state=stats, actions=stats)
    export_pi05(model, path, norm_stats=ns, tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    return path


class StubRuntime:
    """A deterministic numpy 'policy': actions [H, 7] = the observed state + a small sine sweep.

    ``latency_s`` sleeps inside ``infer`` (simulated inference time).
    """

    def __init__(self, horizon: int = 10, amplitude: float = 0.05, latency_s: float = 0.02,
                 camera_slots=C.SIM_CAMERAS) -> None:
        self.horizon, self.amplitude, self.latency_s = horizon, amplitude, latency_s
        self.config = type("StubConfig", (), {"camera_slots": tuple(camera_slots)})()
        self.calls = 0

    def infer(self, obs: Observation) -> ActionChunk:
        import time

        time.sleep(self.latency_s)
        self.calls += 1
        base = np.asarray(obs.state, np.float64)[:7]
        if base.shape[0] < 7:
            base = np.concatenate([base, [0.5]])
        k = np.arange(1, self.horizon + 1)[:, None]
        actions = np.repeat(base[None], self.horizon, axis=0)
        actions[:, :6] += self.amplitude * np.sin(0.3 * k + 0.1 * self.calls)
        actions[:, 6] = 0.5
        return ActionChunk(actions=actions, stamp=obs.stamp, timing_ms={"total": self.latency_s * 1e3})


def subprocess_env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    use_loopback_config(env)
    env[C.ENV_ROS_DOMAIN_ID] = str(domain)
    env[C.ENV_TRANSPORT_BACKEND] = "dds"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MUJOCO_GL", "egl")
    return env


PYTHON = sys.executable


def wait_for(pred, timeout_s: float = WAIT_S, what: str = "", poll_s: float = 0.005) -> None:
    """Poll ``pred`` every ``poll_s``; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Feeder:
    """Publishes both cameras ([32, 32, 3] uint8) and the joint states (START_Q + gripper 0.5) at ~30 Hz.

    ``images_on`` (set at start) gates the camera stream; ``frames`` counts the published camera rounds.
    """

    def __init__(self, node) -> None:
        self.images_on = threading.Event()
        self.images_on.set()
        self.frames = 0
        self._stop = threading.Event()
        self._pubs = [node.create_publisher(M.Image, t, QOS_SENSOR_DATA) for t in (C.TOPIC_CAMERA_BASE, C.TOPIC_CAMERA_WRIST)]
        self._js = node.create_publisher(M.JointState, C.TOPIC_JOINT_STATES, QOS_DEFAULT)
        self._img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        q = np.array(START_Q + (0.5,))
        while not self._stop.is_set():
            if self.images_on.is_set():
                for p in self._pubs:
                    p.publish(V.numpy_to_image(self._img))
                self.frames += 1
            self._js.publish(V.numpy_to_joint_state(JOINTS7, q))
            self._stop.wait(0.033)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
