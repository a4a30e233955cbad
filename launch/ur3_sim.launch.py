"""Simulated UR3: UR controller simulator (MuJoCo) + camera publisher + policy node over real ur_rtde.

    ros2 launch actquant_ros ur3_sim.launch.py policy_gguf:=pi05-small-sim.gguf task:=object/red_cube_to_bowl

Starts ``sim_camera_node`` (the simulator serving RTDE / dashboard / script on ``sim_host`` and
publishing /camera/base/image_raw, /camera/wrist/image_raw, /instruction, /joint_states) and the policy
node with ``arm:=rtde robot_ip:=<sim_host> dry_run:=false`` -- the same client path as a real arm.
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, TimerAction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actquant_launch_common import policy_node_cmd, sim_camera_cmd  # noqa: E402


def _start(context, *args, **kwargs):
    v = {k: LaunchConfiguration(k).perform(context) for k in
         ("sim_host", "ur_type", "task", "policy_gguf", "camera_rate_hz", "image_size", "threads", "start_delay_s")}
    sim = ExecuteProcess(cmd=sim_camera_cmd(v["sim_host"], v["ur_type"], v["task"], float(v["camera_rate_hz"]), int(v["image_size"])),
                         name="ursim_cameras", output="screen")
    node = ExecuteProcess(cmd=policy_node_cmd(v["ur_type"], {"policy_gguf": v["policy_gguf"], "arm": "rtde", "dry_run": False,
                                                             "robot_ip": v["sim_host"], "threads": v["threads"]}),
                          name="policy_node", output="screen")
    return [sim, TimerAction(period=float(v["start_delay_s"]), actions=[node])]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("policy_gguf", description="policy GGUF file to run (required)"),
        DeclareLaunchArgument("ur_type", default_value="ur3", choices=["ur3", "ur3e"],
                              description="simulated controller: ur3 (125 Hz) or ur3e (500 Hz)"),
        DeclareLaunchArgument("task", default_value="", description="simulated task <suite>/<name> ('' = empty table)"),
        DeclareLaunchArgument("sim_host", default_value="127.0.0.2", description="loopback address the simulator serves on"),
        DeclareLaunchArgument("camera_rate_hz", default_value="10.0", description="camera frames per second"),
        DeclareLaunchArgument("image_size", default_value="224", description="rendered square image size, px"),
        DeclareLaunchArgument("threads", default_value="0", description="CPU threads of the policy runtime (0 = all)"),
        DeclareLaunchArgument("start_delay_s", default_value="3.0", description="seconds between starting the simulator and the node"),
        OpaqueFunction(function=_start),
    ])
