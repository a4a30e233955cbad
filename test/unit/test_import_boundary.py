"""Layering: the core loads no ROS/DDS modules; online-path modules load no torch.

Each check runs in a fresh interpreter so modules imported by other tests do not hide a violation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROS_PREFIXES = ("rclpy", "cyclonedds", "rosidl", "rcl_interfaces", "actquant_ros")
TORCH_PREFIXES = ("torch",)


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _offenders(loaded: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in prefixes)


@pytest.mark.parametrize("module", ["actquant_core", "actquant_core.robot", "actquant_core.runtime", "actquant_core.data"])
def test_core_loads_no_ros(module):
    loaded = _loaded_after_import([module])
    assert module in loaded
    assert _offenders(loaded, ROS_PREFIXES) == []


def test_online_path_loads_no_torch():
    mods = ["actquant_core.robot", "actquant_core.runtime", "actquant_core.runtime.pi05",
            "actquant_core.runtime.openvla_oft", "actquant_core.sim.evaluate", "actquant_core.data",
            "actquant_ros.transport", "actquant_ros.convert", "actquant_ros.echo_node", "actquant_ros.policy_node"]
    loaded = _loaded_after_import(mods)
    assert "actquant_ros.transport.dds_backend" not in loaded or "cyclonedds" in loaded  # sanity: real imports
    assert _offenders(loaded, TORCH_PREFIXES) == []


def test_dds_backend_loads_no_torch():
    loaded = _loaded_after_import(["actquant_ros.transport.dds_backend"])
    assert "cyclonedds" in loaded
    assert _offenders(loaded, TORCH_PREFIXES) == []


def test_check_detects_a_violation():
    """The probe itself works: a module pulled in by an import is seen (cheap stand-in for torch)."""
    loaded = _loaded_after_import(["xml.dom.minidom"])
    assert "xml.dom.minidom" in _offenders(loaded, ("xml",))
