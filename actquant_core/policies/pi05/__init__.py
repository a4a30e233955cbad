"""π₀.₅ policy family: config, torch reference model, canonical tensor names, loader, preprocessing.

Torch-free modules (safe on the online path): ``config``, ``preprocess``.
Torch modules (offline): ``model``, ``canonical``, ``loader`` — exported lazily here so that
``import actquant_core.policies.pi05`` never imports torch.
"""

from __future__ import annotations

import importlib

from actquant_core.policies.pi05.config import PRESET_NAMES, Pi05Config, get_preset

_LAZY = {
    "Pi05Model": "actquant_core.policies.pi05.model",
    "PrefixCache": "actquant_core.policies.pi05.model",
    "canonical_state_dict": "actquant_core.policies.pi05.canonical",
    "model_from_canonical": "actquant_core.policies.pi05.canonical",
    "canonical_tensor_names": "actquant_core.policies.pi05.canonical",
    "canonical_shapes": "actquant_core.policies.pi05.canonical",
    "load_pi05_checkpoint": "actquant_core.policies.pi05.loader",
    "CheckpointLayoutError": "actquant_core.policies.pi05.loader",
    "Pi05Preprocessor": "actquant_core.policies.pi05.preprocess",
    "Pi05Inputs": "actquant_core.policies.pi05.preprocess",
}

__all__ = ["PRESET_NAMES", "Pi05Config", "get_preset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
