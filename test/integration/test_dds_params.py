"""Parameters on the DDS backend: ROS 2 params YAML, ``--ros-args`` overrides, typing and validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actquant_ros.transport.loopback import use_loopback_config

ROOT = Path(__file__).resolve().parents[2]
use_loopback_config()

from actquant_ros.msgs import String  # noqa: E402
from actquant_ros.transport import ParameterError, make_node, parse_ros_args, resolve_backend, resolve_topic  # noqa: E402
from actquant_ros.transport.params import load_params_file  # noqa: E402

DOMAIN = 100 + (os.getpid() + 50) % 100

PARAMS_YAML = """
/**:
  ros__parameters:
    use_sim_time: false
    control_rate_hz: 100.0
policy_node:
  ros__parameters:
    control_rate_hz: 125        # int in the file, float parameter: widened
    robot_ip: 192.168.1.10
    camera_topics: [/camera/base/image_raw, /camera/wrist/image_raw]
    safety:
      max_joint_speed: 1.5
other_node:
  ros__parameters:
    control_rate_hz: 1.0
"""


@pytest.fixture
def params_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS_YAML)
    return p


def _node(argv, params_file=None, name="policy_node"):
    return make_node(name, backend="dds", argv=argv, params_file=params_file, domain_id=DOMAIN)


def test_yaml_sections_flattening_and_precedence(params_file):
    got = load_params_file(params_file, "policy_node")
    assert got == {
        "use_sim_time": False,
        "control_rate_hz": 125,
        "robot_ip": "192.168.1.10",
        "camera_topics": ["/camera/base/image_raw", "/camera/wrist/image_raw"],
        "safety.max_joint_speed": 1.5,
    }
    assert load_params_file(params_file, "unknown")["control_rate_hz"] == 100.0  # wildcard only


def test_node_parameters_from_yaml_and_cli(params_file):
    node = _node(["--ros-args", "-p", "safety.max_joint_speed:=0.5", "-p", "dry_run:=false", "--", "extra"], params_file)
    try:
        assert node.declare_parameter("control_rate_hz", 500.0, "servo rate (Hz)", lambda v: v in (125.0, 500.0)) == 125.0
        assert isinstance(node.get_parameter("control_rate_hz"), float)
        assert node.declare_parameter("robot_ip", None, "UR controller address", type_=str) == "192.168.1.10"
        assert node.declare_parameter("ur_type", "ur3", "ur3 | ur3e", lambda v: v in ("ur3", "ur3e")) == "ur3"
        assert node.declare_parameter("camera_topics", type_="str_array") == ("/camera/base/image_raw", "/camera/wrist/image_raw")
        assert node.declare_parameter("safety.max_joint_speed", 3.14, "rad/s", lambda v: 0 < v <= 3.14) == 0.5  # CLI wins
        assert node.declare_parameter("dry_run", True, "no motion") is False
        assert node.declare_parameter("gpu_layers", None, "optional", type_=int) is None
        assert node.undeclared_overrides() == ["use_sim_time"]
        assert node.set_parameter("ur_type", "ur3e") == "ur3e"
        with pytest.raises(ParameterError, match="'ur_type'='ur5' rejected"):
            node.set_parameter("ur_type", "ur5")
        assert node.get_parameter("ur_type") == "ur3e"
        with pytest.raises(ParameterError, match="declared twice"):
            node.declare_parameter("ur_type", "ur3")
        with pytest.raises(ParameterError, match="'nope' was not declared"):
            node.get_parameter("nope")
    finally:
        node.shutdown()


@pytest.mark.parametrize(
    "argv,name,default,validator,match",
    [
        (["--ros-args", "-p", "rate:=fast"], "rate", 125.0, None, "'rate': expected float, got str 'fast'"),
        (["--ros-args", "-p", "rate:=-1.0"], "rate", 125.0, lambda v: v > 0, "'rate'=-1.0 rejected by its validator"),
        (["--ros-args", "-p", "n:=true"], "n", 3, None, "'n': expected int, got bool"),
        (["--ros-args", "-p", "names:=[a, 1]"], "names", ["x"], None, r"'names\[1\]': expected str"),
        (["--ros-args", "-p", "horizon:=0"], "horizon", 10, lambda v: 1 <= v <= 50 or (_ for _ in ()).throw(ValueError("must be in [1, 50]")),
         "'horizon'=0 rejected: must be in \\[1, 50\\]"),
    ],
)
def test_validation_errors_name_the_parameter(argv, name, default, validator, match):
    node = _node(argv)
    try:
        with pytest.raises(ParameterError, match=match):
            node.declare_parameter(name, default, "", validator)
    finally:
        node.shutdown()


def test_bad_command_lines_and_files(tmp_path):
    with pytest.raises(ParameterError, match="expects 'name:=value'"):
        parse_ros_args(["--ros-args", "-p", "rate=1"])
    with pytest.raises(ParameterError, match="unsupported argument '--bogus'"):
        parse_ros_args(["--ros-args", "--bogus"])
    with pytest.raises(ParameterError, match="-p needs a value"):
        parse_ros_args(["--ros-args", "-p"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy_node:\n  params: {a: 1}\n")
    with pytest.raises(ParameterError, match="must contain 'ros__parameters'"):
        load_params_file(bad, "policy_node")
    with pytest.raises(ParameterError, match="does not exist"):
        load_params_file(tmp_path / "missing.yaml", "policy_node")


def test_ros_args_order_remaps_and_node_name(params_file):
    args = parse_ros_args(
        ["prog_arg", "--ros-args", "-p", "control_rate_hz:=500.0", "--params-file", str(params_file),
         "-r", "__node:=policy_node", "-r", "__ns:=/arm", "-r", "/joint_states:=/ur/joint_states", "--log-level", "debug"]
    )
    assert args.remaining == ("prog_arg",)
    assert args.node_name == "policy_node" and args.namespace == "/arm"
    assert args.overrides("policy_node", "/arm")["control_rate_hz"] == 125  # the file comes later: it wins
    node = make_node("renamed_me", backend="dds", argv=["--ros-args", "-r", "__node:=policy_node", "-r", "__ns:=/arm",
                                                          "-r", "/joint_states:=/ur/joint_states", "-r", "chunk:=/out"],
                     params_file=params_file, domain_id=DOMAIN)
    try:
        assert (node.name, node.namespace) == ("policy_node", "/arm")
        assert node.declare_parameter("robot_ip", "") == "192.168.1.10"
        assert node.create_publisher(String, "/joint_states").topic == "/ur/joint_states"
    finally:
        node.shutdown()
    assert resolve_topic("chunk", "n", "/arm", {"chunk": "/out"}) == "/out"
    assert resolve_topic("cam/image", "n", "/arm") == "/arm/cam/image"
    assert resolve_topic("~/status", "n", "/arm") == "/arm/n/status"
    with pytest.raises(ValueError, match="invalid topic name"):
        resolve_topic("a b", "n")


def test_backend_selection():
    assert resolve_backend("dds", env={}) == "dds"
    assert resolve_backend("auto", env={"ACTQUANT_ROS_BACKEND": "dds"}) == "dds"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("zenoh", env={})
    with pytest.raises(ValueError, match="ACTQUANT_ROS_BACKEND must be one of"):
        resolve_backend("auto", env={"ACTQUANT_ROS_BACKEND": "ros1"})


def test_console_entry_point_rejects_invalid_parameter():
    """The node's console entry point fails fast, naming the parameter and the value."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ROS_DOMAIN_ID=str(DOMAIN), ACTQUANT_ROS_BACKEND="dds")
    use_loopback_config(env)
    out = subprocess.run(
        [sys.executable, "-m", "actquant_ros.echo_node", "--ros-args", "-p", "max_messages:=-3"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "parameter 'max_messages'=-3 rejected" in out.stderr
