"""Every spelled-out name of the project, in one place.

Sections: GGUF metadata keys, canonical tensor names per family, checkpoint-key maps, observation and
action keys, ROS topic / parameter names, simulation names.  Other modules import from here; they do
not spell these strings themselves.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------
# GGUF metadata keys (namespace "actquant.")
# ---------------------------------------------------------------------------------------------------
GGUF_NS = "actquant"
KEY_FAMILY = f"{GGUF_NS}.family"  # str: "pi05" | "openvla_oft" | "test"
KEY_FORMAT_VERSION = f"{GGUF_NS}.format_version"  # u32
KEY_CONFIG_JSON = f"{GGUF_NS}.config_json"  # str: the family config dataclass as JSON
KEY_NORM_STATS_JSON = f"{GGUF_NS}.norm_stats_json"  # str: normalisation statistics as JSON
KEY_TOKENIZER_MODEL = f"{GGUF_NS}.tokenizer.model"  # u8 array: SentencePiece model bytes
KEY_QUANT_PLAN_SUMMARY = f"{GGUF_NS}.quant.plan_summary_json"  # str: plan summary (method, bpw, counts)
KEY_SOURCE = f"{GGUF_NS}.source"  # str: where the weights came from
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------
# pi05 names (policies/pi05)
# ---------------------------------------------------------------------------------------------------

PI05_FAMILY = "pi05"

# Camera slot names, in the order the model consumes them (openpi / lerobot pi0.5).
PI05_CAMERA_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")

# Finite value used for masked attention logits (big_vision / openpi); never -inf, so a fully
# masked (padding) query row stays finite.  The native graph must use the same value.
PI05_MASK_VALUE = -2.3819763e38

# --- canonical GGUF tensor names --------------------------------------------------------------------
# Every matrix is stored in the HF/torch Linear layout [out_features, in_features] (numpy row-major;
# gguf-py reverses it, so GGML sees ne = [in, out]).  Vectors are [n].  Gemma RMSNorm weights are
# stored FOLDED: the stored value is (1 + w), so the native side computes plain rms_norm(x) * w.
# The SigLIP LayerNorms are stored as they are (weight, bias).  The patch-embedding conv
# [width, 3, p, p] is stored as a 2-D matrix [width, 3*p*p] flattened in (channel, ky, kx) order,
# i.e. column index = c*p*p + ky*p + kx, so patch embedding is im2col(image CHW patch) @ W^T + b.
# adaRMS "dense" layers map cond [w_ex] -> [3*w_ex] = (scale | shift | gate) in that order.
PI05_TENSOR_NAMES = {
    # SigLIP vision tower
    "v_patch_embd_w": "v.patch_embd.weight",  # [v_width, 3*p*p]   (flattened conv, see above)
    "v_patch_embd_b": "v.patch_embd.bias",  # [v_width]
    "v_pos_embd": "v.position_embd.weight",  # [n_patches, v_width]
    "v_ln1_w": "v.blk.{i}.ln1.weight",  # [v_width]
    "v_ln1_b": "v.blk.{i}.ln1.bias",
    "v_q_w": "v.blk.{i}.attn_q.weight",  # [v_width, v_width]
    "v_q_b": "v.blk.{i}.attn_q.bias",
    "v_k_w": "v.blk.{i}.attn_k.weight",
    "v_k_b": "v.blk.{i}.attn_k.bias",
    "v_v_w": "v.blk.{i}.attn_v.weight",
    "v_v_b": "v.blk.{i}.attn_v.bias",
    "v_o_w": "v.blk.{i}.attn_out.weight",
    "v_o_b": "v.blk.{i}.attn_out.bias",
    "v_ln2_w": "v.blk.{i}.ln2.weight",
    "v_ln2_b": "v.blk.{i}.ln2.bias",
    "v_up_w": "v.blk.{i}.ffn_up.weight",  # [v_mlp, v_width]   (SigLIP fc1)
    "v_up_b": "v.blk.{i}.ffn_up.bias",
    "v_down_w": "v.blk.{i}.ffn_down.weight",  # [v_width, v_mlp]   (SigLIP fc2)
    "v_down_b": "v.blk.{i}.ffn_down.bias",
    "v_post_ln_w": "v.post_ln.weight",
    "v_post_ln_b": "v.post_ln.bias",
    # multimodal projector
    "mm_w": "mm.proj.weight",  # [lm_width, v_width]
    "mm_b": "mm.proj.bias",
    # PaliGemma language model (Gemma)
    "lm_tok_embd": "lm.token_embd.weight",  # [vocab, lm_width]  (NOT pre-scaled by sqrt(width))
    "lm_attn_norm": "lm.blk.{i}.attn_norm.weight",  # [lm_width]   folded (1 + w)
    "lm_q": "lm.blk.{i}.attn_q.weight",  # [n_heads*head_dim, lm_width]
    "lm_k": "lm.blk.{i}.attn_k.weight",  # [n_kv_heads*head_dim, lm_width]
    "lm_v": "lm.blk.{i}.attn_v.weight",  # [n_kv_heads*head_dim, lm_width]
    "lm_o": "lm.blk.{i}.attn_output.weight",  # [lm_width, n_heads*head_dim]
    "lm_ffn_norm": "lm.blk.{i}.ffn_norm.weight",  # [lm_width]   folded (1 + w)
    "lm_gate": "lm.blk.{i}.ffn_gate.weight",  # [lm_mlp, lm_width]
    "lm_up": "lm.blk.{i}.ffn_up.weight",  # [lm_mlp, lm_width]
    "lm_down": "lm.blk.{i}.ffn_down.weight",  # [lm_width, lm_mlp]
    "lm_out_norm": "lm.output_norm.weight",  # [lm_width] folded; not used by the policy graph
    # action expert (Gemma 300m with adaRMS)
    "ex_attn_norm_w": "ex.blk.{i}.attn_norm_ada.weight",  # [3*ex_width, ex_width]
    "ex_attn_norm_b": "ex.blk.{i}.attn_norm_ada.bias",  # [3*ex_width]
    "ex_q": "ex.blk.{i}.attn_q.weight",  # [n_heads*head_dim, ex_width]
    "ex_k": "ex.blk.{i}.attn_k.weight",  # [n_kv_heads*head_dim, ex_width]
    "ex_v": "ex.blk.{i}.attn_v.weight",
    "ex_o": "ex.blk.{i}.attn_output.weight",  # [ex_width, n_heads*head_dim]
    "ex_ffn_norm_w": "ex.blk.{i}.ffn_norm_ada.weight",  # [3*ex_width, ex_width]
    "ex_ffn_norm_b": "ex.blk.{i}.ffn_norm_ada.bias",
    "ex_gate": "ex.blk.{i}.ffn_gate.weight",  # [ex_mlp, ex_width]
    "ex_up": "ex.blk.{i}.ffn_up.weight",
    "ex_down": "ex.blk.{i}.ffn_down.weight",  # [ex_width, ex_mlp]
    "ex_out_norm_w": "ex.output_norm_ada.weight",  # [3*ex_width, ex_width]
    "ex_out_norm_b": "ex.output_norm_ada.bias",
    # action / time projections
    "act_in_w": "act.in_proj.weight",  # [ex_width, action_dim]
    "act_in_b": "act.in_proj.bias",
    "act_out_w": "act.out_proj.weight",  # [action_dim, ex_width]
    "act_out_b": "act.out_proj.bias",
    "time_in_w": "time.mlp_in.weight",  # [ex_width, ex_width]
    "time_in_b": "time.mlp_in.bias",
    "time_out_w": "time.mlp_out.weight",  # [ex_width, ex_width]
    "time_out_b": "time.mlp_out.bias",
}

# --- named intermediates (torch reference <-> native graph, matched 1:1 by name) --------------------
# {cam} is the camera slot index 0..n_cameras-1, {i} the layer index, {s} the Euler step 0..num_steps-1.
PI05_INTER_VISION = "vision_emb.{cam}"  # [B, n_patches, lm_width] after the projector
PI05_INTER_PREFIX_EMB = "prefix_emb"  # [B, L_prefix, lm_width] (image tokens, then scaled text embeds)
PI05_INTER_PREFIX_K = "prefix_k.{i}"  # [B, L_prefix, n_kv_heads, head_dim] after RoPE
PI05_INTER_PREFIX_V = "prefix_v.{i}"  # [B, L_prefix, n_kv_heads, head_dim]
PI05_INTER_TIME_COND = "time_cond.{s}"  # [B, ex_width] adaRMS condition at step s
PI05_INTER_X_T = "x_t.{s}"  # [B, horizon, action_dim] noisy actions entering step s
PI05_INTER_VELOCITY = "velocity.{s}"  # [B, horizon, action_dim] expert velocity at step s
PI05_INTER_ACTIONS = "actions"  # [B, horizon, action_dim] final (normalised, padded) actions

# --- checkpoint keys (lerobot / openpi PyTorch safetensors), after prefix/rename normalisation -------
PI05_CKPT_PREFIX = "model."  # lerobot-saved files carry it; hub/openpi files do not
PI05_CKPT_PG = "paligemma_with_expert.paligemma."
PI05_CKPT_EX = "paligemma_with_expert.gemma_expert."
# Old (transformers < 4.52) -> current naming, applied as prefix replacements in this order.
PI05_CKPT_RENAMES = (
    ("paligemma_with_expert.paligemma.language_model.model.", "paligemma_with_expert.paligemma.model.language_model."),
    ("paligemma_with_expert.paligemma.language_model.lm_head.", "paligemma_with_expert.paligemma.lm_head."),
    ("paligemma_with_expert.paligemma.vision_tower.", "paligemma_with_expert.paligemma.model.vision_tower."),
    (
        "paligemma_with_expert.paligemma.multi_modal_projector.",
        "paligemma_with_expert.paligemma.model.multi_modal_projector.",
    ),
    ("action_time_mlp_in.", "time_mlp_in."),
    ("action_time_mlp_out.", "time_mlp_out."),
)
PI05_CKPT_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
PI05_CKPT_EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
# Keys (regex, full match) that are dropped silently: unused by pi0.5.
PI05_CKPT_DROP = (
    r"paligemma_with_expert\.gemma_expert\.lm_head\.weight",
    r"paligemma_with_expert\.gemma_expert\.model\.embed_tokens\.weight",
    r"paligemma_with_expert\.paligemma\.lm_head\.weight",
    r"state_proj\.(weight|bias)",
    # plain expert RMSNorm weights of pi0-style files (pi0.5 uses the adaRMS dense instead)
    r"paligemma_with_expert\.gemma_expert\.model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight",
    r"paligemma_with_expert\.gemma_expert\.model\.norm\.weight",
)
_PI05_VT = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
_PI05_LM = "paligemma_with_expert.paligemma.model.language_model."
_PI05_EX = "paligemma_with_expert.gemma_expert.model."
# canonical-name template -> checkpoint-key template ({i} = layer index).
PI05_CKPT_KEYS = {
    "v.patch_embd.weight": _PI05_VT + "embeddings.patch_embedding.weight",  # conv [w, 3, p, p]
    "v.patch_embd.bias": _PI05_VT + "embeddings.patch_embedding.bias",
    "v.position_embd.weight": _PI05_VT + "embeddings.position_embedding.weight",
    "v.blk.{i}.ln1.weight": _PI05_VT + "encoder.layers.{i}.layer_norm1.weight",
    "v.blk.{i}.ln1.bias": _PI05_VT + "encoder.layers.{i}.layer_norm1.bias",
    "v.blk.{i}.attn_q.weight": _PI05_VT + "encoder.layers.{i}.self_attn.q_proj.weight",
    "v.blk.{i}.attn_q.bias": _PI05_VT + "encoder.layers.{i}.self_attn.q_proj.bias",
    "v.blk.{i}.attn_k.weight": _PI05_VT + "encoder.layers.{i}.self_attn.k_proj.weight",
    "v.blk.{i}.attn_k.bias": _PI05_VT + "encoder.layers.{i}.self_attn.k_proj.bias",
    "v.blk.{i}.attn_v.weight": _PI05_VT + "encoder.layers.{i}.self_attn.v_proj.weight",
    "v.blk.{i}.attn_v.bias": _PI05_VT + "encoder.layers.{i}.self_attn.v_proj.bias",
    "v.blk.{i}.attn_out.weight": _PI05_VT + "encoder.layers.{i}.self_attn.out_proj.weight",
    "v.blk.{i}.attn_out.bias": _PI05_VT + "encoder.layers.{i}.self_attn.out_proj.bias",
    "v.blk.{i}.ln2.weight": _PI05_VT + "encoder.layers.{i}.layer_norm2.weight",
    "v.blk.{i}.ln2.bias": _PI05_VT + "encoder.layers.{i}.layer_norm2.bias",
    "v.blk.{i}.ffn_up.weight": _PI05_VT + "encoder.layers.{i}.mlp.fc1.weight",
    "v.blk.{i}.ffn_up.bias": _PI05_VT + "encoder.layers.{i}.mlp.fc1.bias",
    "v.blk.{i}.ffn_down.weight": _PI05_VT + "encoder.layers.{i}.mlp.fc2.weight",
    "v.blk.{i}.ffn_down.bias": _PI05_VT + "encoder.layers.{i}.mlp.fc2.bias",
    "v.post_ln.weight": _PI05_VT + "post_layernorm.weight",
    "v.post_ln.bias": _PI05_VT + "post_layernorm.bias",
    "mm.proj.weight": "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight",
    "mm.proj.bias": "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.bias",
    "lm.token_embd.weight": _PI05_LM + "embed_tokens.weight",
    "lm.blk.{i}.attn_norm.weight": _PI05_LM + "layers.{i}.input_layernorm.weight",  # raw w (unfolded)
    "lm.blk.{i}.attn_q.weight": _PI05_LM + "layers.{i}.self_attn.q_proj.weight",
    "lm.blk.{i}.attn_k.weight": _PI05_LM + "layers.{i}.self_attn.k_proj.weight",
    "lm.blk.{i}.attn_v.weight": _PI05_LM + "layers.{i}.self_attn.v_proj.weight",
    "lm.blk.{i}.attn_output.weight": _PI05_LM + "layers.{i}.self_attn.o_proj.weight",
    "lm.blk.{i}.ffn_norm.weight": _PI05_LM + "layers.{i}.post_attention_layernorm.weight",  # raw w
    "lm.blk.{i}.ffn_gate.weight": _PI05_LM + "layers.{i}.mlp.gate_proj.weight",
    "lm.blk.{i}.ffn_up.weight": _PI05_LM + "layers.{i}.mlp.up_proj.weight",
    "lm.blk.{i}.ffn_down.weight": _PI05_LM + "layers.{i}.mlp.down_proj.weight",
    "lm.output_norm.weight": _PI05_LM + "norm.weight",  # raw w
    "ex.blk.{i}.attn_norm_ada.weight": _PI05_EX + "layers.{i}.input_layernorm.dense.weight",
    "ex.blk.{i}.attn_norm_ada.bias": _PI05_EX + "layers.{i}.input_layernorm.dense.bias",
    "ex.blk.{i}.attn_q.weight": _PI05_EX + "layers.{i}.self_attn.q_proj.weight",
    "ex.blk.{i}.attn_k.weight": _PI05_EX + "layers.{i}.self_attn.k_proj.weight",
    "ex.blk.{i}.attn_v.weight": _PI05_EX + "layers.{i}.self_attn.v_proj.weight",
    "ex.blk.{i}.attn_output.weight": _PI05_EX + "layers.{i}.self_attn.o_proj.weight",
    "ex.blk.{i}.ffn_norm_ada.weight": _PI05_EX + "layers.{i}.post_attention_layernorm.dense.weight",
    "ex.blk.{i}.ffn_norm_ada.bias": _PI05_EX + "layers.{i}.post_attention_layernorm.dense.bias",
    "ex.blk.{i}.ffn_gate.weight": _PI05_EX + "layers.{i}.mlp.gate_proj.weight",
    "ex.blk.{i}.ffn_up.weight": _PI05_EX + "layers.{i}.mlp.up_proj.weight",
    "ex.blk.{i}.ffn_down.weight": _PI05_EX + "layers.{i}.mlp.down_proj.weight",
    "ex.output_norm_ada.weight": _PI05_EX + "norm.dense.weight",
    "ex.output_norm_ada.bias": _PI05_EX + "norm.dense.bias",
    "act.in_proj.weight": "action_in_proj.weight",
    "act.in_proj.bias": "action_in_proj.bias",
    "act.out_proj.weight": "action_out_proj.weight",
    "act.out_proj.bias": "action_out_proj.bias",
    "time.mlp_in.weight": "time_mlp_in.weight",
    "time.mlp_in.bias": "time_mlp_in.bias",
    "time.mlp_out.weight": "time_mlp_out.weight",
    "time.mlp_out.bias": "time_mlp_out.bias",
}
# Norm statistics: openpi assets/<asset_id>/norm_stats.json keys, lerobot processor key prefixes.
PI05_NORM_STATS_FILE = "norm_stats.json"
PI05_NORM_KEY_STATE = "state"
PI05_NORM_KEY_ACTIONS = "actions"
PI05_LEROBOT_STATE_PREFIX = "observation.state"
PI05_LEROBOT_ACTION_PREFIX = "action"
PI05_LEROBOT_IMAGE_PREFIX = "observation.images."  # lerobot input_features image keys
PI05_LEROBOT_EMPTY_CAMERA = "empty_camera_{i}"  # lerobot config.empty_cameras slots (always missing)
# Discretised-state prompt (pi0.5 with discrete_state_input, openpi PaligemmaTokenizer / lerobot).
PI05_STATE_PROMPT = "Task: {task}, State: {state};\nAction: "
PI05_STATE_BINS = 256

# ---------------------------------------------------------------------------------------------------
# openvla_oft names (policies/openvla_oft)
# ---------------------------------------------------------------------------------------------------

OFT_FAMILY = "openvla_oft"

# Upstream protocol constants (moojink/openvla-oft prismatic/vla/constants.py, modeling_prismatic.py).
OFT_PROMPT_TEMPLATE = "In: What action should the robot take to {task}?\nOut:"  # task lower-cased
OFT_LLAMA_EMPTY_TOKEN = 29871  # "▁": appended when the prompt does not end with it
OFT_LLAMA_STOP_TOKEN = 2  # "</s>", appended after the action placeholders
OFT_LLAMA_PLACEHOLDER_TOKEN = 1  # id of the action placeholders (their embeddings are zeroed anyway)
OFT_LLAMA_PAD_TOKEN = 32000  # "<PAD>" added by prismatic, vocab padded to 32064
OFT_LLAMA_TOKENIZER_VOCAB = 32000  # action bin b -> token id (tokenizer vocab - b)
OFT_ACTION_BINS = 256
OFT_NORM_EPS = 1e-8  # bounds_q99 (un)normalisation epsilon
# transformers' LlamaConfig default rms_norm_eps: what an HF-loaded OpenVLA runs with when its config.json
# text_config does not spell the value (Llama-2-7b-hf's own config says 1e-5).
OFT_HF_LLAMA_DEFAULT_RMS_EPS = 1e-6
# Image normalisation (DINOv2: ImageNet; SigLIP: 0.5 / 0.5), per RGB channel.
OFT_DINO_MEAN = (0.485, 0.456, 0.406)
OFT_DINO_STD = (0.229, 0.224, 0.225)
OFT_SIGLIP_MEAN = (0.5, 0.5, 0.5)
OFT_SIGLIP_STD = (0.5, 0.5, 0.5)
OFT_CENTER_CROP_AREA = 0.9
# Image slots in model order (LIBERO: agentview + wrist).
OFT_IMAGE_SLOTS = ("full_image", "wrist_image")
# dataset_statistics.json: {unnorm_key: {"action": {q01, q99, mask, ...}, "proprio": {...}}}
OFT_DATASET_STATS_FILE = "dataset_statistics.json"
OFT_STATS_KEY_ACTION = "action"
OFT_STATS_KEY_PROPRIO = "proprio"

# --- canonical GGUF tensor names --------------------------------------------------------------------
# Matrices [out, in] (torch Linear layout); vectors [n].  Prefix "vd." = DINOv2 featurizer, "vs." =
# SigLIP fused featurizer; both store only the blocks that feed the features (depth - 1: the features
# come from the second-to-last block, the last block and the final norm are dead weights).  Patch
# embedding convs [w, 3, p, p] are stored flattened [w, 3*p*p] (column c*p*p + ky*p + kx).  Position
# embeddings [n_patches, w] (DINOv2 has no_embed_class: patches only).  attn_qkv is timm's fused
# [3w, w] = (q | k | v) rows.  ls1/ls2: LayerScale vectors ("scale_factor" upstream).  film_*: FiLM
# Linear(lm_width -> w), present only with use_film.  Llama RMSNorm weights are stored as they are.
OFT_TENSOR_NAMES = {
    "vd_patch_w": "vd.patch_embd.weight",  # [dw, 3*p*p]
    "vd_patch_b": "vd.patch_embd.bias",  # [dw]
    "vd_pos": "vd.position_embd.weight",  # [n_patches, dw]
    "vd_cls": "vd.cls_embd.weight",  # [dw]
    "vd_reg": "vd.reg_embd.weight",  # [n_registers, dw]
    "vd_ln1_w": "vd.blk.{i}.ln1.weight",
    "vd_ln1_b": "vd.blk.{i}.ln1.bias",
    "vd_qkv_w": "vd.blk.{i}.attn_qkv.weight",  # [3dw, dw]
    "vd_qkv_b": "vd.blk.{i}.attn_qkv.bias",
    "vd_out_w": "vd.blk.{i}.attn_out.weight",
    "vd_out_b": "vd.blk.{i}.attn_out.bias",
    "vd_ls1": "vd.blk.{i}.ls1.weight",
    "vd_ln2_w": "vd.blk.{i}.ln2.weight",
    "vd_ln2_b": "vd.blk.{i}.ln2.bias",
    "vd_up_w": "vd.blk.{i}.ffn_up.weight",
    "vd_up_b": "vd.blk.{i}.ffn_up.bias",
    "vd_down_w": "vd.blk.{i}.ffn_down.weight",
    "vd_down_b": "vd.blk.{i}.ffn_down.bias",
    "vd_ls2": "vd.blk.{i}.ls2.weight",
    "vd_film_scale_w": "vd.blk.{i}.film_scale.weight",  # [dw, lm_width]
    "vd_film_scale_b": "vd.blk.{i}.film_scale.bias",
    "vd_film_shift_w": "vd.blk.{i}.film_shift.weight",
    "vd_film_shift_b": "vd.blk.{i}.film_shift.bias",
    "vs_patch_w": "vs.patch_embd.weight",
    "vs_patch_b": "vs.patch_embd.bias",
    "vs_pos": "vs.position_embd.weight",
    "vs_ln1_w": "vs.blk.{i}.ln1.weight",
    "vs_ln1_b": "vs.blk.{i}.ln1.bias",
    "vs_qkv_w": "vs.blk.{i}.attn_qkv.weight",
    "vs_qkv_b": "vs.blk.{i}.attn_qkv.bias",
    "vs_out_w": "vs.blk.{i}.attn_out.weight",
    "vs_out_b": "vs.blk.{i}.attn_out.bias",
    "vs_ln2_w": "vs.blk.{i}.ln2.weight",
    "vs_ln2_b": "vs.blk.{i}.ln2.bias",
    "vs_up_w": "vs.blk.{i}.ffn_up.weight",
    "vs_up_b": "vs.blk.{i}.ffn_up.bias",
    "vs_down_w": "vs.blk.{i}.ffn_down.weight",
    "vs_down_b": "vs.blk.{i}.ffn_down.bias",
    "vs_film_scale_w": "vs.blk.{i}.film_scale.weight",
    "vs_film_scale_b": "vs.blk.{i}.film_scale.bias",
    "vs_film_shift_w": "vs.blk.{i}.film_shift.weight",
    "vs_film_shift_b": "vs.blk.{i}.film_shift.bias",
    "mm_fc1_w": "mm.fc1.weight",  # [projector_hidden, dw + sw]
    "mm_fc1_b": "mm.fc1.bias",
    "mm_fc2_w": "mm.fc2.weight",  # [lm_width, projector_hidden]
    "mm_fc2_b": "mm.fc2.bias",
    "mm_fc3_w": "mm.fc3.weight",  # [lm_width, lm_width]
    "mm_fc3_b": "mm.fc3.bias",
    "pp_fc1_w": "proprio.fc1.weight",  # [lm_width, proprio_dim]
    "pp_fc1_b": "proprio.fc1.bias",
    "pp_fc2_w": "proprio.fc2.weight",  # [lm_width, lm_width]
    "pp_fc2_b": "proprio.fc2.bias",
    "lm_tok_embd": "lm.token_embd.weight",  # [vocab, lm_width]
    "lm_attn_norm": "lm.blk.{i}.attn_norm.weight",
    "lm_q": "lm.blk.{i}.attn_q.weight",  # [heads*hd, lm_width]
    "lm_k": "lm.blk.{i}.attn_k.weight",  # [kv_heads*hd, lm_width]
    "lm_v": "lm.blk.{i}.attn_v.weight",
    "lm_o": "lm.blk.{i}.attn_output.weight",
    "lm_ffn_norm": "lm.blk.{i}.ffn_norm.weight",
    "lm_gate": "lm.blk.{i}.ffn_gate.weight",  # [lm_mlp, lm_width]
    "lm_up": "lm.blk.{i}.ffn_up.weight",
    "lm_down": "lm.blk.{i}.ffn_down.weight",
    "lm_out_norm": "lm.output_norm.weight",
    "lm_head": "lm.output.weight",  # [vocab, lm_width]: NLL only (not exported by default)
    "hd_ln1_w": "head.ln1.weight",  # [action_dim*lm_width]
    "hd_ln1_b": "head.ln1.bias",
    "hd_fc1_w": "head.fc1.weight",  # [head_hidden, action_dim*lm_width]
    "hd_fc1_b": "head.fc1.bias",
    "hd_blk_ln_w": "head.blk.{i}.ln.weight",
    "hd_blk_ln_b": "head.blk.{i}.ln.bias",
    "hd_blk_fc_w": "head.blk.{i}.fc.weight",  # [head_hidden, head_hidden]
    "hd_blk_fc_b": "head.blk.{i}.fc.bias",
    "hd_ln2_w": "head.ln2.weight",
    "hd_ln2_b": "head.ln2.bias",
    "hd_fc2_w": "head.fc2.weight",  # [action_dim, head_hidden]
    "hd_fc2_b": "head.fc2.bias",
}
# Tensors that are parameters but not matrices to quantize (token-like rows read whole): kept F32.
OFT_KEEP_F32 = ("vd.cls_embd.weight", "vd.reg_embd.weight", "vd.position_embd.weight", "vs.position_embd.weight")
OFT_LM_HEAD = "lm.output.weight"

# --- named intermediates (torch reference <-> native graph) --------------------------------------------
OFT_INTER_DINO = "dino_feat.{img}"  # [B, n_patches, dino_width] second-to-last block, prefix dropped
OFT_INTER_SIGLIP = "siglip_feat.{img}"  # [B, n_patches, siglip_width]
OFT_INTER_FILM_COND = "film_cond"  # [B, lm_width] mean language embedding (FiLM only)
OFT_INTER_PROJECTOR = "projector_out"  # [B, n_images*n_patches, lm_width]
OFT_INTER_PROPRIO = "proprio_emb"  # [B, lm_width]
OFT_INTER_INPUT_EMB = "input_emb"  # [B, L, lm_width] multimodal sequence entering the decoder
OFT_INTER_ACTION_HIDDEN = "action_hidden"  # [B, chunk*action_dim, lm_width] after the final RMSNorm
OFT_INTER_ACTIONS = "actions"  # [B, chunk, action_dim] normalised actions

# --- checkpoint keys (HF merged VLA shards + torch-pickled heads) ------------------------------------
OFT_CKPT_DINO = "vision_backbone.featurizer."
OFT_CKPT_SIGLIP = "vision_backbone.fused_featurizer."
OFT_CKPT_LM = "language_model.model."
OFT_CKPT_LM_HEAD = "language_model.lm_head.weight"
OFT_CKPT_DDP_PREFIX = "module."
OFT_CKPT_ACTION_HEAD_GLOB = "action_head--*checkpoint.pt"
OFT_CKPT_PROPRIO_GLOB = "proprio_projector--*checkpoint.pt"
OFT_CKPT_FILM_GLOB = "vision_backbone--*checkpoint.pt"
# Checkpoint keys dropped silently (regex, full match): SigLIP MAP head, dead last blocks / final norms
# are handled by the loader (it knows the depth).
OFT_CKPT_DROP = (r"vision_backbone\.fused_featurizer\.attn_pool\..*",)
# canonical-name template -> checkpoint-key template ({i} = block index).  ViT blocks: timm names.
_OFT_VIT_BLOCK = {
    "ln1.weight": "norm1.weight", "ln1.bias": "norm1.bias",
    "attn_qkv.weight": "attn.qkv.weight", "attn_qkv.bias": "attn.qkv.bias",
    "attn_out.weight": "attn.proj.weight", "attn_out.bias": "attn.proj.bias",
    "ln2.weight": "norm2.weight", "ln2.bias": "norm2.bias",
    "ffn_up.weight": "mlp.fc1.weight", "ffn_up.bias": "mlp.fc1.bias",
    "ffn_down.weight": "mlp.fc2.weight", "ffn_down.bias": "mlp.fc2.bias",
    "ls1.weight": "ls1.scale_factor", "ls2.weight": "ls2.scale_factor",
    "film_scale.weight": "scale.weight", "film_scale.bias": "scale.bias",
    "film_shift.weight": "shift.weight", "film_shift.bias": "shift.bias",
}
OFT_CKPT_KEYS = {
    "vd.patch_embd.weight": OFT_CKPT_DINO + "patch_embed.proj.weight",  # conv [w, 3, p, p]
    "vd.patch_embd.bias": OFT_CKPT_DINO + "patch_embed.proj.bias",
    "vd.position_embd.weight": OFT_CKPT_DINO + "pos_embed",  # [1, n_patches, w]
    "vd.cls_embd.weight": OFT_CKPT_DINO + "cls_token",  # [1, 1, w]
    "vd.reg_embd.weight": OFT_CKPT_DINO + "reg_token",  # [1, n_registers, w]
    "vs.patch_embd.weight": OFT_CKPT_SIGLIP + "patch_embed.proj.weight",
    "vs.patch_embd.bias": OFT_CKPT_SIGLIP + "patch_embed.proj.bias",
    "vs.position_embd.weight": OFT_CKPT_SIGLIP + "pos_embed",
    **{f"vd.blk.{{i}}.{k}": OFT_CKPT_DINO + f"blocks.{{i}}.{v}" for k, v in _OFT_VIT_BLOCK.items()},
    **{f"vs.blk.{{i}}.{k}": OFT_CKPT_SIGLIP + f"blocks.{{i}}.{v}" for k, v in _OFT_VIT_BLOCK.items()
       if not k.startswith("ls")},
    **{f"mm.fc{n}.{w}": f"projector.fc{n}.{w}" for n in (1, 2, 3) for w in ("weight", "bias")},
    "lm.token_embd.weight": OFT_CKPT_LM + "embed_tokens.weight",
    "lm.blk.{i}.attn_norm.weight": OFT_CKPT_LM + "layers.{i}.input_layernorm.weight",
    "lm.blk.{i}.attn_q.weight": OFT_CKPT_LM + "layers.{i}.self_attn.q_proj.weight",
    "lm.blk.{i}.attn_k.weight": OFT_CKPT_LM + "layers.{i}.self_attn.k_proj.weight",
    "lm.blk.{i}.attn_v.weight": OFT_CKPT_LM + "layers.{i}.self_attn.v_proj.weight",
    "lm.blk.{i}.attn_output.weight": OFT_CKPT_LM + "layers.{i}.self_attn.o_proj.weight",
    "lm.blk.{i}.ffn_norm.weight": OFT_CKPT_LM + "layers.{i}.post_attention_layernorm.weight",
    "lm.blk.{i}.ffn_gate.weight": OFT_CKPT_LM + "layers.{i}.mlp.gate_proj.weight",
    "lm.blk.{i}.ffn_up.weight": OFT_CKPT_LM + "layers.{i}.mlp.up_proj.weight",
    "lm.blk.{i}.ffn_down.weight": OFT_CKPT_LM + "layers.{i}.mlp.down_proj.weight",
    "lm.output_norm.weight": OFT_CKPT_LM + "norm.weight",
    "lm.output.weight": OFT_CKPT_LM_HEAD,
}
# Torch-pickled heads (after stripping "module."): canonical template -> state-dict key.
OFT_CKPT_HEAD_KEYS = {
    "head.ln1.weight": "model.layer_norm1.weight", "head.ln1.bias": "model.layer_norm1.bias",
    "head.fc1.weight": "model.fc1.weight", "head.fc1.bias": "model.fc1.bias",
    "head.blk.{i}.ln.weight": "model.mlp_resnet_blocks.{i}.ffn.0.weight",
    "head.blk.{i}.ln.bias": "model.mlp_resnet_blocks.{i}.ffn.0.bias",
    "head.blk.{i}.fc.weight": "model.mlp_resnet_blocks.{i}.ffn.1.weight",
    "head.blk.{i}.fc.bias": "model.mlp_resnet_blocks.{i}.ffn.1.bias",
    "head.ln2.weight": "model.layer_norm2.weight", "head.ln2.bias": "model.layer_norm2.bias",
    "head.fc2.weight": "model.fc2.weight", "head.fc2.bias": "model.fc2.bias",
}
OFT_CKPT_PROPRIO_KEYS = {
    "proprio.fc1.weight": "fc1.weight", "proprio.fc1.bias": "fc1.bias",
    "proprio.fc2.weight": "fc2.weight", "proprio.fc2.bias": "fc2.bias",
}

# ---------------------------------------------------------------------------------------------------
# Robot / RTDE names (robot/)
# ---------------------------------------------------------------------------------------------------

# UR joint names in controller order (the same names as the Universal_Robots_ROS2_Driver).
UR_JOINT_NAMES = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
UR_NUM_JOINTS = 6
UR_TYPE_UR3 = "ur3"  # CB3 controller, 125 Hz RTDE
UR_TYPE_UR3E = "ur3e"  # e-series controller, 500 Hz RTDE
UR_TYPES = (UR_TYPE_UR3, UR_TYPE_UR3E)
UR_CONTROL_RATE_HZ = {UR_TYPE_UR3: 125.0, UR_TYPE_UR3E: 500.0}

# RTDE ports and ur_rtde client limits (servoJ and joint-space motion).
RTDE_PORT = 30004
RTDE_DASHBOARD_PORT = 29999
RTDE_SCRIPT_PORT = 30003
RTDE_LOOKAHEAD_MIN_S = 0.03
RTDE_LOOKAHEAD_MAX_S = 0.2
RTDE_GAIN_MIN = 100.0
RTDE_GAIN_MAX = 2000.0
RTDE_MAX_JOINT_SPEED = 3.14  # rad/s
RTDE_MAX_JOINT_ACCEL = 40.0  # rad/s^2

# RTDE safety_status_bits (bit index -> meaning) and runtime_state values.
RTDE_SAFETY_BIT_PROTECTIVE_STOP = 2
RTDE_SAFETY_BIT_SAFEGUARD_STOP = 4
RTDE_SAFETY_BITS_EMERGENCY_STOP = (5, 6, 7)  # system / robot / (any) emergency stopped
RTDE_SAFETY_BITS_FAULT = (8, 9)  # violation, fault
RTDE_RUNTIME_STATE_PLAYING = 2

# Arm fault names (ArmState.faults).
FAULT_PROTECTIVE_STOP = "protective_stop"
FAULT_EMERGENCY_STOP = "emergency_stop"
FAULT_SAFEGUARD_STOP = "safeguard_stop"
FAULT_SAFETY_FAULT = "safety_fault"
FAULT_PROGRAM_STOPPED = "program_stopped"
FAULT_DISCONNECTED = "disconnected"

# Safety event kinds (SafetyEvent.kind) and control-loop fault reasons.
SAFETY_NONFINITE = "nonfinite_action"
SAFETY_BAD_SHAPE = "bad_shape"
SAFETY_POSITION_LIMIT = "position_limit"
SAFETY_VELOCITY_LIMIT = "velocity_limit"
SAFETY_ACCELERATION_LIMIT = "acceleration_limit"
SAFETY_STEP_LIMIT = "step_limit"
SAFETY_GRIPPER_LIMIT = "gripper_limit"
SAFETY_JOINT_STALE = "joint_stale"
SAFETY_CAMERA_STALE = "camera_stale"
SAFETY_WATCHDOG = "watchdog"
SAFETY_ARM_FAULT = "arm_fault"
SAFETY_EXCEPTION = "exception"

# Chunk scheduler modes.
SCHED_MODE_BLEND = "blend"  # new chunk starts at its arrival; cross-fade from the old one
SCHED_MODE_RTC = "rtc"  # new chunk aligned to its observation time (stale prefix skipped)
SCHED_INTERP_LINEAR = "linear"
SCHED_INTERP_CUBIC = "cubic"

# ursim ------------------------------------------------------------------------------------------
# UR controller simulator (sim/ursim): RTDE v2 message types (header byte), the ur_rtde control
# script's command ids (input_int_register_0 + offset) and its handshake values
# (output_int_register_0 + offset), controller mode codes, and the simulator's own dashboard words.
URSIM_RTDE_PROTOCOL_VERSION = 2
URSIM_MSG_REQUEST_PROTOCOL_VERSION = 86  # 'V'
URSIM_MSG_GET_URCONTROL_VERSION = 118  # 'v'
URSIM_MSG_TEXT_MESSAGE = 77  # 'M'
URSIM_MSG_DATA_PACKAGE = 85  # 'U'
URSIM_MSG_SETUP_OUTPUTS = 79  # 'O'
URSIM_MSG_SETUP_INPUTS = 73  # 'I'
URSIM_MSG_START = 83  # 'S'
URSIM_MSG_PAUSE = 80  # 'P'
URSIM_CMD_NO_CMD = 0
URSIM_CMD_MOVEJ = 1
URSIM_CMD_SPEEDJ = 9
URSIM_CMD_SPEEDL = 10
URSIM_CMD_SERVOJ = 11
URSIM_CMD_SPEED_STOP = 15
URSIM_CMD_SERVO_STOP = 16
URSIM_CMD_SET_PAYLOAD = 17
URSIM_CMD_FORCE_MODE_SET_DAMPING = 20
URSIM_CMD_FORCE_MODE_SET_GAIN_SCALING = 21
URSIM_CMD_GET_STEPTIME = 26
URSIM_CMD_SET_TCP = 29
URSIM_CMD_PROTECTIVE_STOP = 31
URSIM_CMD_STOPL = 33
URSIM_CMD_STOPJ = 34
URSIM_CMD_SET_WATCHDOG = 35
URSIM_CMD_GET_TCP_OFFSET = 40
URSIM_CMD_GET_FK_DEFAULT = 43
URSIM_CMD_GET_FK_ARGS = 44
URSIM_CMD_IS_STEADY = 47
URSIM_CMD_SET_GRAVITY = 59
URSIM_CMD_STOP_SCRIPT = 255
# Commands the control script answers without waiting (it signals "ready" in the same cycle).
URSIM_REALTIME_CMDS = (24, 11, 9, 10, 6, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71)
URSIM_CONTROLLER_READY = 1  # output_int_register_0: ready for a command
URSIM_CONTROLLER_DONE = 2  # output_int_register_0: done with the command
URSIM_UPPER_REGISTER_OFFSET = 24  # FLAG_UPPER_RANGE_REGISTERS
# runtime_state
URSIM_RUNTIME_STOPPING = 0
URSIM_RUNTIME_STOPPED = 1
URSIM_RUNTIME_PLAYING = 2
URSIM_RUNTIME_PAUSING = 3
URSIM_RUNTIME_PAUSED = 4
# robot_mode
URSIM_ROBOT_MODE_POWER_OFF = 3
URSIM_ROBOT_MODE_IDLE = 5
URSIM_ROBOT_MODE_RUNNING = 7
URSIM_ROBOT_MODE_NAMES = {3: "POWER_OFF", 4: "POWER_ON", 5: "IDLE", 6: "BACKDRIVE", 7: "RUNNING"}
# safety_mode (safety_status_bits bit index = mode - 1 for the first ones)
URSIM_SAFETY_MODE_NORMAL = 1
URSIM_SAFETY_MODE_PROTECTIVE_STOP = 3
URSIM_SAFETY_MODE_SYSTEM_EMERGENCY_STOP = 6
URSIM_SAFETY_MODE_NAMES = {1: "NORMAL", 2: "REDUCED", 3: "PROTECTIVE_STOP", 4: "RECOVERY",
                           5: "SAFEGUARD_STOP", 6: "SYSTEM_EMERGENCY_STOP", 7: "ROBOT_EMERGENCY_STOP",
                           8: "VIOLATION", 9: "FAULT"}
URSIM_SAFETY_BIT_NORMAL = 0
URSIM_SAFETY_BIT_STOPPED_DUE_TO_SAFETY = 10
# robot_status_bits
URSIM_ROBOT_STATUS_BIT_POWER_ON = 0
URSIM_ROBOT_STATUS_BIT_PROGRAM_RUNNING = 1
# joint_mode
URSIM_JOINT_MODE_POWER_OFF = 239
URSIM_JOINT_MODE_IDLE = 255
URSIM_JOINT_MODE_RUNNING = 253
# Simulator control over the dashboard port: "actquant inject protective_stop" etc.
URSIM_DASHBOARD_CONTROL_WORD = "actquant"
URSIM_FAULT_PROTECTIVE_STOP = "protective_stop"
URSIM_FAULT_EMERGENCY_STOP = "estop"
URSIM_FAULT_CONNECTION_DROP = "drop"
URSIM_FAULT_PROGRAM_STOP = "program_stop"
URSIM_FAULTS = (URSIM_FAULT_PROTECTIVE_STOP, URSIM_FAULT_EMERGENCY_STOP, URSIM_FAULT_CONNECTION_DROP,
                URSIM_FAULT_PROGRAM_STOP)
URSIM_READY_LINE = "URSIM READY"  # printed on stdout (and written to --ready-file) once serving

# ---------------------------------------------------------------------------------------------------
# Simulation names (sim/)
# ---------------------------------------------------------------------------------------------------

# UR joint names as in the UR ROS 2 driver; qpos[:6] of every sim scene are these, in this order.
SIM_ARM_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
                  "wrist_2_joint", "wrist_3_joint")
SIM_FINGER_JOINTS = ("finger_1_joint", "finger_2_joint")
SIM_GRIPPER_ACTUATOR = "gripper_actuator"
SIM_GRIPPER_JOINT_NAME = "gripper"  # name of the gripper entry in JointState / JointTrajectory
SIM_DRAWER_JOINT = "drawer_joint"
SIM_TCP_SITE = "tcp"
SIM_CAMERA_BASE = "base_0_rgb"  # third-person camera (= pi05 camera slot 0)
SIM_CAMERA_WRIST = "left_wrist_0_rgb"  # wrist camera (= pi05 camera slot 1)
SIM_CAMERAS = (SIM_CAMERA_BASE, SIM_CAMERA_WRIST)
# Free objects, in qpos order after the arm, finger and drawer joints.
SIM_OBJECTS = ("red_cube", "green_cube", "blue_cube", "yellow_cube", "bowl_1", "bowl_2", "plate", "mug")
SIM_SUITES = ("spatial", "object", "goal", "long")
# LeRobot-style dataset keys (lerobot/utils/constants.py spelling).
SIM_KEY_STATE = "observation.state"  # float32 [7]: q[6] (rad) + gripper opening in [0, 1]
SIM_KEY_ACTION = "action"  # float32 [7]: absolute joint target q[6] (rad) + gripper target in [0, 1]
SIM_KEY_IMAGE_PREFIX = "observation.images."  # + camera name: uint8 [H, W, 3] RGB
SIM_DATASET_FORMAT = "actquant-lerobot-npz/1"
# rosbag2 topics written by sim/demos.py (match the ROS node's default topic names).
SIM_TOPIC_IMAGE_BASE = "/camera/base/image_raw"  # sensor_msgs/msg/Image rgb8
SIM_TOPIC_IMAGE_WRIST = "/camera/wrist/image_raw"  # sensor_msgs/msg/Image rgb8
SIM_TOPIC_JOINT_STATES = "/joint_states"  # sensor_msgs/msg/JointState (6 arm joints + "gripper")
SIM_TOPIC_INSTRUCTION = "/instruction"  # std_msgs/msg/String
SIM_TOPIC_ACTION_CHUNK = "/action_chunk"  # trajectory_msgs/msg/JointTrajectory (6 arm joints + "gripper")
SIM_CAMERA_TOPICS = {SIM_CAMERA_BASE: SIM_TOPIC_IMAGE_BASE, SIM_CAMERA_WRIST: SIM_TOPIC_IMAGE_WRIST}

# ---------------------------------------------------------------------------------------------------
# ROS topic and parameter names (actquant_ros)
# ---------------------------------------------------------------------------------------------------
# Default topics (ROS names; the DDS backend maps "/x" to the DDS topic "rt/x").
TOPIC_JOINT_STATES = "/joint_states"  # sensor_msgs/JointState: robot joint positions
TOPIC_INSTRUCTION = "/instruction"  # std_msgs/String: language instruction
TOPIC_ACTION_CHUNK = "/action_chunk"  # trajectory_msgs/JointTrajectory: one policy chunk
TOPIC_DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray
TOPIC_CAMERA_PREFIX = "/camera"  # camera images: "/camera/<name>/image_raw"
TOPIC_CAMERA_BASE = "/camera/base/image_raw"  # sensor_msgs/Image, default slot "base_0_rgb"
TOPIC_CAMERA_WRIST = "/camera/wrist/image_raw"  # sensor_msgs/Image, default slot "left_wrist_0_rgb"
DDS_TOPIC_PREFIX = "rt"  # ROS 2 topic "/x" is DDS topic "rt/x"
# ROS 2 message type names (pkg/msg/Name; DDS: pkg::msg::dds_::Name_)
ROS_TYPE_IMAGE = "sensor_msgs/msg/Image"
ROS_TYPE_COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
ROS_TYPE_JOINT_STATE = "sensor_msgs/msg/JointState"
ROS_TYPE_STRING = "std_msgs/msg/String"
ROS_TYPE_JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
ROS_TYPE_DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
# ROS image encodings understood by the numpy converters
IMAGE_ENCODING_RGB8 = "rgb8"
IMAGE_ENCODING_BGR8 = "bgr8"
IMAGE_ENCODING_MONO8 = "mono8"
# Parameter-file / CLI conventions (ROS 2 params YAML and `--ros-args`)
ROS_PARAMS_KEY = "ros__parameters"  # node_name: {ros__parameters: {...}}
ROS_ARGS_FLAG = "--ros-args"
ROS_PARAM_WILDCARD = "/**"  # params-file section that applies to every node
ENV_CYCLONEDDS_URI = "CYCLONEDDS_URI"  # Cyclone DDS config (file:// URI or inline XML)
ENV_ROS_DOMAIN_ID = "ROS_DOMAIN_ID"  # DDS domain id shared with ROS 2
ENV_TRANSPORT_BACKEND = "ACTQUANT_ROS_BACKEND"  # "auto" | "rclpy" | "dds": overrides make_node(backend="auto")
CYCLONEDDS_LOOPBACK_CONFIG = "config/cyclonedds_loopback.xml"  # relative to the repository / share dir

# ---------------------------------------------------------------------------------------------------
# Quantization pipeline and the `actquant` CLI (quant/pipeline.py, quant/calibrate.py, cli.py)
# ---------------------------------------------------------------------------------------------------
QUANT_PLAN_SUFFIX = ".plan.yaml"  # OUT.gguf -> OUT.plan.yaml (re-appliable with --plan)
QUANT_REPORT_SUFFIX = ".report.md"  # OUT.gguf -> OUT.report.md (+ OUT.report.<figure>.png)
QUANT_RANDOM_CHECKPOINT_PREFIX = "random:"  # "random:<preset>[:seed]": seeded random weights (tests, benchmarks)
CLI_ENTRY_POINT_GROUP = "actquant.commands"  # importlib.metadata group of `actquant` subcommand registrars
QUANT_METHODS = ("actquant", "rtn", "imatrix", "generic", "hsic-only", "fisher-only", "gptq")  # `actquant quantize --method`
QUANT_SCOPES = ("backbone", "all")  # allocated tensors: LM backbone (paper) | every linear layer

# ---------------------------------------------------------------------------------------------------
# Online deployment (actquant_ros/policy_node.py, sim_camera_node.py, replay.py, runtime/recording.py)
# ---------------------------------------------------------------------------------------------------
POLICY_NODE_NAME = "policy_node"
QUANTIZER_NODE_NAME = "quantizer_node"
SIM_CAMERA_NODE_NAME = "sim_camera_node"
ARM_KIND_RTDE = "rtde"  # policy_node `arm`: ur_rtde servoJ on robot_ip
ARM_KIND_SIM = "sim"  # in-process MuJoCo SimArm (realtime)
ARM_KIND_DRY_RUN = "dry_run"  # DryRunArm: commands recorded, never sent
ARM_KINDS = (ARM_KIND_RTDE, ARM_KIND_SIM, ARM_KIND_DRY_RUN)
JOINT_SOURCE_AUTO = "auto"  # policy_node `joint_state_source`: arm for rtde/sim, topic for dry_run
JOINT_SOURCE_TOPIC = "topic"
JOINT_SOURCE_ARM = "arm"
JOINT_SOURCES = (JOINT_SOURCE_AUTO, JOINT_SOURCE_TOPIC, JOINT_SOURCE_ARM)
TOPIC_POLICY_CONTROL = "~/control"  # std_msgs/String: "resume" | "hold" (operator commands)
TOPIC_QUANT_PROGRESS = "~/progress"  # std_msgs/String: JSON progress lines of the quantizer node
POLICY_CONTROL_RESUME = "resume"
POLICY_CONTROL_HOLD = "hold"
DIAG_POLICY = "actquant/policy"  # DiagnosticStatus names published by policy_node
DIAG_CONTROL_LOOP = "actquant/control_loop"
RECORDING_FORMAT = "actquant-recording/1"  # RecordingRuntime .npz file format tag
