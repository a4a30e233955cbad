"""Real UR3 / UR3e arm: policy node -> ur_rtde servoJ on robot_ip.

    ros2 launch actquant_ros ur3_policy.launch.py robot_ip:=192.168.1.10 policy_gguf:=/path/policy.gguf \
        dry_run:=false

``robot_ip`` has no default (the launch fails without it); ``dry_run`` defaults to true, so nothing moves
until it is set to false explicitly.  Cameras and joint states come from the robot's drivers on the topics
of ``config/policy_pi05_small.yaml``.
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actquant_launch_common import policy_node_cmd  # noqa: E402


def _start(context, *args, **kwargs):
    v = {k: LaunchConfiguration(k).perform(context) for k in ("robot_ip", "ur_type", "policy_gguf", "dry_run", "instruction", "threads")}
    params = {"robot_ip": v["robot_ip"], "arm": "rtde", "dry_run": v["dry_run"], "policy_gguf": v["policy_gguf"], "threads": v["threads"]}
    if v["instruction"]:
        params["instruction"] = v["instruction"]
    return [ExecuteProcess(cmd=policy_node_cmd(v["ur_type"], params), name="policy_node", output="screen")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("robot_ip", description="IP address of the UR controller (required, no default)"),
        DeclareLaunchArgument("ur_type", default_value="ur3", choices=["ur3", "ur3e"],
                              description="robot type: ur3 (CB3, RTDE 125 Hz) or ur3e (e-series, 500 Hz); selects config/<ur_type>.yaml"),
        DeclareLaunchArgument("policy_gguf", description="policy GGUF file to run (required)"),
        DeclareLaunchArgument("dry_run", default_value="true", choices=["true", "false"],
                              description="true: commands are only recorded; false: the arm moves"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction (a message on /instruction replaces it)"),
        DeclareLaunchArgument("threads", default_value="0", description="CPU threads of the policy runtime (0 = all)"),
        OpaqueFunction(function=_start),
    ])
