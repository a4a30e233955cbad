"""Typed facade over the private GGML module ``actquant_core._native``.

The compiled module is loaded lazily, on first use, so that ``import actquant_core`` (and quantize/export
planning on a machine with no compiler) works without it; a missing build raises ``NativeUnavailableError``
with the command that builds it.

Shapes follow numpy: a weight is ``[rows, cols]`` = ``[out_features, in_features]`` (GGML ``ne = [cols, rows]``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "NativeUnavailableError",
    "GgufError",
    "native_module",
    "supported_types",
    "type_traits",
    "quantize",
    "dequantize",
    "has_cuda",
    "Backend",
    "GgufModel",
    "mul_mat",
    "default_threads",
]


class NativeUnavailableError(ImportError):
    """The compiled module actquant_core._native is not built or cannot be loaded."""


_MODULE: ModuleType | None = None


def native_module() -> ModuleType:
    """Returns the compiled module, importing it on first use."""
    global _MODULE
    if _MODULE is None:
        try:
            _MODULE = importlib.import_module("actquant_core._native")
        except ImportError as e:  # pragma: no cover - depends on the build
            raise NativeUnavailableError(
                f"the native GGML module actquant_core._native is not available ({e}); build it with "
                "`make build` (or `pip install --no-build-isolation -e .`)"
            ) from e
    return _MODULE


class _GgufErrorProxy(type):
    """Lets ``except GgufError`` work before the native module is loaded."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, native_module().GgufError)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, native_module().GgufError)


class GgufError(ValueError, metaclass=_GgufErrorProxy):
    """A GGUF file is unreadable, corrupt, truncated or inconsistent (message names file and tensor)."""


def default_threads() -> int:
    """Threads for native compute: $ACTQUANT_THREADS, else the CPUs this process may use."""
    env = os.environ.get("ACTQUANT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


def supported_types() -> list[str]:
    """GGML type names this build supports (F32 ... IQ1_S), GGML spelling (e.g. 'q4_K')."""
    return list(native_module().supported_types())


def type_traits(type_name: str) -> dict[str, Any]:
    """Block size, bytes per block, bpw, is_quantized, requires_importance — straight from GGML."""
    return dict(native_module().type_traits(type_name))


def quantize(
    W: np.ndarray,
    type_name: str,
    importance: np.ndarray | None = None,
    *,
    n_threads: int | None = None,
    name: str = "tensor",
) -> bytes:
    """Quantizes ``W [rows, cols]`` with GGML's own ``ggml_quantize_chunk``.

    Args:
        W: float weights [rows, cols] (converted to contiguous float32).
        type_name: GGML type name (case-insensitive), e.g. "Q4_K", "IQ2_XS", "F16".
        importance: None, ``[cols]`` (one vector for all rows, stock imatrix) or ``[rows, cols]``
            (row r quantized with its own vector: per-element importance such as the Action-Mixed Fisher).
        n_threads: row-range threads (GIL released); default ``default_threads()``.
        name: tensor name used in error messages.

    Returns:
        The tensor's bytes exactly as GGML lays them out (rows * row_size bytes).

    Raises:
        ValueError: unsupported type, row length not a multiple of the block size, importance required
            but missing, importance of the wrong shape, or non-finite weights — each message names the tensor.
    """
    W = np.ascontiguousarray(W, dtype=np.float32)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    return native_module().quantize(W, type_name, imp, n_threads or default_threads(), name)


def dequantize(data: bytes, type_name: str, shape: tuple[int, int], *, name: str = "tensor") -> np.ndarray:
    """Inverse of :func:`quantize` through GGML's ``to_float``; returns float32 ``shape``."""
    if len(shape) == 1:
        return native_module().dequantize(bytes(data), type_name, 1, int(shape[0]), name).reshape(shape)
    rows, cols = int(shape[0]), int(np.prod(shape[1:]))
    return native_module().dequantize(bytes(data), type_name, rows, cols, name).reshape(shape)


def has_cuda() -> bool:
    """Whether this build includes the CUDA backend."""
    return bool(native_module().has_cuda())


def Backend(n_threads: int | None = None, device: str = "cpu", repack: bool = True) -> Any:  # noqa: N802
    """Compute backend: ``device`` "cpu", "cuda" or "cuda:N"; ``n_threads`` CPU threads.

    ``repack`` (CPU only): weights the CPU backend has interleaved GEMM kernels for (Q4_0, Q4_K, IQ4_NL on
    AVX2; Q2_K on AVX-512; more on ARM) are converted at load into its repacked layout, which speeds up the
    batched matmuls (vision, prefix) at the cost of a copy of those weights in RAM.  ``False`` computes
    straight from the memory-mapped file.
    """
    return native_module().Backend(n_threads or default_threads(), device, repack)


def GgufModel(path: str | os.PathLike[str], backend: Any | None = None) -> Any:  # noqa: N802
    """Maps a GGUF file; with a backend its tensors are placed for compute (zero copy on CPU).

    Raises GgufError naming the file (and tensor) for a missing, corrupt or truncated file.
    """
    return native_module().GgufModel(os.fspath(path), backend)


def mul_mat(model: Any, backend: Any, name: str, x: np.ndarray) -> np.ndarray:
    """``x [batch, cols] @ W.T`` with W the GGUF tensor ``name``, computed by GGML on ``backend``."""
    return native_module().mul_mat(model, backend, name, np.ascontiguousarray(x, dtype=np.float32))
