"""What every policy runtime reads from a GGUF header before placing tensors (no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from actquant_core import constants as C
from actquant_core import native
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer


@dataclass
class PolicyHeader:
    """config: the family config object; norm_stats: parsed stats or None; tokenizer: SentencePiece model;
    plan_summary: quant plan summary or None; file_size: bytes."""

    config: Any
    norm_stats: Any | None
    tokenizer: SentencePieceTokenizer
    plan_summary: dict[str, Any] | None
    file_size: int


def read_policy_header(path: str, family: str, config_cls: Any, norm_stats_cls: Any,
                       tokenizer_path: str | os.PathLike[str] | None, tokenizer_name: str) -> PolicyHeader:
    """Validates the file (header only, no tensor placement) and its family; parses config, norm stats,
    tokenizer (``tokenizer_path`` overrides the embedded one; ``tokenizer_name`` names the user-supplied model
    in the error when neither exists) and plan summary."""
    meta = native.GgufModel(path)
    got = meta.metadata(C.KEY_FAMILY)
    if got != family:
        raise ValueError(f"GGUF {path!r} holds a {got!r} policy, not {family!r}")
    keys = set(meta.metadata_keys())
    if tokenizer_path is not None:
        tok = SentencePieceTokenizer.from_file(tokenizer_path)
    elif C.KEY_TOKENIZER_MODEL in keys:
        tok = SentencePieceTokenizer(meta.metadata(C.KEY_TOKENIZER_MODEL), source=f"{path}:tokenizer")
    else:
        raise ValueError(
            f"GGUF {path!r} has no embedded tokenizer ({C.KEY_TOKENIZER_MODEL}); pass tokenizer_path= "
            f"(the {tokenizer_name} SentencePiece model is user-supplied)"
        )
    return PolicyHeader(
        config=config_cls.from_dict(json.loads(meta.metadata(C.KEY_CONFIG_JSON))),
        norm_stats=(norm_stats_cls.from_json(meta.metadata(C.KEY_NORM_STATS_JSON))
                    if C.KEY_NORM_STATS_JSON in keys else None),
        tokenizer=tok,
        plan_summary=(json.loads(meta.metadata(C.KEY_QUANT_PLAN_SUMMARY))
                      if C.KEY_QUANT_PLAN_SUMMARY in keys else None),
        file_size=meta.file_size,
    )
