"""UR3e: ``ur3_policy.launch.py`` with ur_type:=ur3e (500 Hz RTDE, config/ur3e.yaml)."""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description():
    here = Path(__file__).resolve().parent
    return LaunchDescription([
        DeclareLaunchArgument("robot_ip", description="IP address of the UR3e controller (required, no default)"),
        DeclareLaunchArgument("policy_gguf", description="policy GGUF file to run (required)"),
        DeclareLaunchArgument("dry_run", default_value="true", choices=["true", "false"],
                              description="true: commands are only recorded; false: the arm moves"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(here / "ur3_policy.launch.py")),
            launch_arguments={"ur_type": "ur3e", "robot_ip": LaunchConfiguration("robot_ip"),
                              "policy_gguf": LaunchConfiguration("policy_gguf"),
                              "dry_run": LaunchConfiguration("dry_run")}.items(),
        ),
    ])
