"""Clocks for the robot side: a real monotonic clock with a precise sleep-until, and a simulated one.

Logic (scheduler, safety, control loop) reads time only through a ``Clock`` so that tests run on a
simulated clock deterministically and nothing calls ``time.sleep`` inside decision code.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Monotonic time source in seconds."""

    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None:
        """Block until ``now() >= t`` (returns at once when ``t`` is in the past)."""
        ...


class MonotonicClock:
    """``time.monotonic`` with a sleep-until that sleeps coarsely and then spins the last stretch.

    ``time.sleep`` on Linux overshoots by ~50-100 us (more under load); sleeping until ``t - spin_s``
    and busy-waiting the rest lands within a few microseconds of ``t`` at the cost of ``spin_s`` CPU
    per call.  The spin yields the GIL (``time.sleep(0)``) so other Python threads keep running.

    Args:
        spin_s: length of the final busy-wait in seconds (0 disables spinning).
    """

    def __init__(self, spin_s: float = 0.0005) -> None:
        if not (0.0 <= spin_s <= 0.01):
            raise ValueError(f"spin_s must be in [0, 0.01] s, got {spin_s!r}")
        self.spin_s = float(spin_s)

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        remaining = t - time.monotonic()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.monotonic() < t:
            time.sleep(0)


class SimulatedClock:
    """A clock that only moves when told to: ``sleep_until`` jumps to the target time.

    Thread-safe; ``advance(dt)`` moves time forward by ``dt`` (never backwards).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def sleep_until(self, t: float) -> None:
        with self._lock:
            if t > self._t:
                self._t = float(t)

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError(f"SimulatedClock cannot go backwards: dt={dt!r}")
        with self._lock:
            self._t += float(dt)
            return self._t
