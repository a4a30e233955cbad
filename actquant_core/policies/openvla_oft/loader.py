"""Load OpenVLA-OFT HF checkpoints into our reference model (and write test checkpoints in that layout).

Accepted layout (/work/shared/reference/openvla-oft.md §10):
- the merged VLA as ``model.safetensors`` or shards + ``model.safetensors.index.json`` (bf16/fp16/fp32),
  timm key names under ``vision_backbone.{featurizer,fused_featurizer}.``, LayerScale as
  ``ls{1,2}.scale_factor`` (``gamma`` accepted too), the SigLIP ``attn_pool.*`` MAP head (dropped), each
  ViT's last block and final ``norm`` (dead: features come from the second-to-last block; dropped),
  ``projector.fc{1,2,3}``, ``language_model.model.*`` and ``language_model.lm_head.weight`` (kept for
  the NLL loss only);
- torch-pickled ``action_head--*checkpoint.pt`` / ``proprio_projector--*checkpoint.pt`` (and, for FiLM,
  ``vision_backbone--*checkpoint.pt`` whose blocks are wrapped: ``blocks.N.block.*`` + ``blocks.N.scale``
  / ``shift``), read with ``torch.load(weights_only=True)``; a DDP ``module.`` prefix is stripped;
- ``dataset_statistics.json`` (bounds_q99 statistics per ``unnorm_key``) and ``config.json``.

Dimensions come from tensor shapes (widths, depths by counting blocks, MLP sizes, registers, patch and
image size, projector width, vocab, head sizes, action_dim = head input / lm_width, proprio_dim).
Head counts, the chunk length and the number of images cannot be read from shapes: ``config.json``
(``text_config.num_attention_heads`` / ``rms_norm_eps`` / ``rope_theta``) or the arguments give them.
A ``text_config`` without ``rms_norm_eps`` means transformers' LlamaConfig default (1e-6), which is
what the HF OpenVLA model runs with; without any config.json the base config's 1e-5 stays.  The FiLM key layout is inferred from upstream's wrapper, not checked
against a released file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from actquant_core.constants import (
    OFT_CKPT_ACTION_HEAD_GLOB,
    OFT_CKPT_DDP_PREFIX,
    OFT_CKPT_DINO,
    OFT_CKPT_DROP,
    OFT_CKPT_FILM_GLOB,
    OFT_CKPT_HEAD_KEYS,
    OFT_CKPT_KEYS,
    OFT_CKPT_LM,
    OFT_CKPT_PROPRIO_GLOB,
    OFT_CKPT_PROPRIO_KEYS,
    OFT_CKPT_SIGLIP,
    OFT_DATASET_STATS_FILE,
    OFT_HF_LLAMA_DEFAULT_RMS_EPS,
    OFT_LM_HEAD,
)
from actquant_core.policies.common.safetensors_io import read_checkpoint_tensors
from actquant_core.policies.openvla_oft.canonical import canonical_shapes, canonical_state_dict, model_from_canonical
from actquant_core.policies.openvla_oft.config import OftConfig
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.policies.openvla_oft.preprocess import OftNormStats, load_dataset_statistics

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
_ALL_KEYS = {**OFT_CKPT_KEYS, **OFT_CKPT_HEAD_KEYS, **OFT_CKPT_PROPRIO_KEYS}


class OftCheckpointError(ValueError):
    """The checkpoint's files, keys or shapes do not form an OpenVLA-OFT model."""


def _strip_ddp(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(OFT_CKPT_DDP_PREFIX) :] if k.startswith(OFT_CKPT_DDP_PREFIX) else k: v for k, v in state.items()}


def read_torch_state(path: str | Path) -> dict[str, np.ndarray]:
    """A torch-pickled state dict (``weights_only=True``) as float32 numpy, ``module.`` stripped."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, forbidden globals
        raise OftCheckpointError(f"{path}: cannot read as a torch state dict (weights_only=True): {exc}") from exc
    if not isinstance(state, dict):
        raise OftCheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise OftCheckpointError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = v.detach().to(torch.float32).cpu().numpy()
    return _strip_ddp(out)


def _find_one(root: Path, pattern: str, required: bool) -> Path | None:
    found = sorted(root.glob(pattern))
    if not found:
        if required:
            raise OftCheckpointError(f"{root}: no file matching {pattern!r}")
        return None
    if len(found) > 1:
        raise OftCheckpointError(f"{root}: several files match {pattern!r}: {[p.name for p in found]}; pass the step")
    return found[0]


def normalize_vlm_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip ``module.``, unwrap FiLM blocks (``blocks.N.block.x`` -> ``blocks.N.x``), accept timm's
    ``gamma`` for ``scale_factor``, drop ``attn_pool.*``."""
    out: dict[str, np.ndarray] = {}
    drop = [re.compile(p) for p in OFT_CKPT_DROP]
    for key, value in _strip_ddp(tensors).items():
        k = re.sub(r"\.blocks\.(\d+)\.block\.", r".blocks.\1.", key)
        k = re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", k)
        if any(p.fullmatch(k) for p in drop):
            continue
        if k in out:
            raise OftCheckpointError(f"checkpoint key {key!r} collides with another key after normalisation ({k!r})")
        out[k] = value
    return out


def _count_blocks(keys, prefix: str, word: str = "blocks") -> int:
    rx = re.compile(re.escape(prefix) + word + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if not idx:
        return 0
    if idx != set(range(max(idx) + 1)):
        raise OftCheckpointError(f"block indices under {prefix!r} are not contiguous: {sorted(idx)}")
    return max(idx) + 1


def infer_config(
    tensors: dict[str, np.ndarray],
    config_json: dict | None = None,
    *,
    chunk: int | None = None,
    num_images: int | None = None,
    dino_heads: int | None = None,
    siglip_heads: int | None = None,
    num_heads: int | None = None,
    base: OftConfig | None = None,
) -> OftConfig:
    """Derive an ``OftConfig`` from normalised tensors (VLM + head + proprio keys, checkpoint naming).

    Fields no tensor tells (token ids, slot names, epsilons, chunk and num_images unless given) come
    from ``base`` (default: the real ``openvla-oft`` preset), then config.json, then the arguments."""
    cj = config_json or {}
    tc = cj.get("text_config") if isinstance(cj.get("text_config"), dict) else {}
    base = base or OftConfig()
    chunk = base.chunk if chunk is None else chunk
    num_images = base.num_images if num_images is None else num_images
    dino_heads = base.dino_heads if dino_heads is None else dino_heads
    siglip_heads = base.siglip_heads if siglip_heads is None else siglip_heads

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise OftCheckpointError(f"checkpoint lacks {key!r}, needed to infer dimensions")
        return tuple(tensors[key].shape)

    keys = list(tensors)
    dw, _, patch, _ = shape(OFT_CKPT_DINO + "patch_embed.proj.weight")
    n_patches = int(np.prod(shape(OFT_CKPT_DINO + "pos_embed"))) // dw
    side = int(round(n_patches**0.5))
    if side * side != n_patches:
        raise OftCheckpointError(f"DINOv2 pos_embed holds {n_patches} patches, not a square number")
    regs = int(np.prod(shape(OFT_CKPT_DINO + "reg_token"))) // dw if OFT_CKPT_DINO + "reg_token" in tensors else 0
    sw = shape(OFT_CKPT_SIGLIP + "patch_embed.proj.weight")[0]
    vocab, D = shape(OFT_CKPT_LM + "embed_tokens.weight")
    n_heads = int(num_heads or tc.get("num_attention_heads") or base.num_heads)
    if D % n_heads:
        raise OftCheckpointError(f"lm width {D} is not a multiple of num_heads {n_heads}; pass num_heads=")
    hd = D // n_heads
    kv_rows = shape(OFT_CKPT_LM + "layers.0.self_attn.k_proj.weight")[0]
    head_in = shape(OFT_CKPT_HEAD_KEYS["head.fc1.weight"])[1]
    if head_in % D:
        raise OftCheckpointError(f"action head input {head_in} is not a multiple of the lm width {D}")
    film = OFT_CKPT_DINO + "blocks.0.scale.weight" in tensors
    has_proprio = OFT_CKPT_PROPRIO_KEYS["proprio.fc1.weight"] in tensors
    fields = dict(
        image_size=side * patch,
        patch_size=patch,
        dino_width=dw,
        dino_depth=_count_blocks(keys, OFT_CKPT_DINO),
        dino_heads=dino_heads,
        dino_mlp=shape(OFT_CKPT_DINO + "blocks.0.mlp.fc1.weight")[0],
        dino_registers=regs,
        siglip_width=sw,
        siglip_depth=_count_blocks(keys, OFT_CKPT_SIGLIP),
        siglip_heads=siglip_heads,
        siglip_mlp=shape(OFT_CKPT_SIGLIP + "blocks.0.mlp.fc1.weight")[0],
        num_images=num_images,
        use_film=film,
        projector_hidden=shape("projector.fc1.weight")[0],
        lm_width=D,
        lm_depth=_count_blocks(keys, OFT_CKPT_LM, "layers"),
        num_heads=n_heads,
        num_kv_heads=kv_rows // hd,
        lm_mlp=shape(OFT_CKPT_LM + "layers.0.mlp.gate_proj.weight")[0],
        vocab_size=vocab,
        action_dim=head_in // D,
        chunk=chunk,
        use_proprio=has_proprio,
        head_hidden=shape(OFT_CKPT_HEAD_KEYS["head.fc1.weight"])[0],
        head_blocks=len({m.group(1) for k in keys if (m := re.match(r"model\.mlp_resnet_blocks\.(\d+)\.", k))}),
    )
    if has_proprio:
        fields["proprio_dim"] = shape(OFT_CKPT_PROPRIO_KEYS["proprio.fc1.weight"])[1]
    for field, name in (("rms_eps", "rms_norm_eps"), ("rope_theta", "rope_theta")):
        if tc.get(name) is not None:
            fields[field] = float(tc[name])
    if tc and tc.get("rms_norm_eps") is None:
        # transformers builds the LlamaConfig from text_config: an absent eps means its default
        log.warning("config.json text_config has no rms_norm_eps: using transformers' LlamaConfig default %g "
                    "(what the HF model runs with)", OFT_HF_LLAMA_DEFAULT_RMS_EPS)
        fields["rms_eps"] = OFT_HF_LLAMA_DEFAULT_RMS_EPS
    if cj.get("pad_token_id") is not None:
        fields["pad_token_id"] = int(cj["pad_token_id"])
    if num_images != len(base.image_slots):
        fields["image_slots"] = tuple(f"image_{i}" for i in range(num_images))
    try:
        return base.replace(**fields)
    except ValueError as exc:
        raise OftCheckpointError(f"inferred dimensions are inconsistent: {exc}") from exc


def _template_of(canon: str) -> tuple[str, int | None]:
    m = re.search(r"\.blk\.(\d+)\.", canon)
    if m is None:
        return canon, None
    return canon.replace(f".blk.{m.group(1)}.", ".blk.{i}.", 1), int(m.group(1))


def checkpoint_key(canon: str) -> str:
    """The checkpoint key of a canonical tensor name."""
    template, i = _template_of(canon)
    ckpt = _ALL_KEYS[template]
    return ckpt if i is None else ckpt.format(i=i)


def checkpoint_to_canonical(tensors: dict[str, np.ndarray], config: OftConfig) -> dict[str, np.ndarray]:
    """Normalised checkpoint tensors -> canonical tensors (reshaped to the canonical layout).

    Dead tensors (each ViT's last block and final norm) are dropped; anything else left over or
    missing raises ``OftCheckpointError`` listing the keys."""
    shapes = canonical_shapes(config, include_lm_head=True)
    dead = re.compile(
        rf"({re.escape(OFT_CKPT_DINO)}blocks\.{config.dino_depth - 1}\.|{re.escape(OFT_CKPT_SIGLIP)}blocks\.{config.siglip_depth - 1}\."
        rf"|({re.escape(OFT_CKPT_DINO)}|{re.escape(OFT_CKPT_SIGLIP)})norm\.)"
    )
    wanted = {checkpoint_key(c): c for c in shapes}
    optional = {checkpoint_key(OFT_LM_HEAD)}
    missing = sorted(set(wanted) - set(tensors) - optional)
    unexpected = sorted(k for k in set(tensors) - set(wanted) if not dead.match(k))
    if missing or unexpected:
        raise OftCheckpointError(
            f"checkpoint keys do not match an openvla_oft model: missing {len(missing)}: {missing[:30]}"
            f"{' ...' if len(missing) > 30 else ''}; unexpected {len(unexpected)}: {unexpected[:30]}"
            f"{' ...' if len(unexpected) > 30 else ''}"
        )
    out = {}
    for ckpt, canon in wanted.items():
        if ckpt not in tensors:
            continue
        x = np.asarray(tensors[ckpt], dtype=np.float32)
        want = shapes[canon]
        if x.size != int(np.prod(want)):
            raise OftCheckpointError(f"{ckpt}: shape {x.shape} does not fit {canon} {want}")
        out[canon] = np.ascontiguousarray(x.reshape(want))
    return out


def _read_config_json(root: Path) -> dict:
    f = root / CONFIG_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise OftCheckpointError(f"{f}: invalid JSON: {exc}") from exc


def load_oft_checkpoint(
    path: str | Path,
    *,
    unnorm_key: str | None = None,
    chunk: int | None = None,
    num_images: int | None = None,
    dino_heads: int | None = None,
    siglip_heads: int | None = None,
    num_heads: int | None = None,
    base: OftConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[OftConfig, OftModel, OftNormStats | None]:
    """Load an OpenVLA-OFT checkpoint directory (HF shards + .pt heads + dataset_statistics.json).

    Args:
        path: the checkpoint directory.
        unnorm_key: dataset of ``dataset_statistics.json`` (may be omitted when it holds one).
        chunk, num_images: protocol values the tensors cannot tell (default: ``base``'s; LIBERO 8 / 2,
            ALOHA 25 / 3).
        dino_heads, siglip_heads, num_heads: head counts (default: ``base``'s; num_heads: config.json's).
        base: config giving what neither tensors nor config.json tell (token ids, slot names, eps);
            default the real ``openvla-oft`` preset.
        dtype: parameter dtype of the returned model.
    Returns:
        (config, model in eval mode, norm stats or None when the folder has no statistics).
    """
    root = Path(path)
    if not root.is_dir():
        raise OftCheckpointError(f"{root}: expected the checkpoint directory")
    tensors = normalize_vlm_keys(read_checkpoint_tensors(root))
    film_file = _find_one(root, OFT_CKPT_FILM_GLOB, required=False)
    if film_file is not None:
        film = read_torch_state(film_file)
        film = {k if k.startswith("vision_backbone.") else "vision_backbone." + k: v for k, v in film.items()}
        film = normalize_vlm_keys(film)
        log.info("FiLM vision backbone from %s (%d tensors) replaces the shards' vision tensors", film_file.name, len(film))
        tensors = {k: v for k, v in tensors.items() if not k.startswith("vision_backbone.")}
        tensors.update(film)
    head = read_torch_state(_find_one(root, OFT_CKPT_ACTION_HEAD_GLOB, required=True))
    proprio_file = _find_one(root, OFT_CKPT_PROPRIO_GLOB, required=False)
    proprio = read_torch_state(proprio_file) if proprio_file is not None else {}
    for name, part in (("action head", head), ("proprio projector", proprio)):
        clash = set(part) & set(tensors)
        if clash:
            raise OftCheckpointError(f"{name} keys clash with the VLM's: {sorted(clash)[:5]}")
        tensors.update(part)
    config = infer_config(
        tensors, _read_config_json(root), chunk=chunk, num_images=num_images, dino_heads=dino_heads,
        siglip_heads=siglip_heads, num_heads=num_heads, base=base,
    )
    model = model_from_canonical(config, checkpoint_to_canonical(tensors, config), dtype=dtype)
    stats = None
    if (root / OFT_DATASET_STATS_FILE).is_file():
        stats = load_dataset_statistics(root, unnorm_key)
    else:
        log.warning("no %s in %s: actions stay normalised", OFT_DATASET_STATS_FILE, root)
    log.info("loaded openvla_oft checkpoint %s: %.1fM parameters", root, model.num_parameters() / 1e6)
    return config, model, stats


@torch.no_grad()
def write_oft_checkpoint(
    model: OftModel,
    root: str | Path,
    *,
    n_shards: int = 2,
    ddp_prefix: bool = False,
    step: int = 150000,
    dataset_statistics: dict | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write ``model`` in the real HF layout (tests / interop): sharded safetensors + index with timm
    names, random dead tensors (each ViT's last block and final norm, SigLIP ``attn_pool``), config.json,
    ``action_head--{step}_checkpoint.pt``, ``proprio_projector--{step}_checkpoint.pt`` and, with FiLM,
    ``vision_backbone--{step}_checkpoint.pt`` (wrapped block keys).  Returns the directory."""
    from safetensors.torch import save_file

    c = model.config
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    canon = canonical_state_dict(model, include_lm_head=True)
    vlm, head, prop = {}, {}, {}
    real_shape = {
        "vd.patch_embd.weight": (c.dino_width, 3, c.patch_size, c.patch_size),
        "vs.patch_embd.weight": (c.siglip_width, 3, c.patch_size, c.patch_size),
        "vd.position_embd.weight": (1, c.num_patches, c.dino_width),
        "vs.position_embd.weight": (1, c.num_patches, c.siglip_width),
        "vd.cls_embd.weight": (1, 1, c.dino_width),
        "vd.reg_embd.weight": (1, c.dino_registers, c.dino_width),
    }
    for name, arr in canon.items():
        t = torch.from_numpy(arr.reshape(real_shape.get(name, arr.shape)).copy())
        key = checkpoint_key(name)
        if name.startswith("head."):
            head[key] = t
        elif name.startswith("proprio."):
            prop[key] = t
        else:
            vlm[key] = t
    # dead tensors: the last block of each ViT (copy shapes of block 0), final norms, the SigLIP MAP head
    for pre, depth in ((OFT_CKPT_DINO, c.dino_depth), (OFT_CKPT_SIGLIP, c.siglip_depth)):
        for k in [k for k in vlm if k.startswith(pre + "blocks.0.")]:
            vlm[k.replace("blocks.0.", f"blocks.{depth - 1}.", 1)] = torch.randn(vlm[k].shape, generator=g)
        width = c.dino_width if pre == OFT_CKPT_DINO else c.siglip_width
        vlm[pre + "norm.weight"] = torch.randn(width, generator=g)
        vlm[pre + "norm.bias"] = torch.randn(width, generator=g)
    vlm[OFT_CKPT_SIGLIP + "attn_pool.latent"] = torch.randn(1, 1, c.siglip_width, generator=g)
    vlm[OFT_CKPT_SIGLIP + "attn_pool.q.weight"] = torch.randn(c.siglip_width, c.siglip_width, generator=g)
    film = {}
    if c.use_film:  # FiLM checkpoints carry the whole (wrapped) vision backbone in a .pt
        for k in [k for k in vlm if k.startswith("vision_backbone.")]:
            fk = re.sub(r"\.blocks\.(\d+)\.(?!scale\.|shift\.)", r".blocks.\1.block.", k[len("vision_backbone."):])
            film[fk] = vlm[k] if ".scale." not in k and ".shift." not in k else vlm.pop(k)
    names = sorted(vlm)
    per = -(-len(names) // n_shards)
    weight_map = {}
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: vlm[k].to(dtype).contiguous() for k in names[s * per : (s + 1) * per]}
        save_file(part, str(root / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / CONFIG_FILE).write_text(json.dumps({
        "model_type": "openvla",
        "text_config": {"num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
                        "rms_norm_eps": c.rms_eps, "rope_theta": c.rope_theta, "hidden_size": c.lm_width},
        "pad_token_id": c.pad_token_id,
    }))
    pre = OFT_CKPT_DDP_PREFIX if ddp_prefix else ""
    torch.save({pre + k: v for k, v in head.items()}, root / f"action_head--{step}_checkpoint.pt")
    if prop:
        torch.save({pre + k: v for k, v in prop.items()}, root / f"proprio_projector--{step}_checkpoint.pt")
    if film:
        torch.save({pre + k: v for k, v in film.items()}, root / f"vision_backbone--{step}_checkpoint.pt")
    if dataset_statistics is not None:
        (root / OFT_DATASET_STATS_FILE).write_text(json.dumps(dataset_statistics))
    return root
