"""policy_node: parameters (descriptions, validation, params files) and the node over DDS on loopback.

The node runs in a subprocess exactly as ``launch/`` starts it (``python -m actquant_ros.policy_node
--ros-args ...``) with a tiny random pi05 GGUF and the dry-run arm; this process publishes camera images,
joint states and an instruction, and receives the action chunks (trajectory_msgs/JointTrajectory) and
the diagnostics.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from test_policy_node_support import JOINTS7, PYTHON, ROOT, START_Q, export_tiny_policy, subprocess_env

from actquant_ros.transport.loopback import use_loopback_config

use_loopback_config()  # before any DomainParticipant of this process

from actquant_core import constants as C  # noqa: E402
from actquant_ros import convert as V  # noqa: E402
from actquant_ros import msgs as M  # noqa: E402
from actquant_ros.policy_node import PolicyNodeConfig  # noqa: E402
from actquant_ros.transport import QOS_DEFAULT, QOS_SENSOR_DATA, ParameterError, make_node  # noqa: E402
from actquant_ros.transport.params import load_params_file  # noqa: E402

DOMAIN = 150 + os.getpid() % 50
NODE_TIMEOUT_S = 30.0
MIN_CHUNKS = 3
# The tiny policy's norm stats put every joint target within SPREAD * (1 + 2 * |y|) of START_Q, with
# |y| <= ~6 for its random weights; a chunk outside this box means the node mangled the actions.
ACTION_BOX_RAD = 2.0


# -- configuration --------------------------------------------------------------------------------------
def test_every_parameter_is_described():
    desc = PolicyNodeConfig.describe()
    assert len(desc) >= 30
    assert all(len(d) > 10 for d in desc.values()), [k for k, d in desc.items() if len(d) <= 10]


@pytest.mark.parametrize("kw, needle", [
    ({"dry_run": False, "arm": "rtde"}, "robot_ip is required"),
    ({"ur_type": "ur5"}, "ur_type='ur5'"),
    ({"camera_topics": ("/a",)}, "camera_topics"),
    ({"qd_max": 4.0}, "qd_max=4.0"),
    ({"lookahead_time_s": 0.5}, "lookahead_time_s=0.5"),
    ({"execution_horizon": 0}, "execution_horizon=0"),
    ({"policy_gguf": ""}, "policy_gguf=''"),
    ({"gripper_joint": "elbow_joint"}, "gripper_joint"),
    ({"require_instruction": "yes"}, "require_instruction='yes' is invalid: must be a bool"),
])
def test_config_rejects_bad_values(kw, needle):
    base = {"policy_gguf": "p.gguf"} | kw
    with pytest.raises(ValueError) as e:
        PolicyNodeConfig(**base)
    assert needle in str(e.value)


def test_rate_from_ur_type_and_arm_choice():
    assert PolicyNodeConfig(policy_gguf="p").rate_hz == 125.0
    assert PolicyNodeConfig(policy_gguf="p", ur_type="ur3e").rate_hz == 500.0
    assert PolicyNodeConfig(policy_gguf="p", ur_type="ur3e", control_rate_hz=250.0).rate_hz == 250.0
    c = PolicyNodeConfig(policy_gguf="p", arm="rtde")  # dry_run defaults to true: no robot_ip needed
    assert c.effective_arm == C.ARM_KIND_DRY_RUN and not c.state_from_arm
    c = PolicyNodeConfig(policy_gguf="p", dry_run=False, arm="sim")
    assert c.effective_arm == C.ARM_KIND_SIM and c.state_from_arm


def test_params_files_and_ros_args():
    argv = ["--ros-args", "--params-file", str(ROOT / "config/ur3e.yaml"), "--params-file", str(ROOT / "config/policy_pi05_small.yaml"),
            "-p", "policy_gguf:=/x/p.gguf", "-p", "execution_horizon:=3"]
    node = make_node(C.POLICY_NODE_NAME, backend="dds", argv=argv, domain_id=DOMAIN)
    try:
        cfg = PolicyNodeConfig.from_node(node)
    finally:
        node.shutdown()
    assert cfg.ur_type == "ur3e" and cfg.rate_hz == 500.0
    assert cfg.policy_gguf == "/x/p.gguf" and cfg.execution_horizon == 3
    assert cfg.camera_slots == ("base_0_rgb", "left_wrist_0_rgb") and cfg.dry_run is True
    assert cfg.max_step_rad == pytest.approx(0.01)
    assert cfg.require_instruction is True and cfg.instruction == ""
    node = make_node(C.POLICY_NODE_NAME, backend="dds", argv=["--ros-args", "-p", "policy_gguf:=p", "-p", "qd_max:=9.0"],
                     domain_id=DOMAIN)
    try:
        with pytest.raises(ParameterError, match="qd_max"):
            PolicyNodeConfig.from_node(node)
    finally:
        node.shutdown()


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_name_only_node_parameters(path):
    """Every policy_node key of config/*.yaml is a PolicyNodeConfig field (a typo would be ignored silently)."""
    keys = set(load_params_file(path, C.POLICY_NODE_NAME))
    assert keys, f"{path.name} sets no policy_node parameter"
    unknown = keys - set(PolicyNodeConfig.describe())
    assert not unknown, f"{path.name}: {sorted(unknown)} are not policy_node parameters"
    if path.name.startswith("policy_"):
        assert load_params_file(path, C.POLICY_NODE_NAME)["require_instruction"] is True


# -- the node over DDS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return export_tiny_policy(tmp_path_factory.mktemp("policy") / "tiny.gguf")


@pytest.mark.parametrize("repack", [True, False])
def test_cpu_repack_parameter_reaches_the_runtime(tiny_gguf, repack):
    """cpu_repack picks the native backend's weight placement (repacked copy vs the mapped file)."""
    from actquant_core import native
    from actquant_ros.policy_node import PolicyNode

    node = make_node(C.POLICY_NODE_NAME, backend="dds", argv=[], domain_id=DOMAIN)
    pn = PolicyNode(node, PolicyNodeConfig(policy_gguf=str(tiny_gguf), threads=1, cpu_repack=repack, instruction="go"))
    try:
        pn.configure()
        available = native.Backend(1).repack  # this CPU/build has GGML's repack buffer type
        assert ("repack" in pn.runtime.backend) == (repack and available), pn.runtime.backend
    finally:
        pn.shutdown()
        node.shutdown()


def test_node_subprocess_chunks_and_diagnostics(tiny_gguf, tmp_path):
    cmd = [PYTHON, "-m", "actquant_ros.policy_node", "--ros-args",
           "-p", f"policy_gguf:={tiny_gguf}", "-p", "threads:=1", "-p", "execution_horizon:=3",
           "-p", "diagnostics_period_s:=0.5", "-p", f"run_duration_s:={NODE_TIMEOUT_S}"]
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=subprocess_env(DOMAIN), cwd=str(ROOT))
    node = make_node("test_feeder", backend="dds", argv=[], domain_id=DOMAIN)
    chunks: list[tuple[float, M.JointTrajectory]] = []
    diags: list[dict] = []
    stop = threading.Event()
    try:
        img_pubs = [node.create_publisher(M.Image, t, QOS_SENSOR_DATA) for t in (C.TOPIC_CAMERA_BASE, C.TOPIC_CAMERA_WRIST)]
        js_pub = node.create_publisher(M.JointState, C.TOPIC_JOINT_STATES, QOS_DEFAULT)
        ins_pub = node.create_publisher(M.String, C.TOPIC_INSTRUCTION, QOS_DEFAULT)
        node.create_subscription(M.JointTrajectory, C.TOPIC_ACTION_CHUNK, lambda m: chunks.append((time.monotonic(), m)), QOS_DEFAULT)
        node.create_subscription(M.DiagnosticArray, C.TOPIC_DIAGNOSTICS, lambda m: diags.append(V.diagnostics_to_dict(m)), QOS_DEFAULT)
        spin = node.spin_in_thread()
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
        q = np.array(START_Q + (0.5,))

        def feed() -> None:
            k = 0
            while not stop.is_set():
                ns = node.now_ns()
                for pub, img in zip(img_pubs, frames):
                    pub.publish(V.numpy_to_image(img, stamp_ns=ns))
                js_pub.publish(V.numpy_to_joint_state(JOINTS7, q, stamp_ns=ns))
                if k % 10 == 0:
                    ins_pub.publish(M.String(data="put the red cube in the bowl"))
                k += 1
                stop.wait(0.033)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            have_diag = any(C.DIAG_POLICY in d and int(d[C.DIAG_POLICY]["values"]["chunks_published"]) >= MIN_CHUNKS for d in diags)
            if len(chunks) >= MIN_CHUNKS and have_diag:
                break
            time.sleep(0.05)
        stop.set()
        feeder.join(2.0)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15.0)
        spin_alive = spin.is_alive()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)
        node.shutdown()
    out = log_path.read_text(errors="replace")
    assert rc == 0, out[-3000:]
    assert spin_alive
    assert out.count("policy calls start") == 1, out[-3000:]  # started empty: waited for the first /instruction
    assert len(chunks) >= MIN_CHUNKS, f"got {len(chunks)} chunks\n{out[-3000:]}"
    for _, msg in chunks:
        actions, tfs, names = V.trajectory_to_chunk(msg)
        assert names == JOINTS7
        assert actions.shape == (4, 7)  # pi05-tiny: horizon 4; 6 joints + gripper
        assert np.all(np.isfinite(actions))
        assert np.all(np.abs(actions[:, :6] - np.array(START_Q)) < ACTION_BOX_RAD)
        assert np.all((actions[:, 6] >= 0) & (actions[:, 6] <= 1))
        np.testing.assert_allclose(tfs, 0.1 * np.arange(1, 5), atol=1e-9)  # policy_rate_hz 10
    # successive chunks differ (new observations / noise), i.e. they are not one cached message
    assert not np.allclose(V.trajectory_to_chunk(chunks[0][1])[0], V.trajectory_to_chunk(chunks[-1][1])[0])
    d = [x for x in diags if C.DIAG_POLICY in x and C.DIAG_CONTROL_LOOP in x][-1]
    pv, lv = d[C.DIAG_POLICY]["values"], d[C.DIAG_CONTROL_LOOP]["values"]
    assert int(pv["inferences"]) >= MIN_CHUNKS and int(pv["runtime_errors"]) == 0
    p50, p95 = float(pv["latency_p50_ms"]), float(pv["latency_p95_ms"])
    assert 0 < p50 <= p95 < 5000
    assert int(lv["commands_sent"]) > 0 and lv["arm"] == C.ARM_KIND_DRY_RUN
    assert "queue_depth" in lv and "period_ms.p99" in lv
    assert not math.isnan(float(lv["period_ms.p50"]))


def test_online_modules_import_no_torch():
    """The node, replay, camera publisher and runtime wrappers stay torch-free; core stays ROS-free."""
    code = ("import sys\n"
            "import actquant_ros.policy_node, actquant_ros.replay, actquant_ros.sim_camera_node\n"
            "import actquant_core.runtime.recording, actquant_core.sim.ursim.camera_publisher\n"
            "print(sorted(m for m in ('torch', 'mujoco') if m in sys.modules))\n")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=subprocess_env(DOMAIN))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    code = ("import sys\nimport actquant_core.runtime.recording, actquant_core.sim.ursim.camera_publisher\n"
            "print(sorted(m for m in ('cyclonedds', 'rclpy', 'actquant_ros') if m in sys.modules))\n")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=subprocess_env(DOMAIN))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
