"""Policy runtimes over the native GGML module (no torch): ``load_runtime(gguf)`` picks the family's runtime."""

from __future__ import annotations

import os
from typing import Any


def load_runtime(path: str | os.PathLike[str], **kw: Any) -> Any:
    """Opens a policy GGUF with the runtime of its family (``actquant.family``): ``infer(obs) -> ActionChunk``.

    ``kw`` go to the runtime; ``seed`` (the flow-matching noise of pi05) is accepted for every family, so
    callers need not know which one a file holds."""
    from actquant_core import constants as C
    from actquant_core import native

    family = native.GgufModel(path).metadata(C.KEY_FAMILY)
    if family == C.PI05_FAMILY:
        from actquant_core.runtime.pi05 import Pi05Runtime

        return Pi05Runtime(path, **kw)
    if family == getattr(C, "OFT_FAMILY", "openvla_oft"):
        from actquant_core.runtime.openvla_oft import OftRuntime  # type: ignore[import-not-found]

        kw.pop("seed", None)  # OFT decodes deterministically: no noise to seed
        return OftRuntime(path, **kw)
    raise ValueError(f"GGUF {os.fspath(path)!r}: no runtime for policy family {family!r}")
