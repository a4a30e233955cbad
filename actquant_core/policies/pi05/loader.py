"""Load lerobot / openpi PyTorch π₀.₅ checkpoints (safetensors) into our reference model.

Accepted layouts (see /work/shared/reference/pi05.md §9):
- one ``model.safetensors`` or shards with ``model.safetensors.index.json``; bf16, fp16 or fp32;
- keys with the lerobot ``model.`` prefix or without it (hub / openpi converter);
- transformers >= 4.52 naming (``paligemma.model.language_model.*``, ``paligemma.model.vision_tower``)
  or the older one (``paligemma.language_model.model.*``, ``paligemma.vision_tower``);
- ``embed_tokens`` missing (openpi dedups the tied weight): copied from ``paligemma.lm_head.weight``;
- dropped: ``gemma_expert.lm_head``, stray ``gemma_expert.model.embed_tokens``, ``paligemma.lm_head``,
  ``state_proj`` (pi0), plain expert norm weights; ``action_time_mlp_*`` renamed to ``time_mlp_*``.

Dimensions come from tensor shapes (depths by counting layers, widths, MLP sizes, vocab, patch,
image size, action_dim).  Head counts cannot be read from shapes: a ``config.json`` beside the
weights is consulted for ``head_dim`` / ``num_attention_heads`` / vision heads when present, else the
arguments (defaults = the real model's) are used.  Policy fields (horizon, max_token_len, num_steps,
discrete_state_input) come from ``config.json`` (lerobot or openpi names) or the arguments.

Checkpoints are read with our numpy safetensors reader (``policies.common.safetensors_io``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from actquant_core.constants import (
    PI05_CKPT_DROP,
    PI05_CKPT_EMBED,
    PI05_CKPT_KEYS,
    PI05_CKPT_LM_HEAD,
    PI05_CKPT_PREFIX,
    PI05_CKPT_RENAMES,
    PI05_LEROBOT_EMPTY_CAMERA,
    PI05_LEROBOT_IMAGE_PREFIX,
    PI05_TENSOR_NAMES,
)
from actquant_core.policies.common.normalize import NormStats, find_norm_stats
from actquant_core.policies.common.safetensors_io import read_checkpoint_tensors
from actquant_core.policies.pi05.canonical import canonical_name_pairs, canonical_state_dict, model_from_canonical
from actquant_core.policies.pi05.config import Pi05Config
from actquant_core.policies.pi05.model import Pi05Model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
_FOLDED = ("lm_attn_norm", "lm_ffn_norm", "lm_out_norm")


class CheckpointLayoutError(ValueError):
    """The checkpoint's keys or shapes do not form a π₀.₅ model."""


def normalize_checkpoint_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip the ``model.`` prefix, apply old->new renames, copy a tied lm_head into a missing
    embed_tokens, and drop unused tensors.  Returns a new dict in current (>= 4.52) naming."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        k = key[len(PI05_CKPT_PREFIX) :] if key.startswith(PI05_CKPT_PREFIX) else key
        for old, new in PI05_CKPT_RENAMES:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        if k in out:
            raise CheckpointLayoutError(f"checkpoint key {key!r} collides with another key after renaming ({k!r})")
        out[k] = value
    if PI05_CKPT_EMBED not in out and PI05_CKPT_LM_HEAD in out:
        log.info("embed_tokens missing: using the tied %s", PI05_CKPT_LM_HEAD)
        out[PI05_CKPT_EMBED] = out[PI05_CKPT_LM_HEAD]
    drop = [re.compile(p) for p in PI05_CKPT_DROP]
    dropped = [k for k in out if any(p.fullmatch(k) for p in drop)]
    for k in dropped:
        del out[k]
    if dropped:
        log.debug("dropped unused checkpoint tensors: %s", dropped)
    return out


def _count_layers(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if not idx:
        return 0
    if idx != set(range(max(idx) + 1)):
        raise CheckpointLayoutError(f"layer indices of {pattern!r} are not contiguous: {sorted(idx)}")
    return max(idx) + 1


def _read_config_json(path: Path) -> dict:
    root = path if path.is_dir() else path.parent
    f = root / CONFIG_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointLayoutError(f"{f}: invalid JSON: {exc}") from exc


def _first(d: dict, *names: str):
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return None


def _lerobot_camera_slots(cj: dict) -> tuple[str, ...] | None:
    """Camera slots from a lerobot config.json: its VISUAL ``input_features`` in order (prefix
    ``observation.images.`` stripped), then ``empty_cameras`` extra slots (always missing)."""
    feats = cj.get("input_features")
    if not isinstance(feats, dict):
        return None
    names = [
        k[len(PI05_LEROBOT_IMAGE_PREFIX) :] if k.startswith(PI05_LEROBOT_IMAGE_PREFIX) else k
        for k, v in feats.items()
        if isinstance(v, dict) and v.get("type") == "VISUAL"
    ]
    names += [PI05_LEROBOT_EMPTY_CAMERA.format(i=i) for i in range(int(cj.get("empty_cameras", 0) or 0))]
    return tuple(names) or None


def infer_config(
    tensors: dict[str, np.ndarray],
    config_json: dict | None = None,
    *,
    head_dim: int = 256,
    vision_heads: int = 16,
    action_horizon: int | None = None,
    max_token_len: int | None = None,
    num_steps: int | None = None,
    discrete_state_input: bool | None = None,
    camera_slots: tuple[str, ...] | None = None,
    base: Pi05Config | None = None,
) -> Pi05Config:
    """Derive a ``Pi05Config`` from normalised checkpoint tensors (current naming).

    Explicit arguments win over ``config_json``, which wins over ``base`` (default: real pi05)."""
    cj = config_json or {}
    base = base or Pi05Config()
    keys = list(tensors)

    def shape(ckpt_key: str) -> tuple[int, ...]:
        if ckpt_key not in tensors:
            raise CheckpointLayoutError(f"checkpoint lacks {ckpt_key!r}, needed to infer dimensions")
        return tuple(tensors[ckpt_key].shape)

    k = {name: PI05_CKPT_KEYS[name] for name in PI05_CKPT_KEYS}
    vw, _, patch, _ = shape(k["v.patch_embd.weight"])
    n_patches, _ = shape(k["v.position_embd.weight"])
    side = int(round(n_patches**0.5))
    if side * side != n_patches:
        raise CheckpointLayoutError(f"position embedding has {n_patches} rows, not a square number of patches")
    v_depth = _count_layers(keys, re.escape(k["v.blk.{i}.ln1.weight"]).replace(r"\{i\}", r"(\d+)"))
    v_mlp = shape(k["v.blk.{i}.ffn_up.weight"].format(i=0))[0]
    vocab, lw = shape(k["lm.token_embd.weight"])
    lm_depth = _count_layers(keys, re.escape(k["lm.blk.{i}.attn_q.weight"]).replace(r"\{i\}", r"(\d+)"))
    ex_depth = _count_layers(keys, re.escape(k["ex.blk.{i}.attn_q.weight"]).replace(r"\{i\}", r"(\d+)"))
    lm_mlp = shape(k["lm.blk.{i}.ffn_gate.weight"].format(i=0))[0]
    q_out = shape(k["lm.blk.{i}.attn_q.weight"].format(i=0))[0]
    kv_out = shape(k["lm.blk.{i}.attn_k.weight"].format(i=0))[0]
    ew = shape(k["ex.blk.{i}.attn_q.weight"].format(i=0))[1]
    ex_mlp = shape(k["ex.blk.{i}.ffn_gate.weight"].format(i=0))[0]
    ex_q_out = shape(k["ex.blk.{i}.attn_q.weight"].format(i=0))[0]
    action_dim = shape(k["act.in_proj.weight"])[1]
    text_cfg = cj.get("text_config", {}) if isinstance(cj.get("text_config"), dict) else {}
    vis_cfg = cj.get("vision_config", {}) if isinstance(cj.get("vision_config"), dict) else {}
    hd = int(_first(cj, "head_dim") or _first(text_cfg, "head_dim") or head_dim)
    if q_out % hd or kv_out % hd:
        raise CheckpointLayoutError(
            f"q_proj rows {q_out} / k_proj rows {kv_out} are not multiples of head_dim {hd}; pass head_dim="
        )
    if ex_q_out != q_out:
        raise CheckpointLayoutError(f"expert q_proj rows {ex_q_out} != LM q_proj rows {q_out} (heads must be shared)")
    n_heads = q_out // hd
    n_kv = kv_out // hd
    if _first(cj, "num_attention_heads") is not None and int(cj["num_attention_heads"]) != n_heads:
        raise CheckpointLayoutError(
            f"config.json num_attention_heads={cj['num_attention_heads']} disagrees with q_proj rows {q_out} / head_dim {hd}"
        )
    v_heads = int(_first(vis_cfg, "num_attention_heads") or _first(cj, "vision_heads") or vision_heads)
    fields = dict(
        image_size=side * patch,
        patch_size=patch,
        vision_width=vw,
        vision_depth=v_depth,
        vision_mlp=v_mlp,
        vision_heads=v_heads,
        lm_width=lw,
        lm_depth=lm_depth,
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=hd,
        lm_mlp=lm_mlp,
        vocab_size=vocab,
        expert_width=ew,
        expert_mlp=ex_mlp,
        expert_depth=ex_depth,
        action_dim=action_dim,
    )
    policy = {
        "action_horizon": (action_horizon, ("action_horizon", "chunk_size")),
        "max_token_len": (max_token_len, ("max_token_len", "tokenizer_max_length")),
        "num_steps": (num_steps, ("num_steps", "num_inference_steps")),
        "discrete_state_input": (discrete_state_input, ("discrete_state_input",)),
    }
    for field, (explicit, names) in policy.items():
        value = explicit if explicit is not None else _first(cj, *names)
        if value is not None:
            fields[field] = type(getattr(base, field))(value)
    slots = camera_slots if camera_slots is not None else _lerobot_camera_slots(cj)
    if slots is not None:
        fields["camera_slots"] = tuple(slots)
    try:
        return base.replace(**fields)
    except ValueError as exc:
        raise CheckpointLayoutError(f"inferred dimensions are inconsistent: {exc}") from exc


def checkpoint_to_canonical(tensors: dict[str, np.ndarray], config: Pi05Config) -> dict[str, np.ndarray]:
    """Map normalised checkpoint tensors (current naming) to canonical tensors (conv flattened,
    Gemma norms folded).  Raises ``CheckpointLayoutError`` listing missing and unexpected keys."""
    wanted: dict[str, tuple[str, str]] = {}  # ckpt key -> (canonical name, transform)
    canon_to_template = {}
    for key, template in PI05_TENSOR_NAMES.items():
        canon_to_template[template] = (PI05_CKPT_KEYS[template], "fold" if key in _FOLDED else "")
    for canon, _internal, transform in canonical_name_pairs(config):
        m = re.search(r"\.blk\.(\d+)\.", canon)
        template = canon if m is None else canon.replace(f".blk.{m.group(1)}.", ".blk.{i}.", 1)
        ckpt_t, fold = canon_to_template[template]
        ckpt = ckpt_t if m is None else ckpt_t.format(i=int(m.group(1)))
        wanted[ckpt] = (canon, "conv" if transform == "conv" else fold)
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        raise CheckpointLayoutError(
            "checkpoint keys do not match a pi0.5 model "
            f"(after prefix strip/renames): missing {len(missing)}: {missing[:30]}"
            f"{' ...' if len(missing) > 30 else ''}; unexpected {len(unexpected)}: {unexpected[:30]}"
            f"{' ...' if len(unexpected) > 30 else ''}"
        )
    out = {}
    for ckpt, (canon, transform) in wanted.items():
        x = np.asarray(tensors[ckpt], dtype=np.float32)
        if transform == "conv":
            x = x.reshape(x.shape[0], -1)
        elif transform == "fold":
            x = x + np.float32(1.0)
        out[canon] = np.ascontiguousarray(x)
    return out


def load_pi05_checkpoint(
    path: str | Path,
    *,
    head_dim: int = 256,
    vision_heads: int = 16,
    action_horizon: int | None = None,
    max_token_len: int | None = None,
    num_steps: int | None = None,
    discrete_state_input: bool | None = None,
    camera_slots: tuple[str, ...] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Pi05Config, Pi05Model, NormStats | None]:
    """Load a lerobot/openpi PyTorch π₀.₅ checkpoint.

    Args:
        path: ``model.safetensors``, ``model.safetensors.index.json`` or the checkpoint directory.
        head_dim, vision_heads: used when no config.json says otherwise (shapes cannot tell heads).
        action_horizon, max_token_len, num_steps, discrete_state_input, camera_slots: override
            config.json (camera slots default to lerobot ``input_features`` image keys, else the
            openpi names base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb).
        dtype: parameter dtype of the returned model.
    Returns:
        (config, model in eval mode, norm stats or None when the folder has none — a warning is logged).
    """
    path = Path(path)
    raw = read_checkpoint_tensors(path)
    tensors = normalize_checkpoint_keys(raw)
    config_json = _read_config_json(path)
    config = infer_config(
        tensors,
        config_json,
        head_dim=head_dim,
        vision_heads=vision_heads,
        action_horizon=action_horizon,
        max_token_len=max_token_len,
        num_steps=num_steps,
        discrete_state_input=discrete_state_input,
        camera_slots=camera_slots,
    )
    canonical = checkpoint_to_canonical(tensors, config)
    model = model_from_canonical(config, canonical, dtype=dtype)
    stats = find_norm_stats(path)
    if stats is None:
        log.warning("no norm stats (assets/*/norm_stats.json or *processor*.safetensors) next to %s", path)
    log.info("loaded pi05 checkpoint %s: %.1fM parameters", path, model.num_parameters() / 1e6)
    return config, model, stats


@torch.no_grad()
def checkpoint_state_dict(model: Pi05Model, layout: str = "lerobot") -> dict[str, torch.Tensor]:
    """Our model's weights under real checkpoint keys (to write test checkpoints / interoperate).

    layout:
        "lerobot": ``model.`` prefix, current (>= 4.52) naming, embed_tokens present, plus the unused
            ``gemma_expert.lm_head`` that lerobot files carry.
        "openpi": no prefix, old (< 4.52) naming, embed_tokens absent and only the tied
            ``paligemma.language_model.lm_head.weight`` (what openpi's dedup leaves), pi0-style
            ``action_time_mlp_*`` names.
    """
    if layout not in ("lerobot", "openpi"):
        raise ValueError(f"layout must be 'lerobot' or 'openpi', got {layout!r}")
    canon = canonical_state_dict(model)
    c = model.config
    inverse = {}
    for key, template in PI05_TENSOR_NAMES.items():
        inverse[template] = (PI05_CKPT_KEYS[template], key in _FOLDED)
    out: dict[str, torch.Tensor] = {}
    for name, arr in canon.items():
        m = re.search(r"\.blk\.(\d+)\.", name)
        template = name if m is None else name.replace(f".blk.{m.group(1)}.", ".blk.{i}.", 1)
        ckpt_t, fold = inverse[template]
        key = ckpt_t if m is None else ckpt_t.format(i=int(m.group(1)))
        x = torch.from_numpy(arr.copy())
        if fold:
            x = x - 1.0
        if name == "v.patch_embd.weight":
            x = x.reshape(c.vision_width, 3, c.patch_size, c.patch_size)
        out[key] = x
    if layout == "lerobot":
        out["paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(8, c.expert_width)
        return {PI05_CKPT_PREFIX + k: v for k, v in out.items()}
    # openpi: old naming, tied lm_head only, pi0-style time MLP names
    renamed = {}
    for k, v in out.items():
        for old, new in PI05_CKPT_RENAMES:
            if k.startswith(new):
                k = old + k[len(new) :]
                break
        renamed[k] = v
    embed_old = "paligemma_with_expert.paligemma.language_model.model.embed_tokens.weight"
    renamed["paligemma_with_expert.paligemma.language_model.lm_head.weight"] = renamed.pop(embed_old)
    return renamed
