"""Offline quantization through ``quantizer_node`` (progress as JSON on /quantizer_node/progress).

    ros2 launch actquant_ros quantize.launch.py checkpoint:=actquant_core/assets/policies/pi05-small-sim \
        calib:=demos/ out:=pi05-small-3bpw.gguf bpw:=3.0
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actquant_launch_common import quantize_cmd  # noqa: E402

_ARGS = ("checkpoint", "calib", "out", "bpw", "method", "scope", "device")


def _start(context, *args, **kwargs):
    v = {k: LaunchConfiguration(k).perform(context) for k in _ARGS}
    return [ExecuteProcess(cmd=quantize_cmd(v), name="quantizer_node", output="screen")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="policy checkpoint folder / file, or random:<preset> (required)"),
        DeclareLaunchArgument("calib", description="calibration source: dataset, demos folder or rosbag2 folder(s) (required)"),
        DeclareLaunchArgument("out", description="output GGUF path (required)"),
        DeclareLaunchArgument("bpw", default_value="3.0", description="average bits per weight of the allocated tensors"),
        DeclareLaunchArgument("method", default_value="actquant", description="quantization method (actquant, rtn, imatrix, ...)"),
        DeclareLaunchArgument("scope", default_value="backbone", choices=["backbone", "all"], description="allocated tensors"),
        DeclareLaunchArgument("device", default_value="cpu", description="torch device of the calibration passes"),
        OpaqueFunction(function=_start),
    ])
