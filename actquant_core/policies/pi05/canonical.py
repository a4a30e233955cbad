"""Canonical (GGUF) tensor names for π₀.₅ and the round trip model <-> canonical tensors.

Names and layouts: ``actquant_core.constants.PI05_TENSOR_NAMES``.  Two transforms happen here:

- the patch-embedding conv weight [W, 3, p, p] is stored as [W, 3*p*p] (row-major flatten, so column
  index = c*p*p + ky*p + kx): patch embedding = im2col(CHW patch) @ W^T + b;
- Gemma RMSNorm weights (LM ``attn_norm``/``ffn_norm``/``output_norm``) are stored folded as (1 + w),
  so the native side computes plain ``rms_norm(x) * w_stored``.  adaRMS dense layers and SigLIP
  LayerNorms are stored as they are.
"""

from __future__ import annotations

import numpy as np
import torch

from actquant_core.constants import PI05_TENSOR_NAMES
from actquant_core.policies.pi05.config import Pi05Config
from actquant_core.policies.pi05.model import Pi05Model

# canonical-name key (PI05_TENSOR_NAMES) -> (internal parameter name template, transform)
# transforms: "" (as is), "conv" (flatten conv <-> 2-D), "fold" (Gemma norm w <-> 1 + w)
_INTERNAL = {
    "v_patch_embd_w": ("vision.patch_embedding.weight", "conv"),
    "v_patch_embd_b": ("vision.patch_embedding.bias", ""),
    "v_pos_embd": ("vision.position_embedding", ""),
    "v_ln1_w": ("vision.layers.{i}.layer_norm1.weight", ""),
    "v_ln1_b": ("vision.layers.{i}.layer_norm1.bias", ""),
    "v_q_w": ("vision.layers.{i}.q_proj.weight", ""),
    "v_q_b": ("vision.layers.{i}.q_proj.bias", ""),
    "v_k_w": ("vision.layers.{i}.k_proj.weight", ""),
    "v_k_b": ("vision.layers.{i}.k_proj.bias", ""),
    "v_v_w": ("vision.layers.{i}.v_proj.weight", ""),
    "v_v_b": ("vision.layers.{i}.v_proj.bias", ""),
    "v_o_w": ("vision.layers.{i}.out_proj.weight", ""),
    "v_o_b": ("vision.layers.{i}.out_proj.bias", ""),
    "v_ln2_w": ("vision.layers.{i}.layer_norm2.weight", ""),
    "v_ln2_b": ("vision.layers.{i}.layer_norm2.bias", ""),
    "v_up_w": ("vision.layers.{i}.fc1.weight", ""),
    "v_up_b": ("vision.layers.{i}.fc1.bias", ""),
    "v_down_w": ("vision.layers.{i}.fc2.weight", ""),
    "v_down_b": ("vision.layers.{i}.fc2.bias", ""),
    "v_post_ln_w": ("vision.post_layernorm.weight", ""),
    "v_post_ln_b": ("vision.post_layernorm.bias", ""),
    "mm_w": ("projector.weight", ""),
    "mm_b": ("projector.bias", ""),
    "lm_tok_embd": ("lm.embed_tokens.weight", ""),
    "lm_attn_norm": ("lm.layers.{i}.input_layernorm.weight", "fold"),
    "lm_q": ("lm.layers.{i}.q_proj.weight", ""),
    "lm_k": ("lm.layers.{i}.k_proj.weight", ""),
    "lm_v": ("lm.layers.{i}.v_proj.weight", ""),
    "lm_o": ("lm.layers.{i}.o_proj.weight", ""),
    "lm_ffn_norm": ("lm.layers.{i}.post_attention_layernorm.weight", "fold"),
    "lm_gate": ("lm.layers.{i}.gate_proj.weight", ""),
    "lm_up": ("lm.layers.{i}.up_proj.weight", ""),
    "lm_down": ("lm.layers.{i}.down_proj.weight", ""),
    "lm_out_norm": ("lm.norm.weight", "fold"),
    "ex_attn_norm_w": ("expert.layers.{i}.input_layernorm.dense.weight", ""),
    "ex_attn_norm_b": ("expert.layers.{i}.input_layernorm.dense.bias", ""),
    "ex_q": ("expert.layers.{i}.q_proj.weight", ""),
    "ex_k": ("expert.layers.{i}.k_proj.weight", ""),
    "ex_v": ("expert.layers.{i}.v_proj.weight", ""),
    "ex_o": ("expert.layers.{i}.o_proj.weight", ""),
    "ex_ffn_norm_w": ("expert.layers.{i}.post_attention_layernorm.dense.weight", ""),
    "ex_ffn_norm_b": ("expert.layers.{i}.post_attention_layernorm.dense.bias", ""),
    "ex_gate": ("expert.layers.{i}.gate_proj.weight", ""),
    "ex_up": ("expert.layers.{i}.up_proj.weight", ""),
    "ex_down": ("expert.layers.{i}.down_proj.weight", ""),
    "ex_out_norm_w": ("expert.norm.dense.weight", ""),
    "ex_out_norm_b": ("expert.norm.dense.bias", ""),
    "act_in_w": ("action_in_proj.weight", ""),
    "act_in_b": ("action_in_proj.bias", ""),
    "act_out_w": ("action_out_proj.weight", ""),
    "act_out_b": ("action_out_proj.bias", ""),
    "time_in_w": ("time_mlp_in.weight", ""),
    "time_in_b": ("time_mlp_in.bias", ""),
    "time_out_w": ("time_mlp_out.weight", ""),
    "time_out_b": ("time_mlp_out.bias", ""),
}
assert set(_INTERNAL) == set(PI05_TENSOR_NAMES), "canonical table and internal map disagree"


def _layer_count(key: str, config: Pi05Config) -> int:
    """How many instances of a templated name: vision depth for v.blk, LM depth for lm/ex.blk, else 1."""
    template = PI05_TENSOR_NAMES[key]
    if "{i}" not in template:
        return 0
    return config.vision_depth if template.startswith("v.") else config.lm_depth


def canonical_name_pairs(config: Pi05Config) -> list[tuple[str, str, str]]:
    """Every (canonical name, internal parameter name, transform) for a config, in a stable order."""
    out = []
    for key, template in PI05_TENSOR_NAMES.items():
        internal, transform = _INTERNAL[key]
        n = _layer_count(key, config)
        if n == 0:
            out.append((template, internal, transform))
        else:
            out.extend((template.format(i=i), internal.format(i=i), transform) for i in range(n))
    return out


def canonical_tensor_names(config: Pi05Config) -> list[str]:
    """All canonical tensor names of a model with this config."""
    return [c for c, _, _ in canonical_name_pairs(config)]


def canonical_shapes(config: Pi05Config) -> dict[str, tuple[int, ...]]:
    """Expected numpy shape of every canonical tensor (built on the meta device, no allocation)."""
    with torch.device("meta"):
        model = Pi05Model(config)
    params = dict(model.named_parameters())
    shapes = {}
    for canon, internal, transform in canonical_name_pairs(config):
        shape = tuple(params[internal].shape)
        shapes[canon] = (shape[0], int(np.prod(shape[1:]))) if transform == "conv" else shape
    return shapes


@torch.no_grad()
def canonical_state_dict(model: Pi05Model) -> dict[str, np.ndarray]:
    """Export a model's weights under canonical names as float32 numpy arrays (see module doc)."""
    params = dict(model.named_parameters())
    out: dict[str, np.ndarray] = {}
    for canon, internal, transform in canonical_name_pairs(model.config):
        x = params[internal].detach().to(torch.float32).cpu()
        if transform == "conv":
            x = x.reshape(x.shape[0], -1)
        elif transform == "fold":
            x = 1.0 + x
        out[canon] = np.ascontiguousarray(x.numpy())
    return out


@torch.no_grad()
def model_from_canonical(
    config: Pi05Config, tensors: dict[str, np.ndarray], dtype: torch.dtype = torch.float32
) -> Pi05Model:
    """Build a ``Pi05Model`` from canonical tensors (inverse of ``canonical_state_dict``).

    Raises ValueError naming missing/unexpected names and shape mismatches."""
    pairs = canonical_name_pairs(config)
    expected = {c for c, _, _ in pairs}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"canonical tensors do not match config: missing {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"({len(missing)}), unexpected {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} "
            f"({len(unexpected)})"
        )
    with torch.device("meta"):
        model = Pi05Model(config)
    params = dict(model.named_parameters())
    state = {}
    bad = []
    for canon, internal, transform in pairs:
        arr = np.asarray(tensors[canon], dtype=np.float32)
        want = tuple(params[internal].shape)
        if transform == "conv":
            if arr.shape != (want[0], int(np.prod(want[1:]))):
                bad.append(f"{canon}: {arr.shape} != {(want[0], int(np.prod(want[1:])))}")
                continue
            arr = arr.reshape(want)
        elif arr.shape != want:
            bad.append(f"{canon}: {arr.shape} != {want}")
            continue
        x = torch.from_numpy(np.ascontiguousarray(arr))
        if transform == "fold":
            x = x - 1.0
        state[internal] = x.to(dtype)
    if bad:
        raise ValueError(f"canonical tensor shape mismatches for this config: {bad[:20]}")
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()
