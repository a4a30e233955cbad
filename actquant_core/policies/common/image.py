"""Image preprocessing in numpy/OpenCV (no torch), shared by the torch reference and the native runtime.

``resize_with_pad`` follows openpi's ``image_tools.resize_with_pad`` (itself a replica of
``tf.image.resize_with_pad``): ratio = max(w/W, h/H); the resized size is truncated with ``int``;
the resized image is pasted at (int((W-w')/2), int((H-h')/2)) on a black canvas.  Interpolation:
OpenCV bilinear (``INTER_LINEAR``) when enlarging and ``INTER_AREA`` when shrinking, which is close to
PIL's antialiased bilinear that openpi uses (pixel values may differ by a few levels from PIL;
geometry is identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from actquant_core.constants import SIM_CAMERA_BASE, SIM_CAMERA_WRIST


def resize_with_pad_geometry(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, pad_top, pad_left) of ``resize_with_pad`` for a height x width image."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ratio = max(width / target_w, height / target_h)
    rh = max(1, int(height / ratio))
    rw = max(1, int(width / ratio))
    pad_top = max(0, int((target_h - rh) / 2))
    pad_left = max(0, int((target_w - rw) / 2))
    return rh, rw, pad_top, pad_left


def area_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [..., H, W, C] -> [..., H/f, W/f, C]: the mean of each f x f block, rounded as OpenCV does.

    Bit-exact with ``cv2.resize(img, (W/f, H/f), interpolation=cv2.INTER_AREA)`` for an integer factor f
    (checked in the tests), so integer downscales need no OpenCV (the GPU machine has none) and training
    data downsampled with it matches the runtime's pixels.  H and W must be multiples of f.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"area_downsample: expected uint8 images, got {images.dtype}")
    if factor < 1:
        raise ValueError(f"area_downsample: factor must be >= 1, got {factor}")
    if factor == 1:
        return images.copy()
    *lead, H, W, C = images.shape
    if H % factor or W % factor:
        raise ValueError(f"area_downsample: image {H}x{W} is not a multiple of the factor {factor}")
    blocks = images.reshape(*lead, H // factor, factor, W // factor, factor, C).astype(np.uint32)
    s = blocks.sum(axis=(-4, -2))
    n = factor * factor
    if factor == 2:  # OpenCV's dedicated 2x path rounds halves up; its generic path rounds to nearest even
        return ((s + 2) // 4).astype(np.uint8)
    return np.rint(s / n).astype(np.uint8)


def integer_downscale(h: int, w: int, height: int, width: int) -> int:
    """The integer factor f with h = f*height and w = f*width, or 0 when there is none."""
    if height <= 0 or width <= 0 or h % height or w % width or h // height != w // width:
        return 0
    return h // height


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWxC uint8 image to height x width keeping the aspect ratio, black-padded, centred.

    Args:
        image: [h, w, 3] uint8 RGB.
    Returns:
        [height, width, 3] uint8.  An image already of the target size is returned unchanged (copy).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()
    f = integer_downscale(h, w, height, width)
    if f > 1:  # = OpenCV INTER_AREA, without OpenCV
        return area_downsample(image, f)
    import cv2  # only for non-integer resizes (the training machine has no OpenCV)

    rh, rw, top, left = resize_with_pad_geometry(h, w, height, width)
    interp = cv2.INTER_AREA if (rh < h or rw < w) else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (rw, rh), interpolation=interp)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[top : top + rh, left : left + rw] = resized
    return out


def uint8_to_signed_unit(image: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1] (x/255*2-1), channels first."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {image.dtype}")
    x = image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def camera_slots(
    images: dict[str, np.ndarray], slots: tuple[str, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Arrange named camera images into fixed model slots.

    Args:
        images: slot name -> [h, w, 3] uint8 RGB; slots absent from the dict are missing cameras.
        slots: the model's slot names, in order.
        size: model image side (square).
    Returns:
        pixels [n_slots, 3, size, size] float32 in [-1, 1] (a missing camera is all -1),
        masks [n_slots] bool (False for a missing camera).
    Raises:
        ValueError for an image under a name that is no slot, or when no slot is present.
    """
    unknown = sorted(set(images) - set(slots))
    if unknown:
        raise ValueError(f"images for unknown camera slots {unknown}; the model's slots are {list(slots)}")
    if not images:
        raise ValueError(f"no camera image given; the model's slots are {list(slots)}")
    pixels = np.full((len(slots), 3, size, size), -1.0, dtype=np.float32)
    masks = np.zeros((len(slots),), dtype=bool)
    for k, name in enumerate(slots):
        if name in images:
            pixels[k] = uint8_to_signed_unit(resize_with_pad(images[name], size, size))
            masks[k] = True
    return pixels, masks


def sim_camera_map(slots: Sequence[str]) -> dict[str, str]:
    """Simulator camera name -> policy image slot.  Slots named like the simulator's cameras (pi05) map to
    themselves; other slot names (OpenVLA-OFT ``full_image``, ``wrist_image``) take the third-person camera
    then the wrist camera, in slot order."""
    sim = (SIM_CAMERA_BASE, SIM_CAMERA_WRIST)
    if set(sim) & set(slots):
        return {c: c for c in sim if c in slots}
    return dict(zip(sim, slots))
