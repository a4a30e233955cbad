"""OpenVLA-OFT preprocessing in numpy/OpenCV/SentencePiece — no torch.

One implementation shared by the torch reference (``torch.from_numpy`` on the outputs) and the native
runtime.  Steps (upstream ``experiments/robot``, ``prismatic`` processor, ``modeling_prismatic.py``):

1. images, per slot in ``config.image_slots`` order: optional 180° rotation (the LIBERO protocol),
   resize to ``image_size`` (upstream: ``tf.image.resize(..., "lanczos3", antialias=True)``; here OpenCV
   ``INTER_AREA`` when shrinking and ``INTER_LANCZOS4`` when enlarging — pixel values may differ from TF
   by a few levels, geometry is identical), then the 0.9-area centre crop resized back to
   ``image_size``, reproduced exactly as TF ``crop_and_resize`` (bilinear, corner-aligned box sampling,
   uint8 -> [0, 1] float -> back with ``x * 255.5`` truncated, as ``convert_image_dtype`` does).
   Each image becomes 6 channels: 3 DINO-normalised (ImageNet mean/std) then 3 SigLIP-normalised
   (mean 0.5 / std 0.5), of ``x / 255``; images are stacked along channels -> [6*I, S, S].
2. proprio: ``bounds_q99`` -> ``clip(where(mask, 2 (x - q01) / (q99 - q01 + 1e-8) - 1, x), -1, 1)``.
3. prompt: ``"In: What action should the robot take to {task.lower()}?\\nOut:"`` with BOS; the empty
   token (29871) appended when the ids do not end with it; then chunk*action_dim placeholder ids and the
   stop id; ``action_mask`` marks the placeholders.  A batch is right-padded with ``pad_token_id``.
4. actions out: ``where(mask, 0.5 (a + 1) (q99 - q01 + 1e-8) + q01, a)``; optional LIBERO gripper
   post-processing (``[0, 1] -> sign(2 g - 1)``, then inverted).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actquant_core.constants import (
    OFT_CENTER_CROP_AREA,
    OFT_DATASET_STATS_FILE,
    OFT_DINO_MEAN,
    OFT_DINO_STD,
    OFT_NORM_EPS,
    OFT_PROMPT_TEMPLATE,
    OFT_SIGLIP_MEAN,
    OFT_SIGLIP_STD,
    OFT_STATS_KEY_ACTION,
    OFT_STATS_KEY_PROPRIO,
)
from actquant_core.policies.common.image import area_downsample, integer_downscale
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.config import OftConfig

log = logging.getLogger(__name__)

GRIPPER_MODES = ("none", "libero")


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundsStats:
    """bounds_q99 statistics of one vector: q01, q99 float32 [d]; mask bool [d] (False = pass through)."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        q01 = np.asarray(self.q01, dtype=np.float32).reshape(-1)
        q99 = np.asarray(self.q99, dtype=np.float32).reshape(-1)
        mask = np.ones_like(q01, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool).reshape(-1)
        if not (q01.shape == q99.shape == mask.shape):
            raise ValueError(f"BoundsStats: q01 {q01.shape}, q99 {q99.shape}, mask {mask.shape} differ in length")
        if not (np.all(np.isfinite(q01)) and np.all(np.isfinite(q99))):
            raise ValueError("BoundsStats: q01/q99 have non-finite values")
        object.__setattr__(self, "q01", q01)
        object.__setattr__(self, "q99", q99)
        object.__setattr__(self, "mask", mask)

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    def to_dict(self) -> dict:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "mask": self.mask.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> BoundsStats:
        missing = [k for k in ("q01", "q99") if k not in d]
        if missing:
            raise ValueError(f"statistics lack {missing}; have {sorted(d)}")
        return cls(d["q01"], d["q99"], d.get("mask"))


@dataclass(frozen=True)
class OftNormStats:
    """Action and (optional) proprio statistics of one dataset (``unnorm_key``)."""

    action: BoundsStats
    proprio: BoundsStats | None = None

    def to_json(self) -> str:
        d = {OFT_STATS_KEY_ACTION: self.action.to_dict()}
        if self.proprio is not None:
            d[OFT_STATS_KEY_PROPRIO] = self.proprio.to_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> OftNormStats:
        d = json.loads(text)
        if OFT_STATS_KEY_ACTION not in d:
            raise ValueError(f"norm stats JSON lacks {OFT_STATS_KEY_ACTION!r}; has {sorted(d)}")
        prop = d.get(OFT_STATS_KEY_PROPRIO)
        return cls(BoundsStats.from_dict(d[OFT_STATS_KEY_ACTION]), BoundsStats.from_dict(prop) if prop else None)


def load_dataset_statistics(path: str | Path, unnorm_key: str | None = None) -> OftNormStats:
    """Read an OpenVLA ``dataset_statistics.json`` ({unnorm_key: {"action": ..., "proprio": ...}}) or a
    directory holding one.  ``unnorm_key`` may be omitted when the file holds exactly one dataset."""
    path = Path(path)
    if path.is_dir():
        path = path / OFT_DATASET_STATS_FILE
    d = json.loads(path.read_text())
    if OFT_STATS_KEY_ACTION in d:  # already one dataset's entry
        entry = d
    else:
        if unnorm_key is None:
            if len(d) != 1:
                raise ValueError(f"{path}: holds datasets {sorted(d)}; pass unnorm_key=")
            unnorm_key = next(iter(d))
        if unnorm_key not in d:
            raise ValueError(f"{path}: no dataset {unnorm_key!r}; has {sorted(d)}")
        entry = d[unnorm_key]
    prop = entry.get(OFT_STATS_KEY_PROPRIO)
    return OftNormStats(BoundsStats.from_dict(entry[OFT_STATS_KEY_ACTION]), BoundsStats.from_dict(prop) if prop else None)


def normalize_bounds(x: np.ndarray, stats: BoundsStats) -> np.ndarray:
    """bounds_q99 normalisation with mask, clipped to [-1, 1]: [..., d] -> [..., d] float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != stats.dim:
        raise ValueError(f"vector of length {x.shape[-1]} does not match its statistics ({stats.dim})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"cannot normalise a vector with NaN/inf entries: {x}")
    y = 2.0 * (x - stats.q01) / (stats.q99 - stats.q01 + np.float32(OFT_NORM_EPS)) - 1.0
    return np.clip(np.where(stats.mask, y, x), -1.0, 1.0).astype(np.float32)


def unnormalize_bounds(y: np.ndarray, stats: BoundsStats) -> np.ndarray:
    """Inverse of the bounds_q99 map where mask is set: ``0.5 (y + 1) (q99 - q01 + 1e-8) + q01``."""
    y = np.asarray(y, dtype=np.float32)
    if y.shape[-1] != stats.dim:
        raise ValueError(f"actions of length {y.shape[-1]} do not match their statistics ({stats.dim})")
    x = 0.5 * (y + 1.0) * (stats.q99 - stats.q01 + np.float32(OFT_NORM_EPS)) + stats.q01
    return np.where(stats.mask, x, y).astype(np.float32)


def libero_gripper(actions: np.ndarray) -> np.ndarray:
    """LIBERO gripper post-processing of the last dim: [0, 1] -> sign(2 g - 1) (binarised), then inverted."""
    a = np.array(actions, dtype=np.float32, copy=True)
    a[..., -1] = -np.sign(2.0 * a[..., -1] - 1.0)
    return a


def actions_to_token_ids(actions: np.ndarray, config: OftConfig) -> np.ndarray:
    """OpenVLA action tokens of normalised actions (for the NLL term): digitize(clip(a, -1, 1),
    linspace(-1, 1, bins)) -> tokenizer_vocab - bin.  [..., chunk, action_dim] -> int64 [..., chunk*action_dim]."""
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    bins = np.linspace(-1.0, 1.0, config.action_bins)
    ids = config.tokenizer_vocab - np.digitize(a, bins)
    return ids.reshape(*a.shape[:-2], -1).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """[h, w, 3] uint8 -> [size, size, 3] uint8 (aspect ratio not kept, as upstream)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image.copy()
    f = integer_downscale(h, w, size, size)
    if f > 1:  # = OpenCV INTER_AREA, without OpenCV
        return area_downsample(image, f)
    import cv2  # lazily: the training machine has no OpenCV

    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LANCZOS4
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)


def center_crop_resize(image: np.ndarray, area: float = OFT_CENTER_CROP_AREA) -> np.ndarray:
    """TF ``crop_and_resize`` of the centred box covering ``area`` of the image, back to the same size.

    Bilinear sampling in float32 at in = y1 (H-1) + i (y2-y1)(H-1)/(out-1) (TF's grid), border pixels
    replicated; then TF's float -> uint8 conversion of upstream's pipeline (x*255.5 truncated, clipped).
    image [S, S, 3] uint8 -> [S, S, 3] uint8."""
    if not 0.0 < area <= 1.0:
        raise ValueError(f"crop area must be in (0, 1], got {area}")
    h, w = image.shape[:2]
    side = float(np.sqrt(area))
    off = (1.0 - side) / 2.0
    x = image.astype(np.float32) / np.float32(255.0)
    ys = (off * (h - 1) + np.arange(h, dtype=np.float64) * (side * (h - 1) / max(h - 1, 1))).astype(np.float32)
    xs = (off * (w - 1) + np.arange(w, dtype=np.float64) * (side * (w - 1) / max(w - 1, 1))).astype(np.float32)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy = (ys - y0.astype(np.float32))[:, None, None]
    wx = (xs - x0.astype(np.float32))[None, :, None]
    top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
    bot = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
    out = np.clip(top * (1 - wy) + bot * wy, 0.0, 1.0)
    return np.minimum(out * np.float32(255.5), 255.0).astype(np.uint8)


def image_to_channels(image: np.ndarray) -> np.ndarray:
    """[S, S, 3] uint8 -> [6, S, S] float32: DINO-normalised RGB then SigLIP-normalised RGB."""
    x = image.astype(np.float32) / np.float32(255.0)
    dino = (x - np.asarray(OFT_DINO_MEAN, np.float32)) / np.asarray(OFT_DINO_STD, np.float32)
    sig = (x - np.asarray(OFT_SIGLIP_MEAN, np.float32)) / np.asarray(OFT_SIGLIP_STD, np.float32)
    return np.ascontiguousarray(np.concatenate([dino, sig], axis=-1).transpose(2, 0, 1))


def prepare_image(image: np.ndarray, size: int, rotate_180: bool = False, center_crop: bool = True) -> np.ndarray:
    """One camera image -> [6, size, size] float32 (see the module doc)."""
    if rotate_180:
        image = np.ascontiguousarray(image[::-1, ::-1])
    img = resize_image(image, size)
    if center_crop:
        img = center_crop_resize(img)
    return image_to_channels(img)


# ------------------------------------------------------------------------------------------------
# tokens
# ------------------------------------------------------------------------------------------------


def build_prompt_ids(tokenizer: SentencePieceTokenizer, task: str, config: OftConfig) -> list[int]:
    """BOS + prompt (+ the empty token when missing): the ids before the action placeholders."""
    ids = tokenizer.encode(OFT_PROMPT_TEMPLATE.format(task=task.lower()), add_bos=True)
    if config.empty_token_id >= 0 and ids[-1] != config.empty_token_id:
        ids.append(config.empty_token_id)
    return ids


def build_sequence(prompt_ids: list[int], config: OftConfig) -> tuple[np.ndarray, np.ndarray]:
    """prompt ids -> (input_ids int64 [T], action_mask bool [T]): prompt, placeholders, stop."""
    n = config.num_action_tokens
    ids = np.asarray(list(prompt_ids) + [config.placeholder_token_id] * n + [config.stop_token_id], dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=bool)
    mask[len(prompt_ids) : len(prompt_ids) + n] = True
    return ids, mask


@dataclass(frozen=True)
class OftInputs:
    """Model inputs for a batch (numpy; feed to torch with ``torch.from_numpy``).

    pixels [B, 6*I, S, S] float32; proprio [B, proprio_dim] float32 (normalised);
    input_ids [B, T] int64; attention_mask [B, T] bool; action_mask [B, T] bool."""

    pixels: np.ndarray
    proprio: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    action_mask: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @staticmethod
    def stack(items: list[OftInputs], pad_token_id: int) -> OftInputs:
        """Concatenate single-example inputs along the batch axis, right-padding the token rows."""
        if not items:
            raise ValueError("cannot stack an empty list of inputs")
        T = max(i.input_ids.shape[1] for i in items)

        def pad(a: np.ndarray, value) -> np.ndarray:
            out = np.full((a.shape[0], T), value, dtype=a.dtype)
            out[:, : a.shape[1]] = a
            return out

        return OftInputs(
            np.concatenate([i.pixels for i in items]),
            np.concatenate([i.proprio for i in items]),
            np.concatenate([pad(i.input_ids, pad_token_id) for i in items]),
            np.concatenate([pad(i.attention_mask, False) for i in items]),
            np.concatenate([pad(i.action_mask, False) for i in items]),
        )


class OftPreprocessor:
    """Observation (images by slot, proprio, instruction) -> ``OftInputs``; model actions -> robot actions.

    Args:
        config: the policy config.
        tokenizer: Llama SentencePiece model (user-supplied for real checkpoints; ours for small presets).
        norm_stats: action/proprio statistics; None = identity (tests, un-normalised training).
        rotate_180: rotate images by 180° first (LIBERO renders upside down).
        center_crop: the 0.9-area centre crop (OFT checkpoints were trained with crop augmentation).
        gripper: "none" or "libero" (binarise and invert the last action dim).
    """

    def __init__(
        self,
        config: OftConfig,
        tokenizer: SentencePieceTokenizer,
        norm_stats: OftNormStats | None,
        *,
        rotate_180: bool = False,
        center_crop: bool = True,
        gripper: str = "none",
    ) -> None:
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer vocab {tokenizer.vocab_size} exceeds the model's vocab_size {config.vocab_size}")
        if gripper not in GRIPPER_MODES:
            raise ValueError(f"gripper must be one of {GRIPPER_MODES}, got {gripper!r}")
        if norm_stats is not None and norm_stats.action.dim != config.action_dim:
            raise ValueError(f"action statistics have {norm_stats.action.dim} dims, the model {config.action_dim}")
        self.config = config
        self.tokenizer = tokenizer
        self.norm_stats = norm_stats
        self.rotate_180 = rotate_180
        self.center_crop = center_crop
        self.gripper = gripper

    def images(self, images: dict[str, np.ndarray]) -> np.ndarray:
        """Slot name -> uint8 image; every slot is required.  Returns [6*I, S, S] float32."""
        c = self.config
        unknown = sorted(set(images) - set(c.image_slots))
        if unknown:
            raise ValueError(f"unknown image slot(s) {unknown}; this policy has {list(c.image_slots)}")
        missing = [s for s in c.image_slots if s not in images]
        if missing:
            raise ValueError(f"missing image slot(s) {missing}; OpenVLA-OFT needs every slot of {list(c.image_slots)}")
        return np.concatenate(
            [prepare_image(images[s], c.image_size, self.rotate_180, self.center_crop) for s in c.image_slots]
        )

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        """[proprio_dim] robot state -> normalised [proprio_dim]."""
        p = np.asarray(proprio, dtype=np.float32).reshape(-1)
        if p.shape[0] != self.config.proprio_dim:
            raise ValueError(f"proprio has {p.shape[0]} entries, the policy expects {self.config.proprio_dim}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"proprio has NaN/inf entries: {p}")
        if self.norm_stats is None or self.norm_stats.proprio is None:
            return p
        return normalize_bounds(p, self.norm_stats.proprio)

    def __call__(self, images: dict[str, np.ndarray], proprio: np.ndarray | None, instruction: str) -> OftInputs:
        """One observation -> batch-of-one inputs."""
        c = self.config
        pixels = self.images(images)
        if c.use_proprio:
            if proprio is None:
                raise ValueError("this policy uses proprio; got None")
            prop = self.normalize_proprio(proprio)
        else:
            prop = np.zeros((c.proprio_dim,), np.float32)
        ids, amask = build_sequence(build_prompt_ids(self.tokenizer, instruction, c), c)
        return OftInputs(pixels[None], prop[None], ids[None], np.ones_like(amask)[None], amask[None])

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Robot actions [..., chunk, action_dim] -> model space (bounds_q99, clipped)."""
        if self.norm_stats is None:
            return np.asarray(actions, dtype=np.float32)
        return normalize_bounds(actions, self.norm_stats.action)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Model actions [..., chunk, action_dim] -> robot actions (then the gripper post-processing)."""
        a = np.asarray(actions, dtype=np.float32)
        if self.norm_stats is not None:
            a = unnormalize_bounds(a, self.norm_stats.action)
        return libero_gripper(a) if self.gripper == "libero" else a
