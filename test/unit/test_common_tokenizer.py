"""policies.common.tokenizer: our small SentencePiece model, the wrapper, and the missing-file error."""

from __future__ import annotations

import pytest

from actquant_core.policies.common.tokenizer import (
    SMALL_TOKENIZER_FILE,
    SentencePieceTokenizer,
    TokenizerNotFoundError,
)
from actquant_core.policies.pi05.config import get_preset


def test_small_tokenizer_roundtrip_and_size():
    tok = SentencePieceTokenizer.small()
    assert 500 <= tok.vocab_size <= get_preset("pi05-small").vocab_size
    assert tok.vocab_size <= get_preset("pi05-tiny").vocab_size
    for text in ["put the red cube in the bowl", "open the drawer\n", "Task: stack the blocks, State: 0 17 255;\nAction: "]:
        ids = tok.encode(text, add_bos=True)
        assert ids[0] == tok.bos_id
        assert tok.decode(ids) == text
    # in-domain instructions tokenise compactly (whole words), unseen characters still encode (byte fallback)
    assert len(tok.encode("put the red cube in the bowl")) <= 10
    assert tok.decode(tok.encode("Zebra ünïcode")) == "Zebra ünïcode"
    assert tok.encode("\n") == tok.encode("\n")[:1]  # newline is one piece


def test_bytes_roundtrip():
    tok = SentencePieceTokenizer.small()
    tok2 = SentencePieceTokenizer(tok.model_bytes)
    assert tok2.encode("close the microwave") == tok.encode("close the microwave")


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="PaliGemma tokenizer"):
        SentencePieceTokenizer.from_file(tmp_path / "paligemma_tokenizer.model")
    with pytest.raises(TokenizerNotFoundError):
        SentencePieceTokenizer.from_file(None)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer.from_file(bad)


def test_build_script_is_deterministic(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bst", SMALL_TOKENIZER_FILE.parent / "build_small_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.build(tmp_path, vocab_size=1024, seed=7, n_lines=20000)
    assert out.read_bytes() == SMALL_TOKENIZER_FILE.read_bytes(), (
        "committed robot_small.model differs from a rebuild; regenerate with "
        "python actquant_core/assets/tokenizers/build_small_tokenizer.py"
    )
