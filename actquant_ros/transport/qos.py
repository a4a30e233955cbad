"""QoS profiles of the facade (backend-neutral), mirroring ROS 2's ``rmw_qos_profile_*``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QoSProfile", "QOS_DEFAULT", "QOS_SENSOR_DATA", "QOS_LATCHED"]

_RELIABILITY = ("reliable", "best_effort")
_DURABILITY = ("volatile", "transient_local")


@dataclass(frozen=True)
class QoSProfile:
    """A publisher / subscription QoS.

    Attributes:
        reliability: "reliable" (retransmit until acknowledged) or "best_effort" (drop on loss).
        depth: keep-last history depth (>= 1).
        durability: "volatile" (no history for late joiners) or "transient_local" (latched).
    """

    reliability: str = "reliable"
    depth: int = 10
    durability: str = "volatile"

    def __post_init__(self) -> None:
        if self.reliability not in _RELIABILITY:
            raise ValueError(f"QoSProfile.reliability must be one of {_RELIABILITY}, got {self.reliability!r}")
        if self.durability not in _DURABILITY:
            raise ValueError(f"QoSProfile.durability must be one of {_DURABILITY}, got {self.durability!r}")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ValueError(f"QoSProfile.depth must be an int >= 1, got {self.depth!r}")


QOS_DEFAULT = QoSProfile("reliable", 10, "volatile")  # ROS 2 default: reliable, keep-last 10, volatile
QOS_SENSOR_DATA = QoSProfile("best_effort", 5, "volatile")  # ROS 2 sensor data: best effort, keep-last 5
QOS_LATCHED = QoSProfile("reliable", 1, "transient_local")  # one latched sample (e.g. instruction)
