"""Record / replay wrappers around any policy runtime (``infer(Observation) -> ActionChunk``).

``RecordingRuntime`` wraps a runtime and keeps, per call, the inputs (images by slot, state,
instruction, stamp), the output actions [H, D], the runtime's stage timings and the wall latency; it
can save them as one ``.npz`` (format ``RECORDING_FORMAT``) and ``ReplayRuntime`` plays such a file back
as a runtime (same outputs for the same call order; no native module needed), which makes node tests
and offline comparisons reproducible.  ``FaultyRuntime`` is the fault-injection wrapper used by tests
and drills: NaN actions, exceptions, or extra latency on chosen calls.

Recording is a wrapper, not a node feature (openpi's PolicyRecorder pattern): the node never knows.
Online path: numpy only.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core.runtime.types import ActionChunk, Observation

__all__ = ["RecordedCall", "RecordingRuntime", "ReplayRuntime", "FaultyRuntime", "load_recording"]

log = logging.getLogger(__name__)


@dataclass
class RecordedCall:
    """One policy call.

    Attributes:
        images: slot -> uint8 [H, W, 3] (copies of the inputs).
        state: float32 [S] robot state.
        instruction: the instruction.
        stamp: observation stamp (s).
        actions: [H, D] output actions (NaN-filled when the call raised).
        timing_ms: the runtime's stage timings.
        latency_ms: wall time of the call, ms.
        error: repr of the exception when the call raised, else "".
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp: float
    actions: np.ndarray
    timing_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = math.nan
    error: str = ""


class RecordingRuntime:
    """Wraps ``runtime``; every ``infer`` is recorded (thread-safe), then passed through unchanged.

    Args:
        runtime: any object with ``infer(Observation) -> ActionChunk``; other attributes (``config``,
            ``norm_stats``, ...) are forwarded.
        keep_images: store the input images (False keeps only their shapes' worth of nothing: state,
            instruction, actions and timing — for long runs).
        max_calls: keep at most this many calls (oldest dropped); 0 = unbounded.
    """

    def __init__(self, runtime: Any, keep_images: bool = True, max_calls: int = 0) -> None:
        if max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}")
        self.runtime = runtime
        self.keep_images = keep_images
        self.max_calls = max_calls
        self.calls: list[RecordedCall] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # forward config, norm_stats, backend, ...
        return getattr(self.__dict__["runtime"], name)

    def infer(self, obs: Observation, *args: Any, **kwargs: Any) -> ActionChunk:
        t0 = time.perf_counter()
        images = {k: np.array(v, copy=True) for k, v in obs.images.items()} if self.keep_images else {}
        try:
            chunk = self.runtime.infer(obs, *args, **kwargs)
        except Exception as exc:
            self._add(RecordedCall(images, np.array(obs.state, np.float32), obs.instruction, float(obs.stamp),
                                   np.full((0, 0), np.nan), {}, (time.perf_counter() - t0) * 1e3, repr(exc)))
            raise
        self._add(RecordedCall(images, np.array(obs.state, np.float32), obs.instruction, float(obs.stamp),
                               np.array(chunk.actions, copy=True), dict(chunk.timing_ms), (time.perf_counter() - t0) * 1e3))
        return chunk

    def _add(self, call: RecordedCall) -> None:
        with self._lock:
            self.calls.append(call)
            if self.max_calls and len(self.calls) > self.max_calls:
                del self.calls[0]

    def latencies_ms(self) -> np.ndarray:
        """Wall latency of each recorded call [N] in ms."""
        with self._lock:
            return np.array([c.latency_ms for c in self.calls], dtype=np.float64)

    def save(self, path: str | Path) -> Path:
        """Write the calls to ``path`` (.npz): per call ``actions_<i>``, ``state_<i>``, ``image_<i>_<slot>``;
        ``meta`` = JSON (format, instructions, stamps, timings, latencies, errors, slots)."""
        with self._lock:
            calls = list(self.calls)
        arrays: dict[str, np.ndarray] = {}
        meta_calls = []
        for i, c in enumerate(calls):
            arrays[f"actions_{i}"] = c.actions
            arrays[f"state_{i}"] = c.state
            for slot, img in c.images.items():
                arrays[f"image_{i}_{slot}"] = img
            meta_calls.append({"instruction": c.instruction, "stamp": c.stamp, "timing_ms": c.timing_ms,
                               "latency_ms": c.latency_ms, "error": c.error, "slots": sorted(c.images)})
        arrays["meta"] = np.frombuffer(json.dumps({"format": C.RECORDING_FORMAT, "calls": meta_calls}).encode(), np.uint8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_recording(path: str | Path) -> list[RecordedCall]:
    """Read a file written by ``RecordingRuntime.save``."""
    with np.load(Path(path)) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        if meta.get("format") != C.RECORDING_FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {C.RECORDING_FORMAT!r}")
        out = []
        for i, m in enumerate(meta["calls"]):
            out.append(RecordedCall(images={s: z[f"image_{i}_{s}"] for s in m["slots"]}, state=z[f"state_{i}"],
                                    instruction=m["instruction"], stamp=m["stamp"], actions=z[f"actions_{i}"],
                                    timing_ms=m["timing_ms"], latency_ms=m["latency_ms"], error=m["error"]))
        return out


class ReplayRuntime:
    """Plays recorded calls back in order: ``infer`` returns call ``i``'s actions (stamped with the new
    observation), optionally sleeping its recorded latency.  Raises ``IndexError`` past the end unless
    ``loop``."""

    def __init__(self, calls: Sequence[RecordedCall], replay_latency: bool = False, loop: bool = False,
                 camera_slots: Sequence[str] | None = None) -> None:
        if not calls:
            raise ValueError("ReplayRuntime needs at least one recorded call")
        self.calls = list(calls)
        self.replay_latency = replay_latency
        self.loop = loop
        self._i = 0
        slots = camera_slots or sorted({s for c in self.calls for s in c.images}) or list(C.SIM_CAMERAS)
        self.config = type("ReplayConfig", (), {"camera_slots": tuple(slots)})()

    def infer(self, obs: Observation, *args: Any, **kwargs: Any) -> ActionChunk:
        if self._i >= len(self.calls):
            if not self.loop:
                raise IndexError(f"ReplayRuntime: all {len(self.calls)} recorded calls were replayed")
            self._i = 0
        c = self.calls[self._i]
        self._i += 1
        if self.replay_latency and math.isfinite(c.latency_ms):
            time.sleep(c.latency_ms / 1e3)
        return ActionChunk(actions=np.array(c.actions, copy=True), stamp=obs.stamp, timing_ms=dict(c.timing_ms))


class FaultyRuntime:
    """Fault-injection wrapper: on call numbers selected by ``when(i)`` (0-based), inject ``fault``.

    Args:
        runtime: the wrapped runtime.
        fault: "nan" (actions replaced by NaN), "raise" (RuntimeError), "delay" (sleep ``delay_s`` first).
        when: predicate on the call index; default: every call from ``start`` on.
        start: first faulty call when ``when`` is None.
        delay_s: extra latency for "delay".
    """

    FAULTS = ("nan", "raise", "delay")

    def __init__(self, runtime: Any, fault: str, when: Callable[[int], bool] | None = None, start: int = 0,
                 delay_s: float = 0.0) -> None:
        if fault not in self.FAULTS:
            raise ValueError(f"fault must be one of {self.FAULTS}, got {fault!r}")
        if fault == "delay" and not delay_s > 0:
            raise ValueError(f"fault 'delay' needs delay_s > 0, got {delay_s}")
        self.runtime = runtime
        self.fault = fault
        self.when = when if when is not None else (lambda i: i >= start)
        self.delay_s = delay_s
        self.calls = 0
        self.injected: list[float] = []  # time.monotonic() of each injected fault (when it took effect)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["runtime"], name)

    def infer(self, obs: Observation, *args: Any, **kwargs: Any) -> ActionChunk:
        i = self.calls
        self.calls += 1
        if not self.when(i):
            return self.runtime.infer(obs, *args, **kwargs)
        if self.fault == "raise":
            self.injected.append(time.monotonic())
            raise RuntimeError(f"FaultyRuntime: injected failure on call {i}")
        if self.fault == "delay":
            time.sleep(self.delay_s)
            self.injected.append(time.monotonic())
            return self.runtime.infer(obs, *args, **kwargs)
        chunk = self.runtime.infer(obs, *args, **kwargs)
        self.injected.append(time.monotonic())
        return ActionChunk(actions=np.full_like(np.asarray(chunk.actions, np.float64), np.nan), stamp=chunk.stamp,
                           timing_ms=chunk.timing_ms)
