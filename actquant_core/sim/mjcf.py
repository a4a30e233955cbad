"""MJCF generator for the simulated UR3 / UR3e tabletop scene.

The arm kinematics come straight from the UR Denavit-Hartenberg parameters (standard DH,
``T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)``), so the MuJoCo forward kinematics equal the DH forward
kinematics of the real robot and the joint zero is the UR zero (arm stretched out along the base -x axis).
Each MJCF body ``i`` sits at the frame *before* joint ``i`` rotates; its child body carries the constant
part ``Tz(d_i) Tx(a_i) Rx(alpha_i)``.

Everything is built from primitives (capsules, boxes, cylinders); nothing is downloaded.  The generated
XML is committed under ``actquant_core/assets/sim/`` and regenerated with::

    python -m actquant_core.sim.mjcf            # writes ur3_scene.xml and ur3e_scene.xml

Scene layout (world frame = robot base frame, z up, table top at z = 0): the workspace lies in front of
the robot at x in [-0.40, -0.16], y in [-0.20, 0.20]; the third-person camera looks from -x towards the
robot, so image-left is +y.  Objects that a task does not use are parked under the table, out of view.
Joint order (qpos): 6 arm joints, 2 finger slides, 1 drawer slide, then one free joint per object.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actquant_core.constants import (
    SIM_ARM_JOINTS,
    SIM_CAMERA_BASE,
    SIM_CAMERA_WRIST,
    SIM_DRAWER_JOINT,
    SIM_FINGER_JOINTS,
    SIM_GRIPPER_ACTUATOR,
    SIM_OBJECTS,
    SIM_TCP_SITE,
)

log = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "sim"


@dataclass(frozen=True)
class URSpec:
    """Kinematic and dynamic description of one UR model.

    Attributes:
        name: "ur3" or "ur3e".
        d: DH offsets d1..d6 (m).
        a: DH lengths a1..a6 (m).
        alpha: DH twists alpha1..alpha6 (rad).
        masses: link masses (kg) of links 1..6 (shoulder .. wrist 3); the base is fixed.
        torque_limits: joint torque limits (N m).
        velocity_limits: joint speed limits (rad/s).
        lower / upper: joint position limits (rad).
        damping: viscous joint damping (N m s / rad).
        armature: reflected rotor inertia (kg m^2).
        control_rate_hz: controller rate of the real robot (CB3 125 Hz, e-series 500 Hz).
    """

    name: str
    d: tuple[float, ...]
    a: tuple[float, ...]
    alpha: tuple[float, ...]
    masses: tuple[float, ...]
    torque_limits: tuple[float, ...]
    velocity_limits: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    damping: tuple[float, ...]
    armature: tuple[float, ...]
    control_rate_hz: float

    def __post_init__(self) -> None:
        for field_name in ("d", "a", "alpha", "masses", "torque_limits", "velocity_limits", "lower",
                           "upper", "damping", "armature"):
            value = getattr(self, field_name)
            if len(value) != 6:
                raise ValueError(f"URSpec.{field_name} must have 6 entries, got {len(value)}: {value}")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper)):
            raise ValueError(f"URSpec joint limits need lower < upper, got {self.lower} / {self.upper}")
        if self.control_rate_hz <= 0:
            raise ValueError(f"URSpec.control_rate_hz must be > 0, got {self.control_rate_hz}")


_HALF_PI = math.pi / 2
_TWO_PI = 2 * math.pi

UR_SPECS: dict[str, URSpec] = {
    "ur3": URSpec(
        name="ur3",
        d=(0.1519, 0.0, 0.0, 0.11235, 0.08535, 0.0819),
        a=(0.0, -0.24365, -0.21325, 0.0, 0.0, 0.0),
        alpha=(_HALF_PI, 0.0, 0.0, _HALF_PI, -_HALF_PI, 0.0),
        masses=(2.0, 3.42, 1.26, 0.8, 0.8, 0.35),
        torque_limits=(56.0, 56.0, 28.0, 12.0, 12.0, 12.0),
        velocity_limits=(math.pi, math.pi, math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi),
        lower=(-_TWO_PI, -_TWO_PI, -math.pi, -_TWO_PI, -_TWO_PI, -_TWO_PI),
        upper=(_TWO_PI, _TWO_PI, math.pi, _TWO_PI, _TWO_PI, _TWO_PI),
        damping=(2.0, 2.0, 1.0, 0.3, 0.3, 0.3),
        armature=(0.1, 0.1, 0.05, 0.02, 0.02, 0.02),
        control_rate_hz=125.0,
    ),
    "ur3e": URSpec(
        name="ur3e",
        d=(0.15185, 0.0, 0.0, 0.13105, 0.08535, 0.0921),
        a=(0.0, -0.24355, -0.2132, 0.0, 0.0, 0.0),
        alpha=(_HALF_PI, 0.0, 0.0, _HALF_PI, -_HALF_PI, 0.0),
        masses=(1.98, 3.4445, 1.437, 0.871, 0.805, 0.261),
        torque_limits=(56.0, 56.0, 28.0, 12.0, 12.0, 12.0),
        velocity_limits=(math.pi, math.pi, math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi),
        lower=(-_TWO_PI, -_TWO_PI, -math.pi, -_TWO_PI, -_TWO_PI, -_TWO_PI),
        upper=(_TWO_PI, _TWO_PI, math.pi, _TWO_PI, _TWO_PI, _TWO_PI),
        damping=(2.0, 2.0, 1.0, 0.3, 0.3, 0.3),
        armature=(0.1, 0.1, 0.05, 0.02, 0.02, 0.02),
        control_rate_hz=500.0,
    ),
}

# Gripper geometry (m).  The finger slide q_f is the half opening: pads' inner faces sit at +-q_f.
GRIPPER_HALF_OPEN = 0.045
FINGER_LENGTH = 0.05
PALM_THICKNESS = 0.02
TCP_OFFSET = PALM_THICKNESS + FINGER_LENGTH - 0.012  # flange -> grasp point (m)

CUBE_HALF = 0.02
BOWL_RADIUS = 0.065
BOWL_HEIGHT = 0.045
PLATE_RADIUS = 0.075
MUG_RADIUS = 0.028
MUG_HALF_HEIGHT = 0.04
# Cabinet with a drawer sliding towards -y (towards the workspace centre).
CABINET_POS = (-0.30, 0.33)
CABINET_HALF = (0.09, 0.08, 0.06)
DRAWER_TRAVEL = 0.14

OBJECT_RGBA = {
    "red_cube": "0.85 0.12 0.1 1",
    "green_cube": "0.15 0.7 0.2 1",
    "blue_cube": "0.15 0.3 0.85 1",
    "yellow_cube": "0.95 0.8 0.1 1",
    "bowl_1": "0.2 0.2 0.22 1",
    "bowl_2": "0.2 0.2 0.22 1",
    "plate": "0.92 0.92 0.88 1",
    "mug": "0.55 0.25 0.6 1",
}


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _rx_quat(angle: float) -> tuple[float, float, float, float]:
    return (math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0)


def dh_forward(spec: URSpec, q: np.ndarray) -> np.ndarray:
    """DH forward kinematics of the flange.

    Args:
        spec: the UR model.
        q: joint positions [6] (rad).
    Returns:
        4x4 homogeneous transform base -> flange.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (6,):
        raise ValueError(f"dh_forward expects q of shape (6,), got {q.shape}")
    T = np.eye(4)
    for i in range(6):
        ct, st = math.cos(q[i]), math.sin(q[i])
        ca, sa = math.cos(spec.alpha[i]), math.sin(spec.alpha[i])
        A = np.array([
            [ct, -st * ca, st * sa, spec.a[i] * ct],
            [st, ct * ca, -ct * sa, spec.a[i] * st],
            [0.0, sa, ca, spec.d[i]],
            [0.0, 0.0, 0.0, 1.0],
        ])
        T = T @ A
    return T


def _link_geoms(start: np.ndarray, end: np.ndarray, radius: float, rgba: str, name: str) -> str:
    """A visual capsule from ``start`` to ``end`` in the body frame (no collisions)."""
    if np.linalg.norm(end - start) < 1e-6:
        return (f'<geom name="{name}" class="arm_visual" type="sphere" size="{radius:.4g}" '
                f'pos="{_fmt(start)}" rgba="{rgba}"/>')
    return (f'<geom name="{name}" class="arm_visual" type="capsule" size="{radius:.4g}" '
            f'fromto="{_fmt(start)} {_fmt(end)}" rgba="{rgba}"/>')


def _arm_xml(spec: URSpec) -> str:
    """Nested bodies of the arm, the gripper and the wrist camera."""
    link_rgba = ["0.3 0.55 0.8 1", "0.75 0.75 0.78 1", "0.75 0.75 0.78 1", "0.3 0.55 0.8 1",
                 "0.3 0.55 0.8 1", "0.3 0.3 0.32 1"]
    radii = [0.045, 0.04, 0.035, 0.03, 0.03, 0.03]
    lines: list[str] = []
    for i in range(6):
        # body i: frame before joint i rotates.  Its child carries Tz(d_i) Tx(a_i) Rx(alpha_i).
        end_local = np.array([spec.a[i], 0.0, spec.d[i]])
        L = float(np.linalg.norm(end_local)) + 0.05
        m = spec.masses[i]
        inertia = m * (3 * radii[i] ** 2 + L ** 2) / 12.0
        inertia_axial = 0.5 * m * radii[i] ** 2
        com = 0.5 * end_local
        parent_pos = "0 0 0"
        parent_quat = "1 0 0 0"
        if i > 0:
            parent_pos = _fmt((spec.a[i - 1], 0.0, spec.d[i - 1]))
            parent_quat = _fmt(_rx_quat(spec.alpha[i - 1]))
        lines.append(f'<body name="link{i + 1}" pos="{parent_pos}" quat="{parent_quat}">')
        lines.append(f'<inertial pos="{_fmt(com)}" mass="{m:.4g}" '
                     f'diaginertia="{inertia:.5g} {inertia:.5g} {max(inertia_axial, 1e-4):.5g}"/>')
        lines.append(
            f'<joint name="{SIM_ARM_JOINTS[i]}" type="hinge" axis="0 0 1" '
            f'range="{spec.lower[i]:.6g} {spec.upper[i]:.6g}" damping="{spec.damping[i]:.4g}" '
            f'armature="{spec.armature[i]:.4g}"/>')
        # Joint housing (cylinder along the joint axis) and the link segment.
        lines.append(f'<geom class="arm_visual" type="cylinder" size="{radii[i] * 1.15:.4g} {radii[i] * 1.2:.4g}" '
                     f'rgba="{link_rgba[i]}"/>')
        # Shift the segment along z by d, then along x by a (in the rotated frame the offsets are
        # applied in that order).
        lines.append(_link_geoms(np.zeros(3), np.array([0.0, 0.0, spec.d[i]]), radii[i], link_rgba[i],
                                 f"link{i + 1}_d"))
        if abs(spec.a[i]) > 0:
            lines.append(_link_geoms(np.array([0.0, 0.0, spec.d[i]]), end_local, radii[i], link_rgba[i],
                                     f"link{i + 1}_a"))
    # Flange frame = frame 6 (z out of the tool flange).
    lines.append(f'<body name="flange" pos="0 0 {spec.d[5]:.6g}">')
    lines.append(_gripper_xml())
    lines.append("</body>")
    lines.extend("</body>" for _ in range(6))
    return "\n".join(lines)


def _gripper_xml() -> str:
    """Parallel gripper: palm + two fingers sliding along flange y, one position actuator."""
    pad_half = (0.012, 0.006, FINGER_LENGTH / 2)  # x, y (thickness), z
    z_finger = PALM_THICKNESS + FINGER_LENGTH / 2
    return f"""
<body name="gripper" pos="0 0 0">
  <inertial pos="0 0 0.02" mass="0.4" diaginertia="0.0004 0.0004 0.0003"/>
  <geom name="palm" class="gripper" type="box" size="0.02 {GRIPPER_HALF_OPEN + 0.015:.4g} {PALM_THICKNESS / 2:.4g}"
        pos="0 0 {PALM_THICKNESS / 2:.4g}" rgba="0.2 0.2 0.2 1"/>
  <site name="{SIM_TCP_SITE}" pos="0 0 {TCP_OFFSET:.5g}" size="0.004" rgba="1 0 0 0.0"/>
  <camera name="{SIM_CAMERA_WRIST}" pos="0.065 0 0.005" xyaxes="0 1 0 0.94 0 0.34" fovy="80"/>
  <geom class="arm_visual" type="box" size="0.032 0.015 0.012" pos="0.045 0 -0.008" rgba="0.1 0.1 0.1 1"/>
  <body name="finger_1" pos="0 0 0">
    <inertial pos="0 0.01 {z_finger:.4g}" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
    <joint name="{SIM_FINGER_JOINTS[0]}" type="slide" axis="0 1 0" range="0 {GRIPPER_HALF_OPEN}" damping="5"
           armature="0.01"/>
    <geom name="finger_1_pad" class="finger" type="box" size="{_fmt(pad_half)}"
          pos="0 {pad_half[1]:.4g} {z_finger:.4g}"/>
  </body>
  <body name="finger_2" pos="0 0 0">
    <inertial pos="0 -0.01 {z_finger:.4g}" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
    <joint name="{SIM_FINGER_JOINTS[1]}" type="slide" axis="0 -1 0" range="0 {GRIPPER_HALF_OPEN}" damping="5"
           armature="0.01"/>
    <geom name="finger_2_pad" class="finger" type="box" size="{_fmt(pad_half)}"
          pos="0 {-pad_half[1]:.4g} {z_finger:.4g}"/>
  </body>
</body>"""


def _bowl_xml(name: str, pos: tuple[float, float]) -> str:
    n_walls = 14
    wall_half_len = BOWL_RADIUS * math.tan(math.pi / n_walls) + 0.002
    # Visual disc + a square collision floor (box contacts are cheaper than cylinder ones); the walls
    # start above the table so only the floor touches it.
    geoms = [f'<geom class="object_visual" type="cylinder" size="{BOWL_RADIUS:.4g} 0.004" pos="0 0 0.004" '
             f'rgba="{OBJECT_RGBA[name]}"/>',
             f'<geom class="object_collision" type="box" size="{BOWL_RADIUS * 0.72:.4g} {BOWL_RADIUS * 0.72:.4g} '
             f'0.004" pos="0 0 0.004"/>']
    for k in range(n_walls):
        ang = 2 * math.pi * k / n_walls
        x, y = BOWL_RADIUS * math.cos(ang), BOWL_RADIUS * math.sin(ang)
        geoms.append(
            f'<geom class="object" type="box" size="0.004 {wall_half_len:.4g} {BOWL_HEIGHT / 2:.4g}" '
            f'pos="{x:.5g} {y:.5g} {BOWL_HEIGHT / 2 + 0.003:.4g}" euler="0 0 {ang:.5g}" rgba="{OBJECT_RGBA[name]}"/>')
    return (f'<body name="{name}" pos="{pos[0]} {pos[1]} 0.001" gravcomp="1"><freejoint name="{name}_joint"/>'
            f'<inertial pos="0 0 0.01" mass="0.15" diaginertia="2e-4 2e-4 3e-4"/>'
            + "".join(geoms) + "</body>")


def _objects_xml() -> str:
    # Every object body has gravcomp="1" so the compiled model counts gravity-compensated bodies
    # (MuJoCo skips gravity compensation entirely when none is declared); UR3World.reset switches it off
    # for the objects in use and keeps it on for parked ones, which float out of view without collisions.
    parts = []
    park = {name: (1.5 + 0.3 * k, 1.5) for k, name in enumerate(SIM_OBJECTS)}
    for name in SIM_OBJECTS:
        px, py = park[name]
        if name.endswith("_cube"):
            parts.append(
                f'<body name="{name}" pos="{px} {py} {CUBE_HALF}" gravcomp="1"><freejoint name="{name}_joint"/>'
                f'<geom class="object" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05" '
                f'rgba="{OBJECT_RGBA[name]}"/></body>')
        elif name.startswith("bowl"):
            parts.append(_bowl_xml(name, (px, py)))
        elif name == "plate":
            parts.append(
                f'<body name="plate" pos="{px} {py} 0.005" gravcomp="1"><freejoint name="plate_joint"/>'
                f'<geom class="object_visual" type="cylinder" size="{PLATE_RADIUS} 0.005" '
                f'rgba="{OBJECT_RGBA[name]}"/>'
                f'<geom class="object_collision" type="box" size="{PLATE_RADIUS * 0.72:.4g} '
                f'{PLATE_RADIUS * 0.72:.4g} 0.005" mass="0.2"/>'
                f'<geom class="object" type="cylinder" size="{PLATE_RADIUS * 0.7:.4g} 0.0051" '
                f'rgba="0.8 0.8 0.75 1" contype="0" conaffinity="0"/></body>')
        elif name == "mug":
            parts.append(
                f'<body name="mug" pos="{px} {py} {MUG_HALF_HEIGHT}" gravcomp="1"><freejoint name="mug_joint"/>'
                f'<geom class="object" type="cylinder" size="{MUG_RADIUS} {MUG_HALF_HEIGHT}" mass="0.12" '
                f'rgba="{OBJECT_RGBA[name]}"/>'
                f'<geom class="object" type="box" size="0.006 0.018 0.022" pos="0 {MUG_RADIUS + 0.012:.4g} 0.005" '
                f'mass="0.01" rgba="{OBJECT_RGBA[name]}"/></body>')
        else:
            raise ValueError(f"no geometry for object {name!r}")
    return "\n".join(parts)


def _cabinet_xml() -> str:
    """A fixed cabinet with one drawer sliding along -y and a bar handle on its front."""
    cx, cy = CABINET_POS
    hx, hy, hz = CABINET_HALF
    t = 0.008
    wood = "0.55 0.38 0.22 1"
    dwood = "0.62 0.45 0.28 1"
    inner_hz = hz - t
    d_hx, d_hy, d_hz = hx - t - 0.004, hy - 0.004, inner_hz * 0.8
    front_y = -hy
    drawer_z = -hz + t + d_hz + 0.001  # drawer body centre in the cabinet frame
    handle_z = 0.03 - drawer_z  # handle height in the drawer frame (0.03 above the cabinet centre)
    return f"""
<body name="cabinet" pos="{cx} {cy} {hz}">
  <geom class="fixture" type="box" size="{hx} {hy} {t / 2}" pos="0 0 {hz - t / 2:.4g}" rgba="{wood}"/>
  <geom class="fixture" type="box" size="{hx} {hy} {t / 2}" pos="0 0 {-hz + t / 2:.4g}" rgba="{wood}"/>
  <geom class="fixture" type="box" size="{t / 2} {hy} {hz}" pos="{hx - t / 2:.4g} 0 0" rgba="{wood}"/>
  <geom class="fixture" type="box" size="{t / 2} {hy} {hz}" pos="{-hx + t / 2:.4g} 0 0" rgba="{wood}"/>
  <geom class="fixture" type="box" size="{hx} {t / 2} {hz}" pos="0 {hy - t / 2:.4g} 0" rgba="{wood}"/>
  <body name="drawer" pos="0 0 {drawer_z:.4g}">
    <joint name="{SIM_DRAWER_JOINT}" type="slide" axis="0 -1 0" range="0 {DRAWER_TRAVEL}" damping="3"
           frictionloss="0.2"/>
    <inertial pos="0 0 0" mass="0.3" diaginertia="1e-3 1e-3 1e-3"/>
    <geom class="fixture" type="box" size="{d_hx:.4g} {d_hy:.4g} 0.003" pos="0 0 {-d_hz + 0.003:.4g}" rgba="{dwood}"/>
    <geom class="fixture" type="box" size="0.003 {d_hy:.4g} {d_hz:.4g}" pos="{d_hx - 0.003:.4g} 0 0" rgba="{dwood}"/>
    <geom class="fixture" type="box" size="0.003 {d_hy:.4g} {d_hz:.4g}" pos="{-d_hx + 0.003:.4g} 0 0" rgba="{dwood}"/>
    <geom class="fixture" type="box" size="{d_hx:.4g} 0.003 {d_hz:.4g}" pos="0 {d_hy - 0.003:.4g} 0" rgba="{dwood}"/>
    <geom name="drawer_front" class="fixture" type="box" size="{hx:.4g} 0.005 {hz - 0.002:.4g}"
          pos="0 {front_y - 0.005:.4g} {hz - t - d_hz - 0.001:.4g}" rgba="{dwood}"/>
    <geom class="fixture" type="box" size="0.006 0.014 0.006" pos="-0.035 {front_y - 0.024:.4g} {handle_z:.4g}" rgba="0.7 0.7 0.7 1"/>
    <geom class="fixture" type="box" size="0.006 0.014 0.006" pos="0.035 {front_y - 0.024:.4g} {handle_z:.4g}" rgba="0.7 0.7 0.7 1"/>
    <geom name="drawer_handle" class="fixture" type="box" size="0.055 0.007 0.008"
          pos="0 {front_y - 0.045:.4g} {handle_z:.4g}" rgba="0.7 0.7 0.7 1"/>
    <site name="drawer_handle_site" pos="0 {front_y - 0.045:.4g} {handle_z:.4g}" size="0.005"
          rgba="0 1 0 0"/>
    <site name="drawer_inside_site" pos="0 {-0.02:.4g} {-d_hz + 0.006:.4g}" size="0.005" rgba="0 0 1 0"/>
  </body>
</body>"""


def build_scene_xml(model: str) -> str:
    """The full scene (arm, gripper, table, cabinet, objects, cameras) as an MJCF string.

    Args:
        model: "ur3" or "ur3e".
    """
    if model not in UR_SPECS:
        raise ValueError(f"unknown UR model {model!r}; expected one of {sorted(UR_SPECS)}")
    spec = UR_SPECS[model]
    torque_rows = "\n".join(
        f'<motor name="{j}_motor" joint="{j}" ctrlrange="{-tl:.4g} {tl:.4g}" ctrllimited="true"/>'
        for j, tl in zip(SIM_ARM_JOINTS, spec.torque_limits))
    return f"""<mujoco model="{model}_tabletop">
  <!-- Generated by actquant_core/sim/mjcf.py from the {model.upper()} DH parameters; do not edit. -->
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.65 0.65 0.65" specular="0.05 0.05 0.05"/>
  </visual>
  <default>
    <default class="arm_visual">
      <geom contype="0" conaffinity="0" group="1" density="0"/>
    </default>
    <default class="gripper">
      <geom contype="1" conaffinity="1" condim="4" friction="1.2 0.02 0.002" density="0" group="1"/>
    </default>
    <default class="finger">
      <geom contype="1" conaffinity="1" condim="4" friction="1.5 0.02 0.002" density="0" group="1"
            solref="0.004 1" solimp="0.95 0.99 0.001" rgba="0.15 0.15 0.15 1"/>
    </default>
    <default class="object">
      <geom contype="1" conaffinity="1" condim="4" friction="1.0 0.01 0.001" density="300" group="2"
            solref="0.004 1"/>
    </default>
    <default class="object_collision">
      <geom contype="1" conaffinity="1" condim="4" friction="1.0 0.01 0.001" density="300" group="3"
            solref="0.004 1" rgba="0 0 0 0"/>
    </default>
    <default class="object_visual">
      <geom contype="0" conaffinity="0" density="0" group="2"/>
    </default>
    <default class="fixture">
      <geom contype="1" conaffinity="1" condim="3" friction="0.8 0.01 0.001" density="0" group="2"/>
    </default>
  </default>
  <worldbody>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.35 0.35 0.38 1"
          contype="1" conaffinity="1"/>
    <geom name="table" type="box" size="0.55 0.6 0.02" pos="-0.2 0 -0.02" rgba="0.78 0.7 0.58 1"
          contype="1" conaffinity="1" condim="3" friction="0.8 0.01 0.001"/>
    <geom name="robot_pedestal" type="cylinder" size="0.065 0.005" pos="0 0 0.005" rgba="0.2 0.2 0.2 1"
          contype="0" conaffinity="0"/>
    <camera name="{SIM_CAMERA_BASE}" pos="-0.85 0 0.55" xyaxes="0 -1 0 0.61 0 0.793" fovy="50"/>
{_arm_xml(spec)}
{_cabinet_xml()}
{_objects_xml()}
  </worldbody>
  <equality>
    <joint joint1="{SIM_FINGER_JOINTS[1]}" joint2="{SIM_FINGER_JOINTS[0]}" polycoef="0 1 0 0 0"
           solref="0.005 1"/>
  </equality>
  <contact>
    <exclude body1="finger_1" body2="finger_2"/>
    <exclude body1="gripper" body2="finger_1"/>
    <exclude body1="gripper" body2="finger_2"/>
  </contact>
  <actuator>
{torque_rows}
    <position name="{SIM_GRIPPER_ACTUATOR}" joint="{SIM_FINGER_JOINTS[0]}" ctrlrange="0 {GRIPPER_HALF_OPEN}"
              kp="400" kv="20" forcerange="-25 25"/>
  </actuator>
</mujoco>
"""


def scene_path(model: str) -> Path:
    """Path of the committed scene XML for ``model``."""
    return ASSET_DIR / f"{model}_scene.xml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the UR3/UR3e MuJoCo scene XML files.")
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for model in UR_SPECS:
        path = args.out / f"{model}_scene.xml"
        path.write_text(build_scene_xml(model))
        log.info("wrote %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
