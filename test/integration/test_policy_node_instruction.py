"""policy_node waits for a language instruction: no policy call, no chunk, no arm command while it is empty.

A language-conditioned policy given an empty prompt moves arbitrarily, so with ``require_instruction``
(the default) ``build_observation`` returns None while the instruction is empty or blank.  Unit level:
``build_observation`` with an empty, a blank and a real instruction (parameter and topic), and with
``require_instruction`` false.  Over real DDS on loopback: the node in this process with the dry-run arm,
fresh cameras and joint states from a second participant, and no instruction -> no chunk on
``chunk_topic``, no servo command, diagnostics at warn saying why; then one instruction message ->
chunks and commands, all after the message, every policy call conditioned on it.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from test_policy_node_support import JOINTS7, START_Q, Feeder, StubRuntime, wait_for

from actquant_ros.transport.loopback import use_loopback_config

use_loopback_config()

from actquant_core import constants as C  # noqa: E402
from actquant_core.robot import DryRunArm, DryRunConfig  # noqa: E402
from actquant_core.runtime.recording import RecordingRuntime  # noqa: E402
from actquant_ros import convert as V  # noqa: E402
from actquant_ros import msgs as M  # noqa: E402
from actquant_ros.policy_node import PolicyNode, PolicyNodeConfig  # noqa: E402
from actquant_ros.transport import QOS_DEFAULT, make_node  # noqa: E402

DOMAIN = 1 + os.getpid() % 19
RATE_HZ = 125.0
INSTRUCTION = "put the red cube in the bowl"
BLANK = " \t\n "
HOLD_S = 1.0  # how long the node must stay silent with fresh inputs and no instruction
MIN_SKIPS = 20  # worker passes that found synchronised inputs but no instruction, before the hold window
NODE_LOGGER = "actquant_ros"  # the DDS backend's node loggers are actquant_ros.<node name>
DIAG_WARN = 1  # diagnostic_msgs/DiagnosticStatus.WARN


def _ready_node(node, **overrides) -> PolicyNode:
    """A PolicyNode (not configured: build_observation needs no loop for the dry-run arm) whose latest
    inputs are both cameras ([32, 32, 3]) and the joint states, received just now through its callbacks."""
    cfg = PolicyNodeConfig(**({"policy_gguf": "stub"} | overrides))
    assert not cfg.state_from_arm  # dry run: the state comes from the joint topic
    pn = PolicyNode(node, cfg, runtime=StubRuntime())
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for slot in cfg.camera_slots:
        pn._on_image(slot)(V.numpy_to_image(img))
    pn._on_joints(V.numpy_to_joint_state(JOINTS7, np.array(START_Q + (0.5,))))
    return pn


@pytest.fixture(scope="module")
def bare_node():
    node = make_node("instruction_unit", backend="dds", argv=[], domain_id=DOMAIN)
    yield node
    node.shutdown()


# -- build_observation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("instruction, ready", [("", False), (BLANK, False), (INSTRUCTION, True)],
                         ids=["empty", "blank", "real"])
def test_build_observation_needs_an_instruction(bare_node, instruction, ready):
    pn = _ready_node(bare_node, instruction=instruction)
    obs = pn.build_observation(time.monotonic())
    assert (obs is not None) == ready
    assert pn.waiting_for_instruction == (not ready)
    status = pn.diagnostics()[C.DIAG_POLICY]
    assert status["values"]["waiting_for_instruction"] == int(not ready)
    assert status["level"] == ("ok" if ready else "warn")
    assert ("waiting for an instruction on " + C.TOPIC_INSTRUCTION in status["message"]) == (not ready)
    if ready:
        assert obs.instruction == INSTRUCTION and set(obs.images) == set(C.SIM_CAMERAS) and obs.state.shape == (7,)
    # the same inputs without the requirement: the old behaviour, the instruction passed through as is
    pn = _ready_node(bare_node, instruction=instruction, require_instruction=False)
    obs = pn.build_observation(time.monotonic())
    assert obs is not None and obs.instruction == instruction and not pn.waiting_for_instruction
    assert pn.diagnostics()[C.DIAG_POLICY]["level"] == "ok"


def test_instruction_topic_starts_and_pauses(bare_node, caplog):
    pn = _ready_node(bare_node)
    assert pn.build_observation(time.monotonic()) is None
    with caplog.at_level(logging.INFO, logger=NODE_LOGGER):
        pn._on_instruction(M.String(data=BLANK))  # still nothing to condition on
        assert pn.build_observation(time.monotonic()) is None
        pn._on_instruction(M.String(data=INSTRUCTION))
        obs = pn.build_observation(time.monotonic())
        assert obs is not None and obs.instruction == INSTRUCTION
        pn._on_instruction(M.String(data=INSTRUCTION))  # repeated: no new log line
        pn._on_instruction(M.String(data=""))
        assert pn.build_observation(time.monotonic()) is None and pn.waiting_for_instruction
    started = [r for r in caplog.records if "policy calls start" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.INFO and INSTRUCTION in started[0].getMessage()
    paused = [r for r in caplog.records if "empty instruction" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.WARNING


# -- the node over DDS -------------------------------------------------------------------------------------
def test_no_instruction_no_motion_then_chunks_over_dds(caplog):
    cfg = PolicyNodeConfig(policy_gguf="stub", policy_rate_hz=10.0, execution_horizon=4, camera_timeout_s=0.3,
                           watchdog_timeout_s=0.4, initial_latency_s=0.05, diagnostics_period_s=0.2)
    assert cfg.instruction == "" and cfg.require_instruction  # the defaults under test
    rec = RecordingRuntime(StubRuntime(), keep_images=False)
    arm = DryRunArm(DryRunConfig(control_rate_hz=RATE_HZ, initial_q=START_Q))
    node = make_node("policy_waiting", backend="dds", argv=[], domain_id=DOMAIN)
    other = make_node("feeder_and_observer", backend="dds", argv=[], domain_id=DOMAIN)
    pn = PolicyNode(node, cfg, runtime=rec, arm=arm)
    chunks: list[tuple[float, M.JointTrajectory]] = []
    diags: list[dict] = []
    feeder = None
    caplog.set_level(logging.INFO, logger=NODE_LOGGER)
    try:
        other.create_subscription(M.JointTrajectory, cfg.chunk_topic, lambda m: chunks.append((time.monotonic(), m)), QOS_DEFAULT)
        other.create_subscription(M.DiagnosticArray, cfg.diagnostics_topic, lambda m: diags.append(V.diagnostics_to_dict(m)), QOS_DEFAULT)
        ins_pub = other.create_publisher(M.String, cfg.instruction_topic, QOS_DEFAULT)
        other.spin_in_thread()
        pn.configure()
        node.spin_in_thread()
        feeder = Feeder(other)
        pn.activate()
        # inputs arrive, synchronised and fresh: the worker finds everything but the instruction
        wait_for(lambda: pn.stats.skipped_no_instruction >= MIN_SKIPS, what=f"{MIN_SKIPS} skips for lack of an instruction")
        wait_for(lambda: any(d.get(C.DIAG_POLICY, {}).get("values", {}).get("waiting_for_instruction") == "1" for d in diags),
                 what="a diagnostics message saying the node waits")
        skips0, frames0, t0 = pn.stats.skipped_no_instruction, feeder.frames, time.monotonic()
        time.sleep(HOLD_S)
        assert feeder.frames - frames0 >= HOLD_S * 15  # ~30 Hz camera rounds kept coming
        assert pn.stats.skipped_no_instruction > skips0  # ... and stayed synchronised and fresh
        assert chunks == [] and pn.stats.chunks_published == 0
        assert rec.calls == [] and pn.stats.inferences == 0
        assert arm.n_sent == 0 and len(arm.commands) == 0 and not arm.moving
        assert pn.loop.fault is None  # waiting is not a fault: nothing to recover from
        waiting = [d[C.DIAG_POLICY] for d in diags if C.DIAG_POLICY in d][-1]
        assert waiting["level"] == DIAG_WARN and "waiting for an instruction" in waiting["message"], waiting
        assert int(waiting["values"]["chunks_published"]) == 0
        assert int(diags[-1][C.DIAG_CONTROL_LOOP]["values"]["commands_sent"]) == 0
        assert time.monotonic() - t0 >= HOLD_S
        # the instruction arrives: chunks and servo commands follow
        t_instruction = time.monotonic()
        ins_pub.publish(M.String(data=INSTRUCTION))
        wait_for(lambda: len(chunks) >= 2 and arm.n_sent > 0, what="chunks and servo commands after the instruction")
        first_cmd = arm.commands[0].time
        n_diag = len(diags)
        wait_for(lambda: len(diags) > n_diag + 1, what="diagnostics after the instruction")
    finally:
        if feeder is not None:
            feeder.stop()
        pn.shutdown()
        other.shutdown()
    assert first_cmd >= t_instruction and all(t >= t_instruction for t, _ in chunks)
    assert rec.calls and all(c.instruction == INSTRUCTION for c in rec.calls)
    actions, _, names = V.trajectory_to_chunk(chunks[0][1])
    assert names == JOINTS7 and actions.shape == (StubRuntime().horizon, 7) and np.all(np.isfinite(actions))
    after = diags[-1][C.DIAG_POLICY]
    assert after["values"]["waiting_for_instruction"] == "0" and after["level"] == 0, after
    started = [r for r in caplog.records if "policy calls start" in r.getMessage()]
    assert len(started) == 1, [r.getMessage() for r in caplog.records]
    assert any("waiting for an instruction" in r.getMessage() for r in caplog.records)  # said at activate


# -- gripper entry of the state with the arm as the state source ------------------------------------------
def test_gripper_state_is_the_measured_opening_while_the_joint_topic_is_fresh(bare_node):
    """With ``arm:=rtde``/``sim`` the joints come from the arm, whose gripper value is the digital output
    (0/1).  The measured opening on the joint topic (fresh) replaces it: the policies learned from the opening,
    which falls gradually while the fingers close and stays above 0 on an object; the output's jump to 0 reads
    as "grasped" at the command (the cause of the demo's 0/4 with a 96 % policy)."""
    from types import SimpleNamespace

    pn = _ready_node(bare_node)  # the joint topic said: opening 0.5, received just now
    arm = SimpleNamespace(gripper=0.0)  # output switched to "closed"
    now = time.monotonic()
    assert pn._gripper_state(arm, pn._latest.joints, now) == pytest.approx(0.5)
    stale = now + pn.cfg.joint_timeout_s + pn.cfg.sync_tolerance_s + 0.01
    assert pn._gripper_state(arm, pn._latest.joints, stale) == 0.0  # stale topic: the arm's output
    assert pn._gripper_state(arm, None, now) == 0.0  # no topic at all
    q = np.concatenate([np.array(START_Q), [np.nan]])  # a JointState without the gripper joint
    assert pn._gripper_state(SimpleNamespace(gripper=1.0), (q, now), now) == 1.0
    assert pn._gripper_state(SimpleNamespace(gripper=float("nan")), None, now) == 0.0
