"""Commands started by the launch files, as plain argv lists (no ROS import here).

ROS 2 ``launch`` cannot be installed in this project's CI, so the launch files stay thin: they declare
arguments (each with a description) and start exactly these commands with ``ExecuteProcess``.  The
integration tests start the same commands as subprocesses (``test/integration/test_closed_loop.py``,
``test_policy_node_launch.py``), so what a launch file runs is tested even where ``launch`` is absent.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SHARE = Path(__file__).resolve().parent.parent  # the package share dir (installed) or the checkout
CONFIG = SHARE / "config"


def _ros_params(params_files: Sequence[str | Path], params: Mapping[str, object]) -> list[str]:
    out = ["--ros-args"]
    for f in params_files:
        out += ["--params-file", str(f)]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = "[" + ",".join(str(x) for x in v) + "]"
        out += ["-p", f"{k}:={v}"]
    return out


def policy_node_cmd(ur_type: str, params: Mapping[str, object], extra_params_files: Sequence[str | Path] = (),
                    python: str = sys.executable) -> list[str]:
    """``policy_node`` with ``config/<ur_type>.yaml`` + ``config/policy_pi05_small.yaml`` + overrides."""
    files = [CONFIG / f"{ur_type}.yaml", CONFIG / "policy_pi05_small.yaml", *extra_params_files]
    return [python, "-m", "actquant_ros.policy_node", *_ros_params(files, {"ur_type": ur_type, **params})]


def sim_camera_cmd(host: str, model: str, task: str = "", camera_rate_hz: float = 10.0, image_size: int = 224,
                   instruction: str = "", exit_with_parent: bool = False, python: str = sys.executable,
                   init_index: int = -1, ready_file: str = "") -> list[str]:
    """UR controller simulator (MuJoCo) + its cameras / instruction / joint states on DDS, one process."""
    cmd = [python, "-m", "actquant_ros.sim_camera_node", "--host", host, "--model", model, "--backend", "mujoco"]
    if task:
        cmd += ["--task", task]
    if exit_with_parent:
        cmd += ["--exit-with-parent"]
    if init_index >= 0:
        cmd += ["--init-index", str(int(init_index))]
    if ready_file:
        cmd += ["--ready-file", ready_file]
    params: dict[str, object] = {"camera_rate_hz": float(camera_rate_hz), "image_size": int(image_size)}
    if instruction:
        params["instruction"] = instruction
    return cmd + _ros_params([], params)


def replay_cmd(bag: str, gguf: str, out: str, reference: str = "", schedule: str = "every_frame",
               republish: bool = False, python: str = sys.executable) -> list[str]:
    """``actquant replay`` (the module entry point, so it runs without the CLI registry)."""
    cmd = [python, "-m", "actquant_ros.replay", "--bag", bag, "--gguf", gguf, "--out", out, "--schedule", schedule]
    if reference:
        cmd += ["--reference", reference]
    if republish:
        cmd += ["--republish"]
    return cmd


def quantize_cmd(params: Mapping[str, object], python: str = sys.executable) -> list[str]:
    """``quantizer_node`` with its parameters."""
    return [python, "-m", "actquant_ros.quantizer_node", *_ros_params([], params)]
