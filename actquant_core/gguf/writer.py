"""Writing self-contained policy GGUF files.

One file holds the weights (each tensor in its own GGML type), the family config, normalisation statistics,
the tokenizer model bytes and a summary of the quant plan, under the ``actquant.*`` keys of
``actquant_core.constants``. Quantized bytes come from GGML itself (``actquant_core.native.quantize``), so they
are exactly what GGML's dequantizer and kernels expect.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGUFWriter

from actquant_core import constants as C
from actquant_core.gguf.bpw import BpwSummary, bpw_summary, ggml_type

log = logging.getLogger(__name__)

_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor to write.

    Attributes:
        name: canonical tensor name.
        data: float array (any float dtype); 1-D tensors (norms, biases) must be F32/F16.
        type_name: GGML type ("F32", "F16", "BF16", "Q8_0", "Q4_K", "IQ2_XS", ...).
        importance: optional quantization importance, ``[cols]`` or ``[rows, cols]``.
        raw: already-quantized GGML bytes of ``type_name`` (e.g. refined blocks); ``data`` then only gives the
            shape (and is not quantized again).
    """

    name: str
    data: np.ndarray
    type_name: str = "F32"
    importance: np.ndarray | None = None
    raw: bytes | None = None


@dataclass
class WriteResult:
    """What was written: path, per-tensor (name, numpy shape, type) and the bpw summary."""

    path: str
    tensors: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    bpw: BpwSummary | None = None


# Weights the native runtime reads as one stacked matrix when they lie back to back in the file (q/k/v: one
# matmul instead of three; gate/up on a GPU): native/src/gguf-model.h GgufModel::fused.
FUSION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("attn_q.weight", "attn_k.weight", "attn_v.weight"),
    ("ffn_gate.weight", "ffn_up.weight"),
)


def file_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order to write them: unchanged, except that the members of each fusion group of one
    block (``FUSION_GROUPS``, e.g. ``lm.blk.3.attn_q/k/v.weight``) follow each other in group order, where the
    first of them appeared."""
    names = list(names)
    present = set(names)
    out: list[str] = []
    done: set[str] = set()
    for n in names:
        if n in done:
            continue
        group = [n]
        for g in FUSION_GROUPS:
            suffix = next((x for x in g if n.endswith("." + x) or n == x), None)
            if suffix is not None:
                stem = n[: len(n) - len(suffix)]
                group = [stem + x for x in g if stem + x in present and stem + x not in done]
                break
        out.extend(group)
        done.update(group)
    return out


def encode_tensor(entry: TensorEntry, n_threads: int | None = None) -> tuple[np.ndarray, Any]:
    """Returns (array for GGUFWriter.add_tensor, raw_dtype or None) for one entry."""
    t = entry.type_name.upper()
    data = np.asarray(entry.data)
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"tensor {entry.name!r}: expected float data, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"tensor {entry.name!r}: contains NaN or inf")
    if entry.raw is not None:
        from actquant_core.gguf.bpw import tensor_nbytes

        want = tensor_nbytes(tuple(data.shape), t)
        if len(entry.raw) != want:
            raise ValueError(f"tensor {entry.name!r}: {len(entry.raw)} raw bytes, a {t} tensor of shape "
                             f"{tuple(data.shape)} has {want}")
        return np.frombuffer(entry.raw, dtype=np.uint8).reshape(*data.shape[:-1], -1), ggml_type(t)
    if t in _FLOAT_TYPES:
        return np.ascontiguousarray(data, dtype=_FLOAT_TYPES[t]), None
    if data.ndim < 2:
        raise ValueError(f"tensor {entry.name!r}: 1-D tensor of shape {data.shape} must be F32 or F16, not {t}")
    from actquant_core import native

    rows = int(np.prod(data.shape[:-1]))
    W = data.reshape(rows, data.shape[-1])
    raw = native.quantize(W, t, entry.importance, n_threads=n_threads, name=entry.name)
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(*data.shape[:-1], -1)
    return arr, ggml_type(t)


def write_policy_gguf(
    path: str | os.PathLike[str],
    family: str,
    config: dict[str, Any],
    tensors: Iterable[TensorEntry],
    *,
    norm_stats: dict[str, Any] | None = None,
    tokenizer_model: bytes | None = None,
    plan_summary: dict[str, Any] | None = None,
    source: str = "",
    n_threads: int | None = None,
) -> WriteResult:
    """Writes one self-contained policy GGUF and returns what it holds.

    Args:
        path: output file.
        family: "pi05" | "openvla_oft" | "test".
        config: the family config as a JSON-able dict (``Config.to_dict()``).
        tensors: entries in file order.
        norm_stats: JSON-able normalisation statistics.
        tokenizer_model: SentencePiece model bytes.
        plan_summary: JSON-able summary of the quant plan (method, budget, achieved bpw, counts).
        source: free text naming the checkpoint.
    """
    path = os.fspath(path)
    w = GGUFWriter(path, arch=family)
    w.add_string(C.KEY_FAMILY, family)
    w.add_uint32(C.KEY_FORMAT_VERSION, C.FORMAT_VERSION)
    w.add_string(C.KEY_CONFIG_JSON, json.dumps(config, sort_keys=True))
    if norm_stats is not None:
        w.add_string(C.KEY_NORM_STATS_JSON, json.dumps(norm_stats, sort_keys=True))
    if tokenizer_model is not None:
        if not tokenizer_model:
            raise ValueError("tokenizer_model is empty")
        w.add_array(C.KEY_TOKENIZER_MODEL, bytes(tokenizer_model))
    if plan_summary is not None:
        w.add_string(C.KEY_QUANT_PLAN_SUMMARY, json.dumps(plan_summary, sort_keys=True))
    if source:
        w.add_string(C.KEY_SOURCE, source)

    result = WriteResult(path=path)
    seen: set[str] = set()
    for entry in tensors:
        if entry.name in seen:
            raise ValueError(f"duplicate tensor name {entry.name!r}")
        seen.add(entry.name)
        arr, raw_dtype = encode_tensor(entry, n_threads)
        if raw_dtype is None:
            w.add_tensor(entry.name, arr)
        else:
            w.add_tensor(entry.name, arr, raw_dtype=raw_dtype)
        result.tensors.append((entry.name, tuple(int(d) for d in np.shape(entry.data)), entry.type_name.upper()))
    if not result.tensors:
        raise ValueError("write_policy_gguf: no tensors")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result.bpw = bpw_summary(result.tensors)
    log.info("wrote %s: %d tensors, %.3f bpw, %d bytes", path, len(result.tensors), result.bpw.bpw, os.path.getsize(path))
    return result
