"""SentencePiece tokenizer wrapper (no torch).

The real PaliGemma tokenizer (``paligemma_tokenizer.model``, Gemma 256k + <loc>/<seg>) is a gated
download and is never fetched here: the user supplies the file.  The small presets use our own model in
``actquant_core/assets/tokenizers/`` (see ``build_small_tokenizer.py``).
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece

SMALL_TOKENIZER_FILE = Path(__file__).resolve().parents[2] / "assets" / "tokenizers" / "robot_small.model"


class TokenizerNotFoundError(FileNotFoundError):
    """The SentencePiece model file is missing."""


class SentencePieceTokenizer:
    """A SentencePiece model loaded from a file or from serialized bytes (e.g. out of a GGUF).

    Attributes:
        model_bytes: the serialized model proto (what goes into the GGUF).
    """

    def __init__(self, model_bytes: bytes, source: str = "<bytes>") -> None:
        if not model_bytes:
            raise ValueError(f"empty SentencePiece model ({source})")
        self.model_bytes = bytes(model_bytes)
        self.source = source
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_bytes)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError depending on version
            raise ValueError(f"not a valid SentencePiece model: {source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path | None) -> SentencePieceTokenizer:
        """Load a ``.model`` file.  A missing path raises ``TokenizerNotFoundError`` explaining that the
        PaliGemma tokenizer must be supplied by the user."""
        if path is None or not Path(path).is_file():
            raise TokenizerNotFoundError(
                f"SentencePiece tokenizer model not found: {path!r}. The real pi0.5 checkpoints need the "
                "PaliGemma tokenizer (paligemma_tokenizer.model, a gated download that is never fetched "
                "automatically); pass its path explicitly. Small presets use "
                f"{SMALL_TOKENIZER_FILE}."
            )
        return cls(Path(path).read_bytes(), source=str(path))

    @classmethod
    def small(cls) -> SentencePieceTokenizer:
        """Our own small robot-instruction tokenizer (vocab ~1000) for the tiny/small presets."""
        return cls.from_file(SMALL_TOKENIZER_FILE)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self._sp.EncodeAsIds(text))
        if add_bos:
            if self.bos_id < 0:
                raise ValueError(f"tokenizer {self.source} has no BOS piece")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id < 0:
                raise ValueError(f"tokenizer {self.source} has no EOS piece")
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])
