"""Framework-free observation / action types shared by runtimes, robot side and ROS glue."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One synchronised observation.

    Attributes:
        images: camera slot name -> uint8 HxWx3 RGB image (slot names are the policy's, e.g.
            "base_0_rgb", "left_wrist_0_rgb"); a slot that is absent is a missing camera.
        state: robot state vector (joint positions [+ gripper]) in robot units, unnormalised.
        instruction: natural-language task instruction.
        stamp: time (s) of the newest input that went into this observation.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp: float = 0.0


@dataclass
class ActionChunk:
    """A chunk of future actions from one policy call.

    Attributes:
        actions: [horizon, action_dim] unnormalised actions (robot units).
        stamp: the observation stamp this chunk was computed from.
        timing_ms: per-stage wall time in ms (e.g. "preprocess", "vision", "prefix", "denoise", "total").
    """

    actions: np.ndarray
    stamp: float = 0.0
    timing_ms: dict[str, float] = field(default_factory=dict)
