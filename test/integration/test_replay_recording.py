"""RecordingRuntime / ReplayRuntime / FaultyRuntime wrappers, and the node's record_path parameter."""

from __future__ import annotations

import numpy as np
import pytest

from test_policy_node_support import START_Q, StubRuntime

from actquant_core import constants as C
from actquant_core.runtime.recording import FaultyRuntime, RecordingRuntime, ReplayRuntime, load_recording
from actquant_core.runtime.types import Observation


def _obs(k: int) -> Observation:
    rng = np.random.default_rng(k)
    return Observation(images={c: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for c in C.SIM_CAMERAS},
                       state=np.array(START_Q + (0.5,), np.float32) + k, instruction=f"task {k}", stamp=0.1 * k)


def test_record_save_load_replay(tmp_path):
    rec = RecordingRuntime(StubRuntime(horizon=5, latency_s=0.001))
    outs = [rec.infer(_obs(k)).actions for k in range(4)]
    assert rec.config.camera_slots == C.SIM_CAMERAS  # attributes forwarded
    path = rec.save(tmp_path / "calls.npz")
    calls = load_recording(path)
    assert len(calls) == 4
    for k, c in enumerate(calls):
        np.testing.assert_array_equal(c.actions, outs[k])
        np.testing.assert_array_equal(c.images[C.SIM_CAMERA_BASE], _obs(k).images[C.SIM_CAMERA_BASE])
        assert c.instruction == f"task {k}" and c.stamp == pytest.approx(0.1 * k) and c.latency_ms >= 1.0
    rep = ReplayRuntime(calls)
    for k in range(4):
        got = rep.infer(_obs(10 + k))
        np.testing.assert_array_equal(got.actions, outs[k])
        assert got.stamp == pytest.approx(1.0 + 0.1 * k)  # stamped with the new observation
    with pytest.raises(IndexError):
        rep.infer(_obs(0))


def test_recording_keeps_failed_calls():
    rec = RecordingRuntime(FaultyRuntime(StubRuntime(latency_s=0.0), "raise", start=1))
    rec.infer(_obs(0))
    with pytest.raises(RuntimeError, match="injected failure"):
        rec.infer(_obs(1))
    assert [bool(c.error) for c in rec.calls] == [False, True]


def test_faulty_runtime_nan_and_validation():
    f = FaultyRuntime(StubRuntime(latency_s=0.0), "nan", when=lambda i: i % 2 == 1)
    assert np.all(np.isfinite(f.infer(_obs(0)).actions))
    assert np.all(np.isnan(f.infer(_obs(1)).actions))
    with pytest.raises(ValueError, match="fault must be one of"):
        FaultyRuntime(StubRuntime(), "explode")
    with pytest.raises(ValueError, match="delay_s > 0"):
        FaultyRuntime(StubRuntime(), "delay")
