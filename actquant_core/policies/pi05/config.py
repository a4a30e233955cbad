"""π₀.₅ configuration: every dimension explicit, presets, JSON round trip.

This module imports no torch: the native runtime reads the config back from the GGUF JSON.

Presets (``get_preset(name)``):
- ``pi05``: the real model (SigLIP So400m/14, Gemma 2B, Gemma 300m expert).
- ``pi05-tiny``: every structural feature (MQA, adaRMS, three camera slots, padding), tiny sizes,
  a forward runs in milliseconds on a CPU.  For unit and parity tests.
- ``pi05-small``: ~16.4 M parameters (31 MB in bf16); every large matrix has a row length (input dim) that is a
  multiple of 256 so GGML K-quants apply.  The size we train in simulation; vocab 1024 matches our
  own SentencePiece model (``actquant_core/assets/tokenizers``).  Unlike openpi's pi05_libero it
  puts the state in the prompt (``discrete_state_input=True``, ``state_dim=8``: UR3 6 joints +
  gripper, padded to 8), because a small model trained from scratch needs proprioception; a full
  prompt is ~40 of the 48 tokens.  Images are 112 px (8x8 patches of 14 px per camera): the simulator's
  224 px frames are area-downsampled 2x (exactly by the runtime's OpenCV resize, and by
  ``train.common.area_downsample`` in training), which makes training 4x cheaper per frame and halves the
  chunk latency on a CPU.  Override with ``get_preset("pi05-small").replace(...)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from actquant_core.constants import PI05_CAMERA_SLOTS, PI05_MASK_VALUE

EMBED_SCALE_MODES = ("sqrt_f32", "sqrt_bf16")


def _bf16_round(x: float) -> float:
    """Round a float to the nearest bfloat16 value (round-to-nearest-even), returned as float."""
    u = np.array([x], dtype=np.float32).view(np.uint32)[0]
    u = int(u)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return float(np.array([rounded], dtype=np.uint32).view(np.float32)[0])


@dataclass(frozen=True)
class Pi05Config:
    """All dimensions of a π₀.₅ policy.

    Vision (SigLIP):
        image_size: input image side in pixels (square), e.g. 224.
        patch_size: conv patch side, e.g. 14 -> (224/14)^2 = 256 tokens per camera.
        vision_width: hidden width (1152).
        vision_depth: number of encoder blocks (27).
        vision_mlp: MLP hidden size (4304).
        vision_heads: attention heads (16); head_dim = width / heads.
        vision_ln_eps: LayerNorm epsilon (1e-6).
    Language model (Gemma):
        lm_width: hidden width (2048).
        lm_depth: number of layers (18); shared with the expert.
        num_heads: query heads (8), shared with the expert.
        num_kv_heads: key/value heads (1 = MQA), shared with the expert.
        head_dim: per-head size (256), shared with the expert.
        lm_mlp: GeGLU hidden size (16384).
        vocab_size: token embedding rows (257152).
        rms_eps: RMSNorm epsilon (1e-6), LM and expert.
        rope_theta: RoPE max wavelength (10000).
        embed_scale_mode: how the sqrt(lm_width) embedding multiplier is computed: "sqrt_f32"
            (math.sqrt in fp32: openpi JAX/PyTorch) or "sqrt_bf16" (rounded to bfloat16 first:
            transformers 5 with bf16 weights).  ``embed_scale`` gives the number.
    Action expert (Gemma 300m with adaRMS):
        expert_width: hidden width (1024).
        expert_mlp: GeGLU hidden size (4096).
        expert_depth: must equal lm_depth (asserted; openpi shares it).
    Policy:
        action_dim: padded action size fed to / produced by the model (32).
        action_horizon: actions per chunk (50 default; 10 for LIBERO).
        max_token_len: padded prompt length in tokens (200 for pi0.5).
        num_steps: Euler steps of flow-matching sampling (10).
        state_dim: padded state size for the discretised-state prompt (32).
        camera_slots: camera slot names in model order.
        discrete_state_input: put the quantile-normalised, 256-bin discretised state in the prompt
            (lerobot and openpi ``pi05_base``: True; openpi ``pi05_libero``: False).
        time_min_period / time_max_period: sin-cos time embedding periods (4e-3, 4.0).
        delta_action_dims: the first k robot action dims are relative to the first k state dims (openpi's
            ``DeltaActions``): the model's chunk holds ``a_t - s`` for the observation's state ``s``, and the
            preprocessor adds ``s`` back.  0 (default, openpi checkpoints' own convention) = absolute.
    """

    # vision
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp: int = 4304
    vision_heads: int = 16
    vision_ln_eps: float = 1e-6
    # language model
    lm_width: int = 2048
    lm_depth: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    lm_mlp: int = 16384
    vocab_size: int = 257152
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    embed_scale_mode: str = "sqrt_f32"
    # expert
    expert_width: int = 1024
    expert_mlp: int = 4096
    expert_depth: int = 18
    # policy
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 200
    num_steps: int = 10
    state_dim: int = 32
    camera_slots: tuple[str, ...] = PI05_CAMERA_SLOTS
    discrete_state_input: bool = True
    delta_action_dims: int = 0
    time_min_period: float = 4e-3
    time_max_period: float = 4.0

    def __post_init__(self) -> None:
        positive = (
            "image_size patch_size vision_width vision_depth vision_mlp vision_heads lm_width lm_depth "
            "num_heads num_kv_heads head_dim lm_mlp vocab_size expert_width expert_mlp expert_depth "
            "action_dim action_horizon max_token_len num_steps state_dim"
        ).split()
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Pi05Config.{name} must be a positive int, got {value!r}")
        for name in ("vision_ln_eps", "rms_eps", "rope_theta", "time_min_period", "time_max_period"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Pi05Config.{name} must be a positive number, got {value!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"Pi05Config.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.vision_width % self.vision_heads != 0:
            raise ValueError(
                f"Pi05Config.vision_width ({self.vision_width}) must be divisible by vision_heads ({self.vision_heads})"
            )
        if (self.vision_width // self.vision_heads) % 2 != 0:
            raise ValueError(f"vision head_dim {self.vision_width // self.vision_heads} must be even")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"Pi05Config.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"Pi05Config.head_dim must be even for split-half RoPE, got {self.head_dim}")
        if self.expert_depth != self.lm_depth:
            raise ValueError(
                f"Pi05Config.expert_depth ({self.expert_depth}) must equal lm_depth ({self.lm_depth}): "
                "the expert and the LM attend jointly layer by layer"
            )
        if self.expert_width % 2 != 0:
            raise ValueError(f"Pi05Config.expert_width must be even (sin-cos time embedding), got {self.expert_width}")
        if self.embed_scale_mode not in EMBED_SCALE_MODES:
            raise ValueError(
                f"Pi05Config.embed_scale_mode must be one of {EMBED_SCALE_MODES}, got {self.embed_scale_mode!r}"
            )
        if not isinstance(self.camera_slots, tuple) or not self.camera_slots:
            raise ValueError(f"Pi05Config.camera_slots must be a non-empty tuple, got {self.camera_slots!r}")
        if len(set(self.camera_slots)) != len(self.camera_slots):
            raise ValueError(f"Pi05Config.camera_slots has duplicates: {self.camera_slots!r}")
        if not 0 <= self.delta_action_dims <= min(self.state_dim, self.action_dim):
            raise ValueError(f"Pi05Config.delta_action_dims must be in [0, min(state_dim, action_dim)], "
                             f"got {self.delta_action_dims}")
        if not isinstance(self.discrete_state_input, bool):
            raise ValueError(f"Pi05Config.discrete_state_input must be a bool, got {self.discrete_state_input!r}")

    # --- derived ---------------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        """Image tokens per camera: (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_head_dim(self) -> int:
        return self.vision_width // self.vision_heads

    @property
    def num_cameras(self) -> int:
        return len(self.camera_slots)

    @property
    def prefix_len(self) -> int:
        """Prefix length: image tokens of every camera slot, then max_token_len text tokens."""
        return self.num_cameras * self.num_patches + self.max_token_len

    @property
    def embed_scale(self) -> float:
        """The multiplier applied to token embeddings (see ``embed_scale_mode``)."""
        value = math.sqrt(self.lm_width)
        if self.embed_scale_mode == "sqrt_bf16":
            return _bf16_round(value)
        return float(np.float32(value))

    # --- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["camera_slots"] = list(self.camera_slots)
        return d

    def to_json(self) -> str:
        """JSON text of every field (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def native_hparams(self) -> dict:
        """Every field plus the derived numbers the native graph needs: ``embed_scale`` (the exact
        float multiplier), ``num_cameras``, ``num_patches``, ``prefix_len``, ``mask_value``."""
        d = self.to_dict()
        d.update(
            embed_scale=self.embed_scale,
            num_cameras=self.num_cameras,
            num_patches=self.num_patches,
            prefix_len=self.prefix_len,
            mask_value=PI05_MASK_VALUE,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Pi05Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Pi05Config: unknown fields {unknown}")
        d = dict(d)
        if "camera_slots" in d:
            d["camera_slots"] = tuple(d["camera_slots"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Pi05Config:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> Pi05Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _preset_pi05() -> Pi05Config:
    return Pi05Config()


def _preset_tiny() -> Pi05Config:
    return Pi05Config(
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_depth=2,
        vision_mlp=64,
        vision_heads=2,
        lm_width=64,
        lm_depth=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        lm_mlp=128,
        vocab_size=1024,
        expert_width=32,
        expert_mlp=64,
        expert_depth=2,
        action_dim=32,
        action_horizon=4,
        max_token_len=12,
        num_steps=10,
        discrete_state_input=False,
    )


def _preset_small() -> Pi05Config:
    return Pi05Config(
        image_size=112,
        patch_size=14,
        vision_width=256,
        vision_depth=4,
        vision_mlp=768,
        vision_heads=4,
        lm_width=512,
        lm_depth=4,
        num_heads=4,
        num_kv_heads=1,
        head_dim=128,
        lm_mlp=768,
        vocab_size=1024,
        expert_width=256,
        expert_mlp=768,
        expert_depth=4,
        action_dim=32,
        action_horizon=10,
        max_token_len=48,
        num_steps=10,
        state_dim=8,
        discrete_state_input=True,
    )


_PRESETS = {"pi05": _preset_pi05, "pi05-tiny": _preset_tiny, "pi05-small": _preset_small}
PRESET_NAMES = tuple(_PRESETS)


def get_preset(name: str) -> Pi05Config:
    """Return the named preset config (``pi05``, ``pi05-tiny``, ``pi05-small``)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown pi05 preset {name!r}; known: {list(_PRESETS)}") from None
