"""Launch files: every argument described, robot_ip without default, and the commands they start are valid.

ROS 2 ``launch`` is not installable here, so the files are checked statically (AST) and the commands
(``launch/actquant_launch_common.py``) are run: the closed-loop test starts the simulator and the policy
node with them; here the replay and quantizer commands run to completion / parameter errors.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from test_policy_node_support import PYTHON, ROOT, subprocess_env

sys.path.insert(0, str(ROOT / "launch"))
from actquant_launch_common import policy_node_cmd, quantize_cmd, replay_cmd, sim_camera_cmd  # noqa: E402

LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def _declared(path):
    tree = ast.parse(path.read_text(), str(path))
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "DeclareLaunchArgument":
            name = node.args[0].value
            out[name] = {kw.arg: kw.value for kw in node.keywords}
    return out


def test_launch_files_present():
    names = {p.name for p in LAUNCH_FILES}
    assert {"ur3_policy.launch.py", "ur3_sim.launch.py", "replay.launch.py", "quantize.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_argument_described(path):
    args = _declared(path)
    assert args, f"{path.name} declares no arguments"
    for name, kw in args.items():
        assert "description" in kw, f"{path.name}: argument {name!r} has no description"
        assert len(ast.literal_eval(kw["description"])) > 10
    compile(path.read_text(), str(path), "exec")


def test_robot_ip_has_no_default():
    for f in ("ur3_policy.launch.py", "ur3e_policy.launch.py"):
        args = _declared(ROOT / "launch" / f)
        assert "robot_ip" in args and "default_value" not in args["robot_ip"], f


def test_policy_node_command_rejects_missing_robot_ip(tmp_path):
    """ur3_policy.launch.py's command with dry_run:=false and no robot_ip: exit 2, the reason in the log."""
    cmd = policy_node_cmd("ur3", {"robot_ip": "", "arm": "rtde", "dry_run": False, "policy_gguf": "p.gguf"}, python=PYTHON)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=subprocess_env(40), cwd=str(ROOT))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "robot_ip is required" in r.stderr


def test_quantize_command_reports_bad_parameters():
    cmd = quantize_cmd({"checkpoint": "random:pi05-tiny", "calib": "/nowhere", "out": "x.bin", "bpw": 3.0}, python=PYTHON)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=subprocess_env(41), cwd=str(ROOT))
    assert r.returncode == 2 and "must end with .gguf" in r.stderr, r.stderr[-2000:]


def test_command_shapes():
    sim = sim_camera_cmd("127.0.0.5", "ur3e", task="object/x", camera_rate_hz=12.5, image_size=96)
    assert sim[1:3] == ["-m", "actquant_ros.sim_camera_node"] and "--backend" in sim and "mujoco" in sim
    assert "camera_rate_hz:=12.5" in sim and "image_size:=96" in sim
    pn = policy_node_cmd("ur3e", {"dry_run": True, "camera_slots": ["a", "b"]})
    files = [pn[i + 1] for i, w in enumerate(pn) if w == "--params-file"]
    assert files[0].endswith("config/ur3e.yaml") and files[1].endswith("config/policy_pi05_small.yaml")
    assert "dry_run:=true" in pn and "camera_slots:=[a,b]" in pn and "ur_type:=ur3e" in pn
    rp = replay_cmd("bag", "p.gguf", "out", reference="r.gguf", republish=True)
    assert rp[-3:] == ["--reference", "r.gguf", "--republish"]
