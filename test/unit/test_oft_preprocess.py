"""OpenVLA-OFT preprocessing (numpy/OpenCV): images, crop, normalisations, prompt, tokens, statistics."""

import json

import numpy as np
import pytest
from scipy import ndimage

from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.config import get_preset
from actquant_core.policies.openvla_oft.preprocess import (
    BoundsStats,
    OftNormStats,
    OftPreprocessor,
    actions_to_token_ids,
    build_prompt_ids,
    build_sequence,
    center_crop_resize,
    image_to_channels,
    libero_gripper,
    load_dataset_statistics,
    normalize_bounds,
    prepare_image,
    unnormalize_bounds,
)


def test_center_crop_matches_tf_crop_and_resize_formula():
    """Oracle: TF crop_and_resize sampling (corner-aligned box, bilinear) via scipy map_coordinates."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = center_crop_resize(img, 0.9)
    s = np.sqrt(0.9)
    off = (1 - s) / 2
    coords = off * 39 + np.arange(40) * s  # y1 (H-1) + i (y2-y1)(H-1)/(H-1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    ref = np.stack([ndimage.map_coordinates(img[..., c].astype(np.float64) / 255.0, [yy, xx], order=1)
                    for c in range(3)], axis=-1)
    ref = np.minimum(np.clip(ref, 0, 1) * 255.5, 255).astype(np.uint8)
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02  # float32 vs float64 at truncation boundaries
    assert center_crop_resize(img, 1.0).tolist() == img.tolist()


def test_image_channels_and_rotation():
    img = np.zeros((32, 32, 3), np.uint8)
    img[0, 0] = (255, 128, 0)
    x = image_to_channels(img)
    assert x.shape == (6, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:3, 0, 0], (np.array([1.0, 128 / 255, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-6)
    np.testing.assert_allclose(x[3:, 0, 0], np.array([1.0, 128 / 255, 0.0]) * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(x[3:, 5, 5], -1.0)
    rot = prepare_image(img, 32, rotate_180=True, center_crop=False)
    np.testing.assert_allclose(rot[3:, 31, 31], x[3:, 0, 0])
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(img.astype(np.float32), 32)


def test_prompt_and_sequence():
    cfg = get_preset("openvla-oft-tiny")
    tok = SentencePieceTokenizer.small()
    ids = build_prompt_ids(tok, "Pick Up the CUBE", cfg)
    expect = tok.encode("In: What action should the robot take to pick up the cube?\nOut:", add_bos=True)
    assert ids[: len(expect)] == expect and ids[-1] == cfg.empty_token_id and ids[0] == tok.bos_id
    assert len(ids) == len(expect) + (expect[-1] != cfg.empty_token_id)
    seq, mask = build_sequence(ids, cfg)
    n = cfg.num_action_tokens
    assert seq.tolist() == ids + [cfg.placeholder_token_id] * n + [cfg.stop_token_id]
    assert mask.sum() == n and mask[len(ids)] and not mask[-1] and not mask[len(ids) - 1]


def test_bounds_normalisation_with_mask_and_clip():
    st = BoundsStats(q01=[0, -2, 0], q99=[2, 2, 1], mask=[True, True, False])
    x = np.array([1.0, 3.0, 0.7], np.float32)
    y = normalize_bounds(x, st)
    np.testing.assert_allclose(y, [0.0, 1.0, 0.7], atol=1e-6)  # 2nd clipped, 3rd passes through
    a = np.array([[0.5, -0.5, 0.3]], np.float32)
    back = unnormalize_bounds(a, st)
    np.testing.assert_allclose(back, [[1.5, -1.0, 0.3]], atol=1e-6)
    np.testing.assert_allclose(normalize_bounds(back, st), a, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        normalize_bounds(np.array([np.nan, 0, 0]), st)
    with pytest.raises(ValueError, match="q01 \\(3,\\), q99 \\(2,\\)"):
        BoundsStats([0, 0, 0], [1, 1], None)


def test_gripper_and_action_tokens():
    a = np.array([[0.1, 0.9], [0.2, 0.3]], np.float32)
    np.testing.assert_array_equal(libero_gripper(a)[:, -1], [-1.0, 1.0])
    np.testing.assert_array_equal(libero_gripper(a)[:, 0], a[:, 0])
    cfg = get_preset("openvla-oft")
    ids = actions_to_token_ids(np.array([[[-1.0, 1.0, 0.0, 5.0, -0.999, 0.5, 0.25]]]), cfg)
    bins = np.linspace(-1, 1, 256)
    assert ids.shape == (1, 7)
    assert ids[0, 0] == 32000 - 1 and ids[0, 1] == 32000 - 256 and ids[0, 3] == ids[0, 1]
    assert ids[0, 2] == 32000 - np.digitize(0.0, bins)


def test_dataset_statistics(tmp_path):
    entry = {"action": {"q01": [0] * 7, "q99": [1] * 7, "mask": [True] * 6 + [False], "mean": [0] * 7},
             "proprio": {"q01": [0] * 8, "q99": [1] * 8}}
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"libero_spatial": entry, "libero_goal": entry}))
    with pytest.raises(ValueError, match="pass unnorm_key"):
        load_dataset_statistics(tmp_path)
    with pytest.raises(ValueError, match="no dataset 'x'"):
        load_dataset_statistics(tmp_path, "x")
    st = load_dataset_statistics(tmp_path, "libero_goal")
    assert st.action.mask.tolist() == [True] * 6 + [False] and st.proprio.mask.all()
    assert OftNormStats.from_json(st.to_json()).to_json() == st.to_json()


def test_preprocessor_end_to_end_and_errors():
    cfg = get_preset("openvla-oft-tiny")
    stats = OftNormStats(BoundsStats([-1] * 7, [1] * 7, None), BoundsStats([0] * 8, [2] * 8, None))
    pre = OftPreprocessor(cfg, SentencePieceTokenizer.small(), stats)
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 255, (50, 70, 3), dtype=np.uint8) for s in cfg.image_slots}
    inp = pre(imgs, np.ones(8), "open the drawer")
    assert inp.pixels.shape == (1, 12, 32, 32) and inp.attention_mask.all()
    np.testing.assert_allclose(inp.proprio, 0.0, atol=1e-6)
    np.testing.assert_allclose(inp.pixels[0, 6:], prepare_image(imgs[cfg.image_slots[1]], 32))
    with pytest.raises(ValueError, match="missing image slot"):
        pre({cfg.image_slots[0]: imgs[cfg.image_slots[0]]}, np.ones(8), "x")
    with pytest.raises(ValueError, match="proprio has 7 entries"):
        pre(imgs, np.ones(7), "x")
    with pytest.raises(ValueError, match="gripper must be one of"):
        OftPreprocessor(cfg, SentencePieceTokenizer.small(), None, gripper="x")
    with pytest.raises(ValueError, match="action statistics have 3 dims"):
        OftPreprocessor(cfg, SentencePieceTokenizer.small(), OftNormStats(BoundsStats([0] * 3, [1] * 3, None)))


def test_online_modules_import_no_torch():
    """The runtime facade and preprocessing must not load torch (edge computers have none)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, actquant_core.runtime.openvla_oft, actquant_core.policies.openvla_oft as o\n"
            "o.OftPreprocessor, o.OftNormStats\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
