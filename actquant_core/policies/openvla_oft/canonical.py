"""Canonical (GGUF) tensor names for OpenVLA-OFT and the round trip model <-> canonical tensors.

Names and layouts: ``actquant_core.constants.OFT_TENSOR_NAMES``.  One transform: the patch-embedding
conv weights [W, 3, p, p] are stored as [W, 3*p*p] (column c*p*p + ky*p + kx).  Everything else is
stored as the torch parameter is (Llama RMSNorm weights unfolded, LayerScale vectors as they are).
FiLM tensors exist only with ``use_film``, proprio tensors only with ``use_proprio``; ``lm.output.weight``
(lm_head, used by the NLL loss only) is optional: ``canonical_state_dict(include_lm_head=False)`` leaves
it out and ``model_from_canonical`` then zero-fills it (logged).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from actquant_core.constants import OFT_LM_HEAD, OFT_TENSOR_NAMES
from actquant_core.policies.openvla_oft.config import OftConfig
from actquant_core.policies.openvla_oft.model import OftModel

log = logging.getLogger(__name__)

_VIT = {
    "patch_w": ("patch_embed.weight", "conv"),
    "patch_b": ("patch_embed.bias", ""),
    "pos": ("pos_embed", ""),
    "cls": ("cls_token", ""),
    "reg": ("reg_token", ""),
    "ln1_w": ("blocks.{i}.norm1.weight", ""),
    "ln1_b": ("blocks.{i}.norm1.bias", ""),
    "qkv_w": ("blocks.{i}.qkv.weight", ""),
    "qkv_b": ("blocks.{i}.qkv.bias", ""),
    "out_w": ("blocks.{i}.proj.weight", ""),
    "out_b": ("blocks.{i}.proj.bias", ""),
    "ls1": ("blocks.{i}.ls1", ""),
    "ln2_w": ("blocks.{i}.norm2.weight", ""),
    "ln2_b": ("blocks.{i}.norm2.bias", ""),
    "up_w": ("blocks.{i}.fc1.weight", ""),
    "up_b": ("blocks.{i}.fc1.bias", ""),
    "down_w": ("blocks.{i}.fc2.weight", ""),
    "down_b": ("blocks.{i}.fc2.bias", ""),
    "ls2": ("blocks.{i}.ls2", ""),
    "film_scale_w": ("blocks.{i}.film_scale.weight", ""),
    "film_scale_b": ("blocks.{i}.film_scale.bias", ""),
    "film_shift_w": ("blocks.{i}.film_shift.weight", ""),
    "film_shift_b": ("blocks.{i}.film_shift.bias", ""),
}
# canonical-name key (OFT_TENSOR_NAMES) -> (internal parameter name template, transform)
_INTERNAL: dict[str, tuple[str, str]] = {}
for _pre, _mod in (("vd", "dino"), ("vs", "siglip")):
    for _k, (_name, _tr) in _VIT.items():
        if f"{_pre}_{_k}" in OFT_TENSOR_NAMES:
            _INTERNAL[f"{_pre}_{_k}"] = (f"{_mod}.{_name}", _tr)
_INTERNAL.update({
    "mm_fc1_w": ("proj_fc1.weight", ""), "mm_fc1_b": ("proj_fc1.bias", ""),
    "mm_fc2_w": ("proj_fc2.weight", ""), "mm_fc2_b": ("proj_fc2.bias", ""),
    "mm_fc3_w": ("proj_fc3.weight", ""), "mm_fc3_b": ("proj_fc3.bias", ""),
    "pp_fc1_w": ("proprio_fc1.weight", ""), "pp_fc1_b": ("proprio_fc1.bias", ""),
    "pp_fc2_w": ("proprio_fc2.weight", ""), "pp_fc2_b": ("proprio_fc2.bias", ""),
    "lm_tok_embd": ("embed_tokens.weight", ""),
    "lm_attn_norm": ("layers.{i}.input_layernorm", ""),
    "lm_q": ("layers.{i}.q_proj.weight", ""),
    "lm_k": ("layers.{i}.k_proj.weight", ""),
    "lm_v": ("layers.{i}.v_proj.weight", ""),
    "lm_o": ("layers.{i}.o_proj.weight", ""),
    "lm_ffn_norm": ("layers.{i}.post_attention_layernorm", ""),
    "lm_gate": ("layers.{i}.gate_proj.weight", ""),
    "lm_up": ("layers.{i}.up_proj.weight", ""),
    "lm_down": ("layers.{i}.down_proj.weight", ""),
    "lm_out_norm": ("norm", ""),
    "lm_head": ("lm_head.weight", ""),
    "hd_ln1_w": ("action_head.layer_norm1.weight", ""), "hd_ln1_b": ("action_head.layer_norm1.bias", ""),
    "hd_fc1_w": ("action_head.fc1.weight", ""), "hd_fc1_b": ("action_head.fc1.bias", ""),
    "hd_blk_ln_w": ("action_head.block_norms.{i}.weight", ""), "hd_blk_ln_b": ("action_head.block_norms.{i}.bias", ""),
    "hd_blk_fc_w": ("action_head.block_fcs.{i}.weight", ""), "hd_blk_fc_b": ("action_head.block_fcs.{i}.bias", ""),
    "hd_ln2_w": ("action_head.layer_norm2.weight", ""), "hd_ln2_b": ("action_head.layer_norm2.bias", ""),
    "hd_fc2_w": ("action_head.fc2.weight", ""), "hd_fc2_b": ("action_head.fc2.bias", ""),
})
assert set(_INTERNAL) == set(OFT_TENSOR_NAMES), sorted(set(_INTERNAL) ^ set(OFT_TENSOR_NAMES))


def _present(key: str, config: OftConfig) -> bool:
    if "film" in key:
        return config.use_film
    if key.startswith("pp_"):
        return config.use_proprio
    if key == "vd_reg":
        return config.dino_registers > 0
    return True


def _count(key: str, config: OftConfig) -> int:
    """Instances of a templated name (0 for an untemplated one)."""
    template = OFT_TENSOR_NAMES[key]
    if "{i}" not in template:
        return 0
    return {"vd": config.dino_blocks_used, "vs": config.siglip_blocks_used, "lm": config.lm_depth,
            "head": config.head_blocks}[template.split(".")[0]]


def canonical_name_pairs(config: OftConfig, include_lm_head: bool = True) -> list[tuple[str, str, str]]:
    """Every (canonical name, internal parameter name, transform) for a config, in a stable order."""
    out = []
    for key, template in OFT_TENSOR_NAMES.items():
        if not _present(key, config) or (key == "lm_head" and not include_lm_head):
            continue
        internal, transform = _INTERNAL[key]
        n = _count(key, config)
        if n == 0:
            out.append((template, internal, transform))
        else:
            out.extend((template.format(i=i), internal.format(i=i), transform) for i in range(n))
    return out


def canonical_tensor_names(config: OftConfig, include_lm_head: bool = True) -> list[str]:
    """All canonical tensor names of a model with this config."""
    return [c for c, _, _ in canonical_name_pairs(config, include_lm_head)]


def canonical_shapes(config: OftConfig, include_lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Expected numpy shape of every canonical tensor (built on the meta device, no allocation)."""
    with torch.device("meta"):
        model = OftModel(config)
    params = dict(model.named_parameters())
    shapes = {}
    for canon, internal, transform in canonical_name_pairs(config, include_lm_head):
        shape = tuple(params[internal].shape)
        shapes[canon] = (shape[0], int(np.prod(shape[1:]))) if transform == "conv" else shape
    return shapes


@torch.no_grad()
def canonical_state_dict(model: OftModel, include_lm_head: bool = True) -> dict[str, np.ndarray]:
    """Export a model's weights under canonical names as float32 numpy arrays (see module doc)."""
    params = dict(model.named_parameters())
    out: dict[str, np.ndarray] = {}
    for canon, internal, transform in canonical_name_pairs(model.config, include_lm_head):
        x = params[internal].detach().to(torch.float32).cpu()
        if transform == "conv":
            x = x.reshape(x.shape[0], -1)
        out[canon] = np.ascontiguousarray(x.numpy())
    return out


@torch.no_grad()
def model_from_canonical(
    config: OftConfig, tensors: dict[str, np.ndarray], dtype: torch.dtype = torch.float32
) -> OftModel:
    """Build an ``OftModel`` from canonical tensors (inverse of ``canonical_state_dict``).

    ``lm.output.weight`` may be absent (zero-filled: the NLL loss is then meaningless).  Raises
    ValueError naming missing/unexpected names and shape mismatches."""
    pairs = canonical_name_pairs(config, include_lm_head=True)
    expected = {c for c, _, _ in pairs}
    missing = sorted(expected - set(tensors) - {OFT_LM_HEAD})
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"canonical tensors do not match the openvla_oft config: missing {len(missing)} {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, unexpected {len(unexpected)} {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )
    with torch.device("meta"):
        model = OftModel(config)
    params = dict(model.named_parameters())
    state = {}
    bad = []
    for canon, internal, transform in pairs:
        want = tuple(params[internal].shape)
        if canon not in tensors:  # lm_head only
            log.info("%s absent: lm_head zero-filled (NLL loss unavailable)", canon)
            state[internal] = torch.zeros(want, dtype=dtype)
            continue
        arr = np.asarray(tensors[canon], dtype=np.float32)
        if transform == "conv":
            flat = (want[0], int(np.prod(want[1:])))
            if arr.shape != flat:
                bad.append(f"{canon}: {arr.shape} != {flat}")
                continue
            arr = arr.reshape(want)
        elif arr.shape != want:
            bad.append(f"{canon}: {arr.shape} != {want}")
            continue
        state[internal] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True)).to(dtype)
    if bad:
        raise ValueError(f"canonical tensor shape mismatches for this openvla_oft config: {bad[:20]}")
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()
