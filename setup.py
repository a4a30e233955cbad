"""pip / dev-venv build of actquant_ros.

Under colcon the top-level CMakeLists.txt (ament_cmake) builds and installs everything and this file is not
run.  For `pip install -e .` (dev venv, CI) this file builds the same native module: it runs CMake on
native/ into build/native (kept between builds, so rebuilds are incremental) and places
actquant_core/_native*.so.  Options come from the environment:

    ACTQUANT_CMAKE_ARGS   extra CMake arguments, e.g. "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
                          or "-DGGML_SOURCE_DIR=/path/to/ggml" or "-DGGML_NATIVE=OFF"
    ACTQUANT_BUILD_JOBS   parallel build jobs (default: number of CPUs)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:  # type: ignore[override]
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = ROOT / "build" / "native"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            "cmake",
            "-S", str(ext.source_dir),
            "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DACTQUANT_NATIVE_OUTPUT_DIR={out_dir}",
        ] + shlex.split(os.environ.get("ACTQUANT_CMAKE_ARGS", ""))
        jobs = os.environ.get("ACTQUANT_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(cfg, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_native", "-j", jobs], check=True)


setup(
    name="actquant_ros",
    version="0.1.0",
    description="Action-guided mixed-precision quantization and GGML runtime for VLA policies on a UR3 (ROS 2)",
    packages=find_packages(include=["actquant_core", "actquant_core.*", "actquant_ros", "actquant_ros.*"]),
    package_data={"actquant_core": ["assets/**/*", "*.pyi", "py.typed"]},
    include_package_data=True,
    python_requires=">=3.10",
    ext_modules=[CMakeExtension("actquant_core._native", ROOT / "native")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={
        "console_scripts": [
            "actquant = actquant_core.cli:main",
            "actquant-ursim = actquant_core.sim.ursim.__main__:main",
            "policy_node = actquant_ros.policy_node:main",
            "quantizer_node = actquant_ros.quantizer_node:main",
            "sim_camera_node = actquant_ros.sim_camera_node:main",
        ],
        # `actquant` subcommands contributed by other packages (actquant_core.cli.ENTRY_POINT_GROUP)
        "actquant.commands": ["replay = actquant_ros.replay:register"],
    },
    zip_safe=False,
)
