"""``actquant-ursim``: a UR controller simulator that the unmodified ``ur_rtde`` clients talk to.

Run it as its own process (never in the process that uses ``ur_rtde``: the client's constructors hold
the GIL while they wait for the first data package)::

    python -m actquant_core.sim.ursim --host 127.0.0.2 --model ur3e --backend kinematic

Public API: ``UrSimConfig``, ``UrSimServer``, the backends (``JointBackend``, ``KinematicBackend``,
``MujocoBackend``) and, for tests and launch files, ``actquant_core.sim.ursim.testing.ursim_process``.
"""

from actquant_core.sim.ursim.backends import JointBackend, KinematicBackend, MujocoBackend, make_backend
from actquant_core.sim.ursim.config import MODELS, UrModel, UrSimConfig
from actquant_core.sim.ursim.server import UrSimServer

__all__ = [
    "MODELS",
    "JointBackend",
    "KinematicBackend",
    "MujocoBackend",
    "UrModel",
    "UrSimConfig",
    "UrSimServer",
    "make_backend",
]
