"""OpenVLA-OFT configuration: every dimension explicit, presets, JSON round trip.

No torch here: the native runtime reads the config back from the GGUF JSON.

Presets (``get_preset(name)``):
- ``openvla-oft``: the real LIBERO model (DINOv2 ViT-L/14 reg4 + SigLIP So400m/14, fused-GELU projector,
  Llama-2 7B, L1 MLP-ResNet head, chunk 8 x 7, proprio 8, two images).  ``openvla-oft-aloha``: the
  ALOHA variant (chunk 25 x 14, proprio 14, three images, FiLM).
- ``openvla-oft-tiny``: every structural feature (registers, LayerScale, optional FiLM, two ViTs, MHA
  Llama, bidirectional attention, padding), tiny sizes; for unit and parity tests.
- ``openvla-oft-small``: ~20 M parameters; every large matrix has a row length (input dim) that is a
  multiple of 256 so GGML K-quants apply (the SigLIP-like branch included); vocab 1024 matches our own
  SentencePiece model (``actquant_core/assets/tokenizers``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from actquant_core.constants import (
    OFT_ACTION_BINS,
    OFT_IMAGE_SLOTS,
    OFT_LLAMA_EMPTY_TOKEN,
    OFT_LLAMA_PAD_TOKEN,
    OFT_LLAMA_PLACEHOLDER_TOKEN,
    OFT_LLAMA_STOP_TOKEN,
    OFT_LLAMA_TOKENIZER_VOCAB,
)

GELU_MODES = ("erf", "tanh")


@dataclass(frozen=True)
class OftConfig:
    """All dimensions of an OpenVLA-OFT policy.

    Vision (both backbones see the same image_size / patch_size):
        image_size, patch_size: square input side and patch side (224, 14 -> 256 patches per image).
        dino_width / dino_depth / dino_heads / dino_mlp: DINOv2 ViT (1024 / 24 / 16 / 4096).  ``depth``
            is the checkpoint's block count; features come from block depth-2 (0-based), so the model
            holds depth-1 blocks.
        dino_registers: register tokens after the cls token (4).
        siglip_width / siglip_depth / siglip_heads / siglip_mlp: SigLIP ViT (1152 / 27 / 16 / 4304).
        vit_ln_eps: LayerNorm epsilon of both ViTs (timm: 1e-6).
        siglip_gelu: GELU of the SigLIP MLP: "erf" (timm 0.9 ``nn.GELU``, what OFT ran) or "tanh".
        num_images: images per observation (2: third-person + wrist), 6 channels each.
        use_film: FiLM of every ViT block by the mean language embedding (OFT+ / ALOHA).
    Projector: fc1 (dino+siglip -> projector_hidden) GELU fc2 (-> lm_width) GELU fc3 (lm_width -> lm_width).
    Llama decoder:
        lm_width / lm_depth / num_heads / num_kv_heads / lm_mlp: 4096 / 32 / 32 / 32 (MHA) / 11008.
        vocab_size: embedding rows (32064 = 32000 + pad, padded to a multiple of 64).
        rms_eps / rope_theta: 1e-5 (take it from config.json) / 10000.
    Policy:
        action_dim / chunk: actions per step and steps per chunk (7 / 8; ALOHA 14 / 25).
        proprio_dim: proprio vector size (8; ALOHA 14); use_proprio adds the proprio token.
        head_hidden / head_blocks: MLP-ResNet width and residual block count (4096 / 2).
        head_ln_eps: LayerNorm epsilon of the head (torch default 1e-5).
    Tokens:
        stop_token_id, placeholder_token_id, pad_token_id: "</s>" (2), action placeholders (1), pad (32000).
        empty_token_id: "▁" appended after "Out:" when missing (29871); -1 disables.
        tokenizer_vocab / action_bins: discrete action tokens (NLL term): bin b -> tokenizer_vocab - b.
        image_slots: observation image names in model order.
    """

    image_size: int = 224
    patch_size: int = 14
    dino_width: int = 1024
    dino_depth: int = 24
    dino_heads: int = 16
    dino_mlp: int = 4096
    dino_registers: int = 4
    siglip_width: int = 1152
    siglip_depth: int = 27
    siglip_heads: int = 16
    siglip_mlp: int = 4304
    vit_ln_eps: float = 1e-6
    siglip_gelu: str = "erf"
    num_images: int = 2
    use_film: bool = False
    projector_hidden: int = 8704
    lm_width: int = 4096
    lm_depth: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    lm_mlp: int = 11008
    vocab_size: int = 32064
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    action_dim: int = 7
    chunk: int = 8
    proprio_dim: int = 8
    use_proprio: bool = True
    head_hidden: int = 4096
    head_blocks: int = 2
    head_ln_eps: float = 1e-5
    stop_token_id: int = OFT_LLAMA_STOP_TOKEN
    placeholder_token_id: int = OFT_LLAMA_PLACEHOLDER_TOKEN
    pad_token_id: int = OFT_LLAMA_PAD_TOKEN
    empty_token_id: int = OFT_LLAMA_EMPTY_TOKEN
    tokenizer_vocab: int = OFT_LLAMA_TOKENIZER_VOCAB
    action_bins: int = OFT_ACTION_BINS
    image_slots: tuple[str, ...] = OFT_IMAGE_SLOTS

    def __post_init__(self) -> None:
        positive = (
            "image_size patch_size dino_width dino_depth dino_heads dino_mlp siglip_width siglip_depth siglip_heads "
            "siglip_mlp num_images projector_hidden lm_width lm_depth num_heads num_kv_heads lm_mlp vocab_size "
            "action_dim chunk proprio_dim head_hidden tokenizer_vocab action_bins"
        ).split()
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"OftConfig.{name} must be a positive int, got {value!r}")
        for name in ("dino_registers", "head_blocks", "stop_token_id", "placeholder_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"OftConfig.{name} must be a non-negative int, got {value!r}")
        for name in ("vit_ln_eps", "rms_eps", "rope_theta", "head_ln_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"OftConfig.{name} must be a positive number, got {value!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"OftConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        for w, h, tag in ((self.dino_width, self.dino_heads, "dino"), (self.siglip_width, self.siglip_heads, "siglip")):
            if w % h != 0:
                raise ValueError(f"OftConfig.{tag}_width ({w}) must be divisible by {tag}_heads ({h})")
        for name in ("dino_depth", "siglip_depth"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"OftConfig.{name} must be >= 2 (features come from the second-to-last block), got {getattr(self, name)}"
                )
        if self.lm_width % self.num_heads != 0:
            raise ValueError(f"OftConfig.lm_width ({self.lm_width}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"OftConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"OftConfig head_dim ({self.head_dim}) must be even for RoPE")
        for name in ("stop_token_id", "placeholder_token_id", "pad_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(f"OftConfig.{name} ({getattr(self, name)}) must be < vocab_size ({self.vocab_size})")
        if not (self.empty_token_id == -1 or 0 <= self.empty_token_id < self.vocab_size):
            raise ValueError(f"OftConfig.empty_token_id must be -1 or in [0, vocab_size), got {self.empty_token_id}")
        if self.siglip_gelu not in GELU_MODES:
            raise ValueError(f"OftConfig.siglip_gelu must be one of {GELU_MODES}, got {self.siglip_gelu!r}")
        for name in ("use_film", "use_proprio"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"OftConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.image_slots, tuple) or len(self.image_slots) != self.num_images:
            raise ValueError(
                f"OftConfig.image_slots must be a tuple of num_images={self.num_images} names, got {self.image_slots!r}"
            )
        if len(set(self.image_slots)) != len(self.image_slots):
            raise ValueError(f"OftConfig.image_slots has duplicates: {self.image_slots!r}")
        if self.action_bins > self.tokenizer_vocab:
            raise ValueError(
                f"OftConfig.action_bins ({self.action_bins}) must be <= tokenizer_vocab ({self.tokenizer_vocab})"
            )

    # --- derived ---------------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        """Patch tokens per image and backbone: (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_dim(self) -> int:
        """Channel-concatenated feature width: dino_width + siglip_width (2176)."""
        return self.dino_width + self.siglip_width

    @property
    def dino_blocks_used(self) -> int:
        """Blocks that feed the features: the second-to-last block's output is taken."""
        return self.dino_depth - 1

    @property
    def siglip_blocks_used(self) -> int:
        return self.siglip_depth - 1

    @property
    def head_dim(self) -> int:
        return self.lm_width // self.num_heads

    @property
    def num_action_tokens(self) -> int:
        """Action placeholder slots: chunk * action_dim (56)."""
        return self.chunk * self.action_dim

    @property
    def num_vision_tokens(self) -> int:
        """Projected image tokens plus the proprio token."""
        return self.num_images * self.num_patches + (1 if self.use_proprio else 0)

    # --- serialisation -----------------------------------------------------------------------------
    @property
    def camera_slots(self) -> tuple[str, ...]:
        """``image_slots`` under the name the pi05 config uses (runtimes and nodes read either family's)."""
        return self.image_slots

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_slots"] = list(self.image_slots)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> OftConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"OftConfig: unknown fields {unknown}")
        d = dict(d)
        if "image_slots" in d:
            d["image_slots"] = tuple(d["image_slots"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> OftConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> OftConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# Our small SentencePiece model (assets/tokenizers/robot_small.model): bos 2, eos 1, pad 0, "▁" 972.
_SMALL_TOKENS = dict(stop_token_id=1, placeholder_token_id=3, pad_token_id=0, empty_token_id=972, tokenizer_vocab=1024)


def _preset_real() -> OftConfig:
    return OftConfig()


def _preset_aloha() -> OftConfig:
    return OftConfig(
        action_dim=14, chunk=25, proprio_dim=14, num_images=3, use_film=True,
        image_slots=("cam_high", "cam_left_wrist", "cam_right_wrist"),
    )


def _preset_tiny() -> OftConfig:
    return OftConfig(
        image_size=32, patch_size=8,
        dino_width=32, dino_depth=3, dino_heads=2, dino_mlp=64, dino_registers=4,
        siglip_width=48, siglip_depth=3, siglip_heads=2, siglip_mlp=80,
        projector_hidden=96,
        lm_width=64, lm_depth=2, num_heads=4, num_kv_heads=4, lm_mlp=96, vocab_size=1024,
        action_dim=7, chunk=3, proprio_dim=8, head_hidden=48, head_blocks=2,
        action_bins=64, **_SMALL_TOKENS,
    )


def _preset_small() -> OftConfig:
    return OftConfig(
        image_size=224, patch_size=14,
        dino_width=256, dino_depth=4, dino_heads=4, dino_mlp=1024, dino_registers=4,
        siglip_width=256, siglip_depth=4, siglip_heads=4, siglip_mlp=1024,
        projector_hidden=1024,
        lm_width=512, lm_depth=4, num_heads=4, num_kv_heads=4, lm_mlp=1024, vocab_size=1024,
        action_dim=7, chunk=8, proprio_dim=8, head_hidden=512, head_blocks=2,
        action_bins=256, **_SMALL_TOKENS,
    )


_PRESETS = {
    "openvla-oft": _preset_real,
    "openvla-oft-aloha": _preset_aloha,
    "openvla-oft-tiny": _preset_tiny,
    "openvla-oft-small": _preset_small,
}
PRESET_NAMES = tuple(_PRESETS)


def get_preset(name: str) -> OftConfig:
    """Return the named preset config (see the module docstring)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown openvla_oft preset {name!r}; known: {list(_PRESETS)}") from None
