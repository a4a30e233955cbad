"""What every policy runtime reports about its native model (``self._rt``, a ``_native`` runtime object)."""

from __future__ import annotations

from typing import Any


class NativeHandle:
    """Mixin of the family runtimes: the properties read from the native runtime ``_rt``."""

    _rt: Any

    @property
    def backend(self) -> str:
        return self._rt.backend

    @property
    def fused_weights(self) -> list[str]:
        """Weights the native graph reads as one stacked matrix (q/k/v; gate/up on a GPU where the family's
        graph stacks them), once built."""
        return list(self._rt.fused_weights)

    @property
    def host_resident(self) -> list[str]:
        """GPU backends: embedding tables kept in host memory (the GPU cannot gather rows of their type)."""
        return list(self._rt.host_resident)
