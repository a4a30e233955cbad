"""policies.common.image: resize_with_pad geometry (openpi semantics), [-1, 1] mapping, camera slots."""

from __future__ import annotations

import numpy as np
import pytest

from actquant_core.policies.common.image import (
    camera_slots,
    resize_with_pad,
    resize_with_pad_geometry,
    uint8_to_signed_unit,
)


@pytest.mark.parametrize(
    "h,w,expect",
    [
        (256, 256, (224, 224, 0, 0)),
        (480, 640, (168, 224, 28, 0)),  # landscape: ratio 640/224, h' = int(480/ratio) = 168
        (640, 480, (224, 168, 0, 28)),
        (100, 300, (74, 224, 75, 0)),  # int truncation: 100/(300/224) = 74.67 -> 74, pad int(150/2)=75
        (50, 50, (224, 224, 0, 0)),  # upscaling
    ],
)
def test_geometry_matches_openpi_formula(h, w, expect):
    assert resize_with_pad_geometry(h, w, 224, 224) == expect


def test_resize_with_pad_places_content_centered_with_black_bars():
    img = np.full((480, 640, 3), 200, dtype=np.uint8)
    out = resize_with_pad(img, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out[:28] == 0).all() and (out[28 + 168 :] == 0).all()
    assert (out[28 : 28 + 168] == 200).all()
    # a left-half-red image stays left-half red (no flips / transposes)
    img2 = np.zeros((100, 200, 3), dtype=np.uint8)
    img2[:, :100, 0] = 255
    out2 = resize_with_pad(img2, 224, 224)
    assert out2[112, 10, 0] == 255 and out2[112, 213, 0] == 0


def test_resize_same_size_is_identity_copy():
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    out = resize_with_pad(img, 224, 224)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_bad_images_rejected():
    with pytest.raises(ValueError, match="HxWx3"):
        resize_with_pad(np.zeros((10, 10), np.uint8), 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        resize_with_pad(np.zeros((10, 10, 3), np.float32), 224, 224)


def test_signed_unit_range_and_layout():
    img = np.array([[[0, 255, 51]]], dtype=np.uint8)
    x = uint8_to_signed_unit(img)
    assert x.shape == (3, 1, 1)
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-7)


def test_camera_slots_missing_camera_is_minus_one_and_masked():
    slots = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    imgs = {"base_0_rgb": np.full((64, 64, 3), 255, np.uint8), "right_wrist_0_rgb": np.zeros((32, 48, 3), np.uint8)}
    px, m = camera_slots(imgs, slots, 32)
    assert px.shape == (3, 3, 32, 32) and px.dtype == np.float32
    assert m.tolist() == [True, False, True]
    assert (px[0] == 1.0).all() and (px[1] == -1.0).all() and (px[2] == -1.0).all()
    with pytest.raises(ValueError, match="unknown camera slots"):
        camera_slots({"wrist": imgs["base_0_rgb"]}, slots, 32)
    with pytest.raises(ValueError, match="no camera image"):
        camera_slots({}, slots, 32)


def test_sim_camera_map_names_or_order():
    from actquant_core.constants import PI05_CAMERA_SLOTS, SIM_CAMERA_BASE, SIM_CAMERA_WRIST
    from actquant_core.policies.common.image import sim_camera_map

    # pi05 slots carry the sim cameras' names (the masked third slot gets nothing)
    assert sim_camera_map(PI05_CAMERA_SLOTS) == {SIM_CAMERA_BASE: SIM_CAMERA_BASE, SIM_CAMERA_WRIST: SIM_CAMERA_WRIST}
    # other slot names: third person first, then wrist
    assert sim_camera_map(("full_image", "wrist_image")) == {SIM_CAMERA_BASE: "full_image", SIM_CAMERA_WRIST: "wrist_image"}
    assert sim_camera_map(("cam_high", "cam_left", "cam_right")) == {SIM_CAMERA_BASE: "cam_high", SIM_CAMERA_WRIST: "cam_left"}
