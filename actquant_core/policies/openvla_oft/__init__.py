"""OpenVLA-OFT policy family: config, torch reference model, canonical tensor names, loader, preprocessing.

Torch-free modules (safe on the online path): ``config``, ``preprocess``.
Torch modules (offline): ``model``, ``canonical``, ``loader`` — exported lazily here so that
``import actquant_core.policies.openvla_oft`` never imports torch.
"""

from __future__ import annotations

import importlib

from actquant_core.policies.openvla_oft.config import PRESET_NAMES, OftConfig, get_preset

_LAZY = {
    "OftModel": "actquant_core.policies.openvla_oft.model",
    "canonical_state_dict": "actquant_core.policies.openvla_oft.canonical",
    "model_from_canonical": "actquant_core.policies.openvla_oft.canonical",
    "canonical_tensor_names": "actquant_core.policies.openvla_oft.canonical",
    "canonical_shapes": "actquant_core.policies.openvla_oft.canonical",
    "load_oft_checkpoint": "actquant_core.policies.openvla_oft.loader",
    "write_oft_checkpoint": "actquant_core.policies.openvla_oft.loader",
    "OftCheckpointError": "actquant_core.policies.openvla_oft.loader",
    "OftPreprocessor": "actquant_core.policies.openvla_oft.preprocess",
    "OftInputs": "actquant_core.policies.openvla_oft.preprocess",
    "OftNormStats": "actquant_core.policies.openvla_oft.preprocess",
    "load_dataset_statistics": "actquant_core.policies.openvla_oft.preprocess",
}

__all__ = ["PRESET_NAMES", "OftConfig", "get_preset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
