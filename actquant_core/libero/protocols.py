"""LIBERO evaluation protocols (openpi and OpenVLA-OFT): observation mapping and action post-processing.

numpy/OpenCV only (no torch, no LIBERO): the environment server sends raw LIBERO observations (see
``wire``), this module turns them into our :class:`~actquant_core.runtime.types.Observation` and the
policy's chunk back into env actions.

openpi (``examples/libero/main.py``, pi0 / pi0.5 LIBERO checkpoints):
    agentview and wrist images rendered at 256 px, rotated 180° (LIBERO renders upside down), resized with
    pad to 224 px; state = eef position (3) + axis-angle of the eef quaternion (3) + gripper qpos (2) = 8;
    the first 7 action dims are sent as they are (the policy was trained in LIBERO's gripper convention:
    -1 open, +1 close); replan every 5 actions; 10 wait steps with the dummy action [0]*6 + [-1] at the
    start; env seed 7.
OpenVLA-OFT (``experiments/robot/libero/run_libero_eval.py``):
    images rotated 180°, JPEG round trip (the RLDS training data were JPEG), resized to 224 px (the policy's
    own 0.9-area centre crop follows inside the runtime); same 8-d state; the gripper dim is binarised from
    [0, 1] to ±1 and inverted (OpenVLA's data loader flipped it); 8 open-loop actions per query; 10 wait
    steps; env seed 0 (upstream seeds the env with 0 and the RNGs with 7).
Both: max steps per suite 220 / 280 / 300 / 520 / 400 (spatial / object / goal / 10 / 90), counted after
the wait steps; success = the env reports done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from actquant_core.policies.common.image import resize_with_pad
from actquant_core.policies.openvla_oft.preprocess import libero_gripper, resize_image
from actquant_core.runtime.types import Observation

#: LIBERO task suites and their episode step limits (after the wait steps), as in openpi / OpenVLA-OFT.
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
#: LIBERO's environment action: delta eef position (3), delta axis-angle (3), gripper (-1 open, +1 close).
ENV_ACTION_DIM = 7
#: "do nothing, gripper open" -- sent during the wait steps while objects settle.
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
#: Render resolution both protocols use (the training data's).
ENV_RESOLUTION = 256
POLICY_IMAGE_SIZE = 224
JPEG_QUALITY = 95  # tf.image.encode_jpeg's default
PROTOCOL_NAMES = ("openpi", "oft")
IMAGE_MODES = ("resize_with_pad", "jpeg_resize")
GRIPPER_MODES = ("as_is", "binarize_invert")


@dataclass(frozen=True)
class LiberoProtocol:
    """One evaluation protocol.

    Attributes:
        name: "openpi" or "oft".
        replan_steps: actions executed from each chunk before the policy is queried again.
        wait_steps: dummy-action steps at the start of an episode (not counted in max_steps).
        image_mode: "resize_with_pad" (openpi) or "jpeg_resize" (OFT: JPEG round trip + plain resize).
        image_size: policy image side in px after this mapping.
        gripper: "as_is" (openpi) or "binarize_invert" (OFT).
        env_seed: seed passed to ``env.seed`` before the init state is set.
        resolution: LIBERO render resolution (px).
    """

    name: str
    replan_steps: int
    wait_steps: int = 10
    image_mode: str = "resize_with_pad"
    image_size: int = POLICY_IMAGE_SIZE
    gripper: str = "as_is"
    env_seed: int = 7
    resolution: int = ENV_RESOLUTION

    def __post_init__(self) -> None:
        if self.name not in PROTOCOL_NAMES:
            raise ValueError(f"LiberoProtocol.name must be one of {PROTOCOL_NAMES}, got {self.name!r}")
        if self.replan_steps < 1:
            raise ValueError(f"LiberoProtocol.replan_steps must be >= 1, got {self.replan_steps}")
        if self.wait_steps < 0:
            raise ValueError(f"LiberoProtocol.wait_steps must be >= 0, got {self.wait_steps}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"LiberoProtocol.image_mode must be one of {IMAGE_MODES}, got {self.image_mode!r}")
        if self.gripper not in GRIPPER_MODES:
            raise ValueError(f"LiberoProtocol.gripper must be one of {GRIPPER_MODES}, got {self.gripper!r}")
        if self.image_size < 8 or self.resolution < 8:
            raise ValueError(f"LiberoProtocol image_size and resolution must be >= 8, got {self.image_size}, "
                             f"{self.resolution}")


OPENPI = LiberoProtocol(name="openpi", replan_steps=5, image_mode="resize_with_pad", gripper="as_is", env_seed=7)
OFT = LiberoProtocol(name="oft", replan_steps=8, image_mode="jpeg_resize", gripper="binarize_invert", env_seed=0)
PROTOCOLS: dict[str, LiberoProtocol] = {"openpi": OPENPI, "oft": OFT}


def get_protocol(name: str, replan_steps: int | None = None) -> LiberoProtocol:
    """The named protocol, optionally with another ``replan_steps``."""
    try:
        p = PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown LIBERO protocol {name!r}; known: {list(PROTOCOLS)}") from None
    if replan_steps is None:
        return p
    return LiberoProtocol(name=p.name, replan_steps=replan_steps, wait_steps=p.wait_steps, image_mode=p.image_mode,
                          image_size=p.image_size, gripper=p.gripper, env_seed=p.env_seed, resolution=p.resolution)


def max_steps(suite: str) -> int:
    """Episode step limit of a suite (after the wait steps)."""
    try:
        return SUITE_MAX_STEPS[suite]
    except KeyError:
        raise ValueError(f"unknown LIBERO suite {suite!r}; known: {list(SUITE_MAX_STEPS)}") from None


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> axis-angle vector [3] (axis * angle, angle in [0, 2π]).

    robosuite's convention (``transform_utils.quat2axisangle``): w is clipped to [-1, 1]; a (near) zero
    rotation gives zeros."""
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(-1)
    if q.shape[0] != 4 or not np.all(np.isfinite(q)):
        raise ValueError(f"expected a finite quaternion (x, y, z, w) of 4 values, got {quat_xyzw!r}")
    w = min(1.0, max(-1.0, float(q[3])))
    s = math.sqrt(1.0 - w * w)
    if math.isclose(s, 0.0):
        return np.zeros(3)
    return q[:3] * (2.0 * math.acos(w) / s)


def libero_state(eef_pos: np.ndarray, eef_quat: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The 8-d LIBERO proprio state both protocols use: [eef xyz (3), eef axis-angle (3), gripper qpos (2)]."""
    pos = np.asarray(eef_pos, np.float64).reshape(-1)
    grip = np.asarray(gripper_qpos, np.float64).reshape(-1)
    if pos.shape[0] != 3 or grip.shape[0] != 2:
        raise ValueError(f"eef_pos must have 3 and gripper_qpos 2 values, got {pos.shape[0]} and {grip.shape[0]}")
    return np.concatenate([pos, quat_to_axis_angle(eef_quat), grip])


def _check_image(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name}: expected an HxWx3 uint8 image, got {a.dtype} {a.shape}")
    return a


def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """RGB uint8 image -> JPEG (``quality``) -> RGB uint8, as OFT's ``resize_image_for_policy`` does."""
    import cv2  # lazily: `actquant` imports this module to register eval-libero, also where OpenCV is absent

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {image.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def policy_image(image: np.ndarray, protocol: LiberoProtocol, name: str = "image") -> np.ndarray:
    """A rendered LIBERO image [R, R, 3] uint8 -> the policy's [S, S, 3] uint8 (rotated 180° first)."""
    img = np.ascontiguousarray(_check_image(image, name)[::-1, ::-1])
    if protocol.image_mode == "resize_with_pad":
        return resize_with_pad(img, protocol.image_size, protocol.image_size)
    return resize_image(jpeg_round_trip(img), protocol.image_size)


def to_observation(obs_arrays: dict[str, np.ndarray], instruction: str, slots: tuple[str, str],
                   protocol: LiberoProtocol, stamp: float = 0.0) -> Observation:
    """LIBERO observation arrays (names of ``wire.OBS_ARRAYS``) -> Observation.

    Args:
        obs_arrays: ``agentview_image``, ``wrist_image`` (uint8 [R, R, 3]), ``eef_pos`` [3], ``eef_quat`` [4]
            (x, y, z, w), ``gripper_qpos`` [2].
        instruction: the task's language instruction.
        slots: the policy's (third-person, wrist) camera slot names.
        protocol: image mapping to apply.
    """
    from actquant_core.libero import wire as P

    missing = [k for k in P.OBS_ARRAYS if k not in obs_arrays]
    if missing:
        raise ValueError(f"LIBERO observation lacks {missing} (has {sorted(obs_arrays)})")
    images = {slots[0]: policy_image(obs_arrays[P.OBS_AGENTVIEW], protocol, P.OBS_AGENTVIEW),
              slots[1]: policy_image(obs_arrays[P.OBS_WRIST], protocol, P.OBS_WRIST)}
    state = libero_state(obs_arrays[P.OBS_EEF_POS], obs_arrays[P.OBS_EEF_QUAT], obs_arrays[P.OBS_GRIPPER_QPOS])
    return Observation(images=images, state=state.astype(np.float32), instruction=instruction, stamp=stamp)


def env_actions(chunk: np.ndarray, protocol: LiberoProtocol) -> np.ndarray:
    """Policy chunk [H, d >= 7] -> env actions [min(H, replan_steps), 7] float64 (protocol's gripper rule)."""
    a = np.asarray(chunk, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < ENV_ACTION_DIM or a.shape[0] < 1:
        raise ValueError(f"policy chunk must be [H >= 1, d >= {ENV_ACTION_DIM}], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("policy chunk has NaN/inf actions")
    a = a[: protocol.replan_steps, :ENV_ACTION_DIM]
    if protocol.gripper == "binarize_invert":
        a = libero_gripper(a).astype(np.float64)
    return a


def policy_slots(runtime: object) -> tuple[str, str]:
    """(third-person, wrist) camera slot names of a runtime: the first two of ``config.camera_slots``
    (pi0.5) or ``config.image_slots`` (OpenVLA-OFT)."""
    cfg = getattr(runtime, "config", None)
    slots = tuple(getattr(cfg, "camera_slots", None) or getattr(cfg, "image_slots", None) or ())
    if len(slots) < 2:
        raise ValueError(f"the policy needs >= 2 camera slots (third-person, wrist) for LIBERO, has {list(slots)}")
    return slots[0], slots[1]
