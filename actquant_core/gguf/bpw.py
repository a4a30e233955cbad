"""Bits-per-weight accounting — the one function every report, allocator and benchmark uses.

Bits are counted from GGML's block layout (``gguf.constants.GGML_QUANT_SIZES``: elements per block and bytes
per block), so per-block scale/min overhead is included: Q4_K is 4.5 bpw, not 4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType


def ggml_type(type_name: str) -> GGMLQuantizationType:
    """GGML type enum from a name in any case ("q4_K", "Q4_K", "f16")."""
    try:
        return GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise ValueError(f"unknown GGML type {type_name!r}") from None


def block_layout(type_name: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a GGML type."""
    return GGML_QUANT_SIZES[ggml_type(type_name)]


def type_bpw(type_name: str) -> float:
    """Bits per weight of a GGML type, block overhead included."""
    n, nbytes = block_layout(type_name)
    return 8.0 * nbytes / n


def tensor_nbytes(shape: tuple[int, ...], type_name: str) -> int:
    """Bytes of a tensor of numpy ``shape`` stored as ``type_name``; the last dim must fill whole blocks."""
    n, nbytes = block_layout(type_name)
    if not shape or shape[-1] % n:
        raise ValueError(f"shape {tuple(shape)} cannot be stored as {type_name}: row length is not a multiple of {n}")
    numel = 1
    for d in shape:
        numel *= int(d)
    return numel // n * nbytes


@dataclass(frozen=True)
class BpwSummary:
    """Parameter-weighted bits per weight, overall and per group.

    Attributes:
        n_params: parameter count over all tensors.
        n_bytes: bytes of tensor data over all tensors.
        bpw: 8 * n_bytes / n_params.
        groups: group name -> (n_params, n_bytes, bpw).
    """

    n_params: int
    n_bytes: int
    bpw: float
    groups: dict[str, tuple[int, int, float]]


def bpw_summary(
    tensors: Iterable[tuple[str, tuple[int, ...], str]],
    group_of: Callable[[str], str] | None = None,
) -> BpwSummary:
    """Accounts ``(name, shape, type)`` triples: whole-model bpw and per-group bpw (``group_of(name)``)."""
    total_p = total_b = 0
    groups: dict[str, list[int]] = {}
    for name, shape, type_name in tensors:
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = tensor_nbytes(tuple(shape), type_name)
        total_p += numel
        total_b += nbytes
        if group_of is not None:
            g = groups.setdefault(group_of(name), [0, 0])
            g[0] += numel
            g[1] += nbytes
    if total_p == 0:
        raise ValueError("bpw_summary: no tensors")
    return BpwSummary(
        n_params=total_p,
        n_bytes=total_b,
        bpw=8.0 * total_b / total_p,
        groups={k: (p, b, 8.0 * b / p) for k, (p, b) in groups.items()},
    )
