"""Simulated UR3/UR3e world (MuJoCo): scene, tasks, scripted experts, rendering, demonstrations.

Modules: ``mjcf`` (scene generator), ``world`` (UR3World), ``ik``, ``tasks``, ``expert``, ``env`` (SimEnv),
``arm`` (SimArm), ``episodes`` (dataset / rosbag2 I/O), ``demos`` (parallel demo generation),
``ursim`` (RTDE controller simulator).

MuJoCo picks its OpenGL platform when it is first imported, so this package sets ``MUJOCO_GL=egl`` (unless
already set, e.g. to ``osmesa``) before any of its modules imports ``mujoco``.  Import ``actquant_core.sim``
before ``mujoco`` when you need offscreen rendering.
"""

import os as _os

_os.environ.setdefault("MUJOCO_GL", "egl")
