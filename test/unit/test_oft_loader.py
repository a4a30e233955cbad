"""OpenVLA-OFT loader: tiny checkpoints written in the real HF layout load back to the same model."""

import json

import numpy as np
import pytest
import torch

from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.canonical import canonical_state_dict
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.loader import OftCheckpointError, load_oft_checkpoint, write_oft_checkpoint
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.policies.openvla_oft.preprocess import OftPreprocessor

STATS = {"libero_spatial": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
                            "proprio": {"q01": [0.0] * 8, "q99": [2.0] * 8}}}
BF16_REL = 2e-2  # bf16 weights (8-bit mantissa) vs the float32 model they were rounded from


def _inputs(cfg):
    pre = OftPreprocessor(cfg, SentencePieceTokenizer.small(), None)
    rng = np.random.default_rng(0)
    inp = pre({s: rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for s in cfg.image_slots}, np.zeros(8), "pick it up")
    return [torch.from_numpy(x) for x in inp.as_dict().values()]


@pytest.mark.parametrize("film, ddp", [(False, False), (True, True)], ids=["plain", "film-ddp"])
def test_tiny_checkpoint_forward_equals_source(tmp_path, film, ddp):
    cfg = get_preset("openvla-oft-tiny").replace(use_film=film)
    model = OftModel(cfg).init_random(3).eval()
    root = write_oft_checkpoint(model, tmp_path, ddp_prefix=ddp, dataset_statistics=STATS)
    index = json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 2
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in index or film
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in index
    assert f"vision_backbone.featurizer.blocks.{cfg.dino_depth - 1}.attn.qkv.weight" in index or film
    head_keys = list(torch.load(root / "action_head--150000_checkpoint.pt", weights_only=True))
    assert all(k.startswith("module.model.") if ddp else k.startswith("model.") for k in head_keys)
    # the base tells what tensors cannot (token ids of our small tokenizer): use_film comes from the files
    config, loaded, stats = load_oft_checkpoint(root, base=cfg.replace(use_film=False))
    assert config == cfg
    assert stats.action.mask.tolist() == [True] * 6 + [False]
    a, b = canonical_state_dict(model), canonical_state_dict(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model.predict_actions(*_inputs(cfg)), loaded.predict_actions(*_inputs(cfg)))


def test_bf16_shards(tmp_path):
    cfg = get_preset("openvla-oft-tiny")
    model = OftModel(cfg).init_random(4).eval()
    write_oft_checkpoint(model, tmp_path, dtype=torch.bfloat16)
    _, loaded, stats = load_oft_checkpoint(tmp_path, base=cfg)
    assert stats is None
    with torch.no_grad():
        ref, out = model.predict_actions(*_inputs(cfg)), loaded.predict_actions(*_inputs(cfg))
    assert float((out - ref).norm() / ref.norm()) < BF16_REL
    w = loaded.layers[0].q_proj.weight
    assert torch.equal(w, w.to(torch.bfloat16).to(torch.float32))  # values are exactly bf16


def test_layout_errors(tmp_path):
    cfg = get_preset("openvla-oft-tiny")
    model = OftModel(cfg).init_random(5).eval()
    root = write_oft_checkpoint(model, tmp_path / "ok")
    # a missing head file
    (root / "action_head--150000_checkpoint.pt").rename(root / "elsewhere.bin")
    with pytest.raises(OftCheckpointError, match="no file matching 'action_head--\\*checkpoint.pt'"):
        load_oft_checkpoint(root, base=cfg)
    (root / "elsewhere.bin").rename(root / "action_head--150000_checkpoint.pt")
    # a head key that is not an MLP-ResNet key
    head = torch.load(root / "action_head--150000_checkpoint.pt", weights_only=True)
    head["model.extra.weight"] = torch.zeros(2)
    torch.save(head, root / "action_head--150000_checkpoint.pt")
    with pytest.raises(OftCheckpointError, match=r"unexpected 1: \['model\.extra\.weight'\]"):
        load_oft_checkpoint(root, base=cfg)
    # a pickled object that weights_only refuses
    torch.save({"model.fc2.weight": object()}, root / "action_head--150000_checkpoint.pt")
    with pytest.raises(OftCheckpointError, match="weights_only=True"):
        load_oft_checkpoint(root, base=cfg)
    # two candidate head files
    root2 = write_oft_checkpoint(model, tmp_path / "two")
    torch.save({}, root2 / "action_head--50000_checkpoint.pt")
    with pytest.raises(OftCheckpointError, match="several files match"):
        load_oft_checkpoint(root2, base=cfg)


def test_config_json_heads_and_eps(tmp_path):
    cfg = get_preset("openvla-oft-tiny")
    root = write_oft_checkpoint(OftModel(cfg).init_random(6).eval(), tmp_path)
    loaded_cfg, _, _ = load_oft_checkpoint(root, base=cfg.replace(num_heads=2, num_kv_heads=2, rms_eps=3e-5))
    assert (loaded_cfg.num_heads, loaded_cfg.num_kv_heads, loaded_cfg.rms_eps) == (4, 4, cfg.rms_eps)  # from config.json
    (root / "config.json").write_text(json.dumps({"text_config": {"model_type": "llama", "vocab_size": 1024}}))
    loaded_cfg, _, _ = load_oft_checkpoint(root, base=cfg.replace(num_heads=2, num_kv_heads=2, rms_eps=3e-5))
    # no eps in text_config: transformers' LlamaConfig default; heads from the base, kv heads from shapes
    assert (loaded_cfg.num_heads, loaded_cfg.num_kv_heads, loaded_cfg.rms_eps) == (2, 2, 1e-6)
    (root / "config.json").unlink()
    loaded_cfg, _, _ = load_oft_checkpoint(root, base=cfg.replace(rms_eps=3e-5))
    assert loaded_cfg.rms_eps == 3e-5
