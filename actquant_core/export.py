"""Export a policy to one self-contained GGUF (weights under canonical names, config, norm stats, tokenizer).

``export_pi05(model, norm_stats, tokenizer_bytes, path, type_for=...)``: every tensor gets a GGML type from
``type_for(name, shape) -> type`` (a quant plan's mapping, or a uniform default type with the eligibility rules
of ``default_type_for``). Importance per tensor (imatrix / Action-Mixed Fisher) is passed through to GGML.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core.gguf import TensorEntry, WriteResult, write_policy_gguf
from actquant_core.gguf.writer import file_order
from actquant_core.gguf.bpw import block_layout

log = logging.getLogger(__name__)

TypeFor = Callable[[str, tuple[int, ...]], str]


def fits(type_name: str, shape: tuple[int, ...]) -> bool:
    """Whether a tensor of numpy ``shape`` can be stored as ``type_name`` (whole blocks per row, 2-D)."""
    n, _ = block_layout(type_name)
    if type_name.upper() in ("F32", "F16"):
        return True
    return len(shape) >= 2 and shape[-1] % n == 0


def default_type_for(weight_type: str, fallback: str = "F16", keep_f32: bool = False) -> TypeFor:
    """A uniform rule: 2-D weights -> ``weight_type`` where rows fit its blocks, else ``fallback`` (else F16);
    1-D tensors (norms, biases) and position embeddings -> F32 (or F16 unless ``keep_f32``).

    Fallbacks are logged and counted by the caller through the returned types."""

    def type_for(name: str, shape: tuple[int, ...]) -> str:
        if len(shape) < 2 or "position_embd" in name or "norm" in name and len(shape) < 2:
            return "F32"
        for t in (weight_type, fallback, "F16"):
            if fits(t, shape):
                return t
        return "F32"

    return type_for


def export_tensors(
    path: str | os.PathLike[str],
    family: str,
    config: dict[str, Any],
    tensors: Mapping[str, np.ndarray],
    type_for: TypeFor,
    *,
    importance: Mapping[str, np.ndarray] | None = None,
    norm_stats: dict[str, Any] | None = None,
    tokenizer_model: bytes | None = None,
    plan_summary: dict[str, Any] | None = None,
    source: str = "",
    n_threads: int | None = None,
) -> WriteResult:
    """Writes canonical ``tensors`` with per-tensor types; returns the write result (bpw summary included)."""
    def entries():  # lazily: each float tensor is dropped once GGML has encoded it (real-size models)
        for name in file_order(tensors):
            arr = tensors[name]
            shape = tuple(int(d) for d in arr.shape)
            t = type_for(name, shape).upper()
            if not fits(t, shape):
                raise ValueError(f"tensor {name!r} of shape {shape} cannot be stored as {t} (row length not a block multiple)")
            yield TensorEntry(name, arr, t, None if importance is None else importance.get(name))

    res = write_policy_gguf(
        path, family, config, entries(), norm_stats=norm_stats, tokenizer_model=tokenizer_model,
        plan_summary=plan_summary, source=source, n_threads=n_threads,
    )
    log.info("exported %s (%d tensors, %.3f bpw)", path, len(res.tensors), res.bpw.bpw)
    return res


def export_pi05(
    model: Any,
    path: str | os.PathLike[str],
    *,
    type_for: TypeFor | None = None,
    norm_stats: Any | None = None,
    tokenizer_model: bytes | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    plan_summary: dict[str, Any] | None = None,
    source: str = "",
) -> WriteResult:
    """Exports a ``Pi05Model`` (torch) to a policy GGUF. Default types: F32 everywhere."""
    from actquant_core.policies.pi05.canonical import canonical_state_dict

    tensors = canonical_state_dict(model)
    return export_tensors(
        path, C.PI05_FAMILY, model.config.to_dict(), tensors, type_for or (lambda n, s: "F32"),
        importance=importance,
        norm_stats=None if norm_stats is None else _norm_stats_dict(norm_stats),
        tokenizer_model=tokenizer_model, plan_summary=plan_summary, source=source,
    )


def export_openvla_oft(
    model: Any,
    path: str | os.PathLike[str],
    *,
    type_for: TypeFor | None = None,
    norm_stats: Any | None = None,
    tokenizer_model: bytes | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    plan_summary: dict[str, Any] | None = None,
    source: str = "",
    include_lm_head: bool = False,
) -> WriteResult:
    """Exports an ``OftModel`` (torch) to a policy GGUF. Default types: F32 everywhere.

    The cls/register tokens and position embeddings (``C.OFT_KEEP_F32``) are always F32 whatever
    ``type_for`` says: the graph adds/concatenates them as they are.  ``lm.output.weight`` (lm_head,
    only the NLL loss reads it) is left out unless ``include_lm_head``."""
    from actquant_core.policies.openvla_oft.canonical import canonical_state_dict

    tensors = canonical_state_dict(model, include_lm_head=include_lm_head)
    base = type_for or (lambda n, s: "F32")

    def oft_type_for(name: str, shape: tuple[int, ...]) -> str:
        return "F32" if name in C.OFT_KEEP_F32 else base(name, shape)

    return export_tensors(
        path, C.OFT_FAMILY, model.config.to_dict(), tensors, oft_type_for,
        importance=importance,
        norm_stats=None if norm_stats is None else _norm_stats_dict(norm_stats),
        tokenizer_model=tokenizer_model, plan_summary=plan_summary, source=source,
    )

def _norm_stats_dict(norm_stats: Any) -> dict[str, Any]:
    import json

    return json.loads(norm_stats.to_json()) if hasattr(norm_stats, "to_json") else dict(norm_stats)
