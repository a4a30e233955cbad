"""policy_node fault handling with the dry-run arm: camera drop, NaN actions, runtime errors, inference overrun.

The node runs in this process on a real DDS participant (loopback); a second participant publishes the
cameras and joint states.  The dry-run arm records every command and every stop with its clock time, so
"no command after the fault, motion stopped within one control period" is checked on the record.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np

from test_policy_node_support import START_Q, Feeder, StubRuntime, wait_for

from actquant_ros.transport.loopback import use_loopback_config

use_loopback_config()

from actquant_core import constants as C  # noqa: E402
from actquant_core.robot import DryRunArm, DryRunConfig  # noqa: E402
from actquant_core.runtime.recording import FaultyRuntime, RecordingRuntime, load_recording  # noqa: E402
from actquant_ros.policy_node import PolicyNode, PolicyNodeConfig  # noqa: E402
from actquant_ros.transport import make_node  # noqa: E402

DOMAIN = 200 + os.getpid() % 30
RATE_HZ = 125.0
PERIOD_S = 1.0 / RATE_HZ
MIN_COMMANDS = 40  # commands before a fault is injected (~0.3 s of motion)
CAMERA_TIMEOUT_S = 0.3
WATCHDOG_S = 0.4
INSTRUCTION = "put the red cube in the bowl"


@contextmanager
def running_node(runtime, **overrides):
    cfg = PolicyNodeConfig(**(dict(policy_gguf="stub", instruction=INSTRUCTION, policy_rate_hz=10.0, execution_horizon=4,
                                   camera_timeout_s=CAMERA_TIMEOUT_S, watchdog_timeout_s=WATCHDOG_S, initial_latency_s=0.05,
                                   diagnostics_period_s=0.2) | overrides))
    arm = DryRunArm(DryRunConfig(control_rate_hz=RATE_HZ, initial_q=START_Q))
    node = make_node("policy_under_test", backend="dds", argv=[], domain_id=DOMAIN)
    feeder_node = make_node("feeder", backend="dds", argv=[], domain_id=DOMAIN)
    pn = PolicyNode(node, cfg, runtime=runtime, arm=arm)
    feeder = None
    try:
        pn.configure()
        node.spin_in_thread()
        feeder = Feeder(feeder_node)
        pn.activate()
        wait_for(lambda: arm.n_sent >= MIN_COMMANDS, what=f"{MIN_COMMANDS} servo commands")
        yield pn, arm, feeder
    finally:
        if feeder is not None:
            feeder.stop()
        pn.shutdown()
        feeder_node.shutdown()


def _assert_stopped_after(arm: DryRunArm, t_fault: float) -> None:
    """No command after ``t_fault``; the arm was stopped within one control period of it."""
    late = [r.time for r in arm.commands if r.time > t_fault + 1e-6]
    assert not late, f"{len(late)} commands after the fault at {t_fault:.4f} (first {late[0]:.4f})"
    stops = [t for t in arm.stop_times if t >= t_fault - 1e-6]
    assert stops and stops[0] - t_fault <= PERIOD_S, (t_fault, stops[:3])
    assert not arm.moving


def test_nominal_motion_and_clean_stop(tmp_path):
    rec = RecordingRuntime(StubRuntime())
    with running_node(rec, record_path=str(tmp_path / "calls.npz")) as (pn, arm, _):
        wait_for(lambda: pn.stats.chunks_accepted >= 3, what="3 accepted chunks")
        assert pn.loop.fault is None
        q = np.array([r.cmd.q for r in arm.commands])
        assert np.ptp(q, axis=0).max() > 1e-3  # the arm moved
        diag = pn.diagnostics()
        assert diag[C.DIAG_CONTROL_LOOP]["level"] == "ok"
        assert float(diag[C.DIAG_POLICY]["values"]["latency_p50_ms"]) > 0
    assert len(rec.calls) >= 3 and all(c.state.shape == (7,) for c in rec.calls)
    assert set(rec.calls[0].images) == set(C.SIM_CAMERAS)
    saved = load_recording(tmp_path / "calls.npz")  # the node's own record_path wrapper, saved at cleanup
    assert len(saved) >= len(rec.calls) - 1 and saved[0].images == {}  # record_images defaults to false
    np.testing.assert_array_equal(saved[0].actions, rec.calls[0].actions)
    t_end = arm.stop_times[-1]
    assert all(r.time <= t_end for r in arm.commands) and not arm.moving  # every exit path stops the arm


def test_nan_action_latches_fault():
    faulty = FaultyRuntime(StubRuntime(), "nan", start=3)
    with running_node(faulty) as (pn, arm, _):
        wait_for(lambda: pn.loop.fault is not None, what="a fault")
        fault = pn.loop.fault
        time.sleep(0.2)  # keep running: nothing may be sent
        assert fault.reason == C.SAFETY_NONFINITE
        assert pn.stats.nonfinite_chunks >= 1 and pn.stats.chunks_published == pn.stats.chunks_accepted
        _assert_stopped_after(arm, faulty.injected[0])
        assert pn.diagnostics()[C.DIAG_CONTROL_LOOP]["level"] == "error"


def test_runtime_error_holds_arm():
    faulty = FaultyRuntime(StubRuntime(), "raise", start=3)
    with running_node(faulty) as (pn, arm, _):
        wait_for(lambda: pn.stats.runtime_errors >= 1, what="a runtime error")
        t_err = faulty.injected[0]
        time.sleep(0.2)
        _assert_stopped_after(arm, t_err)
        assert "injected failure" in pn.stats.last_error


def test_camera_drop_stops_within_one_period():
    with running_node(StubRuntime()) as (pn, arm, feeder):
        feeder.images_on.clear()
        t_drop = time.monotonic()
        wait_for(lambda: pn.loop.fault is not None, timeout_s=3.0, what="camera stale fault")
        fault = pn.loop.fault
        time.sleep(0.1)
        assert fault.reason == C.SAFETY_CAMERA_STALE
        assert CAMERA_TIMEOUT_S * 0.5 < fault.time - t_drop < CAMERA_TIMEOUT_S + 0.3
        _assert_stopped_after(arm, fault.time)


def test_inference_overrun_trips_watchdog():
    faulty = FaultyRuntime(StubRuntime(), "delay", start=3, delay_s=3 * WATCHDOG_S)
    with running_node(faulty) as (pn, arm, _):
        wait_for(lambda: pn.loop.fault is not None, timeout_s=5.0, what="watchdog fault")
        fault = pn.loop.fault
        assert fault.reason == C.SAFETY_WATCHDOG
        _assert_stopped_after(arm, fault.time)
        # the late chunk (arriving after the fault) must not restart motion
        wait_for(lambda: len(faulty.injected) >= 1, timeout_s=5.0, what="the late chunk")
        time.sleep(0.1)
        _assert_stopped_after(arm, fault.time)


def test_resume_after_fault_restarts_motion():
    faulty = FaultyRuntime(StubRuntime(), "nan", when=lambda i: i == 3)
    with running_node(faulty) as (pn, arm, _):
        wait_for(lambda: pn.loop.fault is not None, what="a fault")
        n_before = arm.n_sent
        pn.resume()
        wait_for(lambda: arm.n_sent > n_before + 20, what="motion after resume")
        assert pn.loop.fault is None
