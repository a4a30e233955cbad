"""Typed reading of policy GGUF files (pure Python, over gguf-py; the runtime maps files natively)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUFReader

from actquant_core import constants as C


class PolicyFileError(ValueError):
    """A policy GGUF is unreadable or lacks what a policy file must hold (message names file and key)."""


@dataclass(frozen=True)
class TensorInfo:
    """name, numpy shape, GGML type name, bytes."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    nbytes: int


@dataclass
class PolicyFile:
    """A policy GGUF's metadata and tensor directory.

    Attributes:
        path: the file.
        family: "pi05" | "openvla_oft" | ...
        config: the family config dict.
        norm_stats: normalisation statistics dict (or None).
        tokenizer_model: SentencePiece model bytes (or None).
        plan_summary: quant plan summary dict (or None).
        tensors: name -> TensorInfo, in file order.
    """

    path: str
    family: str
    config: dict[str, Any]
    norm_stats: dict[str, Any] | None
    tokenizer_model: bytes | None
    plan_summary: dict[str, Any] | None
    tensors: dict[str, TensorInfo]
    _reader: GGUFReader

    def tensor(self, name: str) -> np.ndarray:
        """Raw tensor data as stored (float array for F32/F16, uint8 blocks for quantized types)."""
        for t in self._reader.tensors:
            if t.name == name:
                return np.asarray(t.data)
        raise PolicyFileError(f"GGUF {self.path!r}: missing tensor {name!r}")


def _field_value(reader: GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    return f.contents()


def read_policy_gguf(path: str | os.PathLike[str], expect_family: str | None = None) -> PolicyFile:
    """Reads a policy GGUF's metadata; raises PolicyFileError naming the file and what is wrong."""
    path = os.fspath(path)
    try:
        reader = GGUFReader(path, "r")
    except FileNotFoundError:
        raise PolicyFileError(f"GGUF {path!r}: file not found") from None
    except Exception as e:  # gguf-py raises ValueError/struct.error/IndexError for corrupt files
        raise PolicyFileError(f"GGUF {path!r}: corrupt or not a GGUF file ({type(e).__name__}: {e})") from None
    family = _field_value(reader, C.KEY_FAMILY)
    if family is None:
        raise PolicyFileError(f"GGUF {path!r}: missing metadata key {C.KEY_FAMILY!r} (not an actquant policy file)")
    if expect_family is not None and family != expect_family:
        raise PolicyFileError(f"GGUF {path!r}: holds a {family!r} policy, expected {expect_family!r}")
    cfg = _field_value(reader, C.KEY_CONFIG_JSON)
    if cfg is None:
        raise PolicyFileError(f"GGUF {path!r}: missing metadata key {C.KEY_CONFIG_JSON!r}")
    ns = _field_value(reader, C.KEY_NORM_STATS_JSON)
    plan = _field_value(reader, C.KEY_QUANT_PLAN_SUMMARY)
    tok = _field_value(reader, C.KEY_TOKENIZER_MODEL)
    tensors = {
        t.name: TensorInfo(
            name=t.name,
            shape=tuple(int(d) for d in reversed(t.shape.tolist())),
            type_name=t.tensor_type.name,
            nbytes=int(t.n_bytes),
        )
        for t in reader.tensors
    }
    return PolicyFile(
        path=path,
        family=str(family),
        config=json.loads(cfg),
        norm_stats=None if ns is None else json.loads(ns),
        tokenizer_model=None if tok is None else bytes(tok),
        plan_summary=None if plan is None else json.loads(plan),
        tensors=tensors,
        _reader=reader,
    )
