"""Camera frames from the UR controller simulator's MuJoCo world, handed to a callback at a fixed rate.

The world lives inside the simulator process (``MujocoBackend.world``), so cameras are rendered there:
``CameraStream`` runs one thread that renders every camera of ``SIM_CAMERAS`` with ``UR3World.render``
(thread-safe: the world serialises render against the control loop's physics steps) and calls
``on_frames(frames, stamp)`` with ``frames`` = {camera: uint8 [S, S, 3] RGB} and ``stamp`` =
``time.monotonic()`` taken right after rendering.  Transport-free: the DDS publisher lives in
``actquant_ros.sim_camera_node`` (core never imports ROS / DDS).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from actquant_core import constants as C

__all__ = ["CameraStreamConfig", "CameraStream", "world_of"]

log = logging.getLogger(__name__)

FrameCallback = Callable[[Mapping[str, np.ndarray], float], None]


@dataclass(frozen=True)
class CameraStreamConfig:
    """Settings of ``CameraStream``.

    Attributes:
        cameras: camera names of the world to render (subset of ``SIM_CAMERAS``).
        image_size: square image size in pixels, (0, 640].
        rate_hz: frames per second per camera, (0, 60].
    """

    cameras: tuple[str, ...] = C.SIM_CAMERAS
    image_size: int = 224
    rate_hz: float = 10.0

    def __post_init__(self) -> None:
        unknown = [c for c in self.cameras if c not in C.SIM_CAMERAS]
        if not self.cameras or unknown:
            raise ValueError(f"CameraStreamConfig.cameras={self.cameras!r}: must be a non-empty subset of {C.SIM_CAMERAS}")
        if not 0 < self.image_size <= 640:
            raise ValueError(f"CameraStreamConfig.image_size={self.image_size!r} must be in (0, 640]")
        if not (math.isfinite(self.rate_hz) and 0 < self.rate_hz <= 60):
            raise ValueError(f"CameraStreamConfig.rate_hz={self.rate_hz!r} must be in (0, 60]")


def world_of(backend: object):
    """The ``UR3World`` of a simulator backend; raises for backends without one (kinematic)."""
    world = getattr(backend, "world", None)
    if world is None or not callable(getattr(world, "render", None)):
        raise ValueError(f"simulator backend {type(backend).__name__} has no MuJoCo world to render; use --backend mujoco")
    return world


class CameraStream:
    """Renders the world's cameras at ``rate_hz`` in a thread and calls ``on_frames(frames, stamp)``."""

    def __init__(self, world, config: CameraStreamConfig, on_frames: FrameCallback) -> None:
        self.world = world
        self.config = config
        self.on_frames = on_frames
        self.frames_rendered = 0
        self.render_ms: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("camera stream already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sim-camera", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def render_once(self) -> tuple[dict[str, np.ndarray], float]:
        """Render every camera now; returns (frames, monotonic stamp)."""
        t0 = time.perf_counter()
        frames = {cam: self.world.render(cam, self.config.image_size) for cam in self.config.cameras}
        stamp = time.monotonic()
        self.render_ms.append((time.perf_counter() - t0) * 1e3)
        if len(self.render_ms) > 1000:
            del self.render_ms[:500]
        return frames, stamp

    def _run(self) -> None:
        period = 1.0 / self.config.rate_hz
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                frames, stamp = self.render_once()
                self.on_frames(frames, stamp)
                self.frames_rendered += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay < -period:  # fell behind: resynchronise instead of bursting
                    next_t = time.monotonic()
                elif delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # noqa: BLE001 (reported, the stream ends)
            self.error = exc
            log.exception("camera stream stopped by an exception")
