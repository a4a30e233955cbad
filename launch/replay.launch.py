"""Rosbag replay evaluation (``actquant replay``), optionally republishing the bag over DDS.

    ros2 launch actquant_ros replay.launch.py bag:=episode_000000 gguf:=policy.gguf reference:=ref.gguf
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actquant_launch_common import replay_cmd  # noqa: E402


def _start(context, *args, **kwargs):
    v = {k: LaunchConfiguration(k).perform(context) for k in ("bag", "gguf", "reference", "out", "schedule", "republish")}
    return [ExecuteProcess(cmd=replay_cmd(v["bag"], v["gguf"], v["out"], v["reference"], v["schedule"], v["republish"] == "true"),
                           name="replay", output="screen")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder or .mcap/.db3 file to replay (required)"),
        DeclareLaunchArgument("gguf", description="policy GGUF to evaluate (required)"),
        DeclareLaunchArgument("reference", default_value="", description="reference policy GGUF ('' = none)"),
        DeclareLaunchArgument("out", default_value="replay_out", description="output folder for replay.json and plots"),
        DeclareLaunchArgument("schedule", default_value="every_frame", choices=["every_frame", "realtime"],
                              description="every_frame: infer each frame; realtime: skip frames while the simulated worker is busy"),
        DeclareLaunchArgument("republish", default_value="false", choices=["true", "false"],
                              description="also republish the bag over DDS at the recorded pace"),
        OpaqueFunction(function=_start),
    ])
