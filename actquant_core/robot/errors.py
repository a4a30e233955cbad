"""Exceptions of the robot side."""

from __future__ import annotations


class ArmError(RuntimeError):
    """Base class for arm failures."""


class ArmConnectionError(ArmError, ConnectionError):
    """The arm could not be reached or the connection was lost (the message names the address)."""


class ArmFaultError(ArmError):
    """The arm refused a command because of an active fault (protective stop, program stopped...)."""


class RecoveryRefused(RuntimeError):
    """``ControlLoop.resume()`` was called while the conditions for recovery do not hold."""
