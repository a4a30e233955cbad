"""GGUF layer: writer (mixed GGML types, actquant.* metadata), typed reader, bpw accounting."""

from actquant_core.gguf.bpw import BpwSummary, bpw_summary, tensor_nbytes, type_bpw
from actquant_core.gguf.reader import PolicyFile, PolicyFileError, TensorInfo, read_policy_gguf
from actquant_core.gguf.writer import TensorEntry, WriteResult, write_policy_gguf

__all__ = [
    "BpwSummary",
    "bpw_summary",
    "tensor_nbytes",
    "type_bpw",
    "PolicyFile",
    "PolicyFileError",
    "TensorInfo",
    "read_policy_gguf",
    "TensorEntry",
    "WriteResult",
    "write_policy_gguf",
]
