"""Read (possibly sharded, possibly bf16) safetensors files into numpy without torch.

The safetensors format: 8-byte little-endian header length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw
little-endian data; offsets are relative to the end of the header.  numpy has no bfloat16, so BF16
tensors are widened to float32 exactly (the 16 bits are the high half of an fp32).
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """Return (header dict without ``__metadata__``, data start offset) of one safetensors file."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header length {n}")
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(
    path: str | Path, *, to_float32: bool = True, names: set[str] | None = None
) -> dict[str, np.ndarray]:
    """Read one safetensors file into a dict of numpy arrays.

    Args:
        path: the ``.safetensors`` file.
        to_float32: widen every floating tensor (F16, BF16, F64) to float32; integer tensors keep
            their dtype.  With False, BF16 tensors come back as their raw uint16 bits.
        names: read only these tensors (default: all).
    Returns:
        name -> array (a copy, independent of the file).
    """
    path = Path(path)
    header, start = read_safetensors_header(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            buf = mm[start + begin : start + end]
            if dtype == "BF16":
                bits = np.frombuffer(buf, dtype="<u2").reshape(shape)
                arr = (bits.astype(np.uint32) << 16).view(np.float32) if to_float32 else bits.copy()
            elif dtype in _NUMPY_DTYPES:
                arr = np.frombuffer(buf, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
                arr = arr.astype(np.float32) if (to_float32 and dtype in _FLOAT_DTYPES) else arr.copy()
            else:
                raise ValueError(f"{path}: tensor {name!r} has unsupported safetensors dtype {dtype!r}")
            out[name] = np.ascontiguousarray(arr)
    return out


def find_safetensors_files(path: str | Path) -> list[Path]:
    """Resolve a checkpoint path to its safetensors file(s).

    ``path`` may be a ``.safetensors`` file, a ``model.safetensors.index.json``, or a directory that
    holds either ``model.safetensors.index.json`` (sharded) or ``model.safetensors``.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    index = path if path.is_file() and path.name.endswith(".json") else path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        resolved = [index.parent / f for f in files]
        missing = [str(p) for p in resolved if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{index}: shard files listed in the index are missing: {missing}")
        return resolved
    if path.is_dir():
        single = path / SINGLE_FILE
        if single.is_file():
            return [single]
        found = sorted(path.glob("*.safetensors"))
        weights = [p for p in found if "processor" not in p.name]
        if len(weights) == 1:
            return weights
        raise FileNotFoundError(
            f"{path}: no {SINGLE_FILE} or {INDEX_FILE}; safetensors files present: {[p.name for p in found]}"
        )
    raise FileNotFoundError(f"checkpoint path {path} does not exist or is not a safetensors file/directory")


def read_checkpoint_tensors(path: str | Path, *, to_float32: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a single-file or sharded safetensors checkpoint (see ``find_safetensors_files``)."""
    out: dict[str, np.ndarray] = {}
    for file in find_safetensors_files(path):
        part = read_safetensors(file, to_float32=to_float32)
        dup = set(part) & set(out)
        if dup:
            raise ValueError(f"{file}: tensors also present in another shard: {sorted(dup)[:5]}")
        out.update(part)
        log.debug("read %d tensors from %s", len(part), file)
    return out
