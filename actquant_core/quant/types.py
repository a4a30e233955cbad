"""GGML quantisation types as the allocator sees them: bits per weight, block sizes, menu, eligibility.

One table for the whole quantizer.  Block geometry (weights per block, bytes per block) comes from
gguf-py's ``gguf.constants.GGML_QUANT_SIZES`` -- the same numbers GGML asserts beside its block structs
in ``ggml-common.h`` -- so "actual" bits per weight are ``8 * bytes_per_block / block_size``.  The
"nominal" bits per weight are the ones quoted in the ActQuant paper (Akbari et al., arXiv 2605.24011,
Table of candidate types); for every type of the default menu the two agree, and both are reported.

GGML stores a 2-D weight of torch shape ``[rows, cols]`` as ``ne = (cols, rows)``; blocks run along a
row, so the row length that must be a multiple of the block size is ``cols = shape[-1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ..gguf import bpw as _bpw

__all__ = [
    "NOMINAL_BPW",
    "DEFAULT_MENU",
    "FALLBACK_MENU",
    "HIGH_PRECISION_TYPES",
    "STOCK_MIX_BPW",
    "type_bpw",
    "nominal_bpw",
    "type_block",
    "tensor_nbytes",
    "row_eligible",
    "ineligibility_reason",
    "sort_menu",
    "validate_type_name",
]

#: Nominal bits per weight of the ActQuant candidate types (paper table), plus the high-precision
#: and 32-block fallback types the plan may carry.
NOMINAL_BPW: dict[str, float] = {
    "IQ1_S": 1.5625,
    "IQ1_M": 1.75,
    "IQ2_XXS": 2.0625,
    "IQ2_XS": 2.3125,
    "IQ2_S": 2.5625,
    "Q2_K": 2.625,
    "IQ3_XXS": 3.0625,
    "IQ3_S": 3.4375,
    "Q3_K": 3.4375,
    "IQ4_XS": 4.25,
    "Q4_K": 4.5,
    "Q5_K": 5.5,
    "Q6_K": 6.5625,
    "Q8_0": 8.5,
    # not in the paper's menu: 32-weight-block fallbacks and unquantised types
    "Q4_0": 4.5,
    "Q5_0": 5.5,
    "IQ4_NL": 4.5,
    "F16": 16.0,
    "BF16": 16.0,
    "F32": 32.0,
}

#: The paper's candidate menu, cheapest first.
DEFAULT_MENU: tuple[str, ...] = (
    "IQ1_S",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "Q2_K",
    "IQ3_XXS",
    "IQ3_S",
    "Q3_K",
    "IQ4_XS",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_0",
)

#: The paper's menu without the 1-bit codebooks (IQ1_S / IQ1_M): IQ2_XXS is the floor.  ``actquant quantize``'s
#: default for method actquant: with its other defaults (score floor, stage 2 best) it equals the paper's menu
#: at 4 / 3.5 / 3 bpw on both small presets and is better below (action L1: π₀.₅ 0.0063 / 0.0070 vs 0.0073 /
#: 0.0093 at 2.5 / 2.25, OFT 0.0243 vs 0.0280 at 2.25; bench/results/quant_table_*_dart_best_noiq1.json).
IQ2_FLOOR_MENU: tuple[str, ...] = tuple(t for t in DEFAULT_MENU if not t.startswith("IQ1"))

#: Stage 2 quantizers of method actquant (``PipelineConfig.stage2``).
STAGE2_MODES: tuple[str, ...] = ("fisher", "plain", "best")
#: The product defaults of ``actquant quantize`` and the quantizer node (``PipelineConfig`` keeps the paper's:
#: score floor 0, stage 2 "fisher", ``DEFAULT_MENU``); here, free of torch, so that parsing options needs none.
DEFAULT_SCORE_FLOOR = 0.5


def default_menu(method: str) -> tuple[str, ...]:
    """The type menu when none is asked for: ``IQ2_FLOOR_MENU`` for method actquant (with the CLI's other
    defaults the 1-bit codebooks made no small-preset row better and three worse), the paper's ``DEFAULT_MENU``
    for the baselines that allocate."""
    return IQ2_FLOOR_MENU if method == "actquant" else DEFAULT_MENU


def default_stage2(method: str, compensate: str = "none") -> str:
    """Stage 2 when none is asked for: "best" for method actquant without compensation (2-5x lower action
    error than the paper's "fisher" on both small presets, 10 min at real size on one H100), "fisher" (which
    leaves every other method's own quantizer alone) otherwise."""
    return "best" if method == "actquant" and compensate == "none" else "fisher"


#: Rows a tall tensor is priced on by the allocator's noise "output" when it is the default (``default_noise``):
#: a seeded sample shared by every type (see ``pipeline.OutputNoise``).  The error is a sum over rows that each
#: quantizer treats independently, so the sample size sets the estimate's spread, not the tensor's size; on the
#: small presets 128 and 256 rows both beat every baseline at every bpw (bench/results/quant_table_*_output_rows.json).
DEFAULT_OUTPUT_ROWS = 128


def default_noise(method: str, stage2: str) -> str:
    """The allocator's noise model when none is asked for: "output" (each type priced at the layer-output error
    of stage 2's own best-of quantization, on ``DEFAULT_OUTPUT_ROWS`` sampled rows) for method actquant with
    stage 2 "best", the paper's "bits" otherwise."""
    return "output" if method == "actquant" and stage2 == "best" else "bits"


def product_defaults(method: str, compensate: str = "none", *, stage2: str | None = None, noise: str | None = None,
                     menu=None, output_rows: int | None = None) -> dict:
    """What ``actquant quantize`` runs with for the settings not given (None / empty): ``stage2``
    (``default_stage2``), ``noise`` (``default_noise`` of that stage 2), ``menu`` (``default_menu``) and
    ``output_rows`` (``DEFAULT_OUTPUT_ROWS``; 0 = every row, returned as None).  One resolution for the CLI,
    the quantizer node and the benches, so they cannot drift apart; the keys are ``PipelineConfig`` fields."""
    stage2 = stage2 or default_stage2(method, compensate)
    return {"stage2": stage2, "noise": noise or default_noise(method, stage2),
            "menu": tuple(menu) if menu else default_menu(method),
            "output_rows": (DEFAULT_OUTPUT_ROWS if output_rows is None else output_rows) or None}


#: Types with 32-weight blocks that a tensor whose row length is not a multiple of 256 falls back to
#: (llama.cpp's ``llama-quant.cpp`` does the same kind of substitution and counts it).  Only Q8_0 by
#: default because the native module quantizes Q8_0 but not (yet) Q4_0 / Q5_0 / IQ4_NL; pass
#: ``AllocConfig(fallback_menu=("Q4_0", "Q5_0", "Q8_0"))`` once it does.
FALLBACK_MENU: tuple[str, ...] = ("Q8_0",)

#: Budget convention of the paper: the average bpw of llama.cpp's stock mix for a base type, so that
#: ActQuant spends the same bits as the stock quantisation (approximate, from the method reference).
STOCK_MIX_BPW: dict[str, float] = {"Q2_K": 2.94, "IQ2_XS": 2.35}

#: Unquantised types (block size 1): always eligible.
HIGH_PRECISION_TYPES: tuple[str, ...] = ("F32", "F16", "BF16")


def validate_type_name(type_name: str) -> GGMLQuantizationType:
    """Return the gguf enum of ``type_name`` or raise ``ValueError`` naming the bad name."""
    if not isinstance(type_name, str):
        raise TypeError(f"GGML type name must be a str, got {type(type_name).__name__}: {type_name!r}")
    try:
        return GGMLQuantizationType[type_name]
    except KeyError:
        raise ValueError(
            f"unknown GGML type {type_name!r}; known types: {sorted(t.name for t in GGML_QUANT_SIZES)}"
        ) from None


def type_block(type_name: str) -> tuple[int, int]:
    """``(weights per block, bytes per block)`` of a GGML type, from gguf-py's table."""
    validate_type_name(type_name)
    return _bpw.block_layout(type_name)


def type_bpw(type_name: str) -> float:
    """Actual bits per weight of a GGML type: ``8 * bytes_per_block / weights_per_block``.

    Delegates to the project's single accounting function :func:`actquant_core.gguf.bpw.type_bpw`.
    """
    validate_type_name(type_name)
    return _bpw.type_bpw(type_name)


def nominal_bpw(type_name: str) -> float:
    """Nominal bits per weight (paper table); falls back to the actual bpw for types not listed."""
    if type_name in NOMINAL_BPW:
        return NOMINAL_BPW[type_name]
    return type_bpw(type_name)


def tensor_nbytes(type_name: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of torch shape ``shape`` stored as ``type_name`` (rows must be eligible)."""
    block_size, block_bytes = type_block(type_name)
    n = math.prod(int(s) for s in shape)
    if not row_eligible(type_name, int(shape[-1]) if len(shape) else 1):
        raise ValueError(
            f"{type_name} needs a row length that is a multiple of {block_size}; shape {tuple(shape)} "
            f"has row length {shape[-1] if len(shape) else 1}"
        )
    return n // block_size * block_bytes


def row_eligible(type_name: str, row_len: int) -> bool:
    """True when rows of ``row_len`` weights fit whole blocks of ``type_name``."""
    block_size, _ = type_block(type_name)
    return row_len > 0 and row_len % block_size == 0


def ineligibility_reason(type_name: str, row_len: int) -> str | None:
    """``None`` when eligible, else a human-readable reason."""
    if row_eligible(type_name, row_len):
        return None
    block_size, _ = type_block(type_name)
    return f"row length {row_len} is not a multiple of {type_name}'s block size {block_size}"


def sort_menu(menu: Sequence[str]) -> tuple[str, ...]:
    """Validate a menu and order it by actual bpw (ties broken by name for determinism).

    Raises ``ValueError`` for an empty menu, an unknown type or a duplicate.
    """
    if len(menu) == 0:
        raise ValueError("type menu is empty")
    if len(set(menu)) != len(menu):
        raise ValueError(f"type menu has duplicates: {list(menu)}")
    for t in menu:
        validate_type_name(t)
    return tuple(sorted(menu, key=lambda t: (type_bpw(t), t)))
